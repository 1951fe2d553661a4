"""RunHistory: the fast path from records (RunHistory.feed_records) gives the same history as the general
one (typed_event + feed, record by record), for a real run's events and for damaged ones; snapshots share
the columns instead of copying them."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from gpttui.core import history as H
from gpttui.core import paths, runs
from gpttui.core.config import GPTConfig
from gpttui.core.data import DataSettings, prepare_data
from gpttui.core.events import (CheckpointEvent, EvalEvent, FailedEvent, FinishedEvent, SampleEvent, StateEvent,
                                StepEvent, event_record, read_run_events)
from gpttui.core.history import RunHistory, downsample, typed_event
from gpttui.core.runs import EventFollower
from gpttui.core.stepindex import plan_attach
from gpttui.core.tokenizer import ByteTokenizer
from gpttui.core.train import TrainConfig, Trainer

TINY = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.1)


def general(records) -> RunHistory:
    """The reference: every record through typed_event and feed, one by one."""
    history = RunHistory()
    for record in records:
        event = typed_event(record)
        if event is not None:
            history.feed(event)
    return history


def _plain(values) -> list:
    return ["nan" if isinstance(v, float) and math.isnan(v) else v for v in values]


def _event(e):
    return None if e is None else (type(e).__name__, _plain(json.loads(json.dumps(e.to_dict(), default=str)).values()))


def state(history: RunHistory) -> dict:
    """Everything a monitor reads from a history, comparable with ==, NaN included."""
    snap = history.snapshot()
    out = {"version": history.version}
    for name in ("status", "best_val_loss"):
        out[name] = getattr(snap, name)
    for name in ("started", "last_step", "last_eval", "finished", "failed"):
        out[name] = _event(getattr(snap, name))
    assert snap.last_step is None or type(snap.last_step) is StepEvent  # a real event for the status line
    assert snap.last_eval is None or type(snap.last_eval) is EvalEvent
    out["samples"] = [_event(s) for s in snap.samples]
    out["checkpoints"] = [_event(c) for c in snap.checkpoints]
    for name in ("steps", "evals"):
        series = getattr(snap, name)
        out[name] = {"step": list(series.step), "tokens": list(series.tokens),
                     **{k: _plain(v) for k, v in series.values.items()}}
        assert all(len(v) == len(series) for v in series.values.values())
    return out


def _step(i, **kw):
    rec = {"event": "step", "step": i, "epoch": 1, "tokens_seen": i * 64, "loss": 5.0 - i / 10, "lr": 1e-3,
           "grad_norm": 0.5, "tokens_per_sec": 900.5, "elapsed": i * 0.1, "total_steps": 100, "eta": 9.5}
    rec.update(kw)
    return rec


def _eval(i, **kw):
    rec = {"event": "eval", "step": i, "epoch": 1, "tokens_seen": i * 64, "train_loss": 4.0, "val_loss": 4.5,
           "train_ppl": 54.6, "val_ppl": 90.0, "best_val_loss": 4.5 - i / 100}
    rec.update(kw)
    return rec


def _as_logged(event) -> dict:
    """An event as RunLog writes it and a reader parses it back (NaN as null, inf as "inf")."""
    return json.loads(json.dumps(event_record(event)))


def damaged_records() -> list:
    """Sound records of every kind, interleaved with everything a file can hold instead."""
    reordered = dict(reversed(list(_step(7).items())))
    no_eta = _step(8)
    del no_eta["eta"]
    missing = _step(9)
    del missing["lr"]
    return [
        {"event": "started", "run_id": "r", "run_dir": "/r", "config": {}, "model_config": {}, "n_params": 1,
         "device": "cpu", "dtype": "float32", "total_steps": 100, "steps_per_epoch": 10.0, "tokens_per_step": 64},
        _step(1), _step(2, eta=None), _eval(2),
        _as_logged(StepEvent(3, 1, 192, math.nan, 1e-3, math.inf, 1.0, 0.3, 100, None)),  # null loss, "inf" norm
        _as_logged(EvalEvent(3, 1, 192, math.nan, math.inf, math.inf, -math.inf, math.inf)),  # best "inf"
        _step(4, loss=math.nan), _step(5, grad_norm=-math.inf),  # NaN as a JSON reader may give it
        _step(6, lr=0), reordered, no_eta, missing, _step(10, extra=1),
        _step(11, step="11"), _step(12, step=True), _step(13, loss=True), _step(14, tokens_seen=2 ** 70),
        _step(15, step=1.5), _step(16, eta="soon"), _step(17, epoch=None), _step(18, total_steps=2.0),
        _step(19, loss=[1.0]), _step(20, event="steps"), {**_step(21), "event": ["step"]},
        _eval(21, best_val_loss=None), _eval(22, val_loss=None), _eval(23, epoch="1"), _eval(24, step=2 ** 64),
        {**_eval(25), "extra": 0}, _eval(26, best_val_loss=math.nan), _eval(27, train_ppl=3),
        {"event": "sample", "step": 27, "epoch": 1, "prompt": "a", "text": "ab"},
        {"event": "sample", "step": 27, "epoch": 1, "prompt": "a", "text": 5},
        {"event": "checkpoint", "step": 27, "name": "c", "path": "/c"},
        {"event": "state", "paused": True, "step": 27},
        {"event": "mystery", "step": 28}, {"step": 29}, [1, 2], "text", 3, None, {},
        _step(30), {"event": "state", "paused": False, "step": 30}, _step(31, loss=None),
        {"event": "state", "paused": True, "step": 31},
        {"event": "failed", "message": "boom", "step": 31, "last_checkpoint": "c"},
        {"event": "finished", "reason": "stopped", "step": 31, "tokens_seen": 1, "elapsed": 1.0},
    ]


def test_fast_path_gives_the_general_paths_history_for_damaged_and_odd_records(monkeypatch):
    records = damaged_records()
    reference = state(general(records))
    assert reference["steps"]["step"] == [1, 2, 3, 4, 5, 6, 7, 8, 30, 31]  # the damaged steps are skipped
    assert reference["evals"]["step"] == [2, 3, 22, 26, 27]
    assert reference["status"] == "stopped" and reference["last_step"][1][1] == 31

    assert state(RunHistory.from_events(records)) == reference
    for chunk in (1, 2, 3, 7):  # the lock is taken per chunk: any cut gives the same history
        monkeypatch.setattr(H, "FEED_CHUNK", chunk)
        assert state(RunHistory.from_events(records)) == reference
    monkeypatch.undo()

    fed = RunHistory()  # fed in pieces, as a follower does
    for i in range(0, len(records), 5):
        fed.feed_records(records[i:i + 5])
    assert state(fed) == reference


@pytest.mark.parametrize("tail", [
    [_step(40)],  # the newest event is a fast-path step ...
    [_step(40), {"event": "state", "paused": True, "step": 40}],  # ... or an event after it ...
    [_step(40), _step(41, loss=None)],  # ... or a step that takes the general path
    [_step(41, loss=None), _step(42)],
    [_eval(40), _eval(41, val_loss=None)],
    [_eval(41, val_loss=None), _eval(42)],
    [_eval(40), _eval(41, best_val_loss=math.nan)],  # a NaN best loss leaves the best one shown
])
def test_status_last_step_and_last_eval_follow_the_order_of_the_records(tail):
    records = damaged_records()[:2] + tail
    assert state(RunHistory.from_events(records)) == state(general(records))


@pytest.fixture(params=["orjson", "json"])
def parser(request, monkeypatch):
    """The follower's two JSON parsers: orjson (a dependency) and the json module it falls back to."""
    if request.param == "json":
        monkeypatch.setitem(sys.modules, "orjson", None)  # `import orjson` now raises ImportError
    else:
        pytest.importorskip("orjson", reason="orjson not installed (pip install orjson)")
    return request.param


