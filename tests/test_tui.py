"""The app, driven through Textual's pilot: the real engine, a tiny model, real training steps."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Select, Static

from gpttui.core import checkpoints
from gpttui.core.data import DataSettings
from gpttui.core.train import CheckpointEvent, EvalEvent, FinishedEvent, StateEvent
from gpttui.tui.app import create_app
from gpttui.tui.dialogs import ConfirmDialog, ContinueDialog, QuitScreen
from gpttui.tui.screens.dataset import DatasetScreen
from gpttui.tui.screens.train import TrainScreen
from gpttui.tui.widgets import MetricChart
from tui_helpers import Messages, settle, wait_workers

SMALL = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)


async def wait_dataset(app, pilot) -> None:
    """Until the Dataset screen has answered its newest request (stats or a problem)."""
    await pilot.pause()  # let a click or key press reach its handler
    await wait_workers(app, ("dataset",))
    await pilot.pause()


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def set_tiny_model(app, pilot) -> None:
    screen = app.screen
    assert isinstance(screen, TrainScreen)
    for wid, value in (("n_layers", "1"), ("n_heads", "2"), ("emb_dim", "32"), ("eval_freq", "3"),
                       ("eval_iter", "2"), ("start_context", "The "), ("save_name", "pilot")):
        screen.query_one(f"#{wid}", Input).value = value
    await pilot.pause()


async def start_long_run(app, pilot, messages: Messages, save_name: str) -> None:
    """From the Dataset screen: a tiny model on a run far longer than the test, started and evaluated once."""
    await wait_dataset(app, pilot)
    await pilot.press("f3")
    await pilot.pause()
    await set_tiny_model(app, pilot)
    app.screen.query_one("#save_name", Input).value = save_name
    app.screen.query_one("#max_steps", Input).value = "100000"
    await pilot.press("f6")
    await messages.event(lambda e: isinstance(e, EvalEvent))


@pytest.mark.requires_gpt2_bpe  # the stats count GPT-2 tokens
async def test_dataset_screen_shows_builtin_corpus_stats():
    messages = Messages()
    app = create_app(settings=DataSettings(tokenizer="gpt2", source="builtin:pydoc"))
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        assert isinstance(app.screen, DatasetScreen)
        stats = text_of(app, "#stats")
        assert "Python reference topics" in stats
        assert "465,048" in stats  # characters
        assert "139,015" in stats  # GPT-2 tokens
        assert "Ready to train" in text_of(app, "#problems")
        prepared = app.state.prepared
        assert prepared.stats.train_batches == prepared.stats.train_windows // 2


async def test_bad_path_shows_its_message_and_blocks_nothing_else(tmp_path):
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(100, 30), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        app.screen.query_one("#source", Input).value = str(tmp_path / "missing.txt")
        await pilot.click("#load")
        await wait_dataset(app, pilot)
        assert "does not exist" in text_of(app, "#problems")
        assert app.state.prepared is None
        empty = tmp_path / "empty.txt"
        empty.write_text("")
        source = app.screen.query_one("#source", Input)
        source.value = str(empty)
        source.focus()
        await pilot.press("enter")
        await wait_dataset(app, pilot)
        assert "is empty" in text_of(app, "#problems")
        binary = tmp_path / "blob.txt"
        binary.write_bytes(b"\x00\x01\x02" * 100)
        app.screen.query_one("#source", Input).value = str(binary)
        await pilot.click("#load")
        await wait_dataset(app, pilot)
        assert "binary" in text_of(app, "#problems")
        # and the app is still usable
        await pilot.press("ctrl+b")
        await wait_dataset(app, pilot)
        assert app.state.prepared is not None


async def test_context_too_large_blocks_start_with_the_books_warning(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("A short text that is far too small for a long context.\n" * 20)
    messages = Messages()
    app = create_app(settings=DataSettings(source=str(corpus), tokenizer="bytes", context_length=2048, batch_size=2))
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        assert "Not enough tokens for the training loader" in text_of(app, "#problems")
        await pilot.press("f3")
        await pilot.pause()
        await pilot.press("f6")
        await pilot.pause()
        assert not app.state.session.running
        assert "Not enough tokens for the training loader" in text_of(app, "#status")
        # fixing the context length on the Dataset screen unblocks it
        await pilot.press("f2")
        app.screen.query_one("#context_length", Input).value = "16"
        await pilot.pause()
        app.screen.load()
        await wait_dataset(app, pilot)
        assert "Ready to train" in text_of(app, "#problems")


async def test_train_monitor_full_flow():
    """Pick the corpus, configure a tiny model, train: charts fill, evals show, pause/resume, stop, save."""
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        assert app.state.prepared is not None and app.state.prepared.stats.ok
        await pilot.press("f3")
        await pilot.pause()
        await set_tiny_model(app, pilot)
        assert "parameters" in text_of(app, "#model-info")
        await pilot.press("f6")
        assert app.state.session.running
        await messages.event(lambda e: isinstance(e, EvalEvent) and e.step >= 3)
        screen = app.screen
        screen.redraw()
        await pilot.pause()
        assert screen.query_one("#chart-loss", MetricChart).point_count >= 4 + 2 * 2
        assert screen.query_one("#chart-lr", MetricChart).point_count >= 4
        status = text_of(app, "#status")
        assert "running" in status and "tokens seen" in status and "val" in status

        # pause: the trainer parks between steps and says so; resume: steps come again
        await pilot.press("f7")
        paused = await messages.event(lambda e: isinstance(e, StateEvent) and e.paused)
        assert app.state.session.control.paused
        screen.redraw()
        assert "Resume" in str(screen.query_one("#pause").label)
        steps_before = len(app.state.session.history.snapshot().steps)
        await pilot.press("f7")
        await messages.event(lambda e: isinstance(e, StateEvent) and not e.paused)
        await messages.event(lambda e: isinstance(e, EvalEvent) and e.step > paused.step + 3)
        assert len(app.state.session.history.snapshot().steps) > steps_before

        # save now, then stop (which saves again)
        await pilot.press("f9")
        await messages.event(lambda e: isinstance(e, CheckpointEvent))
        await pilot.press("f8")
        finished = await messages.event(lambda e: isinstance(e, FinishedEvent))
        await app.state.session.worker.wait()
        assert finished.reason == "stopped" and finished.checkpoint == "pilot"
        screen.redraw()
        await pilot.pause()
        assert "stopped" in text_of(app, "#status")
        assert len(screen.query(".sample")) >= 0
        assert not app.state.session.running
    meta = checkpoints.show("pilot")
    assert meta["step"] == finished.step and meta["source"] == "trained"


async def test_quit_while_training_asks_then_stops_and_saves():
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(100, 30), message_hook=messages) as pilot:
        await start_long_run(app, pilot, messages, "quitter")
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("escape")  # cancel: still training
        await pilot.pause()
        assert app.state.session.running
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.click("#save")
        await app.state.session.worker.wait()
        await pilot.pause()
    assert checkpoints.checkpoint_exists("quitter")
    assert app.state.session.history.snapshot().finished.reason == "stopped"


async def test_command_palette_lists_the_screens_and_actions():
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(100, 30), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Dataset screen" in titles and "Train screen" in titles
        await pilot.press("f3")
        await pilot.pause()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Start training" in titles


def _train_base(tmp_path, name="base", steps=3):
    """A real checkpoint trained on its own text file (not the app's dataset)."""
    from gpttui.core.config import GPTConfig
    from gpttui.core.data import _builtin_pydoc, prepare_data
    from gpttui.core.tokenizer import ByteTokenizer
    from gpttui.core.train import TrainConfig, Trainer

    text = tmp_path / "story.txt"
    text.write_text(_builtin_pydoc()[100_000:130_000], encoding="utf-8")
    data = prepare_data(DataSettings(source=str(text), tokenizer="bytes", context_length=32, batch_size=4),
                        ByteTokenizer())
    cfg = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=2, n_layers=1)
    final = Trainer(data, ByteTokenizer(), TrainConfig(max_steps=steps, eval_freq=1, eval_iter=1, sample_tokens=0,
                                                         device="cpu", save_name=name), cfg).run()
    assert isinstance(final, FinishedEvent), final
    return data


