"""The Compare screen, driven through Textual's pilot, on three real runs of a tiny model (and a damaged
and an empty run folder); and the Train screen's EMA and log-y keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from textual.widgets import Input, Static

from gpttui.core.events import read_run_events
from gpttui.core.runs import StatusWriter
from gpttui.core.smooth import DEFAULT_EMA_WEIGHT, ema
from gpttui.tui.app import create_app
from gpttui.tui.screens.compare import CHARTS, CompareScreen, CompareUpdate, run_labels
from gpttui.tui.widgets import MetricChart
from tui_helpers import Messages

NAMES = ("alpha", "beta", "gamma")
STEPS = 8


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three finished runs of a tiny model (different lr and seed), trained in-process once for the
    module; their run folders are only read by the tests."""
    from gpttui.core.data import DataSettings, _builtin_pydoc, prepare_data
    from gpttui.core.runplan import plan_model
    from gpttui.core.tokenizer import ByteTokenizer
    from gpttui.core.train import FinishedEvent, TrainConfig, Trainer

    home = tmp_path_factory.mktemp("compare_home")
    corpus = home / "corpus.txt"
    corpus.write_text(_builtin_pydoc()[:20_000], encoding="utf-8")
    dirs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTTUI_HOME", str(home))
        data = prepare_data(DataSettings(source=str(corpus), tokenizer="bytes", context_length=32, batch_size=4),
                            ByteTokenizer())
        shape = plan_model("tiny", vocab_size=257, context_length=32, emb_dim=32, n_heads=4)
        for i, name in enumerate(NAMES):
            config = TrainConfig(max_steps=STEPS, eval_freq=2, eval_iter=1, sample_tokens=4, device="cpu",
                                 save_name=name, lr=(1e-3, 3e-3, 1e-2)[i], seed=100 + i)
            trainer = Trainer(data, ByteTokenizer(), config, shape.model_config)
            assert isinstance(trainer.run(), FinishedEvent)
            dirs.append(Path(trainer._log.dir))
    return dirs


def damaged_and_empty(root: Path) -> tuple[Path, Path]:
    broken = root / "runs" / "broken-run"
    broken.mkdir(parents=True)
    (broken / "events.jsonl").write_bytes(b'garbage\n{"event": "step", "step": "x"}\n\xff\xfe{not json\n')
    (broken / "status.json").write_text('{"state": "running", "pid": "not a pid", "host": 5}')
    empty = root / "runs" / "empty-run"
    empty.mkdir(parents=True)
    return broken, empty


def evals_of(run_dir: Path) -> list[dict]:
    return [e for e in read_run_events(run_dir) if e["event"] == "eval"]


def steps_of(run_dir: Path) -> list[dict]:
    return [e for e in read_run_events(run_dir) if e["event"] == "step"]


def chart_text(chart: MetricChart) -> str:
    return str(chart.render())


def runs_text(screen) -> str:
    """The list above the charts, as the terminal shows it."""
    widget = screen.query_one("#cmp-runs", Static)
    lines = widget.render_lines(widget.region.reset_offset)
    return "\n".join("".join(seg.text for seg in strip) for strip in lines)


async def open_compare(app, pilot, messages: Messages, dirs: list[Path]) -> CompareScreen:
    mark = messages.mark()
    screen = CompareScreen(dirs)
    app.push_screen(screen)
    await messages.wait_for(lambda m: isinstance(m, CompareUpdate) and m.first, timeout=60, start=mark)
    await pilot.pause()
    return screen


