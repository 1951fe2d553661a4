"""Tokenizers: GPT-2's BPE through tiktoken (found offline when possible), and raw UTF-8 bytes.

The GPT-2 files are looked for, in order, in:
  1. tiktoken's own cache (``TIKTOKEN_CACHE_DIR`` / ``DATA_GYM_CACHE_DIR`` / the temp dir);
  2. gpttui's data dir (``gpttui tokenizer import DIR`` copies them there);
  3. the directory named by ``GPTTUI_GPT2_BPE_DIR``;
  4. tiktoken's normal download.
Every source is checked against tiktoken's sha256 hashes of OpenAI's files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from gpttui.core import paths
from gpttui.core.errors import TokenizerError
from gpttui.core.fileio import atomic_write

ENDOFTEXT = "<|endoftext|>"
BPE_DIR_ENV = "GPTTUI_GPT2_BPE_DIR"
GPT2_FILES = {
    # file name -> (OpenAI's URL, as tiktoken fetches it; sha256)
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}
TOKENIZERS = {
    "gpt2": "GPT-2 BPE (50,257 tokens), as the book uses",
    "bytes": "UTF-8 bytes (257 tokens), needs no files",
}
# Tokenizer name -> its vocabulary size (the sizes are fixed).
TOKENIZER_VOCAB: dict[str, int] = {"bytes": 257, "gpt2": 50257}


def infer_tokenizer(vocab_size: int) -> str | None:
    """The tokenizer a model with ``vocab_size`` tokens was trained with: ``gpt2`` from 50257 (padded sizes
    such as 50304 included), ``bytes`` from 257, ``None`` below (no gpttui tokenizer fits)."""
    if vocab_size >= TOKENIZER_VOCAB["gpt2"]:
        return "gpt2"
    if vocab_size >= TOKENIZER_VOCAB["bytes"]:
        return "bytes"
    return None


def tokenizer_for(source: Any) -> str:
    """The tokenizer a checkpoint needs: the one its meta.json records, else the one its vocabulary
    size fits (:func:`infer_tokenizer`). ``source`` is a :class:`~gpttui.core.meta.CheckpointMeta`, a
    raw meta.json dict, a :class:`~gpttui.core.config.GPTConfig` (or its dict), or a vocabulary size.
    :class:`TokenizerError` when no tokenizer fits the vocabulary."""
    if isinstance(source, Mapping):
        recorded, config = source.get("tokenizer"), source.get("model_config", source)
        vocab = config.get("vocab_size") if isinstance(config, Mapping) else getattr(config, "vocab_size", None)
    elif isinstance(source, int) and not isinstance(source, bool):
        recorded, vocab = None, source
    else:
        recorded = getattr(source, "tokenizer", None)
        vocab = getattr(getattr(source, "model_config", source), "vocab_size", None)
    if isinstance(recorded, str) and recorded in TOKENIZERS:
        return recorded
    name = infer_tokenizer(vocab) if isinstance(vocab, int) and not isinstance(vocab, bool) else None
    if name is None:
        raise TokenizerError(f"A vocabulary of {vocab} tokens fits no gpttui tokenizer "
                             f"({', '.join(f'{k} {v}' for k, v in TOKENIZER_VOCAB.items())}).")
    return name


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int
    eot_text: str

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str], num_threads: int = ...) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...

    def token_bytes(self, token: int) -> bytes: ...


class GPT2Tokenizer:
    """tiktoken's ``gpt2`` encoding; ``<|endoftext|>`` in text is encoded as the special id (as the
    book does with ``allowed_special={"<|endoftext|>"}``)."""

    name = "gpt2"
    eot_text = ENDOFTEXT

    def __init__(self, encoding) -> None:
        self._enc = encoding
        self.vocab_size: int = encoding.n_vocab
        self.eot_id: int = encoding.eot_token
        self.source = ""

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special={ENDOFTEXT})

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        return self._enc.encode_batch(list(texts), num_threads=num_threads, allowed_special={ENDOFTEXT})

    def encode_array(self, text: str, dtype: Any = "uint16") -> Any:
        """``encode(text)`` as a NumPy array of ``dtype``, without a Python list in between."""
        return self._enc.encode_to_numpy(text, allowed_special={ENDOFTEXT}).astype(dtype, copy=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))

    def token_bytes(self, token: int) -> bytes:
        return self._enc.decode_single_token_bytes(token)


class ByteTokenizer:
    """UTF-8 bytes (ids 0-255) plus an end-of-text id 256. Needs no files; good for character-level
    runs and offline demos."""

    name = "bytes"
    eot_text = ENDOFTEXT
    vocab_size = 257
    eot_id = 256
    source = "built in"

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        parts = text.split(ENDOFTEXT)
        for i, part in enumerate(parts):
            if i:
                ids.append(self.eot_id)
            ids.extend(part.encode("utf-8"))
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str, dtype: Any = "uint16") -> Any:
        """``encode(text)`` as a NumPy array of ``dtype``."""
        import numpy as np

        parts = text.split(ENDOFTEXT)
        arrays = []
        for i, part in enumerate(parts):
            if i:
                arrays.append(np.array([self.eot_id], dtype=dtype))
            arrays.append(np.frombuffer(part.encode("utf-8"), dtype=np.uint8).astype(dtype))
        return np.concatenate(arrays)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        out = bytearray()
        for i in ids:
            out += ENDOFTEXT.encode() if i == self.eot_id else bytes([i])
        return bytes(out)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return ENDOFTEXT.encode() if token == self.eot_id else bytes([token])


# --- finding the GPT-2 files ---------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tiktoken_cache_dir() -> str | None:
    """tiktoken's cache directory, decided as tiktoken decides it (None when caching is off)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        d = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        d = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        d = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return d or None