def _files(name):
    from gpttui.core import paths

    return {p.name: p.read_bytes() for p in sorted((paths.checkpoints_dir() / name).iterdir())}


async def _continue_base(app, pilot, max_steps="5"):
    """F3, pick 'base' to continue, press F6: the app asks how, since its dataset is other text."""
    await wait_dataset(app, pilot)
    await pilot.press("f3")
    await settle(app, pilot)
    select = app.screen.query_one("#resume", Select)
    assert "base" in app.screen.resume_values
    select.value = "base"
    await pilot.pause()
    assert app.screen.query_one("#n_layers", Input).disabled
    for wid, value in (("max_steps", max_steps), ("eval_freq", "1"), ("eval_iter", "1")):
        app.screen.query_one(f"#{wid}", Input).value = value
    await pilot.press("f6")
    await pilot.pause()
    dialog = app.screen
    assert isinstance(dialog, ContinueDialog)
    return dialog


async def test_continue_defaults_to_the_checkpoints_own_data(tmp_path):
    """After a restart the Dataset screen holds the built-in corpus; Continue still trains on the
    checkpoint's own text (the focused choice), saves over it, and keeps its loss curve."""
    own = _train_base(tmp_path)
    before = torch_load_history("base")
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        dialog = await _continue_base(app, pilot)
        assert app.focused is dialog.query_one("#own")
        await pilot.press("enter")
        finished = await messages.event(lambda e: isinstance(e, FinishedEvent) or e.event == "failed")
        assert isinstance(finished, FinishedEvent), getattr(finished, "message", "")
        await app.state.session.worker.wait()
    meta = checkpoints.show("base")
    assert meta["step"] == 5 and meta["dataset"]["sha256"] == own.corpus.sha256
    after = torch_load_history("base")
    assert after["steps"][:len(before["steps"])] == before["steps"] and len(after["steps"]) > len(before["steps"])