def test_run_labels_are_save_names_told_apart_by_run_id():
    ids = ["20261128-101500-ab12", "20261128-101600-cd34", "20261128-101700-ab12", "x-ab12"]
    assert run_labels(["a", "b", "c", "d"], ids) == ["a", "b", "c", "d"]
    assert run_labels(["a", "a", "b", "c"], ids) == ["a (ab12)", "a (cd34)", "b", "c"]
    # the same name and the same id tail: the whole id
    assert run_labels(["a", "b", "a", "c"], ids) == ["a (20261128-101500-ab12)", "b", "a (20261128-101700-ab12)", "c"]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_compare_view_draws_three_runs(three_runs, gpttui_home, size):
    broken, empty = damaged_and_empty(gpttui_home)
    messages = Messages()
    app = create_app()
    async with app.run_test(size=size, message_hook=messages) as pilot:
        screen = await open_compare(app, pilot, messages, [*three_runs, broken, empty])
        loss = screen.query_one("#cmp-train-loss", MetricChart)
        val = screen.query_one("#cmp-val-loss", MetricChart)

        # every chart: three series, one per run, each in its own colour, the runs named in the legend
        for chart_id in CHARTS:
            chart = screen.query_one(f"#{chart_id}", MetricChart)
            assert [s[0] for s in chart.series] == list(NAMES), chart_id
            assert len({s[3] for s in chart.series}) == 3
        steps = [steps_of(d) for d in three_runs]
        evals = [evals_of(d) for d in three_runs]
        assert [s[1] for s in loss.series] == [[float(e["step"]) for e in run] for run in steps]
        assert [s[2] for s in loss.series] == [[e["loss"] for e in run] for run in steps]
        assert [s[2] for s in val.series] == [[e["val_loss"] for e in run] for run in evals]
        assert len(evals[0]) >= 3 and steps[0][-1]["step"] == STEPS
        shown = [chart for chart in screen.query(MetricChart) if chart.display]
        assert len(shown) == (2 if size[1] < 32 else 4)  # a short terminal shows one row: loss or ppl
        for chart in shown:
            assert chart.region.width >= 30 and chart.region.height >= 12
            drawn = chart_text(chart)
            assert all(name in drawn for name in NAMES), drawn  # the legend is there

        # the damaged and the empty folder are named, with what is wrong, and nothing else breaks
        listed = runs_text(screen)
        assert "Nothing to draw for broken-run (log unreadable" in listed, listed
        assert "empty-run (no events.jsonl" in listed, listed
        assert all(f"{name} step {STEPS} · val " in listed for name in NAMES), listed

        # EMA on: every drawn value is the EMA of the raw ones; off: the raw values again
        raw = [list(s[2]) for s in loss.series]
        await pilot.press("e")
        assert loss.smoothing == DEFAULT_EMA_WEIGHT and "EMA 0.9" in chart_text(loss)
        smoothed = [s[2] for s in loss.series]
        assert smoothed != raw
        for got, values in zip(smoothed, raw):
            assert got == pytest.approx(ema(values, DEFAULT_EMA_WEIGHT))
            assert got[0] == pytest.approx(values[0])
        assert [s[2] for s in val.series] != [[e["val_loss"] for e in run] for run in evals]
        await pilot.press("e")
        assert loss.smoothing == 0 and [s[2] for s in loss.series] == raw
        assert "EMA" not in chart_text(loss)

        # log y on and off
        linear = chart_text(loss)
        await pilot.press("l")
        assert all(chart.log_y for chart in screen.query(MetricChart))
        logged = chart_text(loss)
        assert logged != linear and "· log" in logged and loss.hidden_points == 0
        await pilot.press("l")
        assert not loss.log_y and chart_text(loss) == linear

        # x axis: tokens seen
        await pilot.press("x")
        assert [s[1] for s in loss.series] == [[float(e["tokens_seen"]) for e in run] for run in steps]
        assert [s[1] for s in val.series] == [[float(e["tokens_seen"]) for e in run] for run in evals]
        assert "tokens seen" in chart_text(loss)
        await pilot.press("x")
        assert "tokens seen" not in chart_text(loss)

        if size[1] < 32:  # p shows the perplexity row instead of the loss row
            ppl = screen.query_one("#cmp-val-ppl", MetricChart)
            assert not ppl.display
            await pilot.press("p")
            assert ppl.display and not loss.display
            assert all(name in chart_text(ppl) for name in NAMES)

        await screen.follower.wait()  # every run had ended: nothing left to follow
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CompareScreen)


