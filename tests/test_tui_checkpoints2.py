"""The Checkpoints screen as a newcomer meets it (issue 13, items 7, 8, 9 and 12's `checkpoints show`): a
table that fits 80 and 120 columns with units and readable dates, import dialogs that keep what was typed
and show the engine's error beside its field in the fields' words, a download error shown whole until
dismissed, and `gpttui checkpoints show` for people (`--json` for scripts)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re

import pytest
from textual.widgets import DataTable, Input, Select, Static

from gpttui.cli import main as cli_main
from gpttui.core import checkpoints, interop, paths
from gpttui.core.config import GPTConfig
from gpttui.core.data import DataSettings
from gpttui.core.gpt2_sources import raise_if_cancelled
from gpttui.core.model import GPTModel
from gpttui.tui import ckpt_table
from gpttui.tui.app import create_app
from gpttui.tui.dialogs import ImportDialog, error_field, in_ui_words
from gpttui.tui.screens.checkpoints import CheckpointsScreen
from tui_helpers import settle

SMALL = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)
TINY = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=2, n_layers=1)
LONG = "run-20261128-055834-ba83"  # a default run name: the longest names the table usually holds
DATASET = {"source": "builtin:pydoc", "label": "Python reference topics (built in)", "tokens": 465048,
           "context_length": 32, "stride": 32, "batch_size": 4, "train_ratio": 0.9}


def save(name: str, **meta) -> None:
    checkpoints.save_checkpoint(name, GPTModel(TINY), meta={"tokenizer": "bytes", "source": "trained", **meta})


async def open_screen(app, pilot) -> CheckpointsScreen:
    await settle(app, pilot)
    await pilot.press("f5")
    await settle(app, pilot)
    assert isinstance(app.screen, CheckpointsScreen)
    return app.screen


def shown_lines(table: DataTable) -> list[str]:
    """The table's lines as drawn (header first), as plain text."""
    return [table.render_line(y).text for y in range(table.size.height)]


def plain(widget: Static) -> str:
    return str(widget.render())


# --- the table ---------------------------------------------------------------------------------------


def check_fits(screen: CheckpointsScreen) -> tuple[list[str], list[str]]:
    """Every column fits inside the table (no sideways scrolling), its header is whole, and the size
    cells keep their unit. Returns the column labels and the drawn lines."""
    table = screen.query_one("#ckpt-table", DataTable)
    columns = list(table.columns.values())
    labels = [str(c.label) for c in columns]
    assert sum(c.get_render_width(table) for c in columns) <= table.scrollable_content_region.width
    assert table.max_scroll_x == 0
    lines = shown_lines(table)
    header = lines[0]
    for label in labels:
        assert label in header, (label, header)
    assert {"Name", "Step", "Best val", "Size"} <= set(labels)
    size_index = labels.index("Size")
    for row in table.ordered_rows:
        cell = str(table.get_row(row.key)[size_index])
        assert cell.endswith((" B", " KB", " MB")) and cell in "\n".join(lines)
    assert LONG in "\n".join(lines)  # the name whole, not cut
    return labels, lines


async def test_the_table_fits_120_and_80_columns_and_follows_a_resize():
    save(LONG, step=12345, tokens_seen=1_580_000, best_val_loss=2.345, dataset=DATASET)
    save("gpt2-small", source="imported-gpt2")
    save("from-book", source="imported-book")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)
        wide, lines = check_fits(screen)
        assert wide == [c.label for c in ckpt_table.COLUMNS if c.key != "problem"]  # 120 columns: all of them
        drawn = "\n".join(lines)
        assert "12,345" in drawn and "1.6M" in drawn and "2.345" in drawn
        saved = ckpt_table.compact_time(checkpoints.show(LONG)["created"])
        assert len(saved) == 5 and saved in drawn  # saved today: "13:05", the time alone

        await pilot.resize_terminal(80, 24)
        await settle(app, pilot)
        narrow, lines = check_fits(screen)
        assert len(narrow) < len(wide) and "Dataset" not in narrow  # a column goes rather than values cut
        assert screen.selected is not None

        await pilot.resize_terminal(120, 40)
        await settle(app, pilot)
        assert check_fits(screen)[0] == wide


