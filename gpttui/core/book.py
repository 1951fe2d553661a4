"""Book mode: the training loop of chapter 5 of "Build a Large Language Model (From Scratch)", run so that
its numbers are the book's to the last printed digit.

The default trainer computes the same things in a faster, resumable way, and so draws different random
numbers: its shuffles come from seeded generators of their own, while the book's code takes every random
number from torch's one global generator, in this order (seed 123, then):

1. the model's initial weights (``GPTModel(cfg)`` right after ``torch.manual_seed``);
2. each epoch, ``iter(train_loader)``: the DataLoader's base seed, then RandomSampler's shuffle seed;
3. each training step, the dropout masks (embeddings, attention weights, both shortcuts of every block);
4. each evaluation, ``iter(train_loader)`` and ``iter(val_loader)`` again (``evaluate_model`` loops over
   both loaders): two more draws for the train loader, one for the validation loader.

Book mode reproduces that consumption exactly (torch DataLoaders over the same windows, evaluation
through them), computes with the book's formulas (:func:`gpttui.core.model.use_book_math`), steps the
book's AdamW (not fused), and samples with ``generate_text_simple`` (no KV cache). Each of these is a
:class:`BookParts` switch, so ``bench/book_diff.py`` can measure what each difference costs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from gpttui.core.config import TrainConfig
    from gpttui.core.data import PreparedData
    from gpttui.core.tokenizer import Tokenizer


@dataclass(frozen=True)
class BookParts:
    """Which parts of the book's run a trainer reproduces (book mode: all; default mode: none)."""

    data_order: bool = True  # epochs shuffled by DataLoader from the global RNG (else seeded per epoch)
    eval_batches: bool = True  # evaluation iterates the loaders as evaluate_model does (else a fixed shuffle)
    math: bool = True  # the book's attention, LayerNorm and GELU formulas; samples without a KV cache
    optimizer: bool = True  # torch's default AdamW (else fused AdamW where available)

    @classmethod
    def none(cls) -> "BookParts":
        return cls(False, False, False, False)


def book_conflicts(config: TrainConfig) -> list[str]:
    """The settings of ``config`` that the book's loop does not have (empty: book mode can run it)."""
    found = []
    if config.warmup_steps:
        found.append(f"warmup (--warmup-steps {config.warmup_steps})")
    if config.min_lr is not None:
        found.append(f"learning-rate decay (--min-lr {config.min_lr})")
    if config.grad_clip:
        found.append(f"gradient clipping (--grad-clip {config.grad_clip})")
    if config.grad_accum != 1:
        found.append(f"gradient accumulation (--grad-accum {config.grad_accum})")
    if config.dtype != "fp32":
        found.append(f"{config.dtype} autocast (--dtype {config.dtype})")
    if config.compile:
        found.append("torch.compile (--compile)")
    if config.sample_at_eval:
        found.append("samples at each evaluation (--sample-at-eval)")
    return found


def book_loaders(data: PreparedData) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """The book's ``create_dataloader_v1`` pair over gpttui's windows (the same windows as GPTDatasetV1):
    train shuffled with drop_last, validation in order; no workers, so every draw is the main process's."""
    from torch.utils.data import DataLoader

    bs = data.settings.batch_size
    train = DataLoader(data.train_loader.windows, batch_size=bs, shuffle=True, drop_last=True, num_workers=0)
    val = DataLoader(data.val_loader.windows, batch_size=bs, shuffle=False, drop_last=False, num_workers=0)
    return train, val


