"""Book mode against the book, and what each of its parts changes (issue 14).

All runs use the book's chapter-5 settings (GPT_CONFIG_124M: 124M-shape model, context 256, batch 2, AdamW
4e-4 / 0.1, eval every 5 steps on 5 batches, 90/10 split) on the text given, on the CPU.

    python bench/book_diff.py check --data the-verdict.txt
        Book mode, whole run (10 epochs); with --reference the book's own code too (tests/book_reference.py).
        Prints both printouts and where they differ; on the book's text, each line against the book's table.
    python bench/book_diff.py parts --data the-verdict.txt --epochs 3
        Book mode, then book mode with one part switched off (data order, evaluation batches, math,
        optimizer), then the default mode: each run's evaluation lines, the first line that differs from
        book mode's, the largest difference and the last losses.
    python bench/book_diff.py seeds --data builtin:pydoc-20k --seeds 123,1,2,3 --epochs 5 [--mode book|default]
        The same recipe under other seeds (the model's init and every shuffle and dropout mask follow the seed):
        whether a loss spike belongs to the recipe or to gpttui.

The book's text is the-verdict.txt of the book's chapter 2 (sha256 in gpttui.core.book.VERDICT_SHA256).
Expect about 10 s per step-and-evaluation cycle of 5 steps on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("GPTTUI_HOME", tempfile.mkdtemp(prefix="gpttui-book-"))

from book_harness import Result, Setup, run_book, run_gpttui  # noqa: E402

from gpttui.core.book import BOOK_TABLE, BookCheck, BookParts  # noqa: E402
from gpttui.core.config import GPTConfig  # noqa: E402
from gpttui.core.data import read_corpus  # noqa: E402
from gpttui.core.tokenizer import get_tokenizer  # noqa: E402


def setup_for(args) -> Setup:
    source = args.data
    if source.startswith("builtin:"):  # the harness reads a file: write the built-in text out
        path = Path(os.environ["GPTTUI_HOME"]) / (source.split(":", 1)[1] + ".txt")
        path.write_text(read_corpus(source).text, encoding="utf-8")
    else:
        path = Path(source).expanduser()
    tokenizer = get_tokenizer("gpt2")
    model = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=256, emb_dim=768, n_heads=12, n_layers=12,
                      drop_rate=0.1, qkv_bias=False)
    return Setup(path, tokenizer, model, epochs=args.epochs, seed=getattr(args, "seed", 123))


def run(setup: Setup, **kw) -> Result:
    """gpttui's run, saved over one scratch checkpoint (a 124M model and its AdamW take 1.9 GB)."""
    return run_gpttui(setup, save_name="book-bench", overwrite=True, **kw)


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"# {label}: {time.perf_counter() - start:.0f} s", flush=True)
    return result


def first_difference(a: Result, b: Result) -> str:
    evals_a = [line for line in a.lines if line.startswith("Ep ")]
    evals_b = [line for line in b.lines if line.startswith("Ep ")]
    for x, y in zip(evals_a, evals_b):
        if x != y:
            return f"{x}  vs  {y}"
    return "none"


def largest(a: Result, b: Result) -> float:
    pairs = list(zip(a.train_losses + a.val_losses, b.train_losses + b.val_losses))
    return max((abs(x - y) for x, y in pairs), default=0.0)


def cmd_check(args) -> None:
    setup = setup_for(args)
    ours = timed("gpttui book mode", lambda: run(setup))
    for line in ours.lines:
        print(line)
    check = BookCheck("cpu")
    for line, (train, val) in zip([x for x in ours.lines if x.startswith("Ep ")], zip(ours.train_losses, ours.val_losses)):
        step = int(line.split("Step ")[1][:6])
        check.add(step + 1, train, val)
    print(check.summary() if check.seen else "(not the book's text and length: no table to check against)")
    if args.reference:
        book = timed("the book's code (tests/book_reference.py)", lambda: run_book(setup))
        same = book.lines == ours.lines
        print(f"printouts equal: {same}; first difference: {first_difference(book, ours)}; largest raw loss "
              f"difference {largest(book, ours):.2e}")


PART_NAMES = ("data_order", "eval_batches", "math", "optimizer")


def cmd_parts(args) -> None:
    setup = setup_for(args)
    runs: list[tuple[str, Result]] = []
    base = timed("book mode", lambda: run(setup))
    runs.append(("book mode", base))
    for name in PART_NAMES:
        parts = dataclasses.replace(BookParts(), **{name: False})
        runs.append((f"book mode without {name}", timed(name, lambda parts=parts: run(setup, parts=parts))))
    runs.append(("default mode", timed("default", lambda: run(setup, book=False))))
    print(f"\n{'run':32} {'last train':>10} {'last val':>9} {'max |diff|':>10}  first printed difference")
    for label, result in runs:
        print(f"{label:32} {result.train_losses[-1]:10.3f} {result.val_losses[-1]:9.3f} "
              f"{largest(base, result):10.2e}  {first_difference(base, result)}")
    print()
    for label, result in runs:
        evals = " ".join(f"{t:.3f}/{v:.3f}" for t, v in zip(result.train_losses, result.val_losses))
        print(f"{label}: {evals}")


def cmd_seeds(args) -> None:
    base = setup_for(args)
    for seed in [int(s) for s in args.seeds.split(",")]:
        setup = dataclasses.replace(base, seed=seed)
        result = timed(f"seed {seed}", lambda setup=setup: run(setup, book=args.mode == "book"))
        evals = list(zip(result.train_losses, result.val_losses))
        jumps = [(i, b[0] - a[0], b[1] - a[1]) for i, (a, b) in enumerate(zip(evals, evals[1:]), start=1)]
        worst = max(jumps, key=lambda j: j[1], default=(0, 0.0, 0.0))
        print(f"seed {seed} ({args.mode}): " + " ".join(f"{t:.3f}/{v:.3f}" for t, v in evals))
        print(f"  largest rise between evaluations: train {worst[1]:+.3f}, val {worst[2]:+.3f} at evaluation "
              f"{worst[0]} (step {worst[0] * 5:06d})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    for name, fn in (("check", cmd_check), ("parts", cmd_parts), ("seeds", cmd_seeds)):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True)
        p.add_argument("--epochs", type=int, default=10)
        p.set_defaults(func=fn)
        if name == "check":
            p.add_argument("--reference", action="store_true", help="also run the book's own code and compare")
        if name == "seeds":
            p.add_argument("--seeds", default="123,1,2,3")
            p.add_argument("--mode", choices=["book", "default"], default="book")
    args = parser.parse_args()
    print(f"# {len(BOOK_TABLE)} lines in the book's table; data {args.data}; {args.epochs} epochs", flush=True)
    args.func(args)


if __name__ == "__main__":
    main()
