"""The trainer's evaluations and samples: the book's ``evaluate_model`` and ``generate_and_print_sample``.

A part of :class:`gpttui.core.train.Trainer`, kept apart so that the training loop reads on one screen; it
uses the trainer's model, data, config, position and loss curve.
"""

from __future__ import annotations

import math

import torch

from gpttui.core import precision
from gpttui.core.book import book_sample
from gpttui.core.events import EvalEvent, SampleEvent
from gpttui.core.generate import sample_text
from gpttui.core.model import calc_loss_loader, perplexity


class Evaluating:
    """Evaluation, the loss curve and samples (rank 0 alone, with several processes)."""

    @torch.no_grad()
    def evaluate(self, device: torch.device) -> tuple[float, float]:
        """The book's ``evaluate_model``: mean loss over ``eval_iter`` batches of each split; the
        training batches are drawn from a fresh shuffle (as the book's DataLoader gives them)."""
        model, n = self.model, self.config.eval_iter
        model.eval()
        try:
            if self.book_parts.eval_batches:  # through the loaders: the draws of the book's iter() calls
                return (calc_loss_loader(self._book_train, model, device, num_batches=n),
                        calc_loss_loader(self._book_val, model, device, num_batches=n))
            train = self.data.train_loader
            order = train.order(epoch=1_000_003 + self.pos.step).numpy()
            bs = train.batch_size
            train_batches = [train.windows.batch(order[i * bs:(i + 1) * bs]) for i in range(min(n, len(train)))]
            val_batches = []
            for i, batch in enumerate(self.data.val_loader):
                if i >= n:
                    break
                val_batches.append(batch)
            return self._mean_loss(train_batches, device), self._mean_loss(val_batches, device)
        finally:
            model.train()

    def _mean_loss(self, batches: list, device: torch.device) -> float:
        if not batches:
            return float("nan")
        total = 0.0
        for x, y in batches:
            with self._autocast(device):
                logits = self.model(x.to(device))
            total += torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten()).item()
        return total / len(batches)

    def _autocast(self, device: torch.device):
        return precision.autocast(device, self.dtype)

    def _sample(self, device: torch.device, epoch: int) -> None:
        if not self.config.start_context or self.config.sample_tokens <= 0 or not self.dist.main:
            return
        if self.book_parts.math:  # the book's generate_text_simple, no KV cache
            text = book_sample(self.model, self.tokenizer, self.config.start_context, self.config.sample_tokens,
                               device)
        else:
            with self._autocast(device):
                text = sample_text(self.model, self.tokenizer, self.config.start_context, self.config.sample_tokens,
                                   self.model_config.context_length, device)
        self._emit(SampleEvent(self.pos.step, epoch, self.config.start_context, text))

    # -- checkpoints
    def _evaluate_and_report(self, device: torch.device, epoch: int) -> bool:
        """Evaluate, extend the loss curve, report; sample too with ``sample_at_eval`` (returns whether).
        With several processes rank 0 alone evaluates; the others go on to the next step's all-reduce."""
        if not self.dist.main:
            return self.config.sample_at_eval
        train_loss, val_loss = self.evaluate(device)
        if math.isfinite(val_loss):
            self.pos.best_val_loss = min(self.pos.best_val_loss, val_loss)
        self.history["train_losses"].append(train_loss)
        self.history["val_losses"].append(val_loss)
        self.history["tokens_seen"].append(self.pos.tokens_seen)
        self.history["steps"].append(self.pos.step)
        self._emit(EvalEvent(self.pos.step, epoch, self.pos.tokens_seen, train_loss, val_loss,
                             perplexity(train_loss), perplexity(val_loss), self.pos.best_val_loss))
        if self.config.sample_at_eval:
            self._sample(device, epoch)
            return True
        return False


__all__ = ["Evaluating"]