def epoch_batches(loader: torch.utils.data.DataLoader, start: int = 0,
                  epoch_rng: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``loader`` from batch ``start`` on.

    From the top, the epoch's shuffle draws from the global RNG now, as the book's ``for ... in
    train_loader`` does. Resumed mid-epoch, ``epoch_rng`` (the global RNG state when the epoch began)
    replays those draws, so the order is the interrupted epoch's; the global RNG is then put back, and
    the batches already trained are passed over."""
    if start and epoch_rng is not None:
        now = torch.get_rng_state()
        torch.set_rng_state(epoch_rng)
        it = iter(loader)
        first = next(it, None)  # RandomSampler draws its seed at the first batch
        torch.set_rng_state(now)
        batches = iter(()) if first is None else itertools.chain([first], it)
    else:
        batches = iter(loader)
    yield from itertools.islice(batches, start, None)


@torch.no_grad()
def generate_text_simple(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int,
                         context_size: int) -> torch.Tensor:
    """The book's greedy ``generate_text_simple``: the whole (cropped) sequence through the model for
    every new token, no KV cache."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]
        idx = torch.cat((idx, torch.argmax(logits, dim=-1, keepdim=True)), dim=1)
    return idx


def book_sample(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
                device: torch.device | str) -> str:
    """The book's ``generate_and_print_sample`` without the print: eval mode, the model's full context,
    greedy, back to train mode."""
    from gpttui.core.model import unwrap_model

    inner = unwrap_model(model)
    inner.eval()
    try:
        ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        out = generate_text_simple(inner, idx, max_new_tokens, inner.pos_emb.weight.shape[0])
    finally:
        inner.train()
    return tokenizer.decode(out[0].tolist())


def book_line(epoch: int, steps_done: int, train_loss: float, val_loss: float) -> str:
    """The book's evaluation line. Its ``global_step`` counts from 0: after ``steps_done`` steps it is
    ``steps_done - 1``."""
    return f"Ep {epoch} (Step {steps_done - 1:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"


# --- the book's own run, for checking a book-mode run against it ---------------------------------------

# sha256 of the-verdict.txt (20,479 characters), the text of the book's chapter 2 and 5.
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"

# The evaluation lines the book prints for its chapter-5 run (GPT_CONFIG_124M, seed 123, AdamW 4e-4 / 0.1,
# 10 epochs, eval every 5 steps on 5 batches), as (global_step, train loss, val loss). Its code prints the
# same on a CPU; GPUs differ in the last digits.
BOOK_TABLE: tuple[tuple[int, float, float], ...] = (
    (0, 9.781, 9.933), (5, 8.111, 8.339), (10, 6.661, 7.048), (15, 5.961, 6.616), (20, 5.726, 6.600),
    (25, 5.201, 6.348), (30, 4.417, 6.278), (35, 4.069, 6.226), (40, 3.732, 6.160), (45, 2.850, 6.179),
    (50, 2.427, 6.141), (55, 2.104, 6.134), (60, 1.882, 6.233), (65, 1.320, 6.238), (70, 0.985, 6.242),
    (75, 0.717, 6.293), (80, 0.541, 6.393), (85, 0.391, 6.452),
)


# What the book's run is: its text, shape and settings (anything else prints other numbers).
BOOK_MODEL = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
              "drop_rate": 0.1, "qkv_bias": False, "tie_weights": False}
BOOK_TRAIN = {"epochs": 10, "lr": 4e-4, "weight_decay": 0.1, "eval_freq": 5, "eval_iter": 5, "seed": 123,
              "start_context": "Every effort moves you", "max_steps": None}
BOOK_DATA = {"sha256": VERDICT_SHA256, "tokenizer": "gpt2", "train_ratio": 0.9, "context_length": 256, "stride": 256,
             "batch_size": 2}


def book_run_differences(train_config: dict, model_config: dict, dataset: dict) -> list[str]:
    """How a run differs from the book's chapter-5 run (empty: it is that run, and in book mode it should
    print the book's table). Arguments are a Started event's records."""
    found = []
    if not train_config.get("book"):
        found.append("not in book mode")
    if dataset.get("sha256") != VERDICT_SHA256:
        found.append("not the book's text (the-verdict.txt)")
    for name, want in BOOK_DATA.items():
        if name != "sha256" and dataset.get(name) != want:
            found.append(f"{name} {dataset.get(name)} (the book's: {want})")
    for name, want in BOOK_MODEL.items():
        if model_config.get(name) != want:
            found.append(f"{name} {model_config.get(name)} (the book's: {want})")
    for name, want in BOOK_TRAIN.items():
        if train_config.get(name) != want:
            found.append(f"{name} {train_config.get(name)!r} (the book's: {want!r})")
    return found


class BookCheck:
    """Compares a book run's evaluations with :data:`BOOK_TABLE`, line by line, as printed (3 decimals)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.expected = {step: (train, val) for step, train, val in BOOK_TABLE}
        self.seen = 0
        self.differ: list[str] = []

    def add(self, steps_done: int, train_loss: float, val_loss: float) -> None:
        want = self.expected.get(steps_done - 1)
        if want is None:
            return
        self.seen += 1
        got, book = f"{train_loss:.3f}/{val_loss:.3f}", f"{want[0]:.3f}/{want[1]:.3f}"
        if got != book:
            self.differ.append(f"Step {steps_done - 1:06d}: {got} (book: {book})")

    def summary(self) -> str:
        total = len(BOOK_TABLE)
        if not self.differ:
            if self.seen == total:
                return f"Book check: all {total} evaluation lines equal the book's table."
            return f"Book check: the {self.seen} evaluation lines so far (of {total}) equal the book's table."
        where = "" if self.device.startswith("cpu") else (" The book's numbers come from a CPU; other devices "
                                                           "round differently in the last digits.")
        return (f"Book check: {len(self.differ)} of {self.seen} evaluation lines differ from the book's table, "
                f"first {self.differ[0]}.{where}")


__all__ = ["BookParts", "book_conflicts", "book_loaders", "epoch_batches", "generate_text_simple", "book_sample",
           "book_line", "VERDICT_SHA256", "BOOK_TABLE", "BOOK_MODEL", "BOOK_TRAIN", "BOOK_DATA",
           "book_run_differences", "BookCheck"]