def _tiktoken_cached_files() -> dict[str, Path] | None:
    cache = _tiktoken_cache_dir()
    if not cache:
        return None
    found = {}
    for name, (url, _) in GPT2_FILES.items():
        path = Path(cache) / hashlib.sha1(url.encode()).hexdigest()
        if not path.is_file():
            return None
        found[name] = path
    return found


def gpt2_data_dir() -> Path:
    """Where ``gpttui tokenizer import`` puts encoder.json and vocab.bpe."""
    return paths.tokenizers_dir() / "gpt2"


def _check_dir(directory: Path) -> dict[str, Path]:
    """The two files in ``directory``, hash-checked; raises TokenizerError naming what is wrong."""
    found = {}
    for name, (_, digest) in GPT2_FILES.items():
        path = directory / name
        if not path.is_file():
            raise TokenizerError(f"{path} is missing.")
        if _sha256(path.read_bytes()) != digest:
            raise TokenizerError(f"{path} is not OpenAI's GPT-2 {name} (sha256 mismatch).")
        found[name] = path
    return found


def offline_help() -> str:
    return (
        "The GPT-2 tokenizer needs OpenAI's two files, encoder.json and vocab.bpe, and they could not "
        "be found or downloaded.\n"
        "  - Online: run gpttui once with network access; tiktoken downloads and caches them.\n"
        "  - Offline: copy encoder.json and vocab.bpe (from "
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/) into a directory, then run\n"
        "      gpttui tokenizer import DIR\n"
        f"    (copies them to {gpt2_data_dir()}), or set {BPE_DIR_ENV}=DIR.\n"
        "  - Or use the 'bytes' tokenizer (--tokenizer bytes), which needs no files."
    )


