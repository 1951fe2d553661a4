"""Corpora, tokenization with an on-disk cache, the book's sliding windows, and batch loaders.

- ``read_corpus(spec)``: a text file, a folder of .txt/.md (documents joined by <|endoftext|>), or
  ``builtin:pydoc``.
- ``tokenize_source(settings, tokenizer)``: the source streamed into token shards by a pool of worker
  processes (:mod:`gpttui.core.shards`), keyed by the inputs' fingerprint; reopening reads no text. The
  shards are read through memory maps (:class:`~gpttui.core.tokenstream.TokenStream`); the book's split
  at a character re-encodes only the ~64k characters around it.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from gpttui.core.corpus_types import Cancelled, SourceStats  # noqa: F401 (Cancelled: for callers)
from gpttui.core.corpus_types import TokenizeProgress
from gpttui.core.errors import DataError
from gpttui.core.shards import INDEX_CHARS, ShardedCorpus, build_shards, chunk_boundaries  # noqa: F401
from gpttui.core.sources import plan_memory, plan_source
from gpttui.core.tokenizer import Tokenizer
from gpttui.core.tokenstream import TokenStream

CHUNK_CHARS = INDEX_CHARS  # the split re-encodes at most about this many characters


# --- reading: gpttui.core.sources (re-exported: the app, the CLI, tests and benchmarks import them here) ---

from gpttui.core.sources import (  # noqa: E402
    BUILTIN_SOURCES, MAX_REPLACED_FRACTION, TEXT_SUFFIXES, Corpus, _builtin_pydoc, _not_regular, _read_regular,
    read_corpus,
)

_REEXPORTED = (BUILTIN_SOURCES, MAX_REPLACED_FRACTION, TEXT_SUFFIXES, _builtin_pydoc, _not_regular, _read_regular,
               read_corpus)


# --- tokenizing: shards on disk, read through memory maps ------------------------------------------

@dataclass
class CorpusInfo:
    """What prepared data knows of its text without holding it: where it came from, its sha256 and length,
    the inputs it was read from (with their counts) and what was noted while reading."""

    source: str
    label: str
    sha256: str
    characters: int
    files: list[str] = field(default_factory=list)  # a folder's inputs that gave text, relative to it, in order
    warnings: list[str] = field(default_factory=list)
    sources: list[SourceStats] = field(default_factory=list)
    plan: Any = field(default=None, repr=False)  # the SourcePlan (how to read it again)
    _text: Callable[[], str] | None = field(default=None, repr=False)

    @property
    def n_files(self) -> int:
        return max(1, len(self.files))

    @property
    def replaced_bytes(self) -> int:
        return sum(s.replaced_bytes for s in self.sources)

    @property
    def text(self) -> str:
        """The whole text, decoded from its tokens: for small corpora (tests, the book's tools) only."""
        return self._text() if self._text is not None else ""


@dataclass
class TokenizedCorpus:
    corpus: Any  # a Corpus (with its text) or a CorpusInfo
    tokenizer: Tokenizer
    tokens: Any  # a TokenStream over the shards (or a NumPy array): uint16 when the vocabulary fits
    char_offsets: np.ndarray  # safe cuts in characters (first 0, last the text's length)
    token_offsets: np.ndarray  # the same cuts in tokens
    from_cache: bool = False
    sharded: ShardedCorpus | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def characters(self) -> int:
        return int(self.char_offsets[-1])

    def _piece(self, k: int) -> str:
        """The text between cuts ``k`` and ``k + 1``, decoded from its own tokens (reads no input file)."""
        c0, c1 = int(self.char_offsets[k]), int(self.char_offsets[k + 1])
        t0, t1 = int(self.token_offsets[k]), int(self.token_offsets[k + 1])
        text = self.tokenizer.decode(np.asarray(self.tokens[t0:t1]).tolist())
        if len(text) != c1 - c0:  # not text that decodes back to itself (lone surrogates): take the original
            text = self.corpus.text[c0:c1]
        return text

    def split(self, train_ratio: float) -> tuple[TokenStream, TokenStream]:
        """Token ids of ``text[:split]`` and ``text[split:]`` with ``split = int(ratio * chars)``,
        each exactly as the book's separate ``tokenizer.encode`` calls give them. Only the piece that
        holds the split point is encoded again; the rest are views of the shards (nothing is copied)."""
        if not 0.0 < train_ratio <= 1.0:
            raise DataError(f"The train ratio must be in (0, 1] (got {train_ratio}).")
        split = int(train_ratio * self.characters)
        k = int(np.searchsorted(self.char_offsets, split, side="right")) - 1
        k = min(k, len(self.char_offsets) - 2)
        c0 = int(self.char_offsets[k])
        t0, t1 = int(self.token_offsets[k]), int(self.token_offsets[k + 1])
        stream = self.tokens if isinstance(self.tokens, TokenStream) else TokenStream([np.asarray(self.tokens)])
        n = len(stream)
        if split == c0:
            return stream.view(0, t0), stream.view(t0, n)
        text = self._piece(k)
        if k > 0 and split == c0 + 1:
            # text[:split] would end on the boundary's newline, which then merges with whitespace
            # before it ("\n\n" is one token at the end of a text): re-encode the previous piece too.
            text = self._piece(k - 1) + text
            c0, t0 = int(self.char_offsets[k - 1]), int(self.token_offsets[k - 1])
        dtype = stream.dtype
        head = np.asarray(self.tokenizer.encode(text[:split - c0]), dtype=dtype)
        tail = np.asarray(self.tokenizer.encode(text[split - c0:]), dtype=dtype)
        return (TokenStream.concat([stream.view(0, t0), head], dtype),
                TokenStream.concat([tail, stream.view(t1, n)], dtype))


def _text_of(tokens: Any, tokenizer: Tokenizer) -> Callable[[], str]:
    return lambda: tokenizer.decode(np.asarray(tokens).tolist())


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, progress: Callable[[TokenizeProgress], None] | None = None,
                    use_cache: bool = True, workers: int | None = None,
                    cancel: threading.Event | None = None) -> TokenizedCorpus:
    """Tokenize an in-memory corpus (or open its tokens from the cache, keyed by its text's sha256)."""
    plan = plan_memory(corpus.text, corpus.label, corpus.source)
    sharded = build_shards(plan, tokenizer, workers=workers, progress=progress, cancel=cancel, use_cache=use_cache)
    return TokenizedCorpus(corpus, tokenizer, sharded.tokens, sharded.char_offsets, sharded.token_offsets,
                           sharded.from_cache, sharded)