@pytest.mark.parametrize("piece_bytes", [1, 300, 4 << 20])  # a piece: shorter than a line, some lines, all
def test_a_followed_log_with_a_partial_last_line_gives_the_same_history(tmp_path, monkeypatch, piece_bytes, parser):
    monkeypatch.setattr(runs, "PIECE_BYTES", piece_bytes)
    lines = [json.dumps(r) for r in damaged_records()] + ["{broken", "", json.dumps(_step(50))]
    text = "\n".join(lines) + "\n" + json.dumps(_step(51))[:30]  # a writer caught mid-line
    log = tmp_path / "events.jsonl"
    log.write_text(text, encoding="utf-8")
    reference = general(read_run_events(tmp_path))

    history = RunHistory()  # read_new + feed_records, as a caller that wants the records does
    history.feed_records(EventFollower(tmp_path).read_new())
    assert state(history) == state(reference)
    assert state(RunHistory.from_run_dir(tmp_path)) == state(reference)

    follower = EventFollower(tmp_path)  # EventFollower.feed, as the monitor does
    fed = RunHistory()
    assert follower.feed(fed) == len(EventFollower(tmp_path).read_new())
    assert state(fed) == state(reference) and fed.snapshot().last_step.step == 50
    assert follower.feed(fed) == 0  # nothing new: the partial line waits for its newline
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(_step(51))[30:] + "\n" + json.dumps(_eval(51)) + "\n")
    assert follower.feed(fed) == 2
    assert fed.snapshot().last_step.step == 51 and fed.snapshot().last_eval.step == 51


