"""Book mode against the book's own code (tests/book_reference.py): the same printout, line for line."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
import torch

import book_reference as br
from book_harness import Setup, data_for, run_book, run_gpttui
from gpttui.cli_output import EventPrinter, Out
from gpttui.core.book import (BOOK_DATA, BOOK_MODEL, BOOK_TABLE, BOOK_TRAIN, BookCheck, book_conflicts,
                              book_run_differences)
from gpttui.core.config import GPTConfig, TrainConfig
from gpttui.core.data import _builtin_pydoc
from gpttui.core.errors import ConfigError
from gpttui.core.events import EvalEvent, FinishedEvent, Started
from gpttui.core.launch import train_argv
from gpttui.core.model import GPTModel, use_book_math
from gpttui.core.tokenizer import ByteTokenizer

SMALL = GPTConfig(vocab_size=257, context_length=32, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.1)


def _text(tmp_path, chars: int):
    path = tmp_path / "corpus.txt"
    path.write_text(_builtin_pydoc()[:chars], encoding="utf-8")
    return path


def _assert_same_run(book, ours) -> None:
    assert ours.lines == book.lines  # every "Ep .. (Step ..)" line and every sample, as printed
    raw = list(zip(book.train_losses + book.val_losses, ours.train_losses + ours.val_losses))
    assert len(raw) == len(book.train_losses) * 2
    assert max(abs(a - b) for a, b in raw) <= 1e-5
    theirs = {k: v for k, v in book.model.state_dict().items() if not k.endswith(".att.mask")}
    mine = ours.model.state_dict()
    assert set(theirs) == set(mine)
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, rtol=0, atol=1e-6, msg=key)


def test_book_mode_prints_what_the_books_code_prints(tmp_path):
    """30 steps with dropout on, 6 evaluations, 2 samples: the book's printout, line for line."""
    setup = Setup(_text(tmp_path, 1_100), ByteTokenizer(), SMALL, epochs=2, start_context="def ")
    assert len(data_for(setup).train_loader) == 15
    book = run_book(setup)
    ours = run_gpttui(setup)
    assert sum(line.startswith("Ep ") for line in book.lines) == 6 and len(book.lines) == 8
    assert book.lines[0].startswith("Ep 1 (Step 000000): Train loss ")
    assert len(ours.step_losses) == 30
    _assert_same_run(book, ours)


def test_book_mode_with_gpt2_tokens(tmp_path, gpt2_tokenizer):
    setup = Setup(_text(tmp_path, 2_500), gpt2_tokenizer, SMALL.replace(vocab_size=gpt2_tokenizer.vocab_size),
                  epochs=1)
    assert len(data_for(setup).train_loader) >= 6
    _assert_same_run(run_book(setup), run_gpttui(setup))


def test_default_mode_is_not_the_books_run(tmp_path):
    """The reason book mode exists: the default trainer's own shuffles give other numbers from step 0 (book
    mode's are the book's, as the test above shows)."""
    setup = Setup(_text(tmp_path, 1_000), ByteTokenizer(), SMALL, epochs=1, start_context="def ")
    book, default = run_gpttui(setup, max_steps=1), run_gpttui(setup, book=False, max_steps=1)
    assert book.step_losses != default.step_losses and book.lines[0] != default.lines[0]


def test_book_mode_resumes_mid_epoch_as_if_never_stopped(tmp_path):
    """Stopped after step 17 (mid-epoch 2), saved, resumed: the rest equals the run that never stopped. The
    checkpoint keeps the RNG state of the epoch's start, from which the epoch's shuffle is drawn again."""
    setup = Setup(_text(tmp_path, 1_000), ByteTokenizer(), SMALL, epochs=2, start_context="def ")
    whole = run_gpttui(setup, save_name="whole")
    first = run_gpttui(setup, save_name="part", stop_at=17)
    assert len(first.step_losses) == 17
    second = run_gpttui(setup, resume="part")
    assert first.step_losses + second.step_losses == whole.step_losses
    assert first.train_losses + second.train_losses == whole.train_losses
    assert first.val_losses + second.val_losses == whole.val_losses
    for key, value in whole.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key


def test_book_mode_says_when_it_cannot_replay_an_epoch(tmp_path):
    """A default-mode checkpoint saved mid-epoch has no book-mode shuffle to replay: book mode says so."""
    setup = Setup(_text(tmp_path, 1_000), ByteTokenizer(), SMALL, epochs=1, start_context="def ")
    run_gpttui(setup, book=False, save_name="plain", stop_at=3)
    resumed = run_gpttui(setup, resume="plain", max_steps=5)
    started = next(e for e in resumed.events if isinstance(e, Started))
    assert started.config["book"] and any("saved mid-epoch outside book mode" in n for n in started.notes)
    assert len(resumed.step_losses) == 2


