"""Corpus readers: find a source's inputs without reading them, then stream their documents.

- ``plan_source(spec)``: a text file, a folder (recursive: .txt/.md/.jsonl/.parquet), a directory saved by
  ``datasets``' ``save_to_disk``, ``hf:NAME`` (a Hugging Face Hub dataset) or ``builtin:pydoc``, as a
  :class:`SourcePlan`: its inputs with their sizes and modification times, and a cheap ``fingerprint``
  that identifies the corpus without reading any of it (so a tokenized corpus reopens in no time).
- ``iter_fragments(plan, ...)``: the documents, in pieces of about ``block_bytes``, never the whole corpus
  at once: the sharded tokenizer joins them with <|endoftext|>.
- ``read_corpus(spec)``: the whole text in memory (small corpora, tests, the book tools), byte for byte
  the text older versions read, so the sha256 of a corpus already tokenized stays valid.

No torch, no numpy here: the tokenizer's worker processes import this module. pyarrow and ``datasets``
are imported only when a .parquet file or a Hugging Face dataset is met (``sources_records``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Iterator

from gpttui.core.corpus_types import Cancelled, SourceStats
from gpttui.core.errors import DataError

BUILTIN_SOURCES = {
    "builtin:pydoc": "Python's reference manual topics, shipped in every CPython (~465k characters)",
    "builtin:pydoc-20k": "the first ~20k characters of builtin:pydoc, the size of the book's short story",
}
TEXT_SUFFIXES = {".txt", ".md"}
RECORD_SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}
INPUT_SUFFIXES = TEXT_SUFFIXES | set(RECORD_SUFFIXES)  # what a folder is searched for
MAX_REPLACED_FRACTION = 0.01  # refuse a file when more than 1% of its bytes are not UTF-8
SNIFF_BYTES = 1 << 16  # NUL bytes in this much of a file's start: binary
READER_VERSION = 1  # in every fingerprint: bump when the text a source gives changes
ENDOFTEXT = "<|endoftext|>"  # the tokenizer's (not imported from there: it brings numpy)
WHITESPACE = " \t\n\r\x0b\x0c"  # what ``bytes.strip()`` strips: a document of only these is empty
_FFFD = "\ufffd"
_FFFD_BYTES = _FFFD.encode()
_BOM = b"\xef\xbb\xbf"


# --- the plan -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputFile:
    path: str  # absolute path ("" for builtin / in-memory / Hub datasets)
    name: str  # what the user sees: relative to the folder, the file name, "builtin:pydoc", the dataset
    kind: str  # "text" | "jsonl" | "parquet" | "hf" | "builtin" | "memory"
    size: int  # bytes on disk (0 when unknown)
    mtime_ns: int  # 0 when not a file


@dataclass
class SourcePlan:
    spec: str  # what the user gave (settings.source)
    label: str  # e.g. "book.txt", "corpus/ (12 files)", "Python reference topics (built in)"
    kind: str  # "file" | "folder" | "builtin" | "memory" | "hf"
    inputs: list[InputFile]
    text_field: str = "text"
    split: str = "train"
    text: str | None = None  # the whole text, for builtin and in-memory corpora only
    revision: str = ""  # a Hugging Face dataset's: its saved fingerprint, or the @revision of a Hub name

    @cached_property
    def _text_bytes(self) -> int:
        return len(self.text.encode("utf-8", errors="surrogatepass")) if self.text is not None else 0

    @property
    def total_bytes(self) -> int:
        """Bytes to read, for progress: the inputs' sizes (a Hub dataset's is known once it is loaded)."""
        if self.text is not None:
            return self._text_bytes
        return sum(i.size for i in self.inputs)

    def fingerprint(self) -> dict:
        """What identifies the corpus, read from the file system's metadata only (never the content,
        except an in-memory text's hash): a file touched or grown gives another fingerprint."""
        fp: dict = {"reader": READER_VERSION, "kind": self.kind}
        if self.kind == "builtin":
            fp.update(name=self.spec, python=sys.version)
        elif self.kind == "memory":
            fp["sha256"] = hashlib.sha256(self.text.encode("utf-8", errors="surrogatepass")).hexdigest()
        else:
            fp["spec"] = self.spec if self.spec.startswith("hf:") else str(Path(self.spec).expanduser().resolve())
            fp["inputs"] = [[i.name, i.size, i.mtime_ns] for i in self.inputs]
        if any(i.kind in ("jsonl", "parquet", "hf") for i in self.inputs):
            fp["text_field"] = self.text_field
        if self.kind == "hf":
            fp.update(split=self.split, revision=self.revision)
        return fp


