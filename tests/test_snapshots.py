"""The app's looks: pytest-textual-snapshot pictures of every screen at 80×24 and 120×40, in the dark and the
light theme -- a mid-run Train screen with a real run's curves, a Generate screen with its probability colours
and the alternatives of a token, the Checkpoints table, the Runs list, the Dataset statistics -- plus the help
screen and Compare.

After a deliberate change of looks: ``python -m pytest tests/test_snapshots.py --snapshot-update``, then LOOK at
every changed SVG in ``tests/__snapshots__/test_snapshots/`` (e.g. converted with cairosvg) before committing.

The pictures must not depend on when or where they are taken, so the world they show is pinned:
- one ``GPTTUI_HOME`` at a fixed path (paths show on screen), held under a lock while this module runs;
- the Train screen follows a run replayed from ``tests/data/tiny_run.jsonl`` (a real run's events, recorded
  by ``tests/data/record_tiny_run.py``), stopped at step 200 of 300 and live (this process is its writer);
- dates in the past (a checkpoint from 2025, runs started 4 days ago), measured speeds fixed after the fact
  (a reply's tok/s), inputs' cursors not blinking. The Generate test trains its tiny model here (seeded, CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import random
import shutil
import socket
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from textual.widgets import Input, Select

from gpttui.core import paths
from gpttui.core.config import GPTConfig
from gpttui.core.data import DataSettings, prepare_data
from gpttui.core.events import RunLog
from gpttui.core.history import typed_event
from gpttui.core.procs import _process_start
from gpttui.core.tokenizer import ByteTokenizer
from gpttui.core.train import TrainConfig, Trainer
from gpttui.tui.app import create_app
from tui_helpers import settle, until, wait_workers

HOME = Path(tempfile.gettempdir()) / f"gpttui-snapshots-{os.getuid()}"
RUN = Path(__file__).parent / "data" / "tiny_run.jsonl"
LIVE_ID, DONE_ID, CHAT_ID = "20261124-093000-a1b2", "20261124-081500-c3d4", "20261123-101500-e5f6"
LIVE_STEP = 200
BYTES = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
THEMES = ["textual-dark", "textual-light"]


def _records() -> list[dict]:
    return [json.loads(line) for line in RUN.read_text(encoding="utf-8").splitlines()]


def _write_run(run_id: str, records: list[dict], state: str, save_name: str, scale: float = 1.0) -> None:
    """A run directory as a trainer leaves it: events (with their step index) and status.json."""
    log = RunLog(run_id)
    last = {}
    for record in records:
        record = dict(record)
        if record["event"] == "started":
            record.update(run_id=run_id, run_dir=str(log.dir), save_name=save_name)
            record["config"] = {**record["config"], "save_name": save_name}
        for key in ("loss", "train_loss", "val_loss"):  # a second run: the same curve, a little higher
            if isinstance(record.get(key), float):
                record[key] *= scale
        event = typed_event(record)
        log.append(event)
        last[record["event"]] = record
    log.close()
    started = datetime.now(timezone.utc) - timedelta(days=4.25)
    status = {"run_id": run_id, "run_dir": str(log.dir), "state": state, "pid": os.getpid(),
              "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
              "started": started.isoformat(timespec="seconds"), "heartbeat": time.time(),
              "step": last["step"]["step"], "total_steps": last["step"]["total_steps"], "save_name": save_name,
              "last_checkpoint": save_name if state == "finished" else None,
              "best_val_loss": last["eval"]["best_val_loss"], "device": "cpu"}
    (log.dir / "status.json").write_text(json.dumps(status), encoding="utf-8")


def _train_checkpoint(name: str) -> None:
    """A tiny byte-level model trained here (seeded, on the CPU), saved as ``name`` with a date in 2025."""
    random.seed(0)  # the RNG states the checkpoint keeps pickle to a length of their own: its size on screen
    np.random.seed(0)
    data = prepare_data(BYTES, ByteTokenizer())
    config = TrainConfig(max_steps=120, lr=4e-3, eval_freq=20, eval_iter=1, sample_tokens=0, save_name=name,
                         device="cpu", seed=123)
    model = GPTConfig(vocab_size=257, context_length=32, emb_dim=48, n_heads=2, n_layers=2, drop_rate=0.0)
    assert Trainer(data, ByteTokenizer(), config, model).run().event == "finished"
    meta_path = paths.checkpoints_dir() / name / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.update(created="2025-06-02T10:30:00+00:00", run_id=CHAT_ID, run_dir=str(paths.runs_dir() / CHAT_ID))
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    for status_path in paths.runs_dir().glob("*/status.json"):  # its run: a fixed id, started 5 days ago
        status = json.loads(status_path.read_text(encoding="utf-8"))
        if status.get("save_name") == name:
            run_dir = status_path.parent.rename(paths.runs_dir() / CHAT_ID)
            status.update(run_id=CHAT_ID, run_dir=str(run_dir),
                          started=(datetime.now(timezone.utc) - timedelta(days=5.25)).isoformat(timespec="seconds"))
            (run_dir / "status.json").write_text(json.dumps(status), encoding="utf-8")


@pytest.fixture(scope="module")
def world():
    """The pinned GPTTUI_HOME: a tiny checkpoint, a live run at step 200 and a finished one."""
    lock = open(f"{HOME}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # another test session on this machine waits: one HOME
    saved = os.environ.get("GPTTUI_HOME")
    try:
        shutil.rmtree(HOME, ignore_errors=True)
        os.environ["GPTTUI_HOME"] = str(HOME)
        records = _records()
        live = [r for r in records if r.get("step", 0) <= LIVE_STEP and r["event"] not in ("finished", "checkpoint")]
        _write_run(LIVE_ID, live, "running", "tiny-pydoc")
        _write_run(DONE_ID, records, "finished", "tiny-pydoc-warm", scale=1.08)
        _train_checkpoint("tiny-chat")
        yield HOME
    finally:
        if saved is None:
            os.environ.pop("GPTTUI_HOME", None)
        else:
            os.environ["GPTTUI_HOME"] = saved
        shutil.rmtree(HOME, ignore_errors=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@pytest.fixture
def home(world, gpttui_home, monkeypatch):
    """Each test in the pinned home, with no remembered dataset or recent list from the one before."""
    monkeypatch.setenv("GPTTUI_HOME", str(world))
    monkeypatch.setenv("GPTTUI_MAX_MEMORY", "4G")  # the Train screen's memory line shows the free memory
    shutil.rmtree(paths.config_dir(), ignore_errors=True)
    return world


async def steady(app, pilot, theme: str, workers: bool = True) -> None:
    """The theme set, the screens' workers done (unless ``workers`` is False: one follows a live run), and
    no cursor blinking."""
    app.theme = theme
    if workers:
        await settle(app, pilot)
    await pilot.pause()
    for widget in app.screen.query(Input):
        widget.cursor_blink = False
    await pilot.pause()


async def follow_live_run(app, pilot) -> None:
    """Attach to the live run (as the Runs screen's Enter does) and wait until its past is read."""
    session = app.state.follow(app, HOME / "runs" / LIVE_ID)
    await until(pilot, lambda: len(session.history.steps) >= LIVE_STEP, "the live run's past")
    assert len(session.history.steps) == LIVE_STEP


# --- every screen, two sizes, two themes -------------------------------------------------------------

@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_dataset_screen(snap_compare, home, gpt2_tokenizer, size, theme):
    """The built-in corpus with GPT-2's tokenizer: statistics, split, windows and checks."""
    app = create_app(settings=DataSettings(source="builtin:pydoc"))

    async def run_before(pilot):
        await wait_workers(app, ("dataset",))
        await steady(app, pilot, theme)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_train_screen_mid_run(snap_compare, home, size, theme):
    """A live run at step 200 of 300, attached: its status, loss/perplexity/lr/speed charts and samples."""
    app = create_app(settings=BYTES)

    async def run_before(pilot):
        await follow_live_run(app, pilot)
        await pilot.press("f3")
        await steady(app, pilot, theme)
        app.screen.redraw()  # (what its 0.25 s timer does)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
    app.state.unfollow()


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_generate_screen_with_probabilities(snap_compare, home, size, theme):
    """A sampled reply coloured by probability, a token picked, the alternatives the model weighed."""
    app = create_app(settings=BYTES)

    async def run_before(pilot):
        app.state.generate_checkpoint = "tiny-chat"
        await pilot.press("f4")
        await settle(app, pilot)
        screen = app.screen
        screen.query_one("#sampling-preset", Select).value = "creative"  # temperature 0.9, top-p 0.95
        await pilot.pause()
        screen.query_one("#max_new_tokens", Input).value = "48"
        screen.query_one("#seed", Input).value = "7"
        screen.query_one("#prompt", Input).value = "The return value"
        await pilot.press("enter")
        await wait_workers(app, ("generate",))
        await pilot.pause()
        turn = screen.turns[-1]
        assert turn.result is not None and turn.error is None
        turn.result = dataclasses.replace(turn.result, tokens_per_sec=250.0)  # a measured speed, pinned
        await pilot.press("f6", "f8", "f8", "f8")  # colours on, then the third token picked
        for view in screen.views:
            view.show()
        await steady(app, pilot, theme)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_checkpoints_screen(snap_compare, home, size, theme):
    """The table fitted to the width, the highlighted checkpoint's details and its loss curve."""
    app = create_app(settings=BYTES)

    async def run_before(pilot):
        await pilot.press("f5")
        await steady(app, pilot, theme)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_runs_screen(snap_compare, home, size, theme):
    """Every run, live first, one marked for comparison."""
    app = create_app(settings=BYTES)

    async def run_before(pilot):
        await pilot.press("f10")
        await wait_workers(app, ("list-runs",))
        await pilot.pause()
        await pilot.press("space")
        await steady(app, pilot, theme)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


# --- modals -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_help_on_the_train_screen(snap_compare, home, size):
    """F1 on the Train screen: its purpose and keys, the screens' keys, the keys that work everywhere."""
    app = create_app(settings=BYTES)

    async def run_before(pilot):
        await pilot.press("f3")
        await settle(app, pilot)
        await pilot.press("f1")
        await steady(app, pilot, "textual-dark")

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_compare_two_runs(snap_compare, home, size):
    """The live run and a finished one overlaid, one colour per run, against steps."""
    app = create_app(settings=BYTES)

    async def run_before(pilot):
        from gpttui.tui.screens.compare import CompareScreen

        screen = CompareScreen([HOME / "runs" / LIVE_ID, HOME / "runs" / DONE_ID])
        app.push_screen(screen)
        await until(pilot, lambda: len(screen.runs) == 2, "both runs read")  # (the live one is followed on)
        await steady(app, pilot, "textual-dark", workers=False)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_the_pinned_world_is_what_the_pictures_show(home):
    """The replayed runs read back as the pictures need them: one live at step 200, one finished."""
    from gpttui.core.runs import list_runs

    runs = {r.run_id: r for r in list_runs()}
    assert runs[LIVE_ID].state == "running" and runs[LIVE_ID].step == LIVE_STEP
    assert runs[DONE_ID].state == "finished" and runs[DONE_ID].step == 300
    with contextlib.suppress(OSError):
        assert not (paths.config_dir() / "last_dataset.json").exists()