def torch_load_history(name):
    import torch

    from gpttui.core import paths

    return torch.load(paths.checkpoints_dir() / name / "trainer_state.pt", weights_only=True)["history"]


async def test_continue_on_other_data_saves_under_a_new_name(tmp_path):
    _train_base(tmp_path)
    before = _files("base")
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        dialog = await _continue_base(app, pilot)
        assert "saving as 'base-on-pydoc'" in str(dialog.query_one("#new").label)
        dialog.query_one("#new").press()
        finished = await messages.event(lambda e: isinstance(e, FinishedEvent) or e.event == "failed")
        assert isinstance(finished, FinishedEvent), getattr(finished, "message", "")
        await app.state.session.worker.wait()
    assert _files("base") == before  # the original, byte for byte
    new = [c for c in checkpoints.list_checkpoints() if c.name.startswith("base-on-")]
    assert len(new) == 1 and new[0].step == 5 and new[0].meta["dataset"]["source"] == "builtin:pydoc"


async def test_cancelled_continue_and_refused_replace_change_nothing(tmp_path):
    _train_base(tmp_path)
    before = _files("base")
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await _continue_base(app, pilot)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, TrainScreen) and not app.state.session.running
        # a new model asked to save over an existing checkpoint: the app asks, No keeps it
        app.screen.query_one("#resume", Select).value = "__new__"
        await pilot.pause()
        await set_tiny_model(app, pilot)
        app.screen.query_one("#save_name", Input).value = "base"
        await pilot.press("f6")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog) and "'base' already exists" in str(
            app.screen.query_one(".dialog-title").render())
        await pilot.press("n")
        await pilot.pause()
        assert not app.state.session.running
    assert _files("base") == before


async def test_hang_up_stops_saves_and_exits():
    """What SIGHUP (a closed SSH link) and SIGTERM do: stop at the end of the step, save, leave."""
    import signal

    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(100, 30), message_hook=messages) as pilot:
        await start_long_run(app, pilot, messages, "hung-up")
        app._hang_up(signal.SIGHUP)
    assert app.state.session.wait_done(120)
    assert app.return_code == 128 + signal.SIGHUP
    assert checkpoints.show("hung-up")["step"] >= 1


async def test_the_models_context_wins_unless_the_user_set_the_datas():
    """A "tiny" is a context-128 model: the Dataset screen's default 256 does not change it; the data's
    windows follow the model (the CLI's rule), and the Train screen says so."""
    from gpttui.tui.state import AppState

    messages = Messages()
    app = create_app(AppState(settings=DataSettings(source="builtin:pydoc", tokenizer="bytes", batch_size=4)))
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        assert app.state.prepared.settings.context_length == 256 and not app.state.data_context_set
        await pilot.press("f3")
        await pilot.pause()
        await set_tiny_model(app, pilot)
        app.screen.query_one("#max_steps", Input).value = "2"
        await pilot.pause()
        info = text_of(app, "#model-info")
        assert "context 128 (the model's)" in info and "follow it" in info
        await pilot.press("f6")
        finished = await messages.event(lambda e: isinstance(e, FinishedEvent) or e.event == "failed")
        assert isinstance(finished, FinishedEvent), getattr(finished, "message", "")
        await app.state.session.worker.wait()
        assert app.state.prepared.settings.context_length == 128
    meta = checkpoints.show("pilot")
    assert meta["model_config"]["context_length"] == 128 and meta["dataset"]["context_length"] == 128


async def test_a_superseded_dataset_preparation_answers_nothing():
    """Two loads in a row: the first worker is cancelled and its answer never arrives; the second's does."""
    from gpttui.tui.messages import DatasetFailed, DatasetReady

    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(100, 30), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        start = messages.mark()
        screen = app.screen
        screen.load()
        first = [w for w in app.workers if w.group == "dataset"]
        screen.load()
        await wait_dataset(app, pilot)
        assert first and all(w.is_cancelled for w in first)
        answers = list({id(m): m for m in messages.seen[start:]  # a message is seen once per pump it bubbles to
                        if isinstance(m, (DatasetReady, DatasetFailed))}.values())
        assert len(answers) == 1 and isinstance(answers[0], DatasetReady)
        assert app.state.prepared is answers[0].prepared