def clip_words(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with an ellipsis (an exception's text
    can be long: a URL, a proxy's answer), never mid-word."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[:cut if cut > limit // 2 else limit - 1].rstrip(" ,;:") + "…"


_lock = threading.Lock()
_cache: dict[str, GPT2Tokenizer] = {}


def _encoding_from_files(files: dict[str, Path]):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    try:
        from tiktoken_ext.openai_public import r50k_pat_str as pat_str
    except ImportError:  # older tiktoken
        pat_str = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    # Local paths: tiktoken would copy them into its cache under a key of the local path; don't.
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(files["vocab.bpe"]),
            encoder_json_file=str(files["encoder.json"]),
            vocab_bpe_hash=GPT2_FILES["vocab.bpe"][1],
            encoder_json_hash=GPT2_FILES["encoder.json"][1],
        )
    finally:
        if saved is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(name="gpt2", pat_str=pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


def load_gpt2(download: bool = True) -> GPT2Tokenizer:
    """The GPT-2 tokenizer from the first source that has the files (see the module docstring)."""
    with _lock:
        if "gpt2" in _cache:
            return _cache["gpt2"]
        import tiktoken

        tok: GPT2Tokenizer | None = None
        problems: list[str] = []
        cached = _tiktoken_cached_files()
        damaged = [n for n, p in (cached or {}).items() if _sha256(p.read_bytes()) != GPT2_FILES[n][1]]
        if damaged:  # tiktoken would delete the entry and go to the network, even with download=False
            problems.append(f"tiktoken cache: {', '.join(damaged)} there fails the sha256 check")
        elif cached is not None:
            try:
                tok = GPT2Tokenizer(tiktoken.get_encoding("gpt2"))
                tok.source = "tiktoken cache"
            except Exception as exc:  # a corrupt cache entry makes tiktoken try the network
                problems.append(f"tiktoken cache: {exc}")
        candidates: list[tuple[str, Path]] = [("gpttui data dir", gpt2_data_dir())]
        if os.environ.get(BPE_DIR_ENV):
            candidates.append((BPE_DIR_ENV, Path(os.environ[BPE_DIR_ENV]).expanduser()))
        for label, directory in candidates:
            if tok is not None:
                break
            if not (directory / "encoder.json").exists() and not (directory / "vocab.bpe").exists():
                if label == BPE_DIR_ENV:
                    problems.append(f"{BPE_DIR_ENV}={directory}: no encoder.json / vocab.bpe there")
                continue
            try:
                tok = GPT2Tokenizer(_encoding_from_files(_check_dir(directory)))
                tok.source = f"{label} ({directory})"
            except TokenizerError as exc:
                problems.append(str(exc))
        if tok is None and download:
            try:
                tok = GPT2Tokenizer(tiktoken.get_encoding("gpt2"))
                tok.source = "downloaded by tiktoken"
            except Exception as exc:
                problems.append(clip_words(f"download failed: {type(exc).__name__}: {exc}", 300))
        if tok is None:
            detail = ("\nWhat was tried:\n" + "\n".join(f"  - {p}" for p in problems)) if problems else ""
            error = TokenizerError(offline_help() + detail)
            error.tried = problems  # each source and why it failed, for a UI that words the help its own way
            raise error
        _cache["gpt2"] = tok
        return tok


def forget_cached() -> None:
    """Drop the in-process tokenizer cache (tests, or after importing files)."""
    with _lock:
        _cache.clear()


def import_gpt2_files(directory: str | os.PathLike) -> Path:
    """Copy a verified encoder.json + vocab.bpe from ``directory`` into gpttui's data dir."""
    src = Path(directory).expanduser()
    if not src.is_dir():
        raise TokenizerError(f"{src} is not a directory. Give the directory holding encoder.json and vocab.bpe.")
    files = _check_dir(src)
    dest = gpt2_data_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        atomic_write(dest / name, path.read_bytes())
    forget_cached()
    return dest


def get_tokenizer(name: str = "gpt2", download: bool = True) -> Tokenizer:
    if name == "gpt2":
        return load_gpt2(download=download)
    if name == "bytes":
        return ByteTokenizer()
    raise TokenizerError(f"Unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZERS)}.")


@dataclass
class StreamDecoder:
    """Turns a stream of token ids into text deltas, holding back bytes of an unfinished UTF-8
    character that a token split (so streamed text never shows stray replacement characters)."""

    tokenizer: Tokenizer
    _pending: bytes = b""

    def push(self, token: int) -> str:
        data = self._pending + self.tokenizer.token_bytes(token)
        # Find the longest prefix that ends on a complete UTF-8 character.
        cut = len(data)
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
                continue
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
            if need > back:
                cut = len(data) - back
            break
        self._pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        data, self._pending = self._pending, b""
        return data.decode("utf-8", errors="replace")


ProgressFn = Callable[[int, int], None]