def test_fit_drops_and_compacts_columns_in_order():
    """The fitting alone: full forms when wide, then compact forms, then whole columns go; the name
    shrinks only when nothing else is left to give."""
    now = dt.datetime(2026, 11, 28, 14, 0)
    forms = {"name": (LONG, LONG), "model": ("12L·12H·768d ctx 1024", "12L·12H·768d"), "params": ("124.4M",) * 2,
             "source": ("trained",) * 2, "step": ("12,345",) * 2, "tokens": ("1.6M",) * 2,
             "best_val": ("2.345",) * 2, "dataset": ("Python reference topics (built in)",) * 2,
             "created": ("Nov 28 06:14", "06:14"), "size": ("474.7 MB",) * 2, "problem": ("", "")}
    wide = ckpt_table.fit([forms], 200, problem_column=False)
    assert wide.keys == [c.key for c in ckpt_table.COLUMNS if c.key != "problem"] and not wide.compact
    assert wide.total <= 200
    for width in (116, 96, 76, 60, 40):
        layout = ckpt_table.fit([forms], width, problem_column=False)
        assert layout.total <= width, (width, layout)
        assert {"name", "step", "best_val", "size"} <= set(layout.keys)
        cells = ckpt_table.row(forms, layout)
        assert cells[layout.keys.index("size")] == "474.7 MB"
    assert ckpt_table.fit([forms], 76, False).columns[0] == ("name", "Name", len(LONG))  # 80 columns: whole
    # a broken checkpoint: at 120 columns what is wrong shows (long enough to say it) before tokens and data
    good = {**forms, "name": ("base",) * 2}
    broken = {**forms, "name": ("old",) * 2, "problem": ("meta.json: step must be a whole number, not 'lots'",) * 2}
    layout = ckpt_table.fit([good, broken], 116, problem_column=True)
    assert "problem" in layout.keys and "tokens" not in layout.keys and layout.total <= 116
    assert "step must be" in ckpt_table.row(broken, layout)[layout.keys.index("problem")]
    assert "problem" not in ckpt_table.fit([good, broken], 76, problem_column=True).keys  # 80: the details say it
    assert ckpt_table.compact_time("2026-11-28T06:14:00", now) == "06:14"
    assert ckpt_table.compact_time("2026-10-02T06:14:00", now) == "Oct 02"
    assert ckpt_table.compact_time("2025-10-02T06:14:00", now) == "Oct 2025"
    assert ckpt_table.compact_time("yesterday", now) == "?"


# --- the import dialogs keep what was typed ----------------------------------------------------------


async def fill(app, pilot, key: str, **fields: str) -> ImportDialog:
    await pilot.press(key)
    await pilot.pause()
    dialog = app.screen
    assert isinstance(dialog, ImportDialog)
    for field, value in fields.items():
        widget = dialog.query_one(f"#import-{field}")
        if isinstance(widget, Select):
            widget.value = value
        else:
            widget.value = value
        await pilot.pause()
    return dialog


async def press_import(app, pilot, dialog: ImportDialog) -> None:
    dialog.query_one("#import-path", Input).focus()
    await pilot.press("enter")
    await settle(app, pilot)


def field_error(dialog: ImportDialog, field: str) -> str:
    error = dialog.query_one(f"#import-{field}-error", Static)
    return "" if error.has_class("hidden") else plain(error)


