"""The Train screen's Hardware section (issue 15): the devices this machine has, fp16, torch.compile and
deterministic kernels in the config the screen builds, more than one process as a torchrun DDP run in the
background (a real `gpttui train --nproc=2` process), book mode holding one process, and the status line
with MFU, peak memory and the compile warm-up. No GPU here: the CUDA paths are covered by what
:func:`list_devices` reports (nothing, on this machine), not by a fake GPU."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from textual.widgets import Checkbox, Input, OptionList, Select, Static

from gpttui.core.config import TrainConfig
from gpttui.core.devices import check_processes, list_devices, max_processes
from gpttui.core.errors import ConfigError
from gpttui.core.events import RunLog, Started, StepEvent
from gpttui.core.history import RunHistory
from gpttui.core.launch import train_argv
from gpttui.core.runs import run_status
from gpttui.tui.app import create_app
from gpttui.tui.render import STATUS_WIDTH, status_text
from gpttui.tui.state import BACKGROUND, IN_APP, FollowedRun
from test_runs import pids  # noqa: F401  (a fixture)
from test_tui_book import SMALL, open_train
from tui_helpers import until

TINY = {"n_layers": "1", "n_heads": "2", "emb_dim": "32", "model_context": "32", "eval_freq": "1",
        "eval_iter": "1", "max_steps": "100000"}
GIB = 1 << 30



def fill(screen, values: dict) -> None:
    for wid, value in values.items():
        screen.query_one(f"#{wid}", Input).value = value


async def menu_entries(screen, pilot, select_id: str) -> list[str]:
    """The entries a user sees when opening the select (Enter), closed again with Esc."""
    select = screen.query_one(f"#{select_id}", Select)
    select.focus()
    await pilot.press("enter")
    await pilot.pause()
    overlay = select.query_one("SelectOverlay", OptionList)  # the menu the select opens
    entries = [str(overlay.get_option_at_index(i).prompt) for i in range(overlay.option_count)]
    await pilot.press("escape")
    await pilot.pause()
    return entries


# --- the device listing (core, no Textual) ----------------------------------------------------------------


def test_list_devices_offers_only_what_this_machine_has():
    choices = list_devices()
    values = [c.value for c in choices]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    assert values == ["auto", "cpu", *[f"cuda:{i}" for i in range(gpus)], *(["mps"] if mps else [])]
    auto = choices[0]
    resolved = "cuda" if gpus else "mps" if mps else "cpu"
    assert auto.kind == resolved and re.fullmatch(rf"auto \({resolved}(:\d+)?\)", auto.label), auto.label
    for choice in choices[2:2 + gpus]:  # "cuda:N — <name>, <GiB>"
        assert choice.label.startswith(f"{choice.value} — {choice.name}, ") and choice.label.endswith(" GiB")
        assert choice.total_memory and choice.total_memory > GIB
    assert list_devices(refresh=True) == choices  # the cache holds what torch says


def test_processes_are_limited_by_the_device():
    cpus = os.cpu_count() or 1
    assert max_processes("cpu") == cpus
    check_processes(cpus, "cpu")  # gloo: up to one per CPU
    with pytest.raises(ConfigError, match=rf"at most {cpus} \(this machine has {cpus} CPUs\)"):
        check_processes(cpus + 1, "cpu")
    with pytest.raises(ConfigError, match="at least 1"):
        check_processes(0, "cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match="one process per GPU"):
        check_processes(max(gpus, 1) + 1, "cuda:0")
    with pytest.raises(ConfigError, match="MPS trains in one process"):
        check_processes(2, "mps")


# --- the form -----------------------------------------------------------------------------------------------


async def test_the_selects_list_the_devices_and_the_config_carries_fp16_compile_and_deterministic():
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_train(app, pilot)
        assert await menu_entries(screen, pilot, "device") == [c.label for c in list_devices()]
        assert await menu_entries(screen, pilot, "dtype") == ["dtype: fp32", "bf16 autocast",
                                                              "fp16 autocast + loss scaling"]
        default = screen.train_config()
        assert (default.device, default.dtype, default.compile, default.deterministic) == ("auto", "fp32", False,
                                                                                          False)
        screen.query_one("#device", Select).value = "cpu"
        screen.query_one("#dtype", Select).value = "fp16"
        await pilot.pause()
        for box in ("compile", "deterministic"):  # as a user ticks them: focused, then space
            screen.query_one(f"#{box}", Checkbox).focus()
            await pilot.press("space")
        await pilot.pause()
        config = screen.train_config()
        assert (config.device, config.dtype, config.compile, config.deterministic) == ("cpu", "fp16", True, True)
        argv = train_argv(SMALL, screen.model_config(), config, resume=None, overwrite=False)
        assert {"--device=cpu", "--dtype=fp16", "--compile", "--deterministic"} <= set(argv)
        assert TrainConfig.from_dict(config.to_dict()) == config  # what a run's config.json gives back


async def test_processes_above_one_hold_the_run_in_the_background_and_launch_with_nproc(pids):  # noqa: F811
    """N > 1 forces "in the background" (disabled, with a hint) and gives the user's choice back at 1;
    too many processes is refused with the limit; with 2 the launched `gpttui train` has --nproc=2."""
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_train(app, pilot)
        where, nproc = screen.query_one("#run-where", Select), screen.query_one("#nproc", Input)
        hint = screen.query_one("#nproc-hint", Static)
        assert (where.value, where.disabled, nproc.value, hint.display) == (IN_APP, False, "1", False)
        nproc.value = "2"
        await pilot.pause()
        assert where.value == BACKGROUND and where.disabled and hint.display
        assert "torchrun DDP" in str(hint.render()) and "background" in str(hint.render())
        nproc.value = "1"
        await pilot.pause()
        assert (where.value, where.disabled, hint.display) == (IN_APP, False, False)

        too_many = (os.cpu_count() or 1) + 1
        nproc.value = str(too_many)
        await pilot.pause()
        assert "at most" in str(hint.render()) and where.disabled
        fill(screen, {**TINY, "save_name": "ddp-pilot"})
        await pilot.press("f6")
        await pilot.pause()
        status = str(screen.query_one("#status", Static).render())
        assert f"{too_many} processes cannot train on auto: at most" in status, status
        assert app.state.followed is None and not app.state.session.running  # nothing started

        nproc.value = "2"
        await pilot.pause()
        await pilot.press("f6")
        followed = await until(pilot, lambda: isinstance(app.state.monitored, FollowedRun) and app.state.monitored,
                               "the app to follow its background run")
        run_id = followed.run_dir.name
        launcher = await until(pilot, lambda: _process_with(run_id), "the launched process", timeout=30)
        pids.append(launcher[0])
        assert "--nproc=2" in launcher[1] and "--save=ddp-pilot" in launcher[1], launcher[1]
        await until(pilot, lambda: followed.history.last_step, "the run's first step", timeout=180)
        await pilot.press("f8")  # stop: every process of the run ends, with a checkpoint
        await until(pilot, lambda: followed.ended or not run_status(followed.run_dir).live, "the run to end",
                    timeout=180)
        ending = await until(pilot, lambda: followed.history.finished or followed.history.failed, "its last event")
        assert getattr(ending, "reason", None) == "stopped", (ending, (followed.run_dir / "train.log").read_text())
        assert ending.checkpoint == "ddp-pilot"


def _process_with(run_id: str) -> tuple[int, list[str]] | None:
    """A process whose command line holds ``--run-id <run_id>`` (the app's launch adds it): pid, argv."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--run-id" in argv and run_id in argv and "train" in argv:
            return int(entry.name), argv
    return None


async def test_book_mode_holds_one_process_and_no_compile_then_gives_them_back():
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_train(app, pilot)
        where, nproc = screen.query_one("#run-where", Select), screen.query_one("#nproc", Input)
        compile_box = screen.query_one("#compile", Checkbox)
        nproc.value, compile_box.value = "2", True
        await pilot.pause()
        assert where.value == BACKGROUND and where.disabled

        screen.query_one("#book", Checkbox).focus()
        await pilot.press("space")
        await pilot.pause()
        assert (nproc.value, nproc.disabled, compile_box.value, compile_box.disabled) == ("1", True, False, True)
        assert (where.value, where.disabled) == (IN_APP, False)  # one process: the user's choice again
        config = screen.train_config()  # book mode validates: no compile
        assert config.book and not config.compile and screen.processes() == 1

        await pilot.press("space")  # off: two processes and compile come back, and with them the background
        await pilot.pause()
        assert (nproc.value, nproc.disabled, compile_box.value, compile_box.disabled) == ("2", False, True, False)
        assert where.value == BACKGROUND and where.disabled


# --- the status line ----------------------------------------------------------------------------------------


def _started(device: str = "cuda:0", dtype: str = "bf16") -> Started:
    return Started(run_id="20261128-191327-ab12", run_dir="/tmp/x", config={}, model_config={},
                   n_params=124_439_808, device=device, dtype=dtype, total_steps=5000, steps_per_epoch=5000.0,
                   tokens_per_step=524_288)


def _step(step: int, **extra) -> StepEvent:
    return StepEvent(step=step, epoch=1, tokens_seen=step * 524_288, loss=3.25, lr=6e-4, grad_norm=0.52,
                     tokens_per_sec=1_234_567.0, elapsed=60.0 + step, total_steps=5000, eta=3600.0, **extra)


def _plain_lines(status: str) -> list[str]:
    return [re.sub(r"\[/?[^\]]*\]", "", line) for line in status.splitlines()]


def test_status_shows_mfu_peak_memory_and_the_compile_warm_up_on_lines_that_fit_80_columns():
    history = RunHistory()
    history.feed(_started())
    history.feed(_step(1, peak_memory=int(12.3 * GIB), mfu=0.35, compile_seconds=52.4))
    history.feed(_step(2, peak_memory=int(12.3 * GIB), mfu=0.412))  # the warm-up is said once, and kept
    lines = _plain_lines(status_text(history.snapshot()))
    assert all(len(line) <= STATUS_WIDTH for line in lines), lines
    throughput = next(line for line in lines if "tok/s" in line)
    assert "1,234,567 tok/s" in throughput and "MFU 41%" in throughput and "lr 6.00e-04" in throughput
    run = next(line for line in lines if "run 20261128-191327-ab12" in line)
    assert run.startswith("cuda:0 bf16 · peak mem 12.3 GB · compiled in 52 s"), run
    assert "params" not in run  # the least important part gave way (it would not fit with the others)

    cpu = RunHistory()  # CPU: no MFU (no peak to compare with), no compile: the parameter count has room
    cpu.feed(_started("cpu", "fp32"))
    cpu.feed(_step(1, peak_memory=300 << 20))
    lines = _plain_lines(status_text(cpu.snapshot()))
    assert not any("MFU" in line or "compiled" in line for line in lines), lines
    assert "cpu fp32 · peak mem 300.0 MB · 124.4M params · run 20261128-191327-ab12" in lines
    assert all(len(line) <= STATUS_WIDTH for line in lines), lines


def test_a_followed_runs_history_keeps_the_compile_warm_up():
    """Read back from events.jsonl (attached through its step index, then line by line as it grows),
    the warm-up of the first step still reaches the status."""
    log = RunLog("warm-run")
    log.append(_started())
    log.append(_step(1, compile_seconds=125.0))
    for step in range(2, 6):
        log.append(_step(step, peak_memory=GIB, mfu=0.4))
    log.close()
    history = RunHistory.from_run_dir(log.dir)
    assert history.last_step.step == 5 and history.compile_seconds == 125.0
    assert "compiled in 2:05" in status_text(history.snapshot())
    records = RunHistory.from_events([_step(1, compile_seconds=9.6).to_dict()])  # the fast path's record
    assert records.compile_seconds == 9.6


async def test_the_monitor_shows_each_status_line_whole_at_80_columns_and_more_of_it_at_120():
    """STATUS_WIDTH is the status' width at 80 columns while a run trains (the settings pane hidden): the
    run line shows whole there, on one row; at 120 columns the parameter count comes back. The events go
    to the app's history as a trainer's would."""
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_train(app, pilot)
        await pilot.press("ctrl+b")  # the pane hidden, as while a run trains
        await pilot.pause()
        status = screen.query_one("#status", Static)
        assert status.content_region.width == STATUS_WIDTH
        history = app.state.session.history
        history.feed(_started())
        history.feed(_step(1, peak_memory=int(12.3 * GIB), mfu=0.35, compile_seconds=52.4))
        history.feed(_step(2, peak_memory=int(12.3 * GIB), mfu=0.412))
        await until(pilot, lambda: "MFU 41%" in _shown(status), "the status to show the steps")
        rows = _shown(status).splitlines()
        assert "cuda:0 bf16 · peak mem 12.3 GB · compiled in 52 s · run 20261128-191327-ab12" in rows, rows
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: "124.4M params" in _shown(status), "the wider status")
        assert any(row.strip().endswith("124.4M params · run 20261128-191327-ab12") for row in
                   _shown(status).splitlines())


def _shown(widget) -> str:
    """What the terminal shows of a widget: its rows as rendered in its region."""
    lines = widget.render_lines(widget.region.reset_offset)
    return "\n".join("".join(seg.text for seg in strip).rstrip() for strip in lines)


def test_a_wider_monitor_keeps_what_80_columns_leave_out():
    history = RunHistory()
    history.feed(_started())
    history.feed(_step(1, peak_memory=int(12.3 * GIB), mfu=0.35, compile_seconds=52.4))
    narrow, wide = status_text(history.snapshot()), status_text(history.snapshot(), width=118)
    assert "124.4M params" not in narrow
    assert "cuda:0 bf16 · peak mem 12.3 GB · compiled in 52 s · 124.4M params · run 20261128-191327-ab12" in wide
