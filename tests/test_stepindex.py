"""The step index (``steps.idx``): RunLog writes a record per step event before its line; attaching with it
(EventFollower.feed's first call) gives exactly the history that parsing every line gives, and every way the
index and the log can disagree falls back to parsing, with the same history."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gpttui.core import runs
from gpttui.core.events import (CheckpointEvent, EvalEvent, FinishedEvent, RunLog, SampleEvent, Started, StateEvent,
                                StepEvent, read_run_events)
from gpttui.core.history import RunHistory
from gpttui.core.runs import EventFollower
from gpttui.core.stepindex import INDEX_FILE, MAGIC, RECORD, StepIndexWriter, plan_attach, read_index
from tests.test_history import general, state


def step(i: int, **kw) -> StepEvent:
    values = dict(step=i, epoch=1, tokens_seen=i * 64, loss=5.0 - i / 100, lr=1e-3 * (1 + i % 3), grad_norm=0.5 + i,
                  tokens_per_sec=900.5 + i, elapsed=i * 0.1, total_steps=100, eta=None if i % 4 == 0 else 9.5)
    values.update(kw)
    return StepEvent(**values)


def run_events(n: int = 30, tail: str = "steps") -> list:
    """A run's events: started, steps with evals, a sample, a checkpoint, a pause and a resume, then ``tail``."""
    out = [Started("r", "/r", {}, {}, 1, "cpu", "float32", 100, 10.0, 64)]
    for i in range(1, n + 1):
        out.append(step(i))
        if i % 5 == 1:
            out.append(EvalEvent(i, 1, i * 64, 4.0, 4.5 - i / 100, 54.6, 90.0, 4.5 - i / 100))
        if i == 10:
            out += [SampleEvent(i, 1, "a", "ab"), CheckpointEvent(i, "c", "/c"), StateEvent(True, i),
                    StateEvent(False, i)]
    if tail == "paused":  # a status set after the last step: it must win over the steps' "running"
        out.append(StateEvent(True, n))
    elif tail == "finished":
        out += [EvalEvent(n, 1, n * 64, 3.0, 3.5, 20.1, 33.1, 3.5), FinishedEvent("completed", n, n * 64, 3.0, "c")]
    return out


def write_run(events: list) -> RunLog:
    log = RunLog("run")
    for event in events:
        log.append(event)
    return log


def log_bytes(log: RunLog) -> tuple[bytes, int]:
    data = (log.dir / "events.jsonl").read_bytes()
    return data, data.rfind(b"\n")


def attach(run_dir) -> RunHistory:
    history = RunHistory()
    EventFollower(run_dir).feed(history)
    return history


def assert_attach_equals_parsing(run_dir, indexed: bool) -> RunHistory:
    """Attaching gives the history that every line through typed_event gives; ``indexed``: the index was used."""
    data = (run_dir / "events.jsonl").read_bytes()
    plan = plan_attach(run_dir, data, data.rfind(b"\n"))
    assert (plan is not None) == indexed
    history = attach(run_dir)
    assert state(history) == state(general(read_run_events(run_dir)))
    return history


@pytest.mark.parametrize("tail", ["steps", "paused", "finished"])
def test_runlog_indexes_every_step_line_and_attaching_with_it_gives_the_parsed_history(tail):
    log = write_run(run_events(30, tail))
    data, end = log_bytes(log)
    rows = read_index(log.dir)
    lines = data[:end].split(b"\n")
    starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
    step_lines = [(int(s), line) for s, line in zip(starts, lines) if json.loads(line)["event"] == "step"]
    assert len(rows) == len(step_lines) == 30
    assert [(int(r["offset"]), int(r["length"])) for r in rows] == [(s, len(line)) for s, line in step_lines]
    assert rows["step"].tolist() == list(range(1, 31)) and rows["loss"][4] == step(5).loss

    history = assert_attach_equals_parsing(log.dir, indexed=True)
    snap = history.snapshot()
    assert snap.status == {"steps": "running", "paused": "paused", "finished": "finished"}[tail]
    assert snap.last_step == step(30) and len(snap.steps) == 30 and len(snap.evals) == 6 + (tail == "finished")
    assert snap.samples and snap.checkpoints


