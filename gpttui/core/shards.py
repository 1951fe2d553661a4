"""Streaming, sharded tokenization: a corpus of any size becomes token shards on disk, read through memory maps.

The corpus text is never held whole. :func:`gpttui.core.sources.iter_fragments` streams the documents; the
chunker here cuts them into tasks of about a megabyte at points where cutting cannot change a token; a pool of
worker processes (one per core) encodes the tasks; the writer appends their tokens, in order, to shard files of
``shard_tokens`` tokens (uint16, or uint32 for vocabularies above 65,536) in the cache directory.

- **Identity.** A build is keyed by the inputs' cheap fingerprint (paths, sizes, modification times, options) and
  the tokenizer, so reopening a tokenized corpus stats its files and reads no text. The text's sha256 (the
  identity checkpoints record) is computed once, while streaming, and kept in the manifest.
- **Atomic and resumable.** A shard is written under a temporary name and renamed when whole; ``partial.json``
  records the finished shards; ``manifest.json``, written last, marks a build complete. An interrupted build
  (cancel, Ctrl+C, a full disk) keeps its finished shards and the next build re-reads, without re-encoding, the
  text they hold.
- **Book-exact.** Every cut is at a safe point (see :func:`chunk_boundaries`), so the tokens equal one
  ``encode`` of the whole text; an index of (character, token) offsets every ~64k characters lets the book's
  split at a character be re-encoded locally from the shards' own tokens.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from gpttui.core import paths
from gpttui.core.corpus_types import Cancelled, SourceStats, TokenizeProgress
from gpttui.core.errors import DataError
from gpttui.core.fileio import atomic_write
from gpttui.core.tokenizer import ENDOFTEXT, TOKENIZERS, get_tokenizer
from gpttui.core.tokenstream import TokenStream

VERSION = 1
INDEX_CHARS = 1 << 16  # an index row at least every this many characters (the split re-encodes one such piece)
TASK_CHARS = 1 << 20  # characters of text per worker task
SHARD_TOKENS = 1 << 26  # tokens per shard file (128 MiB as uint16)
POOL_MIN_BYTES = 8 << 20  # smaller corpora are encoded in this process: starting workers would cost more
FORCED_CUT_CHARS = 1 << 25  # a document with no safe cut in this many characters is cut anyway (and noted)
_SEP_BYTES = ENDOFTEXT.encode()
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

ProgressFn = Callable[[TokenizeProgress], None]


# --- where text may be cut -----------------------------------------------------------------------------------

def _cut_ok(text: str, i: int) -> bool:
    """Whether ``text`` can be cut just before the newline at ``i``: it is followed by a non-space character
    that does not start <|endoftext|> (see :func:`chunk_boundaries`)."""
    return i + 1 < len(text) and not text[i + 1].isspace() and not text.startswith(ENDOFTEXT, i + 1)


def chunk_boundaries(text: str, target: int = INDEX_CHARS) -> list[int]:
    """Character offsets (0 ... len) at which the text can be cut without changing its tokens:
    just before a newline that is followed by a non-space character.

    GPT-2's pre-tokenizer splits a whitespace run that precedes a non-space character before the
    run's last character (``\\s+(?!\\S)`` backs off by one), and only a literal space can join the
    word after it. So a cut before such a newline falls on a piece boundary, and encoding the two
    sides separately gives exactly the tokens of the whole text. Not before <|endoftext|>: special
    tokens are split off first, so for the pre-tokenizer the text ends there (a cut in
    "\\n\\n<|endoftext|>" would split 628). A cut right before or after <|endoftext|> itself is safe."""
    bounds = [0]
    n = len(text)
    pos = target
    while pos < n:
        i = text.find("\n", pos)
        while i != -1 and not _cut_ok(text, i):
            i = text.find("\n", i + 1)
        if i == -1:
            break
        bounds.append(i)
        pos = i + target
    bounds.append(n)
    return bounds


def last_safe_cut(text: str, lo: int = 1) -> int:
    """The largest safe cut in ``text`` after ``lo`` (:func:`chunk_boundaries`' rule; failing that, before a
    space between two non-space characters, which also starts a new piece), or -1."""
    i = text.rfind("\n", lo, len(text) - 1)
    while i >= lo:
        if _cut_ok(text, i):
            return i
        i = text.rfind("\n", lo, i)
    i = text.rfind(" ", lo, len(text) - 1)
    while i >= lo:
        if not text[i - 1].isspace() and _cut_ok(text, i):
            return i
        i = text.rfind(" ", lo, i)
    return -1


def _cut_near(text: str, want: int) -> int:
    """A safe cut close to ``want`` characters: the last one before it if that keeps at least half, else the
    first one after it; -1 when the text has none."""
    cut = last_safe_cut(text[:want + 1])
    if cut >= want // 2:
        return cut
    i = text.find("\n", want)
    while i != -1 and not _cut_ok(text, i):
        i = text.find("\n", i + 1)
    if i != -1:
        return i
    i = text.find(" ", want)
    while i != -1 and not (not text[i - 1].isspace() and _cut_ok(text, i)):
        i = text.find(" ", i + 1)
    return i if i != -1 else cut


# --- the worker's side ---------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_name: str) -> None:
    """Each worker process loads its own tokenizer (found offline where the parent found it) and leaves
    Ctrl+C to the parent, which cancels the build cleanly."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["tokenizer"] = get_tokenizer(tokenizer_name, download=False)


