"""Corpora, tokenization with an on-disk cache, the book's sliding windows, and batch loaders.

- ``read_corpus(spec)``: a text file, a folder of .txt/.md (documents joined by <|endoftext|>), or
  ``builtin:pydoc``.
- ``tokenize_corpus(corpus, tokenizer)``: tokenized once, in line-aligned chunks on several threads,
  stored as a compact token file keyed by content hash + tokenizer; reopening does not re-tokenize.
- ``TokenWindows``: the book's ``GPTDatasetV1`` windows (starts ``range(0, n - max_length, stride)``,
  targets shifted by one), sliced on the fly: memory O(tokens), not O(windows x length).
- ``BatchLoader``: the book's loaders (train shuffled with drop_last, val neither), seeded per epoch so
  a data position is just (epoch, batch).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from gpttui.core import paths
from gpttui.core.corpus_types import Cancelled, SourceStats, TokenizeProgress
from gpttui.core.errors import DataError
from gpttui.core.fileio import atomic_write
from gpttui.core.tokenizer import ENDOFTEXT, Tokenizer

CHUNK_CHARS = 1 << 16
CACHE_VERSION = 2  # 2: boundaries no longer cut before <|endoftext|>

ProgressFn = Callable[[int, int], None]


# --- reading: gpttui.core.sources (re-exported: older code imports them from here) ------------------

from gpttui.core.sources import (  # noqa: E402
    BUILTIN_SOURCES, MAX_REPLACED_FRACTION, TEXT_SUFFIXES, Corpus, _builtin_pydoc, _not_regular, _read_regular,
    read_corpus,
)

# Importable from here as before (the app, the CLI, tests and benchmarks do).
_REEXPORTED = (BUILTIN_SOURCES, MAX_REPLACED_FRACTION, TEXT_SUFFIXES, _builtin_pydoc, _not_regular, _read_regular)


# --- tokenizing, with a cache ----------------------------------------------------------------------

def chunk_boundaries(text: str, target: int = CHUNK_CHARS) -> list[int]:
    """Character offsets (0 ... len) at which the text can be cut without changing its tokens:
    just before a newline that is followed by a non-space character.

    GPT-2's pre-tokenizer splits a whitespace run that precedes a non-space character before the
    run's last character (``\\s+(?!\\S)`` backs off by one), and only a literal space can join the
    word after it. So a cut before such a newline falls on a piece boundary, and encoding the two
    sides separately gives exactly the tokens of the whole text."""
    bounds = [0]
    n = len(text)
    pos = target
    while pos < n:
        i = text.find("\n", pos)
        # Not before whitespace, nor before <|endoftext|>: special tokens are split off first, so
        # for the pre-tokenizer the text ends there (a cut in "\n\n<|endoftext|>" would split 628).
        while i != -1 and i + 1 < n and (text[i + 1].isspace() or text.startswith(ENDOFTEXT, i + 1)):
            i = text.find("\n", i + 1)
        if i == -1 or i + 1 >= n:
            break
        bounds.append(i)
        pos = i + target
    bounds.append(n)
    return bounds


@dataclass
class TokenizedCorpus:
    corpus: Corpus
    tokenizer: Tokenizer
    tokens: np.ndarray  # all tokens, uint16 when the vocabulary fits
    char_offsets: np.ndarray  # chunk starts in characters (n_chunks + 1)
    token_offsets: np.ndarray  # chunk starts in tokens (n_chunks + 1)
    from_cache: bool = False

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def split(self, train_ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``text[:split]`` and ``text[split:]`` with ``split = int(ratio * chars)``,
        each exactly as the book's separate ``tokenizer.encode`` calls give them. Only the chunk that
        holds the split point is encoded again."""
        if not 0.0 < train_ratio <= 1.0:
            raise DataError(f"The train ratio must be in (0, 1] (got {train_ratio}).")
        text = self.corpus.text
        split = int(train_ratio * len(text))
        k = int(np.searchsorted(self.char_offsets, split, side="right")) - 1
        k = min(k, len(self.char_offsets) - 2)
        c0, c1 = int(self.char_offsets[k]), int(self.char_offsets[k + 1])
        t0, t1 = int(self.token_offsets[k]), int(self.token_offsets[k + 1])
        if split == c0:
            return np.asarray(self.tokens[:t0]), np.asarray(self.tokens[t0:])
        if k > 0 and split == c0 + 1:
            # text[:split] would end on the boundary's newline, which then merges with whitespace
            # before it ("\n\n" is one token at the end of a text): re-encode the previous chunk too.
            c0, t0 = int(self.char_offsets[k - 1]), int(self.token_offsets[k - 1])
        dtype = self.tokens.dtype
        head = np.asarray(self.tokenizer.encode(text[c0:split]), dtype=dtype)
        tail = np.asarray(self.tokenizer.encode(text[split:c1]), dtype=dtype)
        return np.concatenate([self.tokens[:t0], head]), np.concatenate([tail, self.tokens[t1:]])


