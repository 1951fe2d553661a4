"""The Checkpoints screen (F5), driven through Textual's pilot with the real engine: the table, the details
pane and its loss curve, rename / delete / export, imports (the book's .pth, a small random GPT-2 saved by
transformers, GPT-2 by size offline, the tokenizer files), failures shown as messages, and the hand-offs
to the Train and Generate screens."""

from __future__ import annotations

import io

import torch
from rich.text import Text
from textual.content import Content
from textual.widgets import DataTable, Input, Select, Static

from book_reference import GPTModel as BookGPTModel
from gpttui.core import checkpoints, paths
from gpttui.core.config import GPTConfig
from gpttui.core.data import DataSettings, prepare_data
from gpttui.core.model import GPTModel
from gpttui.core.tokenizer import get_tokenizer, gpt2_data_dir
from gpttui.core.train import TrainConfig, Trainer
from gpttui.tui.app import create_app
from gpttui.tui.dialogs import ConfirmDialog, ExportDialog, ImportDialog, RenameDialog
from gpttui.tui.screens.checkpoints import CheckpointsScreen
from gpttui.tui.screens.dataset import DatasetScreen
from gpttui.tui.screens.train import TrainScreen
from gpttui.tui.widgets import MetricChart
from tui_helpers import settle

SMALL = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)
TINY = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=2, n_layers=1)
DATASET = {"source": "builtin:pydoc", "label": "Python reference topics (built in)", "tokens": 465048,
           "context_length": 32, "stride": 32, "batch_size": 4, "train_ratio": 0.9}


def save(name: str, **meta) -> None:
    checkpoints.save_checkpoint(name, GPTModel(TINY), meta={"tokenizer": "bytes", "source": "trained", **meta})


def names() -> list[str]:
    return sorted(c.name for c in checkpoints.list_checkpoints())


async def open_screen(app, pilot) -> CheckpointsScreen:
    await pilot.pause()
    dataset = app.screen
    assert isinstance(dataset, DatasetScreen)
    await settle(app, pilot)  # the startup load of the Dataset screen
    await pilot.press("f5")
    await settle(app, pilot)
    screen = app.screen
    assert isinstance(screen, CheckpointsScreen)
    return screen


def table_rows(screen) -> dict[str, dict[str, str]]:
    """The table's cells by row name, then by column key (the columns shown depend on the width)."""
    table = screen.query_one("#ckpt-table", DataTable)
    keys = [str(key.value) for key in table.columns]
    return {str(row.key.value): dict(zip(keys, map(str, table.get_row(row.key)))) for row in table.ordered_rows}


def column_labels(screen) -> list[str]:
    return [str(c.label) for c in screen.query_one("#ckpt-table", DataTable).columns.values()]


def text(widget) -> str:
    """What a widget shows, as plain text (the details pane is a rich renderable)."""
    from rich.console import Console

    rendered = widget.render()
    if isinstance(rendered, (str, Text, Content)):
        return str(rendered)
    rendered = widget.content  # a rich renderable given to Static.update
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(rendered)
    return console.export_text()


def status(screen) -> str:
    return text(screen.query_one("#ckpt-status", Static))


async def select_row(screen, pilot, name: str) -> None:
    table = screen.query_one("#ckpt-table", DataTable)
    table.move_cursor(row=table.get_row_index(name))
    table.focus()
    await pilot.pause()
    assert screen.selected == name


async def submit_import(app, pilot, key: str, *, path: str | None = None, name: str | None = None,
                        heads: str | None = None) -> None:
    """Open the import dialog with ``key``, fill it in, press Enter."""
    await pilot.press(key)
    await pilot.pause()
    dialog = app.screen
    assert isinstance(dialog, ImportDialog)
    if path is not None:
        dialog.query_one("#import-path", Input).value = path
    await pilot.pause()
    if name is not None:
        dialog.query_one("#import-name", Input).value = name
    if heads is not None:
        dialog.query_one("#import-heads", Input).value = heads
    await submit(dialog, pilot)
    await settle(app, pilot)


async def submit(dialog: ImportDialog, pilot) -> None:
    """Enter in the dialog's name field (or path field, for the tokenizer files): the keyboard's way."""
    await pilot.pause()
    name = dialog.query_one("#import-name", Input)
    (dialog.query_one("#import-path", Input) if dialog.kind == "tokenizer" else name).focus()
    await pilot.press("enter")
    await pilot.pause()