def _encode(tokenizer: Any, text: str, dtype: np.dtype) -> np.ndarray:
    encode_array = getattr(tokenizer, "encode_array", None)
    if encode_array is not None:
        return encode_array(text, dtype)
    return np.asarray(tokenizer.encode(text), dtype=dtype)


def encode_task(segments: list[tuple[int, str]], dtype: str, tokenizer: Any = None
                ) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, int]]]:
    """Encode one task: ``segments`` of (input index, text), in order.

    Returns the tokens (raw bytes of ``dtype``), the tokens per input, and index marks (characters, tokens
    from the task's start) at least :data:`INDEX_CHARS` apart, each a safe cut."""
    tokenizer = tokenizer or _WORKER["tokenizer"]
    kind = np.dtype(dtype)
    arrays: list[np.ndarray] = []
    per_input: dict[int, int] = {}
    marks: list[tuple[int, int]] = []
    chars = tokens = last = 0
    for source, text in segments:
        bounds = chunk_boundaries(text, INDEX_CHARS) if len(text) > INDEX_CHARS else [0, len(text)]
        for a, b in zip(bounds, bounds[1:]):
            ids = _encode(tokenizer, text[a:b], kind)
            arrays.append(ids)
            per_input[source] = per_input.get(source, 0) + len(ids)
            chars, tokens = chars + b - a, tokens + len(ids)
            if chars - last >= INDEX_CHARS:
                marks.append((chars, tokens))
                last = chars
    data = np.concatenate(arrays).tobytes() if arrays else b""
    return data, sorted(per_input.items()), marks


# --- the chunker ---------------------------------------------------------------------------------------------

@dataclass
class _Task:
    segments: list[tuple[int, str]]
    chars: int
    read_bytes: int  # input bytes read when this task was cut (for progress)


@dataclass
class _Reading:
    """What streaming the text found besides the tasks: its sha256, the input bytes read, forced cuts."""

    sha: Any = field(default_factory=hashlib.sha256)
    read_bytes: int = 0
    forced_cuts: int = 0