def _token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.uint32


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, progress: ProgressFn | None = None,
                    use_cache: bool = True, num_threads: int | None = None) -> TokenizedCorpus:
    """Tokenize (or load from the cache) the whole corpus. ``progress(done_chars, total_chars)``."""
    key = f"{corpus.sha256[:40]}-{tokenizer.name}-v{CACHE_VERSION}"
    cache = paths.token_cache_dir()
    tok_path, idx_path = cache / f"{key}.tokens.npy", cache / f"{key}.chunks.npy"
    total = len(corpus.text)
    if use_cache and tok_path.exists() and idx_path.exists():
        try:
            tokens = np.load(tok_path, mmap_mode="r")
            index = np.load(idx_path)
            if index.ndim == 2 and index.shape[1] == 2 and int(index[-1, 1]) == tokens.shape[0]:
                if progress:
                    progress(total, total)
                return TokenizedCorpus(corpus, tokenizer, tokens, index[:, 0], index[:, 1], True)
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    bounds = chunk_boundaries(corpus.text)
    threads = num_threads or max(1, min(8, os.cpu_count() or 1))
    dtype = _token_dtype(tokenizer.vocab_size)
    parts: list[np.ndarray] = []
    counts = [0]
    group = max(1, threads * 4)
    if progress:
        progress(0, total)
    for g in range(0, len(bounds) - 1, group):
        pieces = [corpus.text[bounds[i]:bounds[i + 1]] for i in range(g, min(g + group, len(bounds) - 1))]
        for ids in tokenizer.encode_batch(pieces, num_threads=threads):
            parts.append(np.asarray(ids, dtype=dtype))
            counts.append(counts[-1] + len(ids))
        if progress:
            progress(bounds[min(g + group, len(bounds) - 1)], total)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    index = np.stack([np.asarray(bounds, dtype=np.int64), np.asarray(counts, dtype=np.int64)], axis=1)
    if use_cache:
        for path, arr in ((tok_path, tokens), (idx_path, index)):
            try:
                atomic_write(path, lambda f, arr=arr: np.save(f, arr), durable=False)
            except OSError:
                pass  # a full or read-only cache only costs speed
    return TokenizedCorpus(corpus, tokenizer, tokens, index[:, 0], index[:, 1], False)


# --- windows and loaders ---------------------------------------------------------------------------

