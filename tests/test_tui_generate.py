"""The Generate screen, through the pilot: streaming equals the engine, stop works, settings are checked."""

from __future__ import annotations

import torch
from textual.widgets import Checkbox, Input, Select, Static

from gpttui.core import checkpoints
from gpttui.core.config import GPTConfig
from gpttui.core.data import DataSettings, prepare_data
from gpttui.core.generate import SamplingConfig, generate
from gpttui.core.tokenizer import ByteTokenizer
from gpttui.core.train import TrainConfig, Trainer
from gpttui.tui.app import create_app
from gpttui.tui.messages import GenerationChunk
from gpttui.tui.render import prob_style
from gpttui.tui.screens.generate import GenerateScreen
from tui_helpers import Messages, generation_done, settle, start_tiny_run

SMALL = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)
TINY = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)


def train_tiny(name: str, steps: int = 8) -> None:
    data = prepare_data(SMALL, ByteTokenizer())
    cfg = TrainConfig(max_steps=steps, lr=3e-3, eval_freq=4, eval_iter=1, sample_tokens=0, save_name=name,
                      device="cpu")
    final = Trainer(data, ByteTokenizer(), cfg, TINY).run()
    assert final.event == "finished"


async def open_generate(app, pilot, checkpoint: str) -> GenerateScreen:
    app.state.generate_checkpoint = checkpoint  # what the Checkpoints screen's "use for generation" does
    await pilot.press("f4")
    await settle(app, pilot)
    screen = app.screen
    assert isinstance(screen, GenerateScreen)
    assert screen.query_one("#model", Select).value == checkpoint
    return screen


async def test_greedy_stream_equals_the_engine_and_stop_works():
    train_tiny("chat")
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        screen = await open_generate(app, pilot, "chat")
        screen.query_one("#max_new_tokens", Input).value = "40"
        screen.query_one("#prompt", Input).value = "The return "
        await pilot.press("enter")
        turn = await generation_done(messages, pilot, screen)
        model = checkpoints.load_checkpoint("chat").model
        expected = generate(model, ByteTokenizer(), "The return ", SamplingConfig(max_new_tokens=40))
        assert turn.error is None
        assert turn.text == expected.text
        assert [t.token_id for t in turn.tokens if t.token_id is not None] == expected.token_ids
        assert "tok/s" in str(screen.views[-1].render())

        # a long generation, stopped with Escape after the first streamed chunk
        screen.query_one("#max_new_tokens", Input).value = "100000"
        screen.query_one("#prompt", Input).value = "x"
        await pilot.press("enter")
        await messages.wait_for(lambda m: isinstance(m, GenerationChunk) and m.turn == 1 and m.events)
        await pilot.press("escape")
        turn = await generation_done(messages, pilot, screen)
        assert turn.result.stopped_by == "cancel"
        assert 0 < turn.result.new_tokens < 100000

        # prompt history: up brings the last prompt back
        prompt = screen.query_one("#prompt", Input)
        prompt.focus()
        await pilot.press("up")
        assert prompt.value == "x"
        await pilot.press("up")
        assert prompt.value == "The return "


async def test_probability_colouring_and_token_details():
    train_tiny("colours")
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        screen = await open_generate(app, pilot, "colours")
        screen.query_one("#max_new_tokens", Input).value = "12"
        screen.query_one("#colour", Checkbox).value = True
        screen.query_one("#prompt", Input).value = "def "
        await pilot.press("enter")
        turn = await generation_done(messages, pilot, screen)
        assert all(t.prob is not None and 0 < t.prob <= 1 for t in turn.tokens if t.token_id is not None)
        await pilot.press("f7")  # the inspector's key (ctrl+left is the prompt's word move)
        await pilot.pause()
        details = str(screen.query_one("#token-details", Static).render())
        last = [t for t in turn.tokens if t.token_id is not None][-1]
        assert f"p = {last.prob:.3f}" in details
        assert len(last.alternatives) == 5
    assert prob_style(0.9) == "green" and prob_style(0.05) == "red"


async def test_invalid_sampling_values_are_marked_not_thrown():
    train_tiny("checks", steps=1)
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        screen = await open_generate(app, pilot, "checks")
        screen.query_one("#top_p", Input).value = "1.5"
        await pilot.pause()
        assert "top_p must be a number in (0, 1]" in str(screen.query_one("#sampling-problems", Static).render())
        screen.query_one("#prompt", Input).value = "hello"
        await pilot.press("enter")
        await pilot.pause()
        assert not screen.turns and not screen.generating  # nothing was started
        screen.query_one("#top_p", Input).value = ""
        await pilot.pause()
        assert str(screen.query_one("#sampling-problems", Static).render()) == ""


async def test_chat_with_the_model_being_trained():
    """The running trainer's weights are snapshotted between steps; training goes on undisturbed."""
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await start_tiny_run(app, pilot, messages, "live")
        await pilot.press("f4")
        await settle(app, pilot)
        screen = app.screen
        assert screen.query_one("#model", Select).value == "__training__"
        screen.query_one("#max_new_tokens", Input).value = "10"
        screen.query_one("#prompt", Input).value = "The "
        await pilot.press("enter")
        turn = await generation_done(messages, pilot, screen)
        assert turn.error is None and turn.result.new_tokens >= 1
        assert app.state.session.running
        app.state.session.stop(save=False)
        await app.state.session.worker.wait()


async def test_a_checkpoint_saved_again_is_reloaded_not_served_stale():
    from gpttui.core.model import GPTModel

    torch.manual_seed(1)
    checkpoints.save_checkpoint("again", GPTModel(TINY), meta={"tokenizer": "bytes", "source": "trained"})
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        screen = await open_generate(app, pilot, "again")
        screen.query_one("#max_new_tokens", Input).value = "20"
        cfg = SamplingConfig(max_new_tokens=20)
        for seed in (1, 2):
            if seed == 2:  # new weights under the same name, as continued training does
                torch.manual_seed(seed)
                checkpoints.save_checkpoint("again", GPTModel(TINY), meta={"tokenizer": "bytes", "source": "trained"},
                                            overwrite=True)
            screen.query_one("#prompt", Input).value = "abc"
            await pilot.press("enter")
            turn = await generation_done(messages, pilot, screen)
            expected = generate(checkpoints.load_checkpoint("again").model, ByteTokenizer(), "abc", cfg)
            assert [t.token_id for t in turn.tokens if t.token_id is not None] == expected.token_ids