def _tasks(fragments: Iterator[Any], reading: _Reading, task_chars: int | None = None) -> Iterator[_Task]:
    """Documents joined by <|endoftext|>, cut into tasks of about ``task_chars`` characters: between
    documents (right before a separator, which is safe), or inside a long one at :func:`last_safe_cut`."""
    task_chars = task_chars or TASK_CHARS
    pending: list[tuple[int, str]] = []
    pending_chars = 0
    source, buf, buf_chars = 0, [], 0
    first = True

    def close_document() -> None:
        nonlocal buf, buf_chars, pending_chars
        if buf:
            pending.append((source, "".join(buf)))
            pending_chars += buf_chars
        buf, buf_chars = [], 0

    def take() -> _Task:
        nonlocal pending, pending_chars
        task = _Task(pending, pending_chars, reading.read_bytes)
        pending, pending_chars = [], 0
        return task

    for frag in fragments:
        reading.read_bytes += frag.consumed
        if frag.doc_start:
            close_document()
            if pending_chars >= task_chars:
                yield take()
            source = frag.source
            if not first:
                buf, buf_chars = [ENDOFTEXT], len(ENDOFTEXT)
                reading.sha.update(_SEP_BYTES)
            first = False
        reading.sha.update(frag.raw if frag.raw is not None else frag.text.encode("utf-8", "surrogatepass"))
        buf.append(frag.text)
        buf_chars += len(frag.text)
        while pending_chars + buf_chars >= task_chars and buf_chars >= task_chars // 2:
            text = "".join(buf) if len(buf) > 1 else buf[0]
            cut = _cut_near(text, max(task_chars - pending_chars, task_chars // 2))
            if cut < 0 and len(text) >= FORCED_CUT_CHARS:
                cut = task_chars
                reading.forced_cuts += 1
            if cut <= 0:
                buf, buf_chars = [text], len(text)
                break  # no safe cut yet: wait for more of the document
            pending.append((source, text[:cut]))
            pending_chars += cut
            buf, buf_chars = [text[cut:]], len(text) - cut
            yield take()
    close_document()
    if pending:
        yield take()


# --- the corpus on disk --------------------------------------------------------------------------------------

def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def cache_key(fingerprint: dict, tokenizer_name: str) -> str:
    blob = json.dumps({"version": VERSION, "tokenizer": tokenizer_name, "inputs": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class ShardedCorpus:
    """A tokenized corpus: its shards as one :class:`TokenStream`, the (character, token) index, and the
    manifest's record (sha256 of the text, characters, per-input counts, notes)."""

    directory: Path
    manifest: dict
    tokens: TokenStream
    char_offsets: np.ndarray  # index rows: safe cuts, in characters (first 0, last the text's length)
    token_offsets: np.ndarray  # ... and in tokens
    from_cache: bool = False

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def characters(self) -> int:
        return int(self.manifest["characters"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["tokens"])

    @property
    def sources(self) -> list[SourceStats]:
        return [SourceStats.from_dict(d) for d in self.manifest.get("sources", [])]

    @property
    def warnings(self) -> list[str]:
        return list(self.manifest.get("warnings", []))


def _load(directory: Path, key: str) -> ShardedCorpus | None:
    """The complete build in ``directory``, or None when there is none or it does not add up (damaged)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("version") != VERSION or manifest.get("key") != key:
            return None
        kind = np.dtype(manifest["dtype"])
        parts = []
        for shard in manifest["shards"]:
            path = directory / shard["file"]
            if path.stat().st_size != int(shard["tokens"]) * kind.itemsize:
                return None
            if shard["tokens"]:
                parts.append(np.memmap(path, dtype=kind, mode="r"))
        index = np.load(directory / "index.npy")
        tokens = TokenStream(parts, kind)
        if (index.ndim != 2 or index.shape[1] != 2 or index[0].tolist() != [0, 0]
                or index[-1].tolist() != [manifest["characters"], len(tokens)]
                or len(tokens) != manifest["tokens"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ShardedCorpus(directory, manifest, tokens, index[:, 0].copy(), index[:, 1].copy(), True)


def _directory(key: str, cache_dir: Path | None) -> Path:
    return (cache_dir or paths.token_cache_dir()) / key


@contextmanager
def _build_lock(directory: Path):
    """One builder per corpus at a time (the app and a background run may open the same one)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_shards(plan: Any, tokenizer_name: str, cache_dir: Path | None = None) -> ShardedCorpus | None:
    """The tokenized corpus of ``plan`` if it is in the cache: stats the inputs, reads no text."""
    key = cache_key(plan.fingerprint(), tokenizer_name)
    return _load(_directory(key, cache_dir), key)


def wait_for_shards(plan: Any, tokenizer_name: str, poll: float = 0.5, cache_dir: Path | None = None) -> None:
    """Wait until another process (this machine's first DDP rank) has built ``plan``'s shards. Its launcher
    (torchrun) ends this process if that one fails, so there is no time limit here."""
    while open_shards(plan, tokenizer_name, cache_dir) is None:
        time.sleep(poll)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Writer:
    """Appends tasks' tokens to shard files, in order; keeps ``partial.json`` up to date for resuming."""

    def __init__(self, directory: Path, key: str, dtype: np.dtype, shard_tokens: int, resume: dict | None) -> None:
        self.directory, self.key, self.dtype, self.shard_tokens = directory, key, dtype, shard_tokens
        r = resume or {}
        self.shards: list[dict] = list(r.get("shards", []))
        self.tasks = int(r.get("tasks", 0))
        self.chars = int(r.get("characters", 0))
        self.tokens = int(r.get("tokens", 0))
        self.index: list[list[int]] = [list(x) for x in r.get("index", [[0, 0]])]
        self.per_input: dict[int, int] = {int(k): v for k, v in r.get("per_input", {}).items()}
        self.resumed_tasks = self.tasks
        self.owner: dict = {}  # what the build is of (see _owner), so a stale one can be found and removed
        self._file = None
        self._open_tokens = 0

    @property
    def _tmp(self) -> Path:
        return self.directory / f"shard-{len(self.shards):05d}.bin.tmp"

    def write(self, task: _Task, result: tuple[bytes, list, list]) -> bool:
        """Append a task's tokens; True when that finished a shard."""
        data, per_input, marks = result
        if self._file is None:
            self._file = open(self._tmp, "wb")
            self._open_tokens = 0
        self._file.write(data)
        n = len(data) // self.dtype.itemsize
        for c, t in marks:
            if c < task.chars:
                self.index.append([self.chars + c, self.tokens + t])
        self.chars += task.chars
        self.tokens += n
        self._open_tokens += n
        self.index.append([self.chars, self.tokens])
        for source, count in per_input:
            self.per_input[source] = self.per_input.get(source, 0) + count
        self.tasks += 1
        if self._open_tokens >= self.shard_tokens:
            self.close_shard()
            return True
        return False

    def close_shard(self) -> None:
        """Put the open shard in place under its final name and record it (the point a resume restarts from)."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        name = f"shard-{len(self.shards):05d}.bin"
        os.replace(self._tmp, self.directory / name)
        self.shards.append({"file": name, "tokens": self._open_tokens})
        state = {"key": self.key, "owner": self.owner, "shards": self.shards, "tasks": self.tasks, "characters": self.chars,
                 "tokens": self.tokens, "index": self.index, "per_input": self.per_input}
        atomic_write(self.directory / "partial.json", json.dumps(state).encode(), durable=False)

    def discard_open(self) -> None:
        """Remove the unfinished shard (after a failure); finished ones stay for the next try."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass

    def kept_bytes(self) -> int:
        return sum(int(s["tokens"]) for s in self.shards) * self.dtype.itemsize


def _read_partial(directory: Path, key: str) -> dict | None:
    """What an interrupted build finished, if its shards are all there."""
    try:
        state = json.loads((directory / "partial.json").read_text(encoding="utf-8"))
        if state.get("key") != key:
            return None
        itemsize = None
        for shard in state["shards"]:
            size = (directory / shard["file"]).stat().st_size
            itemsize = itemsize or (size // max(1, int(shard["tokens"])))
            if size != int(shard["tokens"]) * itemsize:
                return None
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _clean(directory: Path) -> None:
    """Empty a build directory of anything but a usable partial build's files."""
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def _space_message(exc: OSError, directory: Path, writer: _Writer) -> str:
    why = exc.strerror or str(exc)
    kept = writer.kept_bytes()
    keep = (f" {len(writer.shards)} finished shard(s) ({kept / 1e6:,.1f} MB) are kept in {directory}, so the next "
            f"try resumes after them; delete that folder to free the space." if writer.shards else "")
    return (f"Could not write the token shards in {directory}: {why}. The unfinished shard was removed.{keep} "
            f"Free some space (GPT-2 tokens take about half the text's size) or set GPTTUI_HOME to a disk "
            f"with room.")


def _start_resource_tracker() -> None:
    """multiprocessing's resource tracker, started with a stderr that has a file descriptor. It hands
    ``sys.stderr.fileno()`` to its process; where stderr is an object without one (a TUI's print capture, a
    notebook) starting the pool failed ("bad value(s) in fds_to_keep")."""
    import sys
    from multiprocessing import resource_tracker

    try:
        if sys.stderr is not None and sys.stderr.fileno() >= 0:
            return
    except (AttributeError, OSError, ValueError):
        pass
    captured, fallback = sys.stderr, None
    try:
        if sys.__stderr__ is not None:
            sys.stderr = sys.__stderr__
        else:
            sys.stderr = fallback = open(os.devnull, "w")
        resource_tracker.ensure_running()
    finally:
        sys.stderr = captured
        if fallback is not None:
            fallback.close()


@contextmanager
def _plain_main():
    """Spawned processes re-run the parent's ``__main__`` script (``<stdin>``, a notebook, a user's script
    without a ``__name__`` guard: each fails or recurses). The workers need nothing from it, so they are
    started while ``__main__`` is an empty module."""
    import sys
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class _Encoder:
    """Encodes tasks in order: in this process, or on a pool of worker processes with a bounded number of
    tasks in flight (so memory stays flat however big the corpus)."""

    def __init__(self, tokenizer: Any, dtype: np.dtype, workers: int) -> None:
        self.tokenizer, self.dtype, self.workers = tokenizer, dtype.name, workers
        self.pool: ProcessPoolExecutor | None = None
        self.inflight: deque[tuple[_Task, Future]] = deque()
        if workers > 0:
            import multiprocessing

            _start_resource_tracker()  # before the pool: its queues' semaphores start the tracker
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(tokenizer.name,))
            with _plain_main():  # start them all now (one per submit), none importing the caller's script
                started = [self.pool.submit(int) for _ in range(workers)]
            for future in started:
                future.result()

    def submit(self, task: _Task) -> Iterator[tuple[_Task, tuple]]:
        """Queue ``task``; yield the results that are due, oldest first."""
        if self.pool is None:
            yield task, encode_task(task.segments, self.dtype, self.tokenizer)
            return
        self.inflight.append((task, self.pool.submit(encode_task, task.segments, self.dtype)))
        while len(self.inflight) > 2 * self.workers:
            yield self._next()

    def drain(self) -> Iterator[tuple[_Task, tuple]]:
        while self.inflight:
            yield self._next()

    def _next(self) -> tuple[_Task, tuple]:
        task, future = self.inflight.popleft()
        return task, future.result()

    def close(self) -> None:
        if self.pool is not None:
            for _, future in self.inflight:
                future.cancel()
            self.inflight.clear()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def build_shards(plan: Any, tokenizer: Any, *, workers: int | None = None, progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None, cache_dir: Path | None = None,
                 shard_tokens: int = SHARD_TOKENS, use_cache: bool = True) -> ShardedCorpus:
    """Tokenize ``plan``'s text into shards (or open them when already built). See the module docstring.

    ``workers``: worker processes; None picks one per core for corpora of :data:`POOL_MIN_BYTES` or more (and
    this process for smaller ones), 0 always this process. ``cancel`` stops the build at the next task with
    :class:`Cancelled`, keeping finished shards. ``use_cache=False`` builds afresh in a temporary folder and
    returns the tokens in memory."""
    key = cache_key(plan.fingerprint(), tokenizer.name)
    if not use_cache:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gpttui-tokens-") as tmp:
            built = build_shards(plan, tokenizer, workers=workers, progress=progress, cancel=cancel,
                                 cache_dir=Path(tmp), shard_tokens=shard_tokens)
            built.tokens = TokenStream([np.asarray(built.tokens)], built.tokens.dtype)  # off the files
            built.from_cache = False
            return built
    directory = _directory(key, cache_dir)
    done = _load(directory, key)
    if done is not None:
        return done
    with _build_lock(directory):
        done = _load(directory, key)  # another process may have built it while this one waited
        if done is not None:
            return done
        resume = _read_partial(directory, key)
        if resume is None:
            _clean(directory)
        else:
            for stray in directory.glob("*.tmp"):
                stray.unlink()
        return _build(plan, tokenizer, key, directory, resume, workers, progress, cancel, shard_tokens)


def _build(plan: Any, tokenizer: Any, key: str, directory: Path, resume: dict | None, workers: int | None,
           progress: ProgressFn | None, cancel: threading.Event | None, shard_tokens: int) -> ShardedCorpus:
    from gpttui.core.sources import iter_fragments

    dtype = token_dtype(tokenizer.vocab_size)
    if workers is None:
        workers = default_workers() if plan.total_bytes >= POOL_MIN_BYTES else 0
    if workers == 1 or tokenizer.name not in TOKENIZERS:
        workers = 0  # one worker is this process without the start-up
    stats: list[SourceStats] = []
    warnings: list[str] = []
    reading = _Reading()
    writer = _Writer(directory, key, dtype, shard_tokens, resume)
    writer.owner = _owner(plan, tokenizer.name)
    started = time.monotonic()
    last_report = 0.0

    def report(phase: str, force: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress is not None and (force or now - last_report >= 0.1):
            last_report = now
            progress(TokenizeProgress(phase, reading.read_bytes, plan.total_bytes, writer.tokens, now - started))

    report("reading", force=True)
    encoder = _Encoder(tokenizer, dtype, workers) if workers else _Encoder(tokenizer, dtype, 0)
    try:
        for n, task in enumerate(_tasks(iter_fragments(plan, stats, warnings), reading)):
            if cancel is not None and cancel.is_set():
                raise Cancelled(_cancel_message(directory, writer))
            if n < writer.resumed_tasks:  # finished by an interrupted build: its tokens are in the shards
                report("reading")
                continue
            if n and n == writer.resumed_tasks:
                report("reading", force=True)  # where the resumed build starts encoding
            for done_task, result in encoder.submit(task):
                report("tokenizing", force=writer.write(done_task, result))  # always when a shard is done
        for done_task, result in encoder.drain():
            writer.write(done_task, result)
        writer.close_shard()
    except OSError as exc:
        writer.discard_open()
        if exc.errno in _NO_SPACE:
            raise DataError(_space_message(exc, directory, writer)) from None
        where = exc.filename or directory  # an input that went away, or the cache folder
        raise DataError(f"Tokenizing stopped: {where}: {exc.strerror or exc}. The shards finished so far are kept "
                        f"in {directory} for the next try.") from None
    except (Cancelled, KeyboardInterrupt):
        writer.discard_open()
        raise
    except BaseException as exc:
        writer.discard_open()
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(exc, BrokenProcessPool):
            raise DataError("A tokenizer worker process died (out of memory, or killed). Finished shards are "
                            f"kept in {directory}; try again, or with fewer workers.") from None
        if isinstance(exc, DataError) and not writer.shards:
            shutil.rmtree(directory, ignore_errors=True)  # bad input: nothing worth keeping
        raise
    finally:
        encoder.close()
    if writer.tokens == 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise DataError(f"{plan.spec} holds no text to tokenize.")
    for i, count in writer.per_input.items():
        if 0 <= i < len(stats):
            stats[i].tokens = count
    if reading.forced_cuts:
        warnings.append(f"{reading.forced_cuts} document(s) ran {FORCED_CUT_CHARS:,} characters without a newline "
                        "or space to cut at, and were cut anyway: their tokens there may differ by one from "
                        "encoding the whole text.")
    manifest = {
        "version": VERSION, "key": key, "fingerprint": plan.fingerprint(), "tokenizer": tokenizer.name,
        "dtype": dtype.name, "spec": plan.spec, "label": plan.label, "kind": plan.kind,
        "sha256": reading.sha.hexdigest(), "characters": writer.chars, "tokens": writer.tokens,
        "shards": writer.shards, "sources": [s.to_dict() for s in stats], "warnings": warnings,
        "seconds": round(time.monotonic() - started, 3), "workers": workers, "owner": writer.owner,
    }
    try:
        atomic_write(directory / "index.npy", lambda f: np.save(f, np.asarray(writer.index, dtype=np.int64)),
                     durable=False)
        atomic_write(directory / "manifest.json", json.dumps(manifest, indent=1).encode(), durable=False)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise DataError(_space_message(exc, directory, writer)) from None
        raise
    try:
        (directory / "partial.json").unlink()
    except FileNotFoundError:
        pass
    report("done", force=True)
    _prune(directory, writer.owner)
    built = _load(directory, key)
    if built is None:
        raise DataError(f"The token shards just written in {directory} do not read back; delete that folder and "
                        "try again.")
    built.from_cache = False
    return built


def _owner(plan: Any, tokenizer_name: str) -> dict:
    """What a build is of, apart from the inputs' sizes and times: its source, options and tokenizer."""
    if plan.kind == "memory":
        return {}
    return {"spec": os.path.abspath(os.path.expanduser(plan.spec)) if plan.kind in ("file", "folder") else plan.spec,
            "tokenizer": tokenizer_name, "text_field": plan.text_field, "split": plan.split}


def _prune(keep: Path, owner: dict) -> None:
    """Remove the token cache's older builds of the same source (its files have changed since: they can never
    be opened again), and the pre-shards cache files. Caches only: nothing the user made."""
    root = keep.parent
    for old in list(root.glob("*.tokens.npy")) + list(root.glob("*.chunks.npy")):
        old.unlink(missing_ok=True)
    if not owner:
        return
    for entry in root.iterdir():
        if entry == keep or not entry.is_dir():
            continue
        for name in ("manifest.json", "partial.json"):
            try:
                if json.loads((entry / name).read_text(encoding="utf-8")).get("owner") == owner:
                    shutil.rmtree(entry, ignore_errors=True)
                    (root / f"{entry.name}.lock").unlink(missing_ok=True)
                break
            except (OSError, ValueError, AttributeError):
                continue


def _cancel_message(directory: Path, writer: _Writer) -> str:
    if not writer.shards:
        return "Tokenizing was cancelled."
    return (f"Tokenizing was cancelled; the {len(writer.shards)} shard(s) done ({writer.tokens:,} tokens) are kept "
            f"and the next try resumes after them.")


__all__ = ["chunk_boundaries", "last_safe_cut", "encode_task", "ShardedCorpus", "build_shards", "open_shards",
           "cache_key", "token_dtype", "default_workers", "wait_for_shards", "INDEX_CHARS", "SHARD_TOKENS"]