async def test_compare_follows_a_live_run_and_stops_when_closed(three_runs, gpttui_home):
    """A run still being written: the screen shows what it logged so far, then what it appends; closing
    the screen ends the following."""
    source = (three_runs[0] / "events.jsonl").read_bytes().splitlines(keepends=True)
    first_steps = [i for i, line in enumerate(source) if json.loads(line)["event"] == "step"]
    cut = first_steps[3]  # the log up to (not with) its fourth step, then the rest but the end
    live = gpttui_home / "runs" / "20261128-120000-live"
    live.mkdir(parents=True)
    status = StatusWriter(live, live.name)  # this process, alive: the run reads as running
    status.update(state="running", save_name="alpha")
    try:
        (live / "events.jsonl").write_bytes(b"".join(source[:cut]) + source[cut][:10])  # and a partial line
        messages = Messages()
        app = create_app()
        async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
            screen = await open_compare(app, pilot, messages, [live, three_runs[1]])
            loss = screen.query_one("#cmp-train-loss", MetricChart)
            assert [s[0] for s in loss.series] == ["alpha", "beta"]
            assert len(loss.series[0][1]) == 3 and "running" in runs_text(screen)

            mark = messages.mark()
            rest = [line for line in source[cut:] if json.loads(line)["event"] not in ("finished",)]
            with open(live / "events.jsonl", "ab") as f:
                f.write(b"".join(rest)[10:])
            await messages.wait_for(lambda m: isinstance(m, CompareUpdate) and m.runs[0].index == 0
                                    and len(m.runs[0].steps) == STEPS, timeout=30, start=mark)
            await pilot.pause()
            assert len(loss.series[0][1]) == STEPS
            assert loss.series[0][2] == [e["loss"] for e in steps_of(three_runs[0])]

            assert not screen.follower.is_finished  # still following the live run
            await pilot.press("q")
            await screen.follower.wait()
            assert not isinstance(app.screen, CompareScreen)
    finally:
        status.close()


async def test_one_run_says_pick_two_or_more(three_runs):
    messages = Messages()
    app = create_app()
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        screen = await open_compare(app, pilot, messages, [three_runs[2]])
        assert "Pick two or more runs" in runs_text(screen)
        assert [s[0] for s in screen.query_one("#cmp-val-loss", MetricChart).series] == ["gamma"]


async def test_nine_runs_eight_drawn_the_ninth_listed(three_runs, gpttui_home):
    dirs = []
    for i in range(9):  # copies of the three runs, each its own folder (labels told apart by folder name)
        copy = gpttui_home / "runs" / f"20261128-1100{i:02d}-c{i:03d}"
        shutil.copytree(three_runs[i % 3], copy)
        dirs.append(copy)
    messages = Messages()
    app = create_app()
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        screen = await open_compare(app, pilot, messages, [*dirs, dirs[0]])  # one marked twice
        loss = screen.query_one("#cmp-train-loss", MetricChart)
        assert len(loss.series) == 8 and len({s[3] for s in loss.series}) == 8
        assert len({s[0] for s in loss.series}) == 8  # the same save names, told apart
        assert "Not drawn (at most 8 runs, one colour each): 20261128-110008-c008" in runs_text(screen)


