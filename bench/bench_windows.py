"""Sliding windows: gpttui's TokenWindows vs the book's GPTDatasetV1.

The book's dataset materialises every window as two int64 tensors (inputs, targets), so at stride 1
it holds ~2 x max_length x 8 bytes per token of corpus. TokenWindows slices the token array on the
fly. This builds TokenWindows over 2M tokens at stride 1 and draws batches, builds the book's
dataset over a smaller corpus, and extrapolates the book's cost per window to the large one.

Memory: tracemalloc sees Python and numpy allocations but not torch's CPU allocator, so the book's
tensor storage is counted separately (untyped_storage().nbytes()) and added.

    python bench/bench_windows.py [--tokens 2000000] [--book-tokens 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from book_reference import GPTDatasetV1  # noqa: E402

from gpttui.core.data import BatchLoader, TokenWindows  # noqa: E402

MB = 2**20


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50257, size=n).astype(np.uint16)


def ours(n: int, max_length: int, stride: int, batch_size: int, batches: int) -> dict:
    tokens = _tokens(n)

    def run():
        w = TokenWindows(tokens, max_length, stride)
        loader = BatchLoader(w, batch_size, shuffle=True, drop_last=True)
        it = loader.epoch(0)  # includes the epoch's permutation of all windows
        for _ in range(batches):
            x, y = next(it)
        return w, x

    t = time.perf_counter()
    w, x = run()
    seconds = time.perf_counter() - t
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert x.shape == (batch_size, max_length)
    # The epoch's permutation is a torch int64 tensor: torch's allocator, invisible to tracemalloc.
    return {"windows": len(w), "seconds": seconds, "peak_bytes": peak + 8 * len(w)}


def book(n: int, max_length: int, stride: int, batch_size: int, batches: int) -> dict:
    ids = _tokens(n).tolist()
    t = time.perf_counter()
    ds = GPTDatasetV1(None, None, max_length, stride, token_ids=ids)
    build = time.perf_counter() - t
    t = time.perf_counter()
    it = iter(DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True))
    for _ in range(batches):
        next(it)
    draw = time.perf_counter() - t
    storage = sum(a.untyped_storage().nbytes() for a in ds.input_ids) + sum(
        a.untyped_storage().nbytes() for a in ds.target_ids)
    windows = len(ds)
    del ds
    # Python-object overhead (lists, tensor objects), per window, on a slice: tracemalloc is slow.
    small = ids[: min(len(ids), 20_000 + max_length)]
    tracemalloc.start()
    ds = GPTDatasetV1(None, None, max_length, stride, token_ids=small)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    python_bytes = peak / max(len(ds), 1) * windows
    del ds
    return {"windows": windows, "build_seconds": build, "draw_seconds": draw,
            "tensor_bytes": storage, "python_peak_bytes": python_bytes}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--book-tokens", type=int, default=100_000)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=100)
    a = ap.parse_args(argv)
    torch.manual_seed(0)

    o = ours(a.tokens, a.max_length, a.stride, a.batch_size, a.batches)
    print(f"TokenWindows  {a.tokens:>10,} tokens, stride {a.stride}, max_length {a.max_length}: "
          f"{o['windows']:,} windows")
    print(f"  build + {a.batches} batches of {a.batch_size}: {o['seconds']:.3f} s, "
          f"peak {o['peak_bytes'] / MB:.1f} MB beyond the token array ({a.tokens * 2 / MB:.1f} MB uint16),\n"
          f"  of which {8 * o['windows'] / MB:.1f} MB is the shuffled epoch order (int64 per window)")

    b = book(a.book_tokens, a.max_length, a.stride, a.batch_size, a.batches)
    per_window_s = b["build_seconds"] / b["windows"]
    per_window_b = (b["tensor_bytes"] + b["python_peak_bytes"]) / b["windows"]
    print(f"GPTDatasetV1  {a.book_tokens:>10,} tokens: {b['windows']:,} windows")
    print(f"  build {b['build_seconds']:.2f} s ({per_window_s * 1e6:.1f} us/window), "
          f"{a.batches} batches {b['draw_seconds']:.3f} s")
    print(f"  memory {b['tensor_bytes'] / MB:.0f} MB tensors + ~{b['python_peak_bytes'] / MB:.0f} MB Python objects "
          f"= {per_window_b / 1024:.2f} KB/window")
    est_s = per_window_s * o["windows"] + b["draw_seconds"]
    est_b = per_window_b * o["windows"]
    print(f"  extrapolated to {o['windows']:,} windows: ~{est_s:.0f} s, ~{est_b / 2**30:.1f} GB")
    print(f"ratio (book extrapolated / ours): time x{est_s / o['seconds']:.0f}, "
          f"memory x{est_b / max(o['peak_bytes'] + a.tokens * 2, 1):.0f} (ours counted with its token array)")


if __name__ == "__main__":
    main()
