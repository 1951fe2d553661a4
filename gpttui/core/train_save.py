"""What a training run keeps: checkpoints with the trainer's state, weight snapshots for the app, and
what is left after an out-of-memory error.

A part of :class:`gpttui.core.train.Trainer`, kept apart so that the training loop reads on one screen.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from gpttui.core import paths
from gpttui.core.errors import GPTTUIError
from gpttui.core.events import CheckpointEvent, FailedEvent


class NonFiniteLoss(GPTTUIError):
    pass


class Saving:
    """Checkpoints (rank 0 writes them), snapshots and the out-of-memory rescue."""

    def trainer_state(self, device: torch.device) -> dict[str, Any]:
        from gpttui.core import checkpoints

        p = self.pos
        rng = checkpoints.capture_rng_state()
        if self.book_parts.data_order and self._book_epoch_rng is not None and p.batch:
            rng["book_epoch_torch"] = self._book_epoch_rng.clone()  # replays this epoch's shuffle on resume
        return {
            "position": {"step": p.step, "epoch": p.epoch, "batch": p.batch, "tokens_seen": p.tokens_seen,
                         "best_val_loss": p.best_val_loss, "world": self.dist.world},
            "rng": rng,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": self.history,
            "run_id": self.run_id,
        }

    def save(self, device: torch.device, name: str | None = None) -> str | None:
        from gpttui.core import checkpoints

        p = self.pos
        if not all(bool(torch.isfinite(t).all()) for t in self.model.parameters()):
            raise NonFiniteLoss(f"The weights became non-finite by step {p.step}; they were not saved, "
                                f"{self._last_good()}. Try a lower learning rate, warmup or gradient clipping.")
        if not self.dist.main:  # rank 0 saves; the weights are the same on every rank
            return None
        name = name or self.save_name
        assert name is not None
        meta = {
            "source": "trained",
            "tokenizer": self.tokenizer.name,
            "train_config": self.config.to_dict(),
            "step": p.step,
            "epoch": self.last_epoch(),
            "tokens_seen": p.tokens_seen,
            "best_val_loss": p.best_val_loss if math.isfinite(p.best_val_loss) else None,
            "last_train_loss": self.history["train_losses"][-1] if self.history["train_losses"] else None,
            "last_val_loss": self.history["val_losses"][-1] if self.history["val_losses"] else None,
            "dataset": self.data.identity(),
            "run_id": self.run_id,
            "run_dir": str(self._log.dir) if self._log else None,
        }
        path = checkpoints.save_checkpoint(name, self.model, optimizer=self.optimizer, meta=meta,
                                           trainer_state=self.trainer_state(device), lease=self.lease)
        self.last_checkpoint = name
        self._emit(CheckpointEvent(p.step, name, str(path)))
        return name

    def _last_good(self) -> str:
        return (f"the last good checkpoint is {self.last_checkpoint!r}" if self.last_checkpoint
                else "no checkpoint was saved in this run")

    def last_epoch(self) -> int:
        """The 1-based epoch of the last step done (0 before any step)."""
        p = self.pos
        if p.step == 0 and p.tokens_seen == 0:
            return 0
        return p.epoch if p.batch == 0 else p.epoch + 1

    def serve_snapshots(self) -> None:
        """Answer pending weight-snapshot requests (called between steps)."""
        requests = self.control.take_snapshot_requests()
        if not requests or self.model is None:
            return
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        for future in requests:
            if not future.cancelled():
                future.set_result((self.model_config, weights))

    # -- the run
    def _out_of_memory(self) -> FailedEvent:
        """After an out-of-memory error: free the cache, save the weights of the last step done when they
        are intact (the error came before the optimizer touched them), and say what to lower."""
        device = self.device or torch.device("cpu")
        if self._pos_before_step is not None:  # the failed step's batches were not learned from
            self.pos = self._pos_before_step
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        saved = ""
        if self.model is not None and self.pos.step > 0 and not self._in_update and self.save_name:
            try:
                if self.save(device):
                    saved = f" The weights of step {self.pos.step} were saved as {self.save_name!r}."
            except (GPTTUIError, OSError, torch.OutOfMemoryError) as exc:
                saved = f" The weights could not be saved ({exc}); {self._last_good()}."
        elif self.pos.step > 0:
            last = self._last_good()
            saved = f" {last[:1].upper()}{last[1:]}."
        settings = self.data.settings
        from gpttui.core.memory import oom_advice

        # What the run still holds (model, AdamW) counts as free: the plan counts it again.
        in_use = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        advice = oom_advice(self.model_config, settings.batch_size, settings.context_length, dtype=self.dtype,
                            device=device, grad_accum=self.config.grad_accum, in_use=in_use)
        return FailedEvent(f"Out of memory on {device} at step {self.pos.step + 1} (batch {settings.batch_size} x "
                           f"context {settings.context_length}, {self.dtype}).{saved} {advice}",
                           self.pos.step, self.last_checkpoint)

    def _cancel_snapshots(self) -> None:
        for future in self.control.take_snapshot_requests():
            future.cancel()  # the run is over: the caller copies the weights itself


def is_out_of_memory(exc: Exception) -> bool:
    """CUDA raises torch.OutOfMemoryError; the CPU and MPS allocators raise a RuntimeError that says so."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def describe_failure(exc: Exception) -> str:
    """One line for an unexpected failure; a disk error names the folder and the free space."""
    if isinstance(exc, OSError):
        from gpttui.core.store import describe_os_error

        return describe_os_error(exc, "Training stopped", Path(exc.filename or paths.data_dir()))
    return f"{type(exc).__name__}: {exc}"


__all__ = ["Saving", "NonFiniteLoss", "is_out_of_memory", "describe_failure"]