class TokenWindows(torch.utils.data.Dataset):
    """The book's ``GPTDatasetV1`` without materialising the windows: window ``i`` starts at
    ``i * stride``; input ``tokens[s:s+L]``, target ``tokens[s+1:s+L+1]``."""

    def __init__(self, tokens: np.ndarray, max_length: int, stride: int) -> None:
        if max_length < 1 or stride < 1:
            raise DataError(f"Context length and stride must be positive (got {max_length}, {stride}).")
        self.tokens = tokens
        self.max_length = max_length
        self.stride = stride
        n = int(tokens.shape[0])
        self._len = max(0, math.ceil((n - max_length) / stride))
        # Sized by what can be used: a context longer than the text gives no window at all.
        self._offsets = np.arange(min(max_length, n) + 1, dtype=np.int64)

    def __len__(self) -> int:
        return self._len

    def start(self, i: int) -> int:
        return i * self.stride

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        s = i * self.stride
        chunk = torch.from_numpy(np.asarray(self.tokens[s:s + self.max_length + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]

    def batch(self, indices: np.ndarray | torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets for several windows at once, as (B, L) int64 tensors."""
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        rows = torch.from_numpy(np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64))
        return rows[:, :-1], rows[:, 1:]


class BatchLoader:
    """Batches of windows as the book's DataLoader gives them. With ``shuffle``, epoch ``e`` uses the
    permutation ``randperm(n)`` of a generator seeded with ``seed + e``, so any position in training
    is reproducible from ``(epoch, batch)`` alone."""

    def __init__(self, windows: TokenWindows, batch_size: int, shuffle: bool, drop_last: bool,
                 seed: int = 123) -> None:
        if batch_size < 1:
            raise DataError(f"Batch size must be positive (got {batch_size}).")
        self.windows = windows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed

    def __len__(self) -> int:
        n = len(self.windows)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int = 0) -> torch.Tensor:
        n = len(self.windows)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def batches_per_epoch(self, world: int = 1) -> int:
        """Batches in an epoch when ``world`` processes each take ``batch_size`` windows of every global
        batch (whole global batches only); ``len(self)`` for one process."""
        if world == 1:
            return len(self)
        return len(self.windows) // (self.batch_size * world)

    def epoch(self, epoch: int = 0, start_batch: int = 0, rank: int = 0,
              world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_batch``... of ``epoch``. With ``world`` > 1 (DDP), global batch ``b`` is the
        ``batch_size * world`` windows ``order[b*G:(b+1)*G]`` one process would take with that batch size,
        and process ``rank`` gets its ``rank``-th slice: together the ranks train on exactly that batch."""
        order = self.order(epoch).numpy()
        bs = self.batch_size
        step = bs * world
        for b in range(start_batch, self.batches_per_epoch(world)):
            lo = b * step + rank * bs
            yield self.windows.batch(order[lo:lo + bs])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    @property
    def tokens_per_epoch(self) -> int:
        return len(self) * self.batch_size * self.windows.max_length


# --- putting it together ---------------------------------------------------------------------------

@dataclass
class DataSettings:
    """The book's defaults: context 256, stride 256 (= context), batch 2, 90/10 split."""

    source: str = "builtin:pydoc"
    tokenizer: str = "gpt2"
    context_length: int = 256
    stride: int | None = None  # None: same as the context length
    batch_size: int = 2
    train_ratio: float = 0.9
    seed: int = 123
    text_field: str = "text"  # the field of .jsonl records / the column of .parquet files and datasets
    split: str = "train"  # a Hugging Face dataset's split

    @property
    def effective_stride(self) -> int:
        return self.context_length if self.stride is None else self.stride

    def problems(self) -> list[str]:
        """What is wrong with these settings, one readable line each (empty when all is well)."""
        p: list[str] = []

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not whole(self.context_length) or self.context_length < 1:
            p.append(f"context length must be a whole number >= 1 (got {self.context_length!r})")
        if self.stride is not None and (not whole(self.stride) or self.stride < 1):
            p.append(f"stride must be a whole number >= 1, or empty for the default, the context length "
                     f"(got {self.stride!r})")
        if not whole(self.batch_size) or self.batch_size < 1:
            p.append(f"batch size must be a whole number >= 1 (got {self.batch_size!r})")
        ratio = self.train_ratio
        if (not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not math.isfinite(ratio)
                or not 0.0 < ratio <= 1.0):
            p.append(f"train ratio must be a number in (0, 1] (got {ratio!r})")
        if not whole(self.seed):
            p.append(f"seed must be a whole number (got {self.seed!r})")
        return p

    def validate(self) -> "DataSettings":
        """Return self, or raise :class:`DataError` listing every invalid setting."""
        problems = self.problems()
        if problems:
            raise DataError("Invalid data settings: " + "; ".join(problems) + ".")
        return self


@dataclass
class DatasetStats:
    characters: int
    tokens: int
    train_characters: int
    val_characters: int
    train_tokens: int
    val_tokens: int
    train_windows: int
    val_windows: int
    train_batches: int
    val_batches: int
    tokens_per_epoch: int
    problems: list[str] = field(default_factory=list)  # block training
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def split_token_difference(self) -> int:
        """``train_tokens + val_tokens - tokens``: usually 0 or 1, not always 0. As in the book, the text is
        split at a character (``int(train_ratio * characters)``) and each side is tokenized on its own,
        so a word cut by the split becomes two tokens (or more; rarely fewer)."""
        return self.train_tokens + self.val_tokens - self.tokens

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def sanity_problems(train_tokens: int, val_tokens: int, s: DataSettings) -> list[str]:
    """The book's checks, with the numbers: each split needs at least one full batch (train,
    drop_last) or one window (validation) at this context length."""
    L, st, bs = s.context_length, s.effective_stride, s.batch_size
    problems = []
    train_windows = max(0, math.ceil((train_tokens - L) / st))
    if train_windows < bs:
        # With the stride following the context length (stride None), a shorter context also shortens
        # the stride: then n > bs * L is what fits.
        best = (train_tokens - 1) // bs if s.stride is None else train_tokens - (bs - 1) * st - 1
        hint = f"lower the context length (at most {best} fits)" if best >= 1 else "use a larger corpus"
        problems.append(
            f"Not enough tokens for the training loader: the training split has {train_tokens:,} tokens, "
            f"which gives {train_windows} window(s) of {L} tokens at stride {st}, fewer than one batch of "
            f"{bs}. Try to {hint}, lower the batch size or stride, or increase the train ratio."
        )
    if val_tokens <= L:
        hint = f"lower the context length (at most {val_tokens - 1} fits)" if val_tokens > 1 else "use a larger corpus"
        problems.append(
            f"Not enough tokens for the validation loader: the validation split has {val_tokens:,} tokens, "
            f"no window of {L}+1 tokens fits. Try to {hint} or decrease the train ratio."
        )
    return problems


@dataclass
class PreparedData:
    settings: DataSettings
    corpus: Corpus
    tokenized: TokenizedCorpus
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    train_loader: BatchLoader
    val_loader: BatchLoader
    stats: DatasetStats
    sources: list[SourceStats] = field(default_factory=list)  # per input: documents, characters, tokens

    def identity(self) -> dict:
        """What a checkpoint records about its data."""
        source = self.corpus.source
        if source and not source.startswith("builtin:"):  # resumable from any working directory
            source = os.path.abspath(os.path.expanduser(source))
        return {
            "source": source,
            "label": self.corpus.label,
            "sha256": self.corpus.sha256,
            "characters": len(self.corpus.text),
            "tokenizer": self.tokenized.tokenizer.name,
            "tokens": self.tokenized.n_tokens,
            "train_ratio": self.settings.train_ratio,
            "context_length": self.settings.context_length,
            "stride": self.settings.effective_stride,
            "batch_size": self.settings.batch_size,
            # Only where they differ from the defaults, so older checkpoints' records stay comparable.
            **({"text_field": self.settings.text_field} if self.settings.text_field != "text" else {}),
            **({"split": self.settings.split} if self.settings.split != "train" else {}),
        }


def prepare_data(settings: DataSettings, tokenizer: Tokenizer, corpus: Corpus | None = None,
                 progress: Callable[[TokenizeProgress], None] | None = None, strict: bool = True,
                 cancel: threading.Event | None = None) -> PreparedData:
    """Read, tokenize (cached), split and window a corpus; build the two loaders and the stats.
    With ``strict``, a corpus too small for the settings raises DataError with the book's advice."""
    s = settings.validate()
    corpus = corpus or read_corpus(s.source)
    t0 = time.monotonic()

    def chars_progress(done: int, total: int) -> None:  # interim, until the sharded tokenizer lands
        if cancel is not None and cancel.is_set():
            raise Cancelled("Tokenizing was cancelled.")
        if progress:
            progress(TokenizeProgress("tokenizing", done, total, 0, time.monotonic() - t0))

    tokenized = tokenize_corpus(corpus, tokenizer, progress=chars_progress)
    train, val = tokenized.split(s.train_ratio)
    train_w = TokenWindows(train, s.context_length, s.effective_stride)
    val_w = TokenWindows(val, s.context_length, s.effective_stride)
    train_loader = BatchLoader(train_w, s.batch_size, shuffle=True, drop_last=True, seed=s.seed)
    val_loader = BatchLoader(val_w, s.batch_size, shuffle=False, drop_last=False, seed=s.seed)
    split_char = int(s.train_ratio * len(corpus.text))
    stats = DatasetStats(
        characters=len(corpus.text), tokens=tokenized.n_tokens,
        train_characters=split_char, val_characters=len(corpus.text) - split_char,
        train_tokens=len(train), val_tokens=len(val),
        train_windows=len(train_w), val_windows=len(val_w),
        train_batches=len(train_loader), val_batches=len(val_loader),
        tokens_per_epoch=train_loader.tokens_per_epoch,
        problems=sanity_problems(len(train), len(val), s),
        warnings=list(corpus.warnings),
    )
    if tokenizer.vocab_size > 65536:
        stats.warnings.append("Vocabulary above 65,536: tokens are stored as uint32.")
    if strict and stats.problems:
        raise DataError("\n".join(stats.problems))
    return PreparedData(s, corpus, tokenized, train, val, train_loader, val_loader, stats)


def corpus_fingerprint(spec: str) -> str:
    """A cheap identity for a source path (for 'recent sources' lists): path + size + mtime."""
    p = Path(spec).expanduser()
    if spec.startswith("builtin:") or not p.exists():
        return spec
    st = p.stat()
    return json.dumps([str(p.resolve()), st.st_size, int(st.st_mtime)])