def make_hf_folder(folder, vocab_size: int = 50257):  # the gpt2 tokenizer's: smaller ones are refused
    """A small random GPT-2 saved by transformers (as tests/test_gpt2_import.py makes them)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32, vocab_size=vocab_size, bos_token_id=0,
                     eos_token_id=0)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------


async def test_table_lists_checkpoints_with_their_columns_and_details_at_80x24():
    save("base", step=120, tokens_seen=15360, best_val_loss=2.345, dataset=DATASET)
    save("from-book", source="imported-book", imported_from="/somewhere/model.pth")
    broken = paths.checkpoints_dir() / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text("{not json")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_screen(app, pilot)
        # At 80 columns the less important columns give way (tests/test_tui_checkpoints2.py has the widths).
        assert column_labels(screen) == ["Name", "Model", "Params", "Source", "Step", "Best val", "Created",
                                         "Size"]
        rows = table_rows(screen)
        assert set(rows) == {"base", "from-book", "broken"}
        base = rows["base"]
        assert base["model"] == "1L·2H·32d"
        assert base["params"] == f"{checkpoints.show('base')['parameter_count'] / 1e3:.1f}K"
        assert [base[k] for k in ("source", "step", "best_val")] == ["trained", "120", "2.345"]
        assert base["size"].endswith("KB")
        assert rows["from-book"]["source"] == "book file"
        assert "broken" in rows["broken"]["model"]

        # Readable at 80x24: the table shows its rows, and every action button is on screen.
        table = screen.query_one("#ckpt-table", DataTable)
        assert table.region.height >= 5
        for button in screen.query(".ckpt-buttons Button"):
            assert button.region.height == 1 and button.region.right <= 80 and button.region.bottom <= 23

        # The details pane follows the cursor; a broken checkpoint shows its full error.
        await select_row(screen, pilot, "base")
        details = text(screen.query_one("#ckpt-meta", Static))
        assert "1 layer · 2 heads · width 32 · context 32" in details
        assert "step 120" in details and "Python reference topics" in details and "best val 2.345" in details
        await select_row(screen, pilot, "broken")
        assert "is not valid JSON" in text(screen.query_one("#ckpt-meta", Static))
        # Broken checkpoints cannot be used, only deleted or renamed.
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, CheckpointsScreen) and "broken" in status(screen)


async def test_details_show_the_runs_loss_curve():
    tokenizer = get_tokenizer("bytes")
    prepared = prepare_data(SMALL, tokenizer)
    trainer = Trainer(prepared, tokenizer, TrainConfig(max_steps=4, eval_freq=2, eval_iter=1, save_name="run",
                                                       device="cpu"), TINY)
    trainer.run()
    meta = checkpoints.show("run")
    assert meta["run_dir"]
    save("imported", source="imported-gpt2")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        await select_row(screen, pilot, "run")
        await settle(app, pilot)
        chart = screen.query_one("#ckpt-chart", MetricChart)
        assert chart.display and chart.point_count >= 4  # train and val at two evaluations
        details = text(screen.query_one("#ckpt-meta", Static))
        assert f"step {meta['step']}" in details and "Python reference topics" in details
        await select_row(screen, pilot, "imported")
        await settle(app, pilot)
        assert not chart.display  # no run, no curve


async def test_rename_checks_in_the_dialog_then_renames():
    save("alpha")
    save("beta")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        await select_row(screen, pilot, "alpha")
        await pilot.press("r")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, RenameDialog)
        field = dialog.query_one("#rename-input", Input)
        assert field.value == "alpha"
        for bad, message in (("beta", "already exists"), ("no/slash", "path separators"), ("", "cannot be empty")):
            field.value = bad
            field.focus()
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is dialog  # the dialog stays, with the problem in it
            assert message in text(dialog.query_one(".dialog-error", Static))
        assert names() == ["alpha", "beta"]
        field.value = "gamma"
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.screen is screen
        assert names() == ["beta", "gamma"]
        assert set(table_rows(screen)) == {"beta", "gamma"} and screen.selected == "gamma"
        assert "Renamed 'alpha' to 'gamma'" in status(screen)


async def test_delete_asks_first():
    save("keep")
    save("doomed")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        await select_row(screen, pilot, "doomed")
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("escape")  # no
        await pilot.pause()
        assert names() == ["doomed", "keep"]
        await pilot.press("d")
        await pilot.pause()
        await pilot.click("#confirm")
        await settle(app, pilot)
        assert app.screen is screen
        assert names() == ["keep"] and set(table_rows(screen)) == {"keep"}
        assert "Deleted 'doomed'" in status(screen)


async def test_export_writes_the_books_file_and_it_imports_back(tmp_path):
    save("tiny")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        await select_row(screen, pilot, "tiny")
        await pilot.press("e")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ExportDialog)
        field = dialog.query_one("#export-path", Input)
        assert field.value == "./tiny.pth"
        out = tmp_path / "out" / "model.pth"
        out.parent.mkdir()  # export does not create folders
        field.value = str(out)
        field.focus()
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.screen is screen and not screen.job_running
        assert "Exported 'tiny'" in status(screen)
        state = torch.load(out, weights_only=True)
        book = BookGPTModel(TINY.to_dict())
        book.load_state_dict(state)  # strict: the book's exact keys and shapes
        assert torch.equal(state["tok_emb.weight"], checkpoints.load_checkpoint("tiny").model.tok_emb.weight)

        # ...and the book's file imports back (heads given: 32 is not a GPT-2 width; tokenizer from the vocab).
        await submit_import(app, pilot, "i", path=str(out), name="back", heads="2")
        assert "Imported" in status(screen), status(screen)
        assert table_rows(screen)["back"]["source"] == "book file" and screen.selected == "back"
        meta = checkpoints.show("back")
        assert meta["source"] == "imported-book" and meta["tokenizer"] == "bytes"


async def test_import_a_hugging_face_gpt2_folder(tmp_path):
    folder = make_hf_folder(tmp_path / "tiny-hf")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        assert table_rows(screen) == {}
        assert "No checkpoints yet" in text(screen.query_one("#ckpt-meta", Static))
        await submit_import(app, pilot, "h", path=str(folder))  # the name comes from the folder
        assert "Imported" in status(screen), status(screen)
        rows = table_rows(screen)
        assert list(rows) == ["tiny-hf"] and rows["tiny-hf"]["source"] == "GPT-2"
        assert rows["tiny-hf"]["model"] == "1L·2H·32d ctx 32"
        meta = checkpoints.show("tiny-hf")
        assert meta["source"] == "imported-gpt2" and meta["error"] is None
        assert "imported-gpt2" in text(screen.query_one("#ckpt-meta", Static))
        assert screen.query_one("#ckpt-job").has_class("hidden")


async def test_bad_imports_show_their_message_and_add_nothing(tmp_path):
    save("existing")
    good = make_hf_folder(tmp_path / "good")
    corrupt_hf = tmp_path / "corrupt-hf"
    corrupt_hf.mkdir()
    (corrupt_hf / "config.json").write_text((good / "config.json").read_text())
    (corrupt_hf / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:200])
    garbage = tmp_path / "model.pth"
    garbage.write_bytes(b"this is not a PyTorch file" * 10)
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        # Caught in the dialog, beside the field: a path that does not exist, a name that is taken, a bad name.
        await submit_import(app, pilot, "h", path=str(tmp_path / "missing"), name="x")
        dialog = app.screen
        assert isinstance(dialog, ImportDialog)
        assert "does not exist" in text(dialog.query_one("#import-path-error", Static))
        dialog.query_one("#import-path", Input).value = str(good)
        dialog.query_one("#import-name", Input).value = "existing"
        await submit(dialog, pilot)
        assert "already exists" in text(dialog.query_one("#import-name-error", Static))
        dialog.query_one("#import-name", Input).value = ".hidden"
        await submit(dialog, pilot)
        assert "cannot start with a dot" in text(dialog.query_one("#import-name-error", Static))
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen

        # Found by the engine in the worker: a corrupt file. The dialog stays, the error beside the path.
        for key, path, expected in (("i", garbage, "is corrupt, truncated or not a PyTorch file"),
                                    ("h", corrupt_hf, "model.safetensors"),
                                    ("k", tmp_path, "is missing")):  # a folder without the tokenizer's files
            await submit_import(app, pilot, key, path=str(path), name=None if key == "k" else "junk")
            dialog = app.screen
            assert isinstance(dialog, ImportDialog) and not screen.job_running
            assert expected in text(dialog.query_one("#import-path-error", Static)) and "✗" in status(screen)
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is screen
        assert names() == ["existing"] and set(table_rows(screen)) == {"existing"}
        assert app.is_running


async def test_gpt2_download_offline_is_a_message(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    # huggingface_hub reads these at import time (transformers may have imported it already).
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        await pilot.press("w")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ImportDialog)
        assert dialog.query_one("#import-size", Select).value == "gpt2-small"
        assert dialog.query_one("#import-name", Input).value == "gpt2-small"
        dialog.query_one("#import-size", Select).value = "gpt2-medium"
        await pilot.pause()
        assert dialog.query_one("#import-name", Input).value == "gpt2-medium"  # follows the size
        await pilot.click("#ok")  # the mouse's way
        await settle(app, pilot)
        assert app.screen is screen and app.is_running
        message = text(screen.query_one("#ckpt-message-text", Static))  # in full, in the message panel
        assert "offline" in message and "openai-community/gpt2-medium" in message
        assert screen.query_one("#ckpt-job").has_class("hidden")
        assert names() == []


async def test_tokenizer_files_import(bpe_dir):
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        await submit_import(app, pilot, "k", path=str(bpe_dir))
        assert "tokenizer files copied" in status(screen)
        assert (gpt2_data_dir() / "encoder.json").is_file() and (gpt2_data_dir() / "vocab.bpe").is_file()


async def test_continue_training_and_generate_hand_over_the_checkpoint():
    save("base", step=3, dataset=DATASET)
    save("other")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        await select_row(screen, pilot, "base")
        await pilot.press("t")
        await settle(app, pilot)
        assert app.current_mode == "train"
        train = app.screen
        assert isinstance(train, TrainScreen)
        assert train.query_one("#resume", Select).value == "base"
        assert train.query_one("#n_layers", Input).disabled  # the shape comes from the checkpoint

        await pilot.press("f5")
        await settle(app, pilot)
        assert app.screen is screen and screen.selected == "base"
        await select_row(screen, pilot, "other")
        await pilot.press("g")
        await settle(app, pilot)
        if "generate" in app.MODES:
            assert app.current_mode == "generate"
            assert app.screen.query_one("#model", Select).value == "other"
        else:
            assert app.state.generate_checkpoint == "other"


async def test_cancel_stops_a_running_import(tmp_path):
    """The Cancel button sets the job's event; the engine stops at its next check and saves nothing."""
    folder = make_hf_folder(tmp_path / "hf")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        screen.start_job("Import (cancelled before it starts)",
                         lambda progress, cancel, stage: (cancel.wait(30), stage("late"),
                                                          _import_if_not_cancelled(folder, cancel))[2])
        await pilot.pause()
        assert screen.job_running and not screen.query_one("#ckpt-job").has_class("hidden")
        await pilot.click("#ckpt-job-cancel")
        await settle(app, pilot)
        assert not screen.job_running and "cancelled" in status(screen).lower()
        assert names() == []


