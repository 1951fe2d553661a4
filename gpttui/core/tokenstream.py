"""One token sequence over several arrays — memory-mapped shards and small in-memory pieces — never copied whole.

A corpus of gigabytes is a list of shard files; its train/val split is the shards cut at one point plus the few
tokens re-encoded around that point. :class:`TokenStream` lets the windows and loaders index all of that as one
array: slicing a window or gathering a batch copies only the tokens asked for.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


class TokenStream:
    """The concatenation of ``parts`` (1-D arrays of one dtype, e.g. ``np.memmap``s), indexed as one array.

    - ``stream[i]`` is a token; ``stream[a:b]`` a NumPy array of those tokens (a copy of just them);
    - ``stream[idx]`` with an integer array of any shape gathers those positions (a batch of windows);
    - :meth:`view` is a sub-range as another stream, without copying anything.
    """

    def __init__(self, parts: Sequence[np.ndarray], dtype: np.dtype | type | None = None) -> None:
        kept = [p for p in parts if p.shape[0]]
        dtypes = {p.dtype for p in kept}
        if len(dtypes) > 1:
            raise ValueError(f"token parts of different dtypes: {sorted(map(str, dtypes))}")
        self.dtype = np.dtype(dtype if dtype is not None else (kept[0].dtype if kept else np.uint16))
        if kept and kept[0].dtype != self.dtype:
            raise ValueError(f"token parts are {kept[0].dtype}, not {self.dtype}")
        self.parts: list[np.ndarray] = kept
        self.starts = np.cumsum([0] + [p.shape[0] for p in kept], dtype=np.int64)

    # -- size
    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    ndim = 1

    def __repr__(self) -> str:
        return f"TokenStream({len(self):,} tokens in {len(self.parts)} part(s), {self.dtype})"

    # -- building
    @classmethod
    def concat(cls, pieces: Iterable["TokenStream | np.ndarray"], dtype=None) -> "TokenStream":
        parts: list[np.ndarray] = []
        for piece in pieces:
            parts.extend(piece.parts if isinstance(piece, TokenStream) else [np.asarray(piece)])
        return cls(parts, dtype)

    def view(self, start: int, stop: int) -> "TokenStream":
        """Tokens ``start:stop`` as a stream of views of the same parts."""
        start, stop, _ = slice(start, stop).indices(len(self))
        parts = []
        for part, lo in zip(self.parts, self.starts[:-1]):
            a, b = max(start - lo, 0), min(stop - lo, part.shape[0])
            if a < b:
                parts.append(part[a:b])
        return TokenStream(parts, self.dtype)

    # -- reading
    def __getitem__(self, key):
        if isinstance(key, slice):
            if key.step not in (None, 1):
                raise ValueError("a TokenStream slice takes no step")
            view = self.view(*key.indices(len(self))[:2])
            if len(view.parts) == 1:
                return np.array(view.parts[0])
            return np.concatenate(view.parts) if view.parts else np.zeros(0, self.dtype)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"token {key} of {len(self)}")
            k = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.parts[k][i - self.starts[k]]
        return self.gather(np.asarray(key))

    def gather(self, index: np.ndarray) -> np.ndarray:
        """The tokens at ``index`` (an integer array of any shape), as an array of that shape."""
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0:
            return np.zeros(index.shape, self.dtype)
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= len(self):
            raise IndexError(f"token index {lo if lo < 0 else hi} out of range for {len(self)} tokens")
        first = int(np.searchsorted(self.starts, lo, side="right")) - 1
        if hi < self.starts[first + 1]:  # all in one part: the usual case
            return np.asarray(self.parts[first][index - self.starts[first]])
        flat = index.ravel()
        which = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty(flat.shape, self.dtype)
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.parts[k][flat[sel] - self.starts[k]]
        return out.reshape(index.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[0:len(self)]
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()


__all__ = ["TokenStream"]
