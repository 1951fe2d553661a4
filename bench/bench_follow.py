"""Attaching to a long run: :class:`gpttui.core.runs.EventFollower` against a full re-parse.

Writes a synthetic ``events.jsonl`` of N step events (200,000 by default, an eval every 5 steps as the
book's loop gives) into a temporary folder, then measures, in the same process:

- ``read_run_events``: the full re-parse a monitor would need on every refresh (and into a RunHistory);
- ``EventFollower.read_new`` on attach (the same bytes, parsed once) and into a RunHistory;
- one refresh after 100 appended lines (only the new bytes).

    python bench/bench_follow.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpttui.core.events import read_run_events  # noqa: E402
from gpttui.core.history import RunHistory  # noqa: E402
from gpttui.core.runs import EventFollower  # noqa: E402


def lines(start: int, stop: int, total: int) -> str:
    out = []
    for i in range(start, stop):
        out.append(json.dumps({"event": "step", "step": i, "epoch": 1, "tokens_seen": i * 1024, "loss": 3.0 - i / total,
                               "lr": 4e-4, "grad_norm": 1.0, "tokens_per_sec": 12345.6, "elapsed": i * 0.05,
                               "total_steps": total, "eta": (total - i) * 0.05}))
        if i % 5 == 1:
            out.append(json.dumps({"event": "eval", "step": i, "epoch": 1, "tokens_seen": i * 1024, "train_loss": 3.0,
                                   "val_loss": 3.1, "train_ppl": 20.1, "val_ppl": 22.2, "best_val_loss": 3.1}))
    return "\n".join(out) + "\n"


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    n = parser.parse_args().steps
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        (run_dir / "events.jsonl").write_text(lines(1, n + 1, n), encoding="utf-8")
        size = (run_dir / "events.jsonl").stat().st_size
        full_s, events = timed(lambda: read_run_events(run_dir))
        full_hist_s, _ = timed(lambda: RunHistory.from_run_dir(run_dir))
        follower = EventFollower(run_dir)
        attach_s, attached = timed(follower.read_new)
        hist = RunHistory()
        feed_s, _ = timed(lambda: hist.feed_records(attached))
        with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(lines(n + 1, n + 101, n))
        refresh_s, new = timed(follower.read_new)
    assert len(attached) == len(events)
    print(f"events.jsonl: {n:,} steps, {len(events):,} events, {size / 1e6:.1f} MB")
    print(f"full re-parse (read_run_events):  {full_s:.3f} s;  into a RunHistory: {full_hist_s:.3f} s")
    print(f"EventFollower attach (read_new):  {attach_s:.3f} s;  + feeding a RunHistory: {feed_s:.3f} s")
    print(f"refresh after {len(new)} new events:  {refresh_s * 1e3:.2f} ms "
          f"({full_s / max(refresh_s, 1e-9):,.0f}x less than a full re-parse)")
    print(f"attach / full re-parse: {attach_s / full_s:.2f}")


if __name__ == "__main__":
    main()