async def test_a_refused_book_import_keeps_the_dialog_with_the_error_beside_heads(tmp_path):
    save("tiny")
    book = tmp_path / "model.pth"
    interop.export_book("tiny", book)  # width 32: not a GPT-2 width, so the heads must be given
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_screen(app, pilot)
        dialog = await fill(app, pilot, "i", path=str(book), name="mine", heads="3")
        await press_import(app, pilot, dialog)
        assert app.screen is dialog and not dialog.busy  # still open, usable again
        heads_error = field_error(dialog, "heads")
        assert "Heads (3)" in heads_error and "Width (32)" in heads_error, heads_error
        assert "n_heads" not in heads_error and "emb_dim" not in heads_error
        assert dialog.query_one("#import-heads-row").has_class("-invalid")
        assert not field_error(dialog, "path") and dialog.query_one(".dialog-error").has_class("hidden")
        # what was typed is all there
        assert dialog.query_one("#import-path", Input).value == str(book)
        assert dialog.query_one("#import-name", Input).value == "mine"
        assert dialog.query_one("#import-heads", Input).value == "3"
        # the error line is drawn inside the dialog, right under the Heads row, at 80x24
        row, error = dialog.query_one("#import-heads-row"), dialog.query_one("#import-heads-error")
        assert error.region.y == row.region.bottom and error.region.right <= 80 and error.region.height >= 1

        dialog.query_one("#import-heads", Input).value = ""  # no heads: GPT-2's table has none for 32
        await press_import(app, pilot, dialog)
        assert app.screen is dialog and "give Heads" in field_error(dialog, "heads")

        dialog.query_one("#import-heads", Input).value = "2"
        dialog.query_one("#import-tokenizer", Select).value = "gpt2"  # 257 tokens cannot hold GPT-2's
        await pilot.pause()
        await press_import(app, pilot, dialog)
        assert app.screen is dialog
        assert "choose Tokenizer bytes" in field_error(dialog, "tokenizer") and not field_error(dialog, "heads")
        assert not checkpoints.checkpoint_exists("mine")

        dialog.query_one("#import-tokenizer", Select).value = "auto"
        await pilot.pause()
        await press_import(app, pilot, dialog)
        assert app.screen is screen  # imported: the dialog closed itself
        assert checkpoints.show("mine")["model_config"]["n_heads"] == 2
        assert screen.selected == "mine" and "Imported" in plain(screen.query_one("#ckpt-status", Static))


async def test_tokenizer_and_export_dialogs_keep_a_refused_path(tmp_path):
    save("tiny")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_screen(app, pilot)
        dialog = await fill(app, pilot, "k", path=str(tmp_path))  # a folder without encoder.json, vocab.bpe
        await press_import(app, pilot, dialog)
        assert app.screen is dialog
        assert "is missing" in field_error(dialog, "path")
        assert dialog.query_one("#import-path", Input).value == str(tmp_path)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, CheckpointsScreen)

        await pilot.press("e")  # export into a folder that does not exist: said in the dialog, not after
        await pilot.pause()
        export = app.screen
        target = str(tmp_path / "no-such-folder" / "model.pth")
        export.query_one("#export-path", Input).value = target
        export.query_one("#export-path", Input).focus()
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.screen is export and "does not exist" in plain(export.query_one(".dialog-error", Static))
        assert export.query_one("#export-path", Input).value == target


def test_engine_words_become_the_fields_words():
    message = ("Cannot infer the number of attention heads from the weights (emb_dim 100 is not a GPT-2 size: "
               "768, 1024, 1280, 1600); give n_heads (or the whole model config) to import it.")
    assert in_ui_words(message).endswith("(Width 100 is not a GPT-2 size: 768, 1024, 1280, 1600); give Heads "
                                         "to import it.")
    assert error_field("book", message) == "heads"
    assert error_field("book", "Checkpoint 'x' already exists; choose another name.") == "name"
    assert error_field("hf", "/x/model.safetensors is corrupt or truncated") == "path"
    assert error_field("book", "Not enough memory for this model.") == ""
    assert "use --tokenizer" not in in_ui_words("...; it fits the bytes tokenizer (257 tokens): use --tokenizer "
                                                "bytes. Not imported.")


# --- the download error: whole, until dismissed ------------------------------------------------------


