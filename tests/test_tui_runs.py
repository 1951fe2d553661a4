"""The app and runs in other processes (issue 12, item 4): the Runs screen lists every run, the Train
screen monitors and steers a `gpttui train` process through its run directory, a killed trainer reads as
crashed, and a run started "in the background" outlives the app. Real processes, a tiny model, the
pilot; every wait is a deadline on a condition."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from textual.widgets import Button, DataTable, Input, Select

from gpttui.core import checkpoints, paths
from gpttui.core.data import DataSettings
from gpttui.core.runs import run_status, send_command
from gpttui.core.train import FailedEvent, FinishedEvent, StateEvent
from gpttui.tui.app import create_app
from gpttui.tui.dialogs import QuitScreen
from gpttui.tui.messages import TrainingEvent
from gpttui.tui.screens.runs import RunsListed, RunsScreen
from gpttui.tui.screens.train import TrainScreen
from gpttui.tui.state import BACKGROUND, FollowedRun
from test_faults import TINY_FLAGS, cli, corpus  # noqa: F401  (corpus is a fixture)
from test_runs import env, events_of, gpttui_cmd, last_step, pids, wait_for  # noqa: F401  (pids is a fixture)
from test_tui import set_tiny_model, text_of, wait_dataset
from tui_helpers import Messages, until

DEADLINE_S = 90




async def event_after(messages: Messages, mark: int, predicate):
    message = await messages.wait_for(lambda m: isinstance(m, TrainingEvent) and predicate(m.event),
                                      timeout=DEADLINE_S, start=mark)
    return message.event


def detached_run(corpus, pids, name: str) -> Path:  # noqa: F811
    """`gpttui train --detach` of a tiny model on a run far longer than the test, training."""
    launched = cli("train", "--data", str(corpus), *TINY_FLAGS, "--max-steps", "100000", "--save", name,
                   "--detach", "--json")
    assert launched.returncode == 0, launched.stderr
    info = json.loads(launched.stdout)
    pids.append(info["pid"])
    run_dir = Path(info["run_dir"])
    wait_for(lambda: run_status(run_dir).state == "running" and last_step(run_dir) > 0, "the run to train")
    return run_dir


async def runs_listed(app, pilot, messages: Messages, predicate) -> RunsListed:
    """Open the Runs screen (F10) and wait for a listing that satisfies ``predicate``."""
    await pilot.press("f10")
    await pilot.pause()
    assert isinstance(app.screen, RunsScreen)
    listed = await messages.wait_for(lambda m: isinstance(m, RunsListed) and predicate(m), timeout=DEADLINE_S)
    await pilot.pause()
    return listed


def row_of(app, run_id: str) -> dict:
    table = app.screen.query_one(DataTable)
    return {column.key.value: str(value) for column, value in zip(table.columns.values(), table.get_row(run_id))}


async def test_attach_to_a_cli_run_see_its_steps_and_steer_it_through_its_run_directory(corpus, pids):  # noqa: F811
    run_dir = detached_run(corpus, pids, "outside")
    messages = Messages()
    app = create_app(settings=DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32,
                                           batch_size=4))
    async with app.run_test(size=(150, 45), message_hook=messages) as pilot:
        await runs_listed(app, pilot, messages, lambda m: any(r.run_id == run_dir.name for r in m.runs))
        assert app.screen.highlighted_run() == run_dir.name  # the live run comes first
        row = row_of(app, run_dir.name)
        assert row["name"] == "outside" and "running" in row["state"] and row["device"] == "cpu"
        await pilot.press("p")  # steer the highlighted run from the list
        await until(pilot, lambda: run_status(run_dir).state == "paused", "p to pause it")
        await until(pilot, lambda: "paused" in row_of(app, run_dir.name)["state"], "the list to show it paused")
        await pilot.press("r")
        await until(pilot, lambda: run_status(run_dir).state == "running", "r to resume it")

        await pilot.press("enter")  # attach
        await pilot.pause()
        assert isinstance(app.screen, TrainScreen)
        followed = app.state.monitored
        assert isinstance(followed, FollowedRun) and followed.run_dir == run_dir and followed.kind == BACKGROUND
        seen = (await until(pilot, lambda: followed.history.last_step, "the past steps")).step
        await until(pilot, lambda: followed.history.last_step.step > seen + 2, "new steps, as they come")
        await until(pilot, lambda: f"step {followed.history.last_step.step:,}/" in text_of(app, "#status")
                    or None, "the status line to show the step")
        assert "running" in text_of(app, "#status") and "outside" in app.sub_title

        mark = messages.mark()
        await pilot.press("f7")  # pause, through commands/
        await event_after(messages, mark, lambda e: isinstance(e, StateEvent) and e.paused)
        await until(pilot, lambda: run_status(run_dir).state == "paused", "status.json to read paused")
        await until(pilot, lambda: str(app.screen.query_one("#pause", Button).label) == "Resume F7", "Resume F7")
        assert "paused" in text_of(app, "#status")
        mark = messages.mark()
        await pilot.press("f7")
        await event_after(messages, mark, lambda e: isinstance(e, StateEvent) and not e.paused)
        await until(pilot, lambda: run_status(run_dir).state == "running", "status.json to read running")

        mark = messages.mark()
        await pilot.press("f8")  # stop: it saves
        finished = await event_after(messages, mark, lambda e: isinstance(e, FinishedEvent))
        assert finished.reason == "stopped" and finished.checkpoint == "outside"
        assert checkpoints.load_checkpoint("outside").meta["step"] == finished.step
        await until(pilot, lambda: not followed.running, "the follower to end with the run")
        assert followed.done.wait(5)
        await until(pilot, lambda: app.screen.query_one("#start", Button).disabled is False, "Start enabled")


async def test_a_killed_trainer_shows_as_crashed_with_its_last_checkpoint(corpus, pids):  # noqa: F811
    trainer = subprocess.Popen(gpttui_cmd("train", "--data", str(corpus), *TINY_FLAGS, "--max-steps", "100000",
                                          "--checkpoint-every", "5", "--save", "crashy", "--run-id", "crash-run"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    pids.append(trainer.pid)
    run_dir = paths.runs_dir() / "crash-run"
    wait_for(lambda: events_of(run_dir, "checkpoint"), "a checkpoint")
    trainer.kill()  # kill -9: no final event, no last status
    trainer.wait(timeout=30)

    messages = Messages()
    app = create_app(settings=DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32,
                                           batch_size=4))
    async with app.run_test(size=(150, 45), message_hook=messages) as pilot:
        await runs_listed(app, pilot, messages, lambda m: [r.state for r in m.runs] == ["crashed"])
        row = row_of(app, "crash-run")
        assert "crashed" in row["state"] and row["checkpoint"] == "crashy" and row["name"] == "crashy"
        await pilot.press("p")  # nothing to pause: said, nothing sent
        await pilot.pause()
        assert not (run_dir / "commands").exists() or not list((run_dir / "commands").iterdir())

        await pilot.press("space")  # mark it; one run is not enough to compare
        await pilot.pause()
        assert row_of(app, "crash-run")["mark"] == "●" and app.screen.marked == {"crash-run"}
        await pilot.press("c")
        await pilot.pause()
        assert any("Mark two or more runs" in n.message for n in app._notifications)

        await pilot.press("enter")
        failed = await messages.event(lambda e: isinstance(e, FailedEvent), timeout=DEADLINE_S)  # the notification
        assert "crashed" in failed.message and "'crashy'" in failed.message and failed.last_checkpoint == "crashy"
        await until(pilot, lambda: "crashed" in text_of(app, "#status"), "the status line to say crashed")
        assert "crashy" in text_of(app, "#status")
        assert not app.state.monitored.running and app.screen.query_one("#pause", Button).disabled


async def test_a_background_start_outlives_the_app_and_quitting_does_not_ask(corpus, pids):  # noqa: F811
    messages = Messages()
    app = create_app(settings=DataSettings(source=str(corpus), tokenizer="bytes", context_length=32, batch_size=4))
    async with app.run_test(size=(150, 45), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        await set_tiny_model(app, pilot)  # saves as "pilot"
        app.screen.query_one("#max_steps", Input).value = "100000"
        app.screen.query_one("#run-where", Select).value = BACKGROUND
        await pilot.press("f6")
        followed = await until(pilot, lambda: isinstance(app.state.monitored, FollowedRun) and app.state.monitored,
                               "the app to follow its background run")
        run_dir = followed.run_dir
        status = await until(pilot, lambda: (s := run_status(run_dir)).state == "running" and s, "it to run")
        pid = status.pid
        pids.append(pid)
        assert pid != os.getpid() and os.getsid(pid) == pid  # a process of its own, in its own session
        assert not app.state.session.running  # nothing trains in the app
        await until(pilot, lambda: followed.history.last_step, "its steps on the monitor")
        assert followed.label == "pilot" and "pilot" in app.sub_title and BACKGROUND in app.sub_title
        assert run_status(run_dir).save_name == "pilot" and run_status(run_dir).total_steps > 100

        await pilot.press("ctrl+q")  # only a background run: no question, the app leaves
        await pilot.pause()
        assert not any(isinstance(s, QuitScreen) for s in app.screen_stack)
        assert app.return_code == 0
    assert followed.done.wait(5)  # the follower thread ended with the app

    assert run_status(run_dir).live
    at_exit = last_step(run_dir)
    wait_for(lambda: last_step(run_dir) > at_exit, "steps after the app has exited")
    send_command(run_dir, "stop")
    finished = wait_for(lambda: events_of(run_dir, "finished"), "the finished event")[0]
    assert finished["reason"] == "stopped" and finished["checkpoint"] == "pilot"
    wait_for(lambda: run_status(run_dir).state == "stopped", "status stopped")


async def test_no_runs_yet_says_how_to_start_one():
    messages = Messages()
    app = create_app(settings=DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32,
                                           batch_size=4))
    async with app.run_test(size=(120, 36), message_hook=messages) as pilot:
        await runs_listed(app, pilot, messages, lambda m: m.runs == [])
        info = text_of(app, "#runs-info")
        assert "F3" in info and "gpttui train --detach" in info
        await pilot.press("enter")  # nothing to attach to: said, the screen stays
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen) and app.state.followed is None