async def test_train_screen_loss_chart_smooths_and_logs_while_a_field_has_focus(three_runs):
    """ctrl+f / ctrl+g on the Train screen, with the cursor in a form field (Input keeps its own keys);
    steps arriving after the toggle are drawn smoothed too (the chart's skip-if-unchanged check knows
    the toggle)."""
    messages = Messages()
    app = create_app()
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        records = read_run_events(three_runs[1])
        cut = [i for i, r in enumerate(records) if r["event"] == "step"][5]
        history = app.state.session.history
        history.feed_records(records[:cut])  # as a run in this app would, its first five steps
        screen.redraw()  # what its 0.25 s timer does
        await pilot.pause()
        loss = screen.query_one("#chart-loss", MetricChart)
        ppl = screen.query_one("#chart-ppl", MetricChart)
        raw = [list(s[2]) for s in loss.series]
        assert len(raw[0]) == 5
        lr = screen.query_one("#lr", Input)
        lr.focus()
        before = lr.value
        await pilot.press("ctrl+f")
        assert loss.smoothing == DEFAULT_EMA_WEIGHT == ppl.smoothing
        assert [s[2] for s in loss.series] == [pytest.approx(ema(v)) for v in raw]
        screen.redraw()  # nothing new: the chart keeps its smoothed curves
        assert [s[2] for s in loss.series] == [pytest.approx(ema(v)) for v in raw]

        history.feed_records(records[cut:])  # the rest of the run arrives while EMA is on
        screen.redraw()
        await pilot.pause()
        steps = [r["loss"] for r in records if r["event"] == "step"]
        assert len(steps) == STEPS and loss.series[0][2] == pytest.approx(ema(steps))

        await pilot.press("ctrl+g")
        assert loss.log_y and ppl.log_y and "· log" in chart_text(loss)
        await pilot.press("ctrl+f", "ctrl+g")
        assert loss.smoothing == 0 and not loss.log_y and ppl.log_y  # perplexity stays on its log axis
        assert loss.series[0][2] == steps
        assert lr.value == before and app.focused is lr


async def test_the_runs_screen_compares_the_marked_runs(three_runs, monkeypatch):
    """The way users get here: F10, space on each run, c."""
    from gpttui.tui.screens.runs import RunsListed

    monkeypatch.setenv("GPTTUI_HOME", str(three_runs[0].parent.parent))
    messages = Messages()
    app = create_app()
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await pilot.press("f10")
        await messages.wait_for(lambda m: isinstance(m, RunsListed) and len(m.runs) == 3, timeout=60)
        await pilot.pause()
        await pilot.press("space", "down", "space")
        await pilot.press("c")  # two marked, the third not: only those two are compared
        await messages.wait_for(lambda m: isinstance(m, CompareUpdate) and m.first, timeout=60)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert len(screen.query_one("#cmp-val-loss", MetricChart).series) == 2
        await pilot.press("escape")
        await pilot.press("down", "space")
        mark = messages.mark()
        await pilot.press("c")
        await messages.wait_for(lambda m: isinstance(m, CompareUpdate) and m.first, timeout=60, start=mark)
        await pilot.pause()
        chart = app.screen.query_one("#cmp-val-loss", MetricChart)
        assert sorted(s[0] for s in chart.series) == sorted(NAMES)


def test_the_cli_compares_runs_by_summary_and_val_loss_at_the_same_steps(three_runs, monkeypatch, capsys):
    """`gpttui runs compare`: the same runs from a terminal (a prefix of an id is enough)."""
    from gpttui.cli import main

    monkeypatch.setenv("GPTTUI_HOME", str(three_runs[0].parent.parent))
    ids = [d.name for d in three_runs]
    assert main(["runs", "compare", *ids, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["runs"]] == list(NAMES)
    evals = [evals_of(d) for d in three_runs]
    for run, logged in zip(data["runs"], evals):
        assert run["steps"] == STEPS and run["state"] == "finished"
        assert run["val_loss"] == logged[-1]["val_loss"]
        assert run["best_val_loss"] == min(e["val_loss"] for e in logged)
    assert [row["x"] for row in data["val_loss"]] == [e["step"] for e in evals[0]]
    assert [row["runs"] for row in data["val_loss"]] == [list(v) for v in zip(*[[e["val_loss"] for e in run]
                                                                                  for run in evals])]

    assert main(["runs", "compare", *ids, "--rows", "2", "--plot"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in NAMES) and "val loss by step:" in text
    table = text.split("val loss by step:")[1].splitlines()[2:4]
    assert [int(line.split()[0].replace(",", "")) for line in table] == [evals[0][0]["step"], evals[0][-1]["step"]]
    assert any(line.strip() == "val loss" for line in text.splitlines())  # the plotext chart, under the table
    assert "\x1b[" not in text  # piped (captured): no colour codes, one marker character per run
    assert all(f"{m}{m} {name}" in text for m, name in zip("*+o", NAMES))