async def test_an_offline_download_error_is_shown_whole_until_dismissed(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    # Offline mode: huggingface_hub fails at once, without network timeouts (as test_tui_checkpoints does).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    save("keep")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_screen(app, pilot)
        panel = screen.query_one("#ckpt-message")
        assert panel.has_class("hidden")
        assert not screen.check_action("close_message", ())  # nothing to close: not offered
        dialog = await fill(app, pilot, "w")
        await pilot.click("#ok")
        await settle(app, pilot)
        assert app.screen is screen
        assert not panel.has_class("hidden") and screen.query_one("#ckpt-details").has_class("hidden")
        message = plain(screen.query_one("#ckpt-message-text", Static))
        assert "offline" in message and "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors" in message
        assert message.count("\n") >= 1  # every line of it, not 3 lines of a status
        assert panel.region.height >= 8 and panel.region.bottom <= 23
        status = plain(screen.query_one("#ckpt-status", Static))
        assert "\n" not in status.strip() and "Import gpt2-small failed" in status and "Esc closes" in status
        # copyable: c puts the whole message on the clipboard
        await pilot.press("c")
        await pilot.pause()
        assert app.clipboard == message.strip()

        await pilot.press("escape")
        await pilot.pause()
        assert panel.has_class("hidden") and not screen.query_one("#ckpt-details").has_class("hidden")
        assert not plain(screen.query_one("#ckpt-status", Static)).strip()  # nothing stale left behind
        assert dialog is not app.screen

        # shown again by a second failure, gone after the next success (a rename)
        await pilot.press("w")
        await pilot.pause()
        await pilot.click("#ok")
        await settle(app, pilot)
        assert not panel.has_class("hidden")
        await pilot.press("r")
        await pilot.pause()
        app.screen.query_one("#rename-input", Input).value = "kept"
        app.screen.query_one("#rename-input", Input).focus()
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.screen is screen and panel.has_class("hidden")
        assert "Renamed 'keep' to 'kept'" in plain(screen.query_one("#ckpt-status", Static))
        assert checkpoints.checkpoint_exists("kept")


# --- gpttui checkpoints show -------------------------------------------------------------------------


def test_checkpoints_show_is_for_people_and_json_for_scripts(capsys):
    save("shown", step=120, tokens_seen=15360, best_val_loss=2.345, dataset=DATASET)
    assert cli_main(["checkpoints", "show", "shown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = {line.split()[0]: line for line in lines if line[:1].strip()}
    for key in ("name", "model", "params", "step", "loss", "data", "created", "size", "path"):
        assert key in keys, (key, lines)
    assert all(line[11] == " " and line[12] != " " for line in lines)  # every value starts in one column
    assert "1 layer · 2 heads · width 32 · context 32" in keys["model"]
    assert "120 · epoch" in keys["step"] and "best val 2.345" in keys["loss"]
    assert "Python reference topics" in keys["data"]
    assert re.search(r"size +\d+\.\d KB in 2 files", keys["size"]), keys["size"]
    assert not lines[0].startswith("{")

    assert cli_main(["checkpoints", "show", "shown", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["name"] == "shown" and record["step"] == 120 and record["model_config"]["n_heads"] == 2


@pytest.mark.parametrize("broken_text", ["{not json"])
def test_checkpoints_show_of_a_broken_one_says_what_is_wrong(capsys, broken_text):
    folder = paths.checkpoints_dir() / "bad"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(broken_text)
    assert cli_main(["checkpoints", "show", "bad"]) == 0
    out = capsys.readouterr().out
    assert "error" in out and "not valid JSON" in out and str(folder) in out


async def test_the_dialog_shows_the_import_running_and_escape_cancels_it(tmp_path):
    """While the screen runs the dialog's import, the dialog shows its stage and locks the form; Escape
    cancels the job (the engine's cancel event) and closes the dialog; nothing is saved."""
    book = tmp_path / "model.pth"
    book.write_bytes(b"\0")  # the form only checks that the file exists; the job below never reads it
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_screen(app, pilot)

        def start(request, dialog):  # the screen's own hand-off, with a job that waits to be cancelled
            def job(progress, cancel, stage):
                stage("Reading model.pth")
                cancel.wait(30)
                raise_if_cancelled(cancel)  # as the engine does at its checks
                return "imported", None
            screen.start_job("Import model.pth", job)
            screen._job_dialog = dialog

        dialog = ImportDialog("book", start=start, cancel=screen.action_cancel_job)
        await app.push_screen(dialog)
        dialog.query_one("#import-path", Input).value = str(book)
        await pilot.pause()
        await press_import_no_wait(pilot, dialog)
        stage = dialog.query_one("#import-job-stage")
        deadline = asyncio.get_running_loop().time() + 10
        while "Reading model.pth" not in str(stage.render()):
            assert asyncio.get_running_loop().time() < deadline, str(stage.render())
            await pilot.pause()
        assert dialog.busy and not dialog.query_one("#import-job").has_class("hidden")
        assert dialog.query_one("#import-path", Input).disabled and dialog.query_one("#ok").disabled
        await pilot.press("escape")
        await settle(app, pilot)
        assert app.screen is screen and not screen.job_running
        assert "cancelled" in plain(screen.query_one("#ckpt-status", Static)).lower()
        assert not checkpoints.checkpoint_exists("model")


async def press_import_no_wait(pilot, dialog: ImportDialog) -> None:
    """Enter in the form, without waiting for the job it starts."""
    dialog.query_one("#import-path", Input).focus()
    await pilot.press("enter")
