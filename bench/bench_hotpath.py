"""The trainer's speed on this machine, this checkout against another one (by default the commit before
issue 15 changed the hot path), in the same run: interleaved `gpttui train --json` runs of the same model
on the same data, tokens/s over the steps after the first few.

    git worktree add /tmp/gpttui-base 11d4389      # a checkout to compare with
    python bench/bench_hotpath.py --base /tmp/gpttui-base [--preset tiny] [--steps 60] [--rounds 3]

Prints one row per run and the ratio of the medians (this checkout / base). Same seed, same batches,
one process each, OMP threads as torch picks them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one_run(checkout: Path, args: argparse.Namespace, home: str) -> float:
    """tokens/s of one run of `checkout`'s trainer: tokens between the 5th and the last step / their time."""
    env = dict(os.environ, PYTHONPATH=str(checkout), GPTTUI_HOME=home)
    cmd = [sys.executable, "-m", "gpttui", "train", "--json", "--data", args.data, "--tokenizer", "bytes",
           "--preset", args.preset, "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
           "--eval-freq", "100000", "--eval-iter", "1", "--sample-tokens", "0", "--device", args.device,
           "--dtype", args.dtype, "--save", "bench", "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=checkout)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {done.stderr[-2000:]}")
    steps = [e for e in map(json.loads, done.stdout.splitlines()) if e.get("event") == "step"]
    first, last = steps[4], steps[-1]
    return (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed"] - first["elapsed"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, type=Path, help="a checkout of the commit to compare with")
    p.add_argument("--data", default="builtin:pydoc")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    args = p.parse_args()
    results: dict[str, list[float]] = {"this": [], "base": []}
    with tempfile.TemporaryDirectory() as home:
        for r in range(args.rounds):
            for label, checkout in (("base", args.base.resolve()), ("this", REPO)):
                tps = one_run(checkout, args, home)
                results[label].append(tps)
                print(f"round {r + 1}  {label:4}  {tps:10,.0f} tok/s", flush=True)
    this, base = statistics.median(results["this"]), statistics.median(results["base"])
    print(f"median: this {this:,.0f} tok/s, base {base:,.0f} tok/s, ratio {this / base:.3f} "
          f"({args.preset}, batch {args.batch_size}, {args.steps} steps, {args.device}, {args.dtype})")


if __name__ == "__main__":
    main()