def test_fast_path_gives_the_same_history_for_a_real_runs_events(tmp_path):
    corpus = tmp_path / "corpus.txt"
    from gpttui.core.data import _builtin_pydoc

    corpus.write_text(_builtin_pydoc()[:20_000], encoding="utf-8")
    data = prepare_data(DataSettings(source=str(corpus), tokenizer="bytes", context_length=32, batch_size=4),
                        ByteTokenizer())
    config = TrainConfig(epochs=1, max_steps=6, lr=3e-3, warmup_steps=2, eval_freq=2, eval_iter=1,
                         start_context="def ", sample_tokens=4, checkpoint_every=3, device="cpu")
    trainer = Trainer(data, ByteTokenizer(), config, TINY)
    trainer.run()
    run_dir = paths.runs_dir() / trainer.run_id
    records = read_run_events(run_dir)

    steps = [r for r in records if r.get("event") == "step"]
    evals = [r for r in records if r.get("event") == "eval"]
    assert len(steps) == 6 and evals  # RunLog's records are the shape the fast path takes (else it is dead code)
    assert all(tuple(r) == H.STEP_KEYS and isinstance(r["loss"], float) for r in steps)
    assert all(tuple(r) == H.EVAL_KEYS for r in evals)

    data = (run_dir / "events.jsonl").read_bytes()
    plan = plan_attach(run_dir, data, data.rfind(b"\n"))  # a real run is indexed: attaching uses steps.idx
    assert plan is not None and len(plan.steps) == 6
    fast = RunHistory.from_run_dir(run_dir)
    assert state(fast) == state(general(records))
    snap = fast.snapshot()
    assert snap.status == "finished" and snap.last_step.step == 6 and len(snap.steps) == 6
    assert snap.checkpoints and snap.samples and snap.best_val_loss is not None


def test_snapshots_share_columns_frozen_at_their_length():
    history = RunHistory()
    history.feed_records([_step(i) for i in range(1, 4)] + [_eval(3)])
    snap = history.snapshot()
    history.feed_records([_step(i) for i in range(4, 2000)])  # the feeding thread appends after the snapshot

    assert len(snap.steps) == 3 and snap.steps.step == [1, 2, 3] and snap.steps.step[-1] == 3
    assert snap.steps.values["loss"] == [5.0 - i / 10 for i in (1, 2, 3)] and snap.evals.values["val_loss"] == [4.5]
    assert snap.steps.step[1:] == [2, 3] and list(snap.steps.tokens) == [64, 128, 192]
    with pytest.raises(IndexError):
        snap.steps.step[3]
    held = np.asarray(snap.steps.values["loss"])  # a chart holding an array of a column ...
    assert held.tolist() == [5.0 - i / 10 for i in (1, 2, 3)]
    history.feed(StepEvent(2000, 1, 1, 1.0, 1.0, 1.0, 1.0, 1.0, 1))  # ... never blocks an append (BufferError)
    later = history.snapshot()
    assert len(later.steps) == 2000 and later.steps.step[-1] == 2000
    xs, ys = downsample(later.steps.step, later.steps.values["loss"], 100)
    last_bucket = [5.0 - i / 10 for i in range(1981, 2000)] + [1.0]
    assert len(xs) == 100 and xs[-1] == 2000 and ys[-1] == pytest.approx(np.mean(last_bucket))


def test_other_events_still_feed_one_by_one():
    history = RunHistory()
    history.feed(SampleEvent(1, 1, "a", "ab"))
    history.feed(CheckpointEvent(1, "c", "/c"))
    history.feed(StateEvent(True, 1))
    assert history.snapshot().status == "paused"
    history.feed(FailedEvent("x", 1))
    history.feed(FinishedEvent("completed", 1, 1, 1.0))
    snap = history.snapshot()
    assert snap.status == "finished" and len(snap.samples) == 1 and len(snap.checkpoints) == 1
