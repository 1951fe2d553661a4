"""Attaching to a long run: :class:`gpttui.core.runs.EventFollower` + :class:`RunHistory` against a full re-parse.

Writes a synthetic run of N step events (200,000 by default, an eval every 5 steps as the book's loop
gives, a sample and a checkpoint now and then) with the trainer's own writer (``RunLog``: ``events.jsonl``
and its step index ``steps.idx``) into a temporary ``GPTTUI_HOME``, then measures, in the same process
(best of ``--repeat``):

- the baseline, as before the fast paths: every line parsed (``read_run_events``), and every record made an
  event (``typed_event``) and fed to a RunHistory one by one -- what a monitor needs before it draws;
- attaching, what the app does (``EventFollower.feed``): with the step index (only the lines that are not
  steps parsed as JSON), and without it (a run written by an older gpttui: every line parsed, a few MB at a
  time), each with orjson (where installed) and with the json module (orjson hidden from the import
  system); also ``EventFollower.read_new`` + ``RunHistory.feed_records``; every history is checked equal
  to the baseline's;
- one refresh (``EventFollower.feed``) after 100 appended steps (+20 evals): only the new bytes;
- ``RunHistory.snapshot()`` on the 200,000-step history (what the Train screen takes several times a
  second) against copying its lists as the old snapshot did, and one chart's ``downsample`` of a column.

Each figure is printed with the 1-minute load average when it was taken (the machine may be shared).

    python bench/bench_follow.py [--steps N] [--repeat K]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpttui.core.events import (CheckpointEvent, EvalEvent, Event, RunLog, SampleEvent, Started,  # noqa: E402
                                StepEvent, read_run_events)
from gpttui.core.history import RunHistory, downsample, typed_event  # noqa: E402
from gpttui.core.runs import EventFollower  # noqa: E402
from gpttui.core.stepindex import INDEX_FILE  # noqa: E402


def events(start: int, stop: int, total: int) -> Iterator[Event]:
    """Steps ``start``..``stop - 1`` of a ``total``-step run, as its trainer would report them."""
    if start == 1:
        yield Started("bench", "", {}, {}, 1000, "cpu", "float32", total, total, 1024)
    for i in range(start, stop):
        yield StepEvent(i, 1, i * 1024, 3.0 - i / total, 4e-4, 1.0, 12345.6, i * 0.05, total, (total - i) * 0.05)
        if i % 5 == 1:
            yield EvalEvent(i, 1, i * 1024, 3.0, 3.1, 20.1, 22.2, 3.1)
        if i % 5000 == 1:
            yield SampleEvent(i, 1, "Every effort moves you", " forward, and the rest follows.")
        if i % 20000 == 0:
            yield CheckpointEvent(i, "bench", "/tmp/bench")


def write(log: RunLog, start: int, stop: int, total: int) -> None:
    for event in events(start, stop, total):
        log.append(event)


def same(a: RunHistory, b: RunHistory) -> bool:
    """Whether two histories hold the same curves, events and state."""
    sa, sb = a.snapshot(), b.snapshot()
    return (list_columns(a) == list_columns(b) and a.version == b.version
            and (sa.status, sa.started, sa.last_step, sa.last_eval, sa.samples, sa.checkpoints, sa.finished,
                 sa.failed, sa.best_val_loss)
            == (sb.status, sb.started, sb.last_step, sb.last_eval, sb.samples, sb.checkpoints, sb.finished,
                sb.failed, sb.best_val_loss))


def best_of(repeat: int, fn):
    """(fastest wall time, its CPU time, load average then, its result) of ``repeat`` calls. The CPU time
    is the figure to compare on a shared machine: a busy neighbour stretches the wall time."""
    best = (float("inf"), 0.0, 0.0, None)
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best[0]:
            best = (wall, cpu, os.getloadavg()[0], result)
    return best


def baseline(run_dir: Path) -> RunHistory:
    """The history as it was built before the fast path: every record through typed_event and feed."""
    history = RunHistory()
    for record in read_run_events(run_dir):
        event = typed_event(record)
        if event is not None:
            history.feed(event)
    return history


def attach(run_dir: Path) -> tuple[float, float, RunHistory]:
    """(read seconds, history seconds, history) of attaching a new follower to the run: read_new, then
    feed_records with all of it."""
    follower = EventFollower(run_dir)
    start = time.perf_counter()
    records = follower.read_new()
    read = time.perf_counter() - start
    history = RunHistory()
    history.feed_records(records)
    return read, time.perf_counter() - start - read, history


def attach_feed(run_dir: Path) -> RunHistory:
    """Attaching with EventFollower.feed: parsed and fed a piece at a time (what the app should call)."""
    history = RunHistory()
    EventFollower(run_dir).feed(history)
    return history


class NoOrjson:
    """Hide orjson from ``import`` (a None entry in sys.modules makes it raise ImportError)."""

    def __enter__(self):
        self.saved = sys.modules.get("orjson")
        sys.modules["orjson"] = None
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            del sys.modules["orjson"]
        else:
            sys.modules["orjson"] = self.saved


def has_orjson() -> bool:
    return importlib.util.find_spec("orjson") is not None


def list_columns(history: RunHistory) -> list[list]:
    """The history's columns as the lists the old Series kept."""
    return [list(c) for s in (history.steps, history.evals) for c in (s.step, s.tokens, *s.values.values())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, k = args.steps, args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GPTTUI_HOME"] = tmp
        log_writer = RunLog("bench")
        write(log_writer, 1, n + 1, n)
        run_dir = log_writer.dir
        log = run_dir / "events.jsonl"
        size = log.stat().st_size
        base_s, base_cpu, base_load, ref = best_of(k, lambda: baseline(run_dir))
        print(f"events.jsonl: {n:,} steps, {len(ref.steps) + len(ref.evals):,} steps and evals, {size / 1e6:.1f} MB; "
              f"steps.idx: {(run_dir / INDEX_FILE).stat().st_size / 1e6:.1f} MB")
        print(f"baseline, full re-parse into a RunHistory (read_run_events + typed_event + feed): "
              f"{base_s:.3f} s (cpu {base_cpu:.3f} s)  [load {base_load:.2f}]")

        def report(what: str, total: float, cpu: float, load: float) -> None:
            print(f"{what}: {total:.3f} s (cpu {cpu:.3f} s)  {total / base_s:.2f} of the baseline, "
                  f"{base_s / total:.1f}x faster (cpu: {cpu / base_cpu:.2f}, {base_cpu / cpu:.1f}x)  [load {load:.2f}]")

        modes = [("orjson", None)] if has_orjson() else []
        modes.append(("json", NoOrjson))
        for name, context in modes:
            def timed(fn):
                def run():
                    if context is None:
                        return fn(run_dir)
                    with context():
                        return fn(run_dir)
                return run

            total, cpu, load, history = best_of(k, timed(attach_feed))
            assert same(history, ref), "attaching with the step index gave another history"
            report(f"attach ({name}), EventFollower.feed with the step index", total, cpu, load)

            (run_dir / INDEX_FILE).rename(run_dir / "hidden.idx")  # an older gpttui's run
            try:
                total, cpu, load, history = best_of(k, timed(attach_feed))
                assert same(history, ref), "attaching without the step index gave another history"
                report(f"attach ({name}), EventFollower.feed without it (older runs)", total, cpu, load)
                total, cpu, load, (read, feed, history) = best_of(k, timed(attach))
                assert same(history, ref)
                report(f"attach ({name}), read_new {read:.3f} + feed_records {feed:.3f}", total, cpu, load)
            finally:
                (run_dir / "hidden.idx").rename(run_dir / INDEX_FILE)

        follower = EventFollower(run_dir)
        history = RunHistory()
        follower.feed(history)
        write(log_writer, n + 1, n + 101, n)
        start = time.perf_counter()
        new = follower.feed(history)
        refresh_s = time.perf_counter() - start
        print(f"refresh after {new} new events (EventFollower.feed): {refresh_s * 1e3:.2f} ms  "
              f"({refresh_s / base_s:.1e} of the baseline)  [load {os.getloadavg()[0]:.2f}]")

        snap_s, _, snap_load, snap = best_of(max(k, 5), history.snapshot)
        columns = list_columns(history)
        old_s = best_of(max(k, 5), lambda: [list(c) for c in columns])[0]  # what snapshot() copied before
        chart_s = best_of(max(k, 5), lambda: downsample(snap.steps.step, snap.steps.values["loss"], 400))[0]
        print(f"snapshot() of {len(snap.steps):,} steps: {snap_s * 1e6:.1f} us; copying the lists as before: "
              f"{old_s * 1e3:.2f} ms ({old_s / snap_s:,.0f}x); one chart's downsample of it: {chart_s * 1e3:.2f} ms  "
              f"[load {snap_load:.2f}]")


if __name__ == "__main__":
    main()