def test_a_live_run_the_index_ahead_of_the_log_and_a_partial_last_line():
    """The trainer writes a step's record before its line: a reader may see the record and a partial line
    (or none); only complete lines count, and following on reads the rest."""
    log = write_run(run_events(12))
    data, _ = log_bytes(log)
    line = json.dumps(step(13).to_dict()).encode()
    log._index.append(len(data), len(line), step(13))  # the record, then half the line
    with open(log.dir / "events.jsonl", "ab") as f:
        f.write(line[:25])
    follower = EventFollower(log.dir)
    history = RunHistory()
    assert follower.feed(history) == len(read_run_events(log.dir))
    assert history.snapshot().last_step == step(12) and len(history.steps) == 12
    with open(log.dir / "events.jsonl", "ab") as f:
        f.write(line[25:] + b"\n")
    log._size += len(line) + 1
    log.append(step(14))
    assert follower.feed(history) == 2
    assert state(history) == state(general(read_run_events(log.dir)))
    assert assert_attach_equals_parsing(log.dir, indexed=True).snapshot().last_step == step(14)


def _cut_index(log: RunLog) -> None:
    raw = (log.dir / INDEX_FILE).read_bytes()
    (log.dir / INDEX_FILE).write_bytes(raw[:-RECORD.itemsize - 5])  # a record lost, another cut


def _foreign_index(log: RunLog) -> None:
    raw = (log.dir / INDEX_FILE).read_bytes()
    (log.dir / INDEX_FILE).write_bytes(b"gpttui steps v9\n" + raw[len(MAGIC):])


def _no_index(log: RunLog) -> None:
    (log.dir / INDEX_FILE).unlink()


def _unindexed_step(log: RunLog) -> None:  # another writer (an older gpttui) appended a step
    with open(log.dir / "events.jsonl", "ab") as f:
        f.write(json.dumps(step(31).to_dict()).encode() + b"\n")


def _merged_line(log: RunLog) -> None:  # a crash mid-line, then more lines: the two merge into one bad line
    data, _ = log_bytes(log)
    line = json.dumps(step(31).to_dict()).encode()
    log._index.append(len(data), len(line), step(31))
    with open(log.dir / "events.jsonl", "ab") as f:
        f.write(line[:40])
    log._size += 40
    log.append(step(32))
    log.append(EvalEvent(32, 1, 32 * 64, 4.0, 4.1, 54.6, 60.3, 4.1))


def _non_finite(log: RunLog) -> None:  # JSON writes NaN as null: the event reader judges that line
    log.append(step(31, grad_norm=math.nan))
    log.append(step(32, tokens_per_sec=math.inf))


def _moved_offsets(log: RunLog) -> None:  # records of another log (offsets one byte off)
    raw = bytearray((log.dir / INDEX_FILE).read_bytes())
    rows = np.frombuffer(bytes(raw[len(MAGIC):]), RECORD).copy()
    rows["offset"] += 1
    (log.dir / INDEX_FILE).write_bytes(MAGIC + rows.tobytes())


@pytest.mark.parametrize("spoil", [_no_index, _cut_index, _foreign_index, _unindexed_step, _merged_line, _non_finite,
                                   _moved_offsets])
def test_an_index_that_does_not_line_up_falls_back_to_parsing_with_the_same_history(spoil):
    log = write_run(run_events(30))
    spoil(log)
    assert_attach_equals_parsing(log.dir, indexed=False)


def test_the_writer_realigns_a_cut_index_and_leaves_a_foreign_one_alone(tmp_path):
    log = write_run(run_events(5))
    log.close()
    path = log.dir / INDEX_FILE
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])  # a crash cut the last record
    writer = StepIndexWriter(log.dir)
    assert writer.active and path.stat().st_size == len(raw) - RECORD.itemsize
    writer.append(999, 10, step(6))
    writer.close()
    assert read_index(log.dir)["step"].tolist() == [1, 2, 3, 4, 6]

    foreign = tmp_path / INDEX_FILE
    foreign.write_bytes(b"something else entirely")
    writer = StepIndexWriter(tmp_path)
    writer.append(0, 10, step(1))
    assert not writer.active and foreign.read_bytes() == b"something else entirely"
    assert read_index(tmp_path) is None


def test_a_crashed_runs_last_checkpoint_is_found_without_parsing_the_log(tmp_path):
    log = write_run(run_events(12) + [SampleEvent(12, 1, "x", '{"event": "checkpoint", "name": "fake"}'),
                                      CheckpointEvent(12, "second", "/s"), step(13)])
    assert runs._last_checkpoint_in_events(log.dir) == "second"
    assert runs._last_checkpoint_in_events(tmp_path) is None