def tokenize_source(settings: "DataSettings", tokenizer: Tokenizer, corpus: Any = None,
                    progress: Callable[[TokenizeProgress], None] | None = None,
                    cancel: threading.Event | None = None, workers: int | None = None) -> TokenizedCorpus:
    """Tokenize (or reopen) the settings' source, streaming: its text is never held whole. ``corpus``: an
    in-memory :class:`Corpus` to use instead, or the :class:`CorpusInfo` of data prepared before."""
    if isinstance(corpus, Corpus):
        plan = plan_memory(corpus.text, corpus.label, corpus.source)
    elif isinstance(corpus, CorpusInfo) and corpus.plan is not None:
        plan = corpus.plan
    else:
        plan = plan_source(settings.source, settings.text_field, settings.split)
    sharded = build_shards(plan, tokenizer, workers=workers, progress=progress, cancel=cancel)
    if isinstance(corpus, Corpus):
        info: Any = corpus
    else:
        used = [s.name for s in sharded.sources if s.documents and not s.skipped]
        info = CorpusInfo(plan.spec, plan.label, sharded.sha256, sharded.characters,
                          used if plan.kind == "folder" else [], sharded.warnings, sharded.sources, plan,
                          _text_of(sharded.tokens, tokenizer))
    return TokenizedCorpus(info, tokenizer, sharded.tokens, sharded.char_offsets, sharded.token_offsets,
                           sharded.from_cache, sharded)


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

    def preview(self, chars: int = 4000) -> str:
        """The first ``chars`` characters of the text, decoded from the first tokens (reads no input file)."""
        tokens = np.asarray(self.tokenized.tokens[0:min(chars, self.tokenized.n_tokens)]).tolist()
        return self.tokenized.tokenizer.decode(tokens)[:chars]

    def identity(self) -> dict:
        """What a checkpoint records about its data."""
        source = self.corpus.source
        if source and not source.startswith(("builtin:", "hf:")):  # resumable from any working directory
            source = os.path.abspath(os.path.expanduser(source))
        return {
            "source": source,
            "label": self.corpus.label,
            "sha256": self.corpus.sha256,
            "characters": self.tokenized.characters,
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


def prepare_data(settings: DataSettings, tokenizer: Tokenizer, corpus: Any = None,
                 progress: Callable[[TokenizeProgress], None] | None = None, strict: bool = True,
                 cancel: threading.Event | None = None, workers: int | None = None) -> PreparedData:
    """Tokenize (or reopen from the cache), split and window a corpus; build the two loaders and the stats.
    The text is streamed from its files into token shards (see :mod:`gpttui.core.shards`); ``corpus`` gives an
    in-memory :class:`Corpus` instead. ``progress(TokenizeProgress)`` reports the tokenizing, ``cancel`` stops
    it (:class:`Cancelled`). With ``strict``, a corpus too small for the settings raises DataError with the
    book's advice."""
    s = settings.validate()
    tokenized = tokenize_source(s, tokenizer, corpus, progress=progress, cancel=cancel, workers=workers)
    corpus = tokenized.corpus
    characters = tokenized.characters
    train, val = tokenized.split(s.train_ratio)
    train_w = TokenWindows(train, s.context_length, s.effective_stride)
    val_w = TokenWindows(val, s.context_length, s.effective_stride)
    train_loader = BatchLoader(train_w, s.batch_size, shuffle=True, drop_last=True, seed=s.seed)
    val_loader = BatchLoader(val_w, s.batch_size, shuffle=False, drop_last=False, seed=s.seed)
    split_char = int(s.train_ratio * characters)
    stats = DatasetStats(
        characters=characters, tokens=tokenized.n_tokens,
        train_characters=split_char, val_characters=characters - split_char,
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
    sources = tokenized.sharded.sources if tokenized.sharded is not None else []
    return PreparedData(s, corpus, tokenized, train, val, train_loader, val_loader, stats, sources)


def corpus_fingerprint(spec: str) -> str:
    """A cheap identity for a source path (for 'recent sources' lists): path + size + mtime."""
    p = Path(spec).expanduser()
    if spec.startswith("builtin:") or not p.exists():
        return spec
    st = p.stat()
    return json.dumps([str(p.resolve()), st.st_size, int(st.st_mtime)])