def _import_if_not_cancelled(folder, cancel):
    from gpttui.core.gpt2_import import import_gpt2

    import_gpt2(folder, "never", cancel=cancel)
    return "imported", "never"


async def test_meta_with_wrong_types_is_a_broken_row_not_a_crash():
    """meta.json files that parse as JSON but break the schema (null step, null source, a string
    parameter count, "step": "lots") are each listed as broken; the app and the other rows stay."""
    import json

    save("good", step=4, dataset=DATASET)
    for name, key, value in (("step-null", "step", None), ("source-null", "source", None),
                             ("params-text", "parameter_count", "124M"), ("step-lots", "step", "lots")):
        save(name)
        file = paths.checkpoints_dir() / name / "meta.json"
        meta = json.loads(file.read_text())
        meta[key] = value
        file.write_text(json.dumps(meta))
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        rows = table_rows(screen)
        assert rows["good"]["step"] == "4"
        for name, key in (("step-null", "step"), ("source-null", "source"), ("params-text", "parameter_count"),
                          ("step-lots", "step")):
            assert "broken" in rows[name]["model"] and key in rows[name]["problem"], rows[name]
        await select_row(screen, pilot, "step-lots")
        assert "step must be a whole number" in text(screen.query_one("#ckpt-meta", Static))
        await pilot.press("f3")  # the Train screen lists only the usable ones
        await settle(app, pilot)
        options = app.screen.resume_values
        assert "good" in options and "step-lots" not in options


async def test_a_checkpoint_saved_again_updates_its_row_in_place():
    """The listing runs in a worker; a changed checkpoint changes its cells, not the table's order."""
    save("first", step=1)
    save("second", step=2)
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        order = list(table_rows(screen))
        save_again = order[-1]  # the older one: listed newest first, it would move to the top on a rebuild
        checkpoints.save_checkpoint(save_again, GPTModel(TINY), meta={"tokenizer": "bytes", "source": "trained",
                                                                     "step": 99}, overwrite=True)
        await pilot.press("ctrl+r")
        await settle(app, pilot)
        rows = table_rows(screen)
        assert list(rows) == order and rows[save_again]["step"] == "99"
        save("third")
        await pilot.press("ctrl+r")
        await settle(app, pilot)
        assert list(table_rows(screen))[0] == "third" and set(table_rows(screen)) == {"first", "second", "third"}
