"""The training engine: the book's ``train_model_simple`` made dependable.

Same semantics as the book (AdamW, evaluation every ``eval_freq`` steps on ``eval_iter`` batches,
a greedy sample after each epoch, tokens seen counted per input batch), plus warmup + cosine decay,
gradient clipping and accumulation, bf16 autocast, fused AdamW, optional ``torch.compile``, exact
resume from checkpoints, and a run directory with an append-only JSONL of events. ``TrainConfig.book``
runs the book's loop exactly instead: its data order, RNG use, math and AdamW (:mod:`gpttui.core.book`).

The trainer never touches a UI: it reports through the event dataclasses of
:mod:`gpttui.core.events` given to a callback, and is controlled from any thread through
:class:`TrainControl` (pause / resume / stop / save now), honoured at step boundaries. How a run is
planned (its shape, what a resume reuses, where it saves) lives in :mod:`gpttui.core.runplan`.

The loop, in the spirit of nanoGPT's ``train.py``::

    while steps remain:
        honour control requests (stop, pause)     _honour_control
        one optimizer step, with accumulation     _optimizer_step
        report it, evaluate and sample when due   _after_step
        save when due, serve weight snapshots
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from gpttui import __version__
from gpttui.core import paths
from gpttui.core.book import BookParts, book_loaders, book_sample, epoch_batches
from gpttui.core.config import GPTConfig, TrainConfig
from gpttui.core.control import TrainControl
from gpttui.core.data import PreparedData
from gpttui.core.errors import ConfigError, GPTTUIError
from gpttui.core.events import (EVENT_TYPES, Callback, CheckpointEvent, EvalEvent, Event, FailedEvent, FinishedEvent, RunLog, SampleEvent, Started, StateEvent, StepEvent,
                                new_run_id, now_iso, read_run_events)
from gpttui.core.generate import sample_text
from gpttui.core.model import GPTModel, calc_loss_loader, count_parameters, perplexity, use_book_math
from gpttui.core.resources import pick_device
from gpttui.core.runplan import (Position, SavePlan, checkpoint_data_settings, dataset_matches, load_resume,
                                 plan_save, prepare_checkpoint_data)
from gpttui.core.tokenizer import Tokenizer

# --- schedule ----------------------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for 0-based ``step``: linear warmup to ``lr``, then constant (the book's
    default) or cosine decay to ``min_lr`` at the last step."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.min_lr is None:
        return cfg.lr
    decay_steps = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# --- the trainer ---------------------------------------------------------------------------------


class NonFiniteLoss(GPTTUIError):
    pass


@dataclass
class _Loop:
    """What the loop carries from one optimizer step to the next."""

    model: torch.nn.Module  # the model as trained (compiled or not)
    total_steps: int
    tokens_per_step: int
    batches: Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]
    start_time: float
    step_start: float
    tps_ema: float | None = None
    step_times: list[float] = field(default_factory=list)
    epoch_ended: bool = False  # the step just done finished an epoch
    sampled_last: bool = False  # a sample was taken after the step just done


@dataclass
class _Step:
    """One optimizer step done."""

    epoch: int  # 0-based epoch of its last batch
    loss: float
    lr: float
    grad_norm: float


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The book's AdamW over all parameters; fused where torch supports it on this device."""
    params = list(model.parameters())
    if device.type in ("cuda", "cpu", "mps"):
        try:
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Trainer:
    """Builds (or resumes) a model and trains it on ``data``, reporting through ``callback``.

    ``model_config`` is the shape for a new model; with ``resume`` (a checkpoint name) the model,
    optimizer, RNG and data position come from the checkpoint instead. ``run()`` blocks until the
    run ends, so call it from a worker thread when a UI is waiting.
    """

    def __init__(self, data: PreparedData, tokenizer: Tokenizer, config: TrainConfig,
                 model_config: GPTConfig | None = None, callback: Callback | None = None,
                 control: TrainControl | None = None, resume: str | None = None,
                 run_id: str | None = None, overwrite: bool = False, fresh_optimizer: bool = False) -> None:
        config.validate()
        if model_config is None and resume is None:
            raise ConfigError("Give a model config for a new model, or a checkpoint to resume.")
        self.data = data
        self.tokenizer = tokenizer
        self.config = config
        self.model_config = model_config
        self.callback = callback or (lambda e: None)
        self.control = control or TrainControl()
        self.resume = resume
        self.overwrite = overwrite
        self.fresh_optimizer = fresh_optimizer
        self.run_id = run_id or new_run_id()
        self.save_name = config.save_name  # None: decided in _build (resume: its rules; new: text and shape)
        self.lease = None  # the store's NameLease on save_name, held while the run lives
        self.notes: list[str] = []
        self._step_offset = 0  # steps done before this data's epoch 0 (resumed on other data)
        self.same_data = False  # resumed on the checkpoint's own text
        self.model: GPTModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.pos = Position()
        self.last_checkpoint: str | None = None
        # The checkpoint's loss curve (evaluations), kept in trainer_state.pt and continued on resume.
        self.history: dict[str, list] = {"train_losses": [], "val_losses": [], "tokens_seen": [], "steps": []}
        self._resume_opt: dict | None = None
        self._resume_rng: dict | None = None
        self._log: RunLog | None = None
        self._status = None  # gpttui.core.runs.StatusWriter: status.json, for other processes
        self._inbox = None  # gpttui.core.runs.CommandInbox: commands/ from other processes
        # Book mode (config.book): which parts of the book's run are reproduced (bench/book_diff.py sets
        # parts one at a time), the book's DataLoaders, and the global RNG state when this epoch began.
        self.book_parts = BookParts() if config.book else BookParts.none()
        self._book_train = self._book_val = None
        self._book_epoch_rng: torch.Tensor | None = None

    # -- reporting
    def _emit(self, event: Event) -> None:
        if self._log is not None:
            try:
                self._log.append(event)
            except OSError:
                pass  # a full disk must not kill the run; the UI still gets the event
        if self._status is not None:
            self._status.observe(event)
        self.callback(event)

    # -- set-up
    def _build(self) -> tuple[torch.device, int]:
        cfg = self.config
        device = pick_device(cfg.device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        vocab = self.tokenizer.vocab_size
        from gpttui.core.resources import preflight_training

        if self.resume:
            self._load_resume()
        else:
            assert self.model_config is not None
            if self.model_config.vocab_size != vocab:
                self.model_config = self.model_config.replace(vocab_size=vocab)
        # Sizes and the save name are checked before the model (and AdamW) take memory.
        preflight_training(self.model_config, self.data.settings.batch_size, device, self.data.settings.context_length)
        self._reserve_save_name()
        if not self.resume:
            torch.manual_seed(cfg.seed)
            self.model = GPTModel(self.model_config)
        if self.model_config.context_length < self.data.settings.context_length:
            raise ConfigError(
                f"The data's context length ({self.data.settings.context_length}) exceeds the model's "
                f"({self.model_config.context_length}); lower the data's context length.")
        self.model.to(device)
        parts = self.book_parts
        if parts.math:
            use_book_math(self.model)
        if parts.data_order or parts.eval_batches:
            self._book_train, self._book_val = book_loaders(self.data)
        if parts.optimizer:  # the book's AdamW, as constructed in chapter 5
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = make_optimizer(self.model, cfg, device)
        if self._resume_opt is not None:
            self.optimizer.load_state_dict(self._resume_opt)
        return device, count_parameters(self.model)

    def _load_resume(self) -> None:
        """Model, optimizer, RNG, data position and history from the checkpoint being continued
        (:func:`gpttui.core.runplan.load_resume` says what a continued run starts from)."""
        state = load_resume(self.resume, self.data, self.tokenizer, fresh_optimizer=self.fresh_optimizer)
        self.model, self.model_config, self.pos = state.model, state.model_config, state.position
        self.same_data, self._step_offset = state.same_data, state.step_offset
        if state.history is not None:
            self.history = state.history
        self._resume_opt, self._resume_rng = state.optimizer_state, state.rng
        epoch_rng = (state.rng or {}).get("book_epoch_torch")
        if epoch_rng is not None:
            self._book_epoch_rng = torch.as_tensor(epoch_rng, dtype=torch.uint8).cpu()
        self.notes += state.notes

    def data_matches(self, dataset: dict | None) -> bool:
        """Whether ``dataset`` (a checkpoint's record) is the text this run trains on."""
        return dataset_matches(dataset, self.data)

    def _reserve_save_name(self) -> None:
        """Decide where this run saves, and hold that name for the whole run (see the store)."""
        from gpttui.core.store import default_store

        store = default_store()
        plan = plan_save(store, resume=self.resume, requested=self.save_name, same_data=self.same_data,
                         data_source=self.data.corpus.source, run_id=self.run_id, model_config=self.model_config)
        if plan.replaces and not self.overwrite:
            raise ConfigError(plan.replaces)
        if plan.note:
            self.notes.append(plan.note)
        self.lease = store.reserve(plan.name, overwrite=self.overwrite, continuing=plan.continuing)
        self.save_name = plan.name
        if self.lease.took_over is not None:
            self.notes.append(f"The name {plan.name!r} was locked by {self.lease.took_over.describe()}, but "
                              f"{self.lease.stale_reason}: the lock was taken over.")

    def _total_steps(self) -> tuple[int, float]:
        batches = len(self.data.train_loader)
        per_epoch = batches / self.config.grad_accum
        total = self._step_offset + (self.config.epochs * batches) // self.config.grad_accum
        if self.config.max_steps:
            total = min(total, self.config.max_steps)
        return max(total, 0), per_epoch

    def _batches(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """(epoch, batch index, inputs, targets) from the current data position on."""
        if self.book_parts.data_order:
            yield from self._book_batches()
            return
        loader = self.data.train_loader
        epoch, start = self.pos.epoch, self.pos.batch
        while epoch < self.config.epochs:
            for b, (x, y) in enumerate(loader.epoch(epoch, start), start=start):
                yield epoch, b, x, y
            epoch, start = epoch + 1, 0

    def _book_batches(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """Book mode's batches: each epoch a ``for`` over the book's train DataLoader, its shuffle drawn
        from the global RNG when the epoch begins (that state is kept, so a resumed run replays it)."""
        epoch, start = self.pos.epoch, self.pos.batch
        while epoch < self.config.epochs:
            if start == 0:
                self._book_epoch_rng = torch.get_rng_state()
            batches = epoch_batches(self._book_train, start, self._book_epoch_rng if start else None)
            for b, (x, y) in enumerate(batches, start=start):
                yield epoch, b, x, y
            epoch, start = epoch + 1, 0

    # -- evaluation and samples
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
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.dtype == "bf16")

    def _sample(self, device: torch.device, epoch: int) -> None:
        if not self.config.start_context or self.config.sample_tokens <= 0:
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
    def trainer_state(self, device: torch.device) -> dict[str, Any]:
        from gpttui.core import checkpoints

        p = self.pos
        rng = checkpoints.capture_rng_state()
        if self.book_parts.data_order and self._book_epoch_rng is not None and p.batch:
            rng["book_epoch_torch"] = self._book_epoch_rng.clone()  # replays this epoch's shuffle on resume
        return {
            "position": {"step": p.step, "epoch": p.epoch, "batch": p.batch, "tokens_seen": p.tokens_seen,
                         "best_val_loss": p.best_val_loss},
            "rng": rng,
            "history": self.history,
            "run_id": self.run_id,
        }

    def save(self, device: torch.device, name: str | None = None) -> str:
        from gpttui.core import checkpoints

        name = name or self.save_name
        assert name is not None
        p = self.pos
        if not all(bool(torch.isfinite(t).all()) for t in self.model.parameters()):
            raise NonFiniteLoss(f"The weights became non-finite by step {p.step}; they were not saved, "
                                f"{self._last_good()}. Try a lower learning rate, warmup or gradient clipping.")
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
    def run(self) -> Event:
        """Train until done, stopped or failed; returns the final (finished or failed) event."""
        try:
            return self._run_logged()
        finally:
            self._cancel_snapshots()
            if self.lease is not None:
                self.lease.release()
            if self._status is not None:
                self._status.close()

    def _run_logged(self) -> Event:
        start_time = time.perf_counter()
        try:
            self._log = RunLog(self.run_id)
        except OSError as exc:
            event = FailedEvent(f"Cannot create the run directory: {exc}", 0)
            self.callback(event)
            return event
        from gpttui.core.runs import CommandInbox, StatusWriter

        self._status = StatusWriter(self._log.dir, self.run_id)
        self._inbox = CommandInbox(self._log.dir, self.control)
        try:
            return self._run(start_time)
        except GPTTUIError as exc:
            event: Event = FailedEvent(str(exc), self.pos.step, self.last_checkpoint)
        except torch.OutOfMemoryError:
            event = FailedEvent("Out of memory. Lower the batch size or context length, use a smaller model, "
                                "or use --dtype bf16 / gradient accumulation.", self.pos.step, self.last_checkpoint)
        except KeyboardInterrupt:  # a second Ctrl+C: no save, but the log says how the run ended
            where = f"; the last checkpoint is {self.last_checkpoint!r}" if self.last_checkpoint else ""
            self._emit(FailedEvent(f"Interrupted at once (second Ctrl+C) after step {self.pos.step}, without "
                                   f"saving{where}.", self.pos.step, self.last_checkpoint))
            self._log.close()
            raise
        except Exception as exc:  # the UI must survive anything; the message says what happened
            event = FailedEvent(_describe_failure(exc), self.pos.step, self.last_checkpoint)
        self._emit(event)
        self._log.close()
        return event

    def _cancel_snapshots(self) -> None:
        for future in self.control.take_snapshot_requests():
            future.cancel()  # the run is over: the caller copies the weights itself

    def _run(self, start_time: float) -> Event:
        device, n_params = self._build()
        loop = self._start(device, n_params, start_time)
        reason = "completed"
        while self.pos.step < loop.total_steps:
            stopped = self._honour_control(loop)
            if stopped is not None:
                reason = stopped
                break
            step = self._optimizer_step(loop, device)
            if step is None:  # the data ran out
                break
            self._after_step(loop, device, step)
        return self._finish(loop, device, reason, start_time)

    def _start(self, device: torch.device, n_params: int, start_time: float) -> _Loop:
        """Check there is something to train, log the run's config, announce it, restore the RNG."""
        cfg = self.config
        total_steps, per_epoch = self._total_steps()
        if total_steps < 1:
            raise ConfigError("Nothing to train: the training loader has fewer batches than one optimizer step.")
        if self.resume and total_steps <= self.pos.step:
            why = (f"--max-steps {cfg.max_steps} is already reached" if cfg.max_steps and cfg.max_steps <= self.pos.step
                   else f"its {cfg.epochs} epoch(s) are done")
            raise ConfigError(f"Checkpoint {self.resume!r} is at step {self.pos.step}: {why}, so there is nothing to "
                              f"train and it was left as it is. Ask for more (e.g. --max-steps "
                              f"{self.pos.step + 10}, or more --epochs).")
        train_model: torch.nn.Module = torch.compile(self.model) if cfg.compile else self.model
        tokens_per_step = self.data.settings.batch_size * self.data.settings.context_length * cfg.grad_accum
        self._log.write_config({"train_config": cfg.to_dict(), "model_config": self.model_config.to_dict(),
                                "dataset": self.data.identity(), "resume": self.resume,
                                "gpttui_version": __version__, "created": now_iso()})
        if self.book_parts.data_order and self.pos.batch and self._book_epoch_rng is None:
            self.notes.append(f"{self.resume!r} was saved mid-epoch outside book mode: the rest of epoch "
                              f"{self.pos.epoch + 1} follows a new shuffle, so this run will not match the book's.")
        self._emit(Started(self.run_id, str(self._log.dir), cfg.to_dict(), self.model_config.to_dict(), n_params,
                           str(device), cfg.dtype, total_steps, per_epoch, tokens_per_step, self.pos.step,
                           self.resume, self.data.identity(), self.save_name, list(self.notes)))
        if self._resume_rng is not None:
            from gpttui.core import checkpoints

            checkpoints.restore_rng_state(self._resume_rng)
        self.model.train()
        return _Loop(train_model, total_steps, tokens_per_step, self._batches(), start_time, time.perf_counter())

    def _honour_control(self, loop: _Loop) -> str | None:
        """Between optimizer steps: the stop reason when stopped; a pause waits here (serving snapshots)."""
        while True:
            if self._inbox is not None:
                self._inbox.poll()  # commands from other processes (runs/<id>/commands/)
            if self.control.stopped:
                if self._status is not None:
                    self._status.update(state="stopping")
                return self.control.stop_reason
            if not self.control.paused:
                return None
            self._emit(StateEvent(True, self.pos.step))
            self.serve_snapshots()
            while not self.control.wait_while_paused(0.25):
                if self._inbox is not None:
                    self._inbox.poll()
                self.serve_snapshots()
            self._emit(StateEvent(False, self.pos.step))
            loop.step_start = time.perf_counter()

    def _optimizer_step(self, loop: _Loop, device: torch.device) -> _Step | None:
        """One optimizer step over ``grad_accum`` batches; ``None`` when the data runs out first."""
        cfg = self.config
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            try:
                epoch, b, x, y = next(loop.batches)
            except StopIteration:
                return None
            step_loss += self._forward_backward(loop.model, x, y, device, epoch) / cfg.grad_accum
            self.pos.tokens_seen += x.numel()
            if b + 1 >= len(self.data.train_loader):
                self.pos.epoch, self.pos.batch = epoch + 1, 0
                loop.epoch_ended = True
            else:
                self.pos.epoch, self.pos.batch = epoch, b + 1
        lr = lr_at(self.pos.step, cfg, loop.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        clip = cfg.grad_clip if cfg.grad_clip else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.model.parameters()), clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1
        return _Step(epoch, step_loss, lr, grad_norm)

    def _forward_backward(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                          epoch: int) -> float:
        """The loss of one batch, its gradient accumulated (scaled by ``grad_accum``); a non-finite loss
        stops the run before it is applied."""
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with self._autocast(device):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(
                f"The loss became {loss_value} at step {self.pos.step + 1} (epoch {epoch + 1}); training stopped "
                f"before applying it, {self._last_good()}. Try a lower learning rate, warmup or gradient clipping.")
        (loss / self.config.grad_accum).backward()
        return loss_value

    def _after_step(self, loop: _Loop, device: torch.device, step: _Step) -> None:
        """Report the step; evaluate, sample and save when due; serve weight snapshots."""
        self._report_step(loop, step)
        sampled = False
        if (self.pos.step - 1) % self.config.eval_freq == 0:  # the book's global_step % eval_freq
            sampled = self._evaluate_and_report(device, step.epoch + 1)
        if loop.epoch_ended and not sampled:  # the book's sample after each epoch
            self._sample(device, step.epoch + 1)
            sampled = True
        loop.epoch_ended, loop.sampled_last = False, sampled
        if self.config.checkpoint_every and self.pos.step % self.config.checkpoint_every == 0:
            self.save(device)
        if self.control.take_save_request():
            self.save(device)
        self.serve_snapshots()
        loop.step_start = time.perf_counter()

    def _report_step(self, loop: _Loop, step: _Step) -> None:
        now = time.perf_counter()
        dt = max(now - loop.step_start, 1e-9)
        tps = loop.tokens_per_step / dt
        loop.tps_ema = tps if loop.tps_ema is None else 0.9 * loop.tps_ema + 0.1 * tps
        loop.step_times.append(dt)
        recent = loop.step_times[-50:]
        eta = (sum(recent) / len(recent)) * (loop.total_steps - self.pos.step)
        self._emit(StepEvent(self.pos.step, step.epoch + 1, self.pos.tokens_seen, step.loss, step.lr, step.grad_norm,
                             loop.tps_ema, now - loop.start_time, loop.total_steps, eta))

    def _evaluate_and_report(self, device: torch.device, epoch: int) -> bool:
        """Evaluate, extend the loss curve, report; sample too with ``sample_at_eval`` (returns whether)."""
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

    def _finish(self, loop: _Loop, device: torch.device, reason: str, start_time: float) -> Event:
        """The last sample (when completed), the final save, and the finished event."""
        if reason == "completed" and self.pos.step > 0 and not loop.sampled_last:
            self._sample(device, self.last_epoch())
        checkpoint = None
        if reason == "completed" or self.control.save_on_stop:
            if self.pos.step > 0 or self.resume:
                checkpoint = self.save(device)
        best = self.pos.best_val_loss if math.isfinite(self.pos.best_val_loss) else None
        event = FinishedEvent(reason, self.pos.step, self.pos.tokens_seen, time.perf_counter() - start_time,
                              checkpoint, best)
        self._emit(event)
        self._log.close()
        return event


def _describe_failure(exc: Exception) -> str:
    """One line for an unexpected failure; a disk error names the folder and the free space."""
    if isinstance(exc, OSError):
        from gpttui.core.store import describe_os_error

        return describe_os_error(exc, "Training stopped", Path(exc.filename or paths.data_dir()))
    return f"{type(exc).__name__}: {exc}"


__all__ = ["Trainer", "TrainConfig", "TrainControl", "NonFiniteLoss", "lr_at", "make_optimizer", "pick_device",
           # re-exported from gpttui.core.events and gpttui.core.runplan, where they live
           "Event", "Started", "StepEvent", "EvalEvent", "SampleEvent", "CheckpointEvent", "StateEvent",
           "FinishedEvent", "FailedEvent", "EVENT_TYPES", "Callback", "RunLog", "new_run_id", "read_run_events",
           "SavePlan", "plan_save", "dataset_matches", "checkpoint_data_settings", "prepare_checkpoint_data"]