def plan_source(spec: str | os.PathLike, text_field: str = "text", split: str = "train") -> SourcePlan:
    """Find a source's inputs and stat them; no file's content is read. DataError for a source that
    cannot be one (missing, a device or FIFO, an empty folder, an unknown builtin)."""
    spec = str(spec).strip()
    if not spec:
        raise DataError("No data source given: name a text file, a folder, or builtin:pydoc.")
    if not str(text_field or "").strip():
        raise DataError("The text field is empty: name the records' text field with --text-field.")
    if spec.startswith("builtin:"):
        return _plan_builtin(spec)
    if spec.startswith("hf:"):
        from gpttui.core.sources_records import plan_hub

        return plan_hub(spec, text_field, split)
    path = Path(spec).expanduser()
    mode = _stat_mode(path, spec)
    if stat.S_ISDIR(mode):
        if (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                      and (path / "dataset_info.json").is_file()):
            from gpttui.core.sources_records import plan_saved_dataset

            return plan_saved_dataset(spec, path, text_field, split)
        return _plan_folder(spec, path, text_field, split)
    if not stat.S_ISREG(mode):
        raise not_regular(path, mode)
    return SourcePlan(spec, path.name, "file", [_input_file(str(path), path.name)], text_field, split)


def plan_memory(text: str, label: str = "text", spec: str = "memory") -> SourcePlan:
    """An in-memory corpus (tests, a text already at hand): one document."""
    return SourcePlan(spec, label, "memory", [InputFile("", label, "memory", 0, 0)], text=text)


def _stat_mode(path: Path, spec: str) -> int:
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    except PermissionError:
        raise DataError(f"{path} cannot be read (permission denied).") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror or exc}.") from None
    except ValueError:  # e.g. a NUL character in the name
        raise DataError(f"{spec!r} is not a valid path.") from None


def _input_file(path: str, name: str, st: os.stat_result | None = None) -> InputFile:
    kind = RECORD_SUFFIXES.get(os.path.splitext(path)[1].lower(), "text")
    if st is None:
        try:
            st = os.stat(path)
        except OSError:  # gone since it was listed: reading it will say so
            return InputFile(os.path.abspath(path), name, kind, 0, 0)
    return InputFile(os.path.abspath(path), name, kind, st.st_size, st.st_mtime_ns)


def _folder_files(root: Path) -> list[tuple[str, str, os.stat_result]]:
    """(path, name relative to ``root``, stat) of the regular files (or links to them) with a corpus
    suffix below ``root``; hidden files and folders left out (not even entered: a .git folder can be
    big), links to folders not followed. Strings, not Paths: 10,000 files are planned in ~0.1 s."""
    top = os.path.abspath(root)
    found = []
    for folder, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        inner = "" if folder == top else os.path.relpath(folder, top)  # once per folder, not per file
        for name in names:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in INPUT_SUFFIXES:
                continue
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:  # a broken link
                continue
            if stat.S_ISREG(st.st_mode):  # not a FIFO, a socket, a link to a device
                found.append((path, os.path.join(inner, name) if inner else name, st))
    return found


def _path_order(entry: tuple[str, str, os.stat_result]) -> list[str]:
    """Sorted ``Path`` objects' order (part by part; case-blind on Windows), without making Paths."""
    parts = entry[1].split(os.sep)
    return [p.casefold() for p in parts] if os.name == "nt" else parts


def _plan_folder(spec: str, root: Path, text_field: str, split: str) -> SourcePlan:
    """Every .txt/.md/.jsonl/.parquet file below ``root``, in the order of sorted paths: the order older
    versions joined a folder's .txt/.md files in (so its text, and the text's sha256, stay the same)."""
    found = sorted(_folder_files(root), key=_path_order)
    if not found:
        raise DataError(f"{root} holds no .txt or .md files (nor .jsonl or .parquet; searched recursively).")
    inputs = [_input_file(path, name.replace(os.sep, "/"), st) for path, name, st in found]
    return SourcePlan(spec, f"{root.name}/ ({len(inputs)} files)", "folder", inputs, text_field, split)


def _builtin_pydoc() -> str:
    from pydoc_data import topics

    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics)) + "\n"


