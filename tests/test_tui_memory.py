"""The Train screen's memory line (issue 15, item 2): it appears under the model info, follows the dtype, the
shape and the Dataset screen's batch, and turns into a warning naming the batch that fits when the free memory
(capped with GPTTUI_MAX_MEMORY) is too small."""

from __future__ import annotations

from textual.widgets import Input, Select, Static

from gpttui.core.data import DataSettings
from gpttui.core.resources import MEMORY_ENV
from gpttui.tui.app import create_app
from tui_helpers import settle, until

SMALL = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)


def line(app) -> str:
    return str(app.screen.query_one("#memory-info", Static).render())


async def open_train(app, pilot) -> Static:
    await settle(app, pilot)
    await pilot.press("f3")
    await settle(app, pilot)
    return app.screen.query_one("#memory-info", Static)


async def test_memory_line_follows_the_dtype_and_the_shape():
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        widget = await open_train(app, pilot)
        first = await until(pilot, lambda: line(app), "the memory line")
        assert first.startswith("Memory ≈ ") and "(fp32)" in first and " free on cpu; batch up to " in first
        assert not widget.has_class("-warning")
        assert str(widget.tooltip).startswith("Memory: about ") and "activations" in str(widget.tooltip)
        app.screen.query_one("#dtype", Select).value = "bf16"
        bf16 = await until(pilot, lambda: "(bf16)" in line(app) and line(app), "the bf16 plan")
        assert bf16 != first
        app.screen.query_one("#n_layers", Input).value = "12"  # a deeper model: more memory
        await until(pilot, lambda: line(app) != bf16, "the plan of 12 layers")
        assert "(bf16)" in line(app)
        # (the device select lists only what this machine has: tests/test_tui_gpu.py)
        app.screen.query_one("#n_layers", Input).value = "x"  # #model-info says what is wrong; no plan
        await until(pilot, lambda: line(app) == "", "the line cleared")


async def test_memory_line_warns_with_the_batch_that_fits(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "1M")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        widget = await open_train(app, pilot)
        shown = await until(pilot, lambda: line(app), "the memory line")
        assert shown.startswith("✗ Memory ≈ ") and "only 1.0 MB free on cpu: even batch 1 does not fit" in shown
        assert widget.has_class("-warning")
        monkeypatch.setenv(MEMORY_ENV, "256M")  # batch 4 fits, a batch of 100,000 does not: the one that fits
        app.state.settings = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32,
                                          batch_size=100_000)
        app.screen.query_one("#dtype", Select).value = "bf16"
        shown = await until(pilot, lambda: "(bf16)" in line(app) and line(app), "the bf16 plan")
        assert shown.startswith("✗ Memory ≈ ") and "only 256.0 MB free on cpu: batch up to " in shown
        assert widget.has_class("-warning")