def test_book_math_is_the_books_to_the_bit():
    """Same seed, same batch, dropout on: logits and every gradient equal the book's GPTModel's."""
    torch.manual_seed(123)
    book = br.GPTModel(SMALL.to_book_dict())
    torch.manual_seed(123)
    ours = use_book_math(GPTModel(SMALL))
    x, y = torch.randint(0, 257, (2, 32)), torch.randint(0, 257, (2, 32))
    losses = []
    for model in (book, ours):
        model.train()
        torch.manual_seed(7)
        loss = br.calc_loss_batch(x, y, model, "cpu")
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    grads = dict(book.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.equal(p.grad, grads[name].grad), name
    use_book_math(ours, False)  # the fused kernels: the same model within float error
    ours.eval(), book.eval()
    torch.testing.assert_close(ours(x), book(x), rtol=0, atol=1e-5)


def test_book_mode_refuses_what_the_books_loop_lacks():
    config = TrainConfig(book=True, warmup_steps=5, grad_clip=1.0, dtype="bf16")
    assert len(book_conflicts(config)) == 3
    with pytest.raises(ConfigError, match=r"Book mode .* no warmup .*, no gradient clipping .*, no bf16 autocast"):
        config.validate()
    TrainConfig(book=True).validate()  # the defaults are the book's


def test_cli_book_mode_prints_the_books_lines_only(tmp_path):
    corpus = _text(tmp_path, 1_500)
    flags = ["--data", str(corpus), "--tokenizer", "bytes", "--preset", "tiny", "--emb-dim", "32", "--n-heads", "4",
             "--context-length", "32", "--no-tie-weights", "--max-steps", "6", "--start-context", "def "]
    proc = subprocess.run([sys.executable, "-m", "gpttui", "train", "--book", *flags], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    evals = [line for line in proc.stdout.splitlines() if line.startswith("Ep ")]
    assert len(evals) == 2
    for line, step in zip(evals, ("000000", "000005")):  # the book's line, nothing after it (no tok/s, ETA)
        assert re.fullmatch(rf"Ep 1 \(Step {step}\): Train loss \d+\.\d{{3}}, Val loss \d+\.\d{{3}}", line), line
    assert "the book's table needs its run" in proc.stderr and "not the book's text" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "gpttui", "train", "--book", "--warmup-steps", "3", *flags],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no warmup (--warmup-steps 3)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_background_run_keeps_book_mode():
    from gpttui.core.data import DataSettings

    settings = DataSettings(tokenizer="bytes")
    assert "--book" in train_argv(settings, SMALL, TrainConfig(book=True), resume=None, overwrite=False)
    assert "--no-book" in train_argv(settings, SMALL, TrainConfig(), resume=None, overwrite=False)


def _book_started(**changes) -> Started:
    config = {**TrainConfig(book=True).to_dict(), **changes}
    return Started("r", "/tmp/r", config, dict(BOOK_MODEL), 162_419_712, "cpu", "fp32", 90, 9.0, 512,
                   dataset={**BOOK_DATA, "source": "/home/me/the-verdict.txt", "characters": 20_479})


def _printed(events) -> str:
    out = io.StringIO()
    printer = EventPrinter(Out(), as_json=False)
    stdout, sys.stdout = sys.stdout, out
    try:
        for event in events:
            printer(event)
    finally:
        sys.stdout = stdout
    return out.getvalue()


def test_the_books_own_run_is_checked_against_its_table():
    evals = [EvalEvent(step + 1, 1 + step // 9, 0, train, val, 0.0, 0.0, val) for step, train, val in BOOK_TABLE]
    done = FinishedEvent("completed", 90, 46_080, 600.0, "verdict", 6.134)
    text = _printed([_book_started(), *evals, done])
    assert "Ep 10 (Step 000085): Train loss 0.391, Val loss 6.452\n" in text
    assert "Book check: all 18 evaluation lines equal the book's table." in text
    evals[6] = EvalEvent(31, 4, 0, 4.4175, 6.278, 0.0, 0.0, 6.1)  # 4.4175 prints as 4.418 (book: 4.417)
    text = _printed([_book_started(), *evals, done])
    assert "Book check: 1 of 18 evaluation lines differ from the book's table, first Step 000030: 4.418/6.278" in text


def test_what_makes_a_run_the_books():
    started = _book_started()
    assert book_run_differences(started.config, started.model_config, started.dataset) == []
    assert BOOK_TRAIN["seed"] == 123 and len(BOOK_TABLE) == 18
    other = book_run_differences({**started.config, "seed": 1, "book": False}, started.model_config,
                                 {**started.dataset, "sha256": "0" * 64})
    assert other == ["not in book mode", "not the book's text (the-verdict.txt)", "seed 1 (the book's: 123)"]
    assert BookCheck().summary() == "Book check: the 0 evaluation lines so far (of 18) equal the book's table."