def _plan_builtin(spec: str) -> SourcePlan:
    if spec == "builtin:pydoc":
        label, text = "Python reference topics (built in)", _builtin_pydoc()
    elif spec == "builtin:pydoc-20k":
        text = _builtin_pydoc()
        label, text = "Python reference topics, first 20k characters (built in)", text[:text.index("\n", 20_479) + 1]
    else:
        raise DataError(f"Unknown built-in corpus {spec!r}; available: {', '.join(BUILTIN_SOURCES)}.")
    return SourcePlan(spec, label, "builtin", [InputFile("", spec, "builtin", 0, 0)], text=text)


def module_missing(name: str) -> bool:
    """Whether a module cannot be imported (found without importing it: ``datasets`` takes seconds)."""
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


# --- opening files safely -------------------------------------------------------------------------

_FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


class InputError(DataError):
    """An input that gives nothing; ``reason`` is the short phrase a folder's stats show."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class EmptyInput(InputError):
    """An input without any text: left out of a folder quietly (as whitespace-only files always were)."""

    def __init__(self, message: str):
        super().__init__(message, "no text")


def not_regular(path: Path, mode: int) -> DataError:
    """The error for a path that is not a regular file (today's wording, which tests pin)."""
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return InputError(f"{path} is {kind}, not a text file: give a regular text file, a folder of .txt/.md "
                      "files, or builtin:pydoc.", kind)


_not_regular = not_regular  # its old name


def open_regular(path: Path) -> BinaryIO:
    """A regular file, open for reading. Anything else (a device such as /dev/zero, which never ends; a
    FIFO, which blocks until a writer comes) is refused by its ``stat`` before it is opened, and again by
    ``fstat`` once open (without blocking: O_NONBLOCK), in case the path was swapped in between."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise not_regular(path, mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode)
        return os.fdopen(fd, "rb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file (small files only), with :func:`open_regular`'s safety."""
    with open_regular(path) as f:
        return f.read()


# --- decoding -------------------------------------------------------------------------------------

def _complete_prefix(buf: bytes) -> int:
    """Where ``buf`` can be cut so that UTF-8 decoding the two sides on their own gives the text of the
    whole: before a multi-byte character that the end cuts. The rest is kept for the next block."""
    n = len(buf)
    for k in range(1, min(3, n) + 1):
        b = buf[n - k]
        if b < 0x80:
            return n
        if b >= 0xC0:  # a lead byte: does its character end within the buffer?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n - k if need > k else n
    return n


def decode(data: bytes) -> tuple[str, int]:
    """UTF-8 text of some bytes (errors replaced) and how many bytes were replaced (a U+FFFD written in
    the file is text, not a replacement)."""
    text = data.decode("utf-8", errors="replace")
    return text, text.count(_FFFD) - data.count(_FFFD_BYTES)


def sniff(path: Path, head: bytes, whole: bool) -> None:
    """Refuse what is not UTF-8 text, from the start of a file (all of it when ``whole``): a UTF-16/32
    byte-order mark, NUL bytes (binary), more than 1% of the bytes not UTF-8."""
    for marks, name in (((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"), "UTF-32"), ((b"\xff\xfe", b"\xfe\xff"), "UTF-16")):
        if head.startswith(marks):
            raise InputError(
                f"{path} is {name} text (it starts with a {name} byte-order mark), not UTF-8. Convert it first, "
                f"e.g. `iconv -f {name.lower()} -t utf-8 {path.name} > {path.stem}.utf8{path.suffix or '.txt'}`.",
                f"{name} text, not UTF-8")
    if b"\x00" in head[:SNIFF_BYTES]:
        raise InputError(f"{path} looks like a binary file (it contains NUL bytes), not text.", "binary (NUL bytes)")
    data = head if whole else head[:_complete_prefix(head)]
    _, replaced = decode(data)
    if replaced and replaced > MAX_REPLACED_FRACTION * len(data):
        of = f"its {len(data):,}" if whole else f"the first {len(data):,}"
        raise InputError(
            f"{path} is not UTF-8 text: {replaced:,} of {of} bytes are not valid UTF-8. "
            f"Convert it first, e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix or '.txt'}`.",
            "not UTF-8")


# --- streaming the documents ----------------------------------------------------------------------

@dataclass
class Fragment:
    source: int  # index into plan.inputs
    text: str  # a piece of a document (never empty)
    doc_start: bool  # True on the first fragment of each document
    raw: bytes | None  # text.encode("utf-8") exactly, when it is at hand for free, else None
    consumed: int  # input bytes consumed since the previous fragment (skipped inputs' too)


class Meter:
    """Input bytes read, and how many of them have been reported on a fragment."""

    def __init__(self) -> None:
        self.read = 0
        self.reported = 0

    def take(self) -> int:
        n, self.reported = self.read - self.reported, self.read
        return n


def _text_pieces(path: Path, st: SourceStats, meter: Meter, block: int) -> Iterator[tuple[str, bool, bytes | None]]:
    """A text file as one document, in pieces of about ``block`` bytes, decoded incrementally (a
    character cut by a block's end is completed by the next); the BOM dropped; the replaced bytes counted.
    Whitespace before the first other character is held back, so a whitespace-only file gives nothing."""
    with open_regular(path) as f:
        want = max(block, SNIFF_BYTES)
        head = f.read(want)
        if not head:
            st.empty += 1
            raise EmptyInput(f"{path} is empty.")
        sniff(path, head, whole=len(head) >= os.fstat(f.fileno()).st_size)
        pending: list[tuple[str, bytes | None]] = []
        started, first, carry = False, True, b""

        def pieces() -> Iterator[bytes]:
            for i in range(0, len(head), block):
                yield head[i:i + block]
            while chunk := f.read(block):
                yield chunk
            yield b""  # the end: what is left is decoded as it is

        for piece in pieces():
            meter.read += len(piece)
            buf = carry + piece
            cut = _complete_prefix(buf) if piece else len(buf)
            buf, carry = buf[:cut], buf[cut:]
            if not buf:
                continue
            text, replaced = decode(buf)
            raw = buf if not replaced else None
            if first:
                first = False
                if text.startswith("\ufeff"):
                    text, raw = text[1:], (raw[len(_BOM):] if raw is not None else None)
            st.replaced_bytes += replaced
            if not text:
                continue
            doc_start = not started
            if not started:
                pending.append((text, raw))
                if not text.strip(WHITESPACE):
                    continue
                started = True
                text = "".join(t for t, _ in pending)
                raw = None if any(r is None for _, r in pending) else b"".join(r for _, r in pending)
                pending.clear()
                st.documents += 1
            st.characters += len(text)
            yield text, doc_start, raw
    if not started:
        st.empty += 1
        raise EmptyInput(f"{path} holds only whitespace.")


def _text_of_memory(text: str, st: SourceStats, meter: Meter, block: int) -> Iterator[tuple[str, bool, bytes | None]]:
    """A built-in or in-memory text as one document, in pieces of ``block`` characters."""
    if not text.strip(WHITESPACE):
        st.empty += 1
        meter.read += len(text.encode("utf-8", errors="surrogatepass"))
        return
    st.documents, st.characters = 1, len(text)
    for i in range(0, len(text), block):
        piece = text[i:i + block]
        try:
            raw = piece.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: counted as Python would store it
            raw = None
        meter.read += len(raw) if raw is not None else len(piece.encode("utf-8", errors="surrogatepass"))
        yield piece, i == 0, raw


def _pieces_of(plan: SourcePlan, index: int, stats: list[SourceStats], warnings: list[str], meter: Meter,
               block: int) -> Iterator[tuple[str, bool, bytes | None]]:
    inp, st = plan.inputs[index], stats[index]
    if inp.kind in ("builtin", "memory"):
        return _text_of_memory(plan.text or "", st, meter, block)
    if inp.kind == "text":
        return _text_pieces(Path(inp.path), st, meter, block)
    from gpttui.core import sources_records as records

    if inp.kind == "jsonl":
        return records.jsonl_documents(Path(inp.path), plan.text_field, st, warnings, meter)
    if inp.kind == "parquet":
        return records.parquet_documents(Path(inp.path), plan.text_field, st, meter, block)
    return records.dataset_documents(plan, index, st, meter, block)


def iter_fragments(plan: SourcePlan, stats: list[SourceStats], warnings: list[str],
                   block_bytes: int = 4 << 20) -> Iterator[Fragment]:
    """The documents of a plan, in input order, as fragments of about ``block_bytes``.

    ``stats`` (pass []) gets one :class:`SourceStats` per input, appended when the input is opened and
    filled as it is read (not the token counts). One fragment is held back until the next is read, so
    the last one also tells the bytes read after it: ``consumed`` sums to ``plan.total_bytes`` (as long
    as no file changed since it was planned). ``warnings`` gets lines for the user. An input of a
    folder that gives nothing (binary, not UTF-8, unreadable, no usable record) is skipped with a warning;
    any other source's problem, or a folder left with nothing, raises DataError."""
    block = max(1, int(block_bytes))
    carry = 0  # bytes of inputs that gave no fragment (left out, or their tails), told on the next one
    held: Fragment | None = None  # one fragment held back: the last one also tells the bytes after it
    skipped: list[str] = []
    for index, inp in enumerate(plan.inputs):
        st = SourceStats(inp.name, inp.kind, inp.size)
        stats.append(st)
        meter = Meter()
        own = False  # a fragment of this input has gone out
        try:
            for text, doc_start, raw in _pieces_of(plan, index, stats, warnings, meter, block):
                fragment = Fragment(index, text, doc_start, raw, meter.take() + carry)
                carry, own = 0, True
                if held is not None:
                    yield held
                held = fragment
        except Cancelled:
            raise
        except (DataError, OSError) as exc:
            message = _message(inp, exc)
            if plan.kind != "folder" or own:
                raise DataError(message) from None
            if not isinstance(exc, EmptyInput):
                detail = (exc.strerror or str(exc)) if isinstance(exc, OSError) else message
                st.skipped = getattr(exc, "reason", None) or detail
                skipped.append(f"{inp.name}: {detail}")
                warnings.append(f"skipped {inp.name}: {detail}")
        size = plan.inputs[index].size  # a Hub dataset's is known once loaded
        carry += max(meter.read - meter.reported, size - meter.reported, 0)
    if plan.kind == "folder" and held is None:
        raise DataError(_nothing_usable(plan, skipped))
    replaced = sum(s.replaced_bytes for s in stats)
    if replaced:
        warnings.append(f"{replaced:,} bytes that are not valid UTF-8 were replaced with U+FFFD.")
    if held is not None:
        held.consumed += carry
        yield held


def _message(inp: InputFile, exc: Exception) -> str:
    if isinstance(exc, PermissionError):
        return f"{inp.path} cannot be read (permission denied)."
    if isinstance(exc, OSError):
        return f"{inp.path} cannot be read: {exc.strerror or exc}."
    return str(exc)


def _nothing_usable(plan: SourcePlan, skipped: list[str]) -> str:
    kinds = [k for k, test in ((".txt/.md", "text"), (".jsonl", "jsonl"), (".parquet", "parquet"))
             if any(i.kind == test for i in plan.inputs)]
    message = (f"{Path(plan.spec).expanduser()} has {len(plan.inputs)} {'/'.join(kinds)} files "
               "but none holds usable text.")
    if skipped:
        message += " " + "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return message


# --- the whole text -------------------------------------------------------------------------------

@dataclass
class Corpus:
    source: str
    label: str
    text: str
    n_files: int = 1
    replaced_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # a folder's joined files, relative to it, in order
    sources: list[SourceStats] = field(default_factory=list)  # what each input gave

    @property
    def sha256(self) -> str:
        if not hasattr(self, "_sha"):
            self._sha = hashlib.sha256(self.text.encode("utf-8", errors="surrogatepass")).hexdigest()
        return self._sha


def read_corpus(spec: str | os.PathLike, text_field: str = "text", split: str = "train") -> Corpus:
    """A whole corpus in memory: its documents joined with <|endoftext|>. For small corpora; big ones
    go through :func:`iter_fragments` into the sharded tokenizer."""
    plan = plan_source(spec, text_field, split)
    stats: list[SourceStats] = []
    warnings: list[str] = []
    parts: list[str] = []
    for fragment in iter_fragments(plan, stats, warnings):
        if fragment.doc_start and parts:
            parts.append(ENDOFTEXT)
        parts.append(fragment.text)
    replaced = sum(s.replaced_bytes for s in stats)
    corpus = Corpus(plan.spec, plan.label, "".join(parts), 1, replaced, warnings, sources=stats)
    if plan.kind == "folder":
        used = [s.name for s in stats if s.documents]
        corpus.label = f"{Path(plan.spec).expanduser().name}/ ({len(used)} files)"
        corpus.n_files, corpus.files = len(used), used
    return corpus


__all__ = [
    "BUILTIN_SOURCES", "TEXT_SUFFIXES", "RECORD_SUFFIXES", "INPUT_SUFFIXES", "MAX_REPLACED_FRACTION",
    "InputFile", "SourcePlan", "Fragment", "Corpus", "plan_source", "plan_memory", "iter_fragments", "read_corpus",
]
