"""Side by side: the book's chapter-5 run (``book_reference.train_model_simple``, its printout captured)
and gpttui's trainer on the same text and settings, printed the same way. Used by tests/test_book.py and
bench/book_check.py."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

import book_reference as br
from gpttui.core.book import BookParts, book_line
from gpttui.core.config import GPTConfig, TrainConfig
from gpttui.core.control import TrainControl
from gpttui.core.data import DataSettings, prepare_data
from gpttui.core.events import EvalEvent, SampleEvent, StepEvent
from gpttui.core.train import Trainer


@dataclass
class Setup:
    """One run's text and settings, the book's names where it has them."""

    text_path: Path
    tokenizer: object  # a gpttui tokenizer (bytes or GPT-2)
    model: GPTConfig
    batch_size: int = 2
    train_ratio: float = 0.9
    epochs: int = 10
    eval_freq: int = 5
    eval_iter: int = 5
    lr: float = 4e-4
    weight_decay: float = 0.1
    seed: int = 123
    start_context: str = "Every effort moves you"


@dataclass
class Result:
    lines: list[str]  # the printed evaluation and sample lines, in order
    train_losses: list[float]
    val_losses: list[float]
    step_losses: list[float] = field(default_factory=list)  # gpttui only: each step's batch loss
    model: torch.nn.Module | None = None
    events: list = field(default_factory=list)


class _BookTokenizer:
    """The book's tiktoken calls (``encode(text, allowed_special=...)``) over a gpttui tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text, allowed_special=None):
        return self.tokenizer.encode(text)

    def decode(self, ids):
        return self.tokenizer.decode(ids)


def run_book(setup: Setup) -> Result:
    """The book's code, as chapter 5 runs it: loaders, ``torch.manual_seed``, GPTModel, AdamW, train."""
    text = setup.text_path.read_text(encoding="utf-8")
    tok = _BookTokenizer(setup.tokenizer)
    split = int(setup.train_ratio * len(text))
    context = setup.model.context_length
    torch.manual_seed(123)
    train_loader = br.create_dataloader_v1(text[:split], tok, batch_size=setup.batch_size, max_length=context,
                                           stride=context, drop_last=True, shuffle=True, num_workers=0)
    val_loader = br.create_dataloader_v1(text[split:], tok, batch_size=setup.batch_size, max_length=context,
                                         stride=context, drop_last=False, shuffle=False, num_workers=0)
    torch.manual_seed(setup.seed)
    model = br.GPTModel(setup.model.to_book_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, weight_decay=setup.weight_decay)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_losses, val_losses, _ = br.train_model_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=setup.epochs, eval_freq=setup.eval_freq,
            eval_iter=setup.eval_iter, start_context=setup.start_context, tokenizer=tok)
    return Result(printed.getvalue().split("\n")[:-1], train_losses, val_losses, model=model)


def data_for(setup: Setup):
    context = setup.model.context_length
    settings = DataSettings(source=str(setup.text_path), tokenizer=setup.tokenizer.name, context_length=context,
                            batch_size=setup.batch_size, train_ratio=setup.train_ratio, seed=setup.seed)
    return prepare_data(settings, setup.tokenizer)


def train_config(setup: Setup, book: bool = True, **changes) -> TrainConfig:
    values = dict(epochs=setup.epochs, lr=setup.lr, weight_decay=setup.weight_decay, eval_freq=setup.eval_freq,
                  eval_iter=setup.eval_iter, seed=setup.seed, start_context=setup.start_context, sample_tokens=50,
                  device="cpu", book=book)
    values.update(changes)
    return TrainConfig(**values)


def run_gpttui(setup: Setup, book: bool = True, parts: BookParts | None = None, data=None, resume: str | None = None,
               stop_at: int | None = None, overwrite: bool = False, **changes) -> Result:
    """gpttui's trainer on the same run, its events printed as the book prints them. ``parts`` picks the
    parts of book mode to reproduce (bench/book_diff.py); ``stop_at`` stops (and saves) after that step."""
    data = data or data_for(setup)
    control = TrainControl()
    events: list = []

    def callback(event):
        events.append(event)
        if stop_at is not None and isinstance(event, StepEvent) and event.step == stop_at:
            control.stop(save=True, reason="stopped")

    model_config = None if resume else setup.model.replace(vocab_size=setup.tokenizer.vocab_size)
    trainer = Trainer(data, setup.tokenizer, train_config(setup, book, **changes), model_config, callback=callback,
                      control=control, resume=resume, overwrite=overwrite)
    if parts is not None:
        trainer.book_parts = parts
    trainer.run()
    lines, train_losses, val_losses = [], [], []
    for e in events:
        if isinstance(e, EvalEvent):
            lines.append(book_line(e.epoch, e.step, e.train_loss, e.val_loss))
            train_losses.append(e.train_loss)
            val_losses.append(e.val_loss)
        elif isinstance(e, SampleEvent):
            lines.append(e.text.replace("\n", " "))
    steps = [e.loss for e in events if isinstance(e, StepEvent)]
    return Result(lines, train_losses, val_losses, steps, trainer.model, events)
