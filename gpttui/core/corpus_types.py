"""Plain types shared by the corpus readers (``sources``), the sharded tokenizer (``shards``) and the UIs.

No torch, no numpy: the tokenizer's worker processes import this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from gpttui.core.errors import DataError


@dataclass
class SourceStats:
    """What one input (a file of a folder, a single file, a built-in text, a Hugging Face dataset) gave."""

    name: str  # path relative to the folder, the file's name, "builtin:pydoc", or the dataset's name
    kind: str  # "text", "jsonl", "parquet", "hf", "builtin", "memory"
    bytes: int = 0  # size on disk (0 when unknown)
    documents: int = 0
    characters: int = 0  # characters of its documents, without the <|endoftext|> between documents
    tokens: int = 0  # tokens of its documents, each with the <|endoftext|> before it (not the first's)
    bad_lines: int = 0  # .jsonl lines that are not JSON objects
    missing_field: int = 0  # records without a string text field
    empty: int = 0  # documents holding no text (left out; not an error)
    replaced_bytes: int = 0  # bytes that were not UTF-8, replaced with U+FFFD
    skipped: str | None = None  # why the whole input was left out (not UTF-8, binary, unreadable)

    def notes(self) -> list[str]:
        """What went wrong with this input, one short phrase each (empty when nothing did)."""
        out = []
        if self.skipped:
            out.append(f"skipped: {self.skipped}")
        if self.bad_lines:
            out.append(f"{self.bad_lines:,} line(s) not JSON")
        if self.missing_field:
            out.append(f"{self.missing_field:,} record(s) without the text field")
        if self.replaced_bytes:
            out.append(f"{self.replaced_bytes:,} byte(s) not UTF-8 replaced")
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SourceStats":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class TokenizeProgress:
    """A progress report of :func:`gpttui.core.shards.build_shards` (and so of ``prepare_data``).

    ``phase``: "reading" (opening inputs, or skipping text already tokenized by an interrupted build),
    "tokenizing", or "done". Bytes count the input as stored (a file's size); ``total_bytes`` is 0 when
    unknown (a Hugging Face dataset streamed from the Hub)."""

    phase: str
    done_bytes: int
    total_bytes: int
    tokens: int
    elapsed: float  # seconds since the build started

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else None

    @property
    def rate(self) -> float:
        """Input bytes per second so far."""
        return self.done_bytes / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None while unknown)."""
        if not self.total_bytes or self.rate <= 0:
            return None
        return max(0.0, (self.total_bytes - self.done_bytes) / self.rate)


class Cancelled(DataError):
    """Tokenizing was cancelled (the cancel event was set). Shards already finished stay in the cache, so
    the next try resumes after them."""


__all__ = ["SourceStats", "TokenizeProgress", "Cancelled"]
