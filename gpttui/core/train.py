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

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from gpttui import __version__
from gpttui.core import flops, precision
from gpttui.core.book import BookParts, book_loaders, epoch_batches
from gpttui.core.config import GPTConfig, TrainConfig
from gpttui.core.control import Decisions, TrainControl
from gpttui.core.distributed import SINGLE, DistInfo, agree, grad_sync, host_values, rank_device, wrap
from gpttui.core.data import PreparedData
from gpttui.core.errors import ConfigError, GPTTUIError
from gpttui.core.feed import prefetch
from gpttui.core.events import (EVENT_TYPES, Callback, CheckpointEvent, EvalEvent, Event, FailedEvent, FinishedEvent, RunLog, SampleEvent, Started, StateEvent, StepEvent,
                                new_run_id, now_iso, read_run_events)
from gpttui.core.model import GPTModel, count_parameters, use_book_math
from gpttui.core.resources import pick_device
from gpttui.core.runplan import (Position, SavePlan, checkpoint_data_settings, dataset_matches, load_resume,
                                 plan_save, prepare_checkpoint_data)
from gpttui.core.tokenizer import Tokenizer
from gpttui.core.train_eval import Evaluating
from gpttui.core.train_save import NonFiniteLoss, Saving, describe_failure, is_out_of_memory

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


@dataclass
class _Loop:
    """What the loop carries from one optimizer step to the next."""

    model: torch.nn.Module  # the model as trained (compiled or not)
    total_steps: int
    tokens_per_step: int  # over all processes
    batches_per_epoch: int  # global batches
    batches: Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]
    start_time: float
    step_start: float
    first_step: bool = True  # the next step is this run's first (with compile: its warm-up)
    flops_per_token: float = 0.0  # for MFU, computed once
    peak_flops: float | None = None  # all processes' devices together; None: no MFU
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
    decisions: Decisions | None = None  # agreed at this step by all processes (None: one process)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The book's AdamW over all parameters; fused where torch supports it on this device."""
    params = list(model.parameters())
    if device.type in ("cuda", "cpu", "mps"):
        try:
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Trainer(Evaluating, Saving):
    """Builds (or resumes) a model and trains it on ``data``, reporting through ``callback``.

    ``model_config`` is the shape for a new model; with ``resume`` (a checkpoint name) the model,
    optimizer, RNG and data position come from the checkpoint instead. ``run()`` blocks until the
    run ends, so call it from a worker thread when a UI is waiting.
    """

    def __init__(self, data: PreparedData, tokenizer: Tokenizer, config: TrainConfig,
                 model_config: GPTConfig | None = None, callback: Callback | None = None,
                 control: TrainControl | None = None, resume: str | None = None,
                 run_id: str | None = None, overwrite: bool = False, fresh_optimizer: bool = False,
                 dist: DistInfo = SINGLE) -> None:
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
        self.dist = dist  # this process's rank among torchrun's (gpttui.core.distributed); rank 0 writes
        self.device: torch.device | None = None
        self.dtype = config.dtype  # what it really trains in: _set_precision decides (bf16 may become fp16)
        self.scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling
        self._pos_before_step: Position | None = None  # where a step that fails half-way started
        self._in_update = False  # inside optimizer.step(): the weights may be half-updated
        self._world_changed = False  # resumed with another number of processes
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
        self._resume_scaler: dict | None = None  # fp16's loss scale and its growth tracker
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
        if self.dist.active and cfg.book:
            raise ConfigError("Book mode is the book's loop in one process: train it without --nproc.")
        device = self.device = pick_device(rank_device(self.dist, cfg.device))
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._set_precision(device)
        vocab = self.tokenizer.vocab_size
        from gpttui.core.resources import preflight_training

        if self.resume:
            self._load_resume()
        else:
            assert self.model_config is not None
            if self.model_config.vocab_size != vocab:
                self.model_config = self.model_config.replace(vocab_size=vocab)
        # Sizes and the save name are checked before the model (and AdamW) take memory.
        preflight_training(self.model_config, self.data.settings.batch_size, device, self.data.settings.context_length,
                           dtype=self.dtype, book_math=self.book_parts.math)
        if self.dist.main:  # rank 0 alone saves
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

    def _set_precision(self, device: torch.device) -> None:
        """The dtype the run really trains in (bf16 falls back where the GPU lacks it), fp16's loss scaler,
        and deterministic kernels when asked (set before the model reaches the GPU)."""
        cfg = self.config
        self.dtype, note = precision.resolve_dtype(cfg.dtype, device)
        determinism = precision.apply_determinism(cfg.deterministic, device)
        self.notes += [n for n in (note, determinism) if n]
        if device.type != "cpu" and not cfg.deterministic:
            self.notes.append(precision.exactness_note(device, cfg.deterministic))
        self.scaler = precision.grad_scaler(self.dtype, device)

    def _load_resume(self) -> None:
        """Model, optimizer, RNG, data position and history from the checkpoint being continued
        (:func:`gpttui.core.runplan.load_resume` says what a continued run starts from)."""
        state = load_resume(self.resume, self.data, self.tokenizer, fresh_optimizer=self.fresh_optimizer)
        self.model, self.model_config, self.pos = state.model, state.model_config, state.position
        self.same_data, self._step_offset = state.same_data, state.step_offset
        if state.history is not None:
            self.history = state.history
        self._resume_opt, self._resume_rng = state.optimizer_state, state.rng
        self._resume_scaler = state.scaler
        self._continue_epoch_at_world_size(state.position)
        epoch_rng = (state.rng or {}).get("book_epoch_torch")
        if epoch_rng is not None:
            self._book_epoch_rng = torch.as_tensor(epoch_rng, dtype=torch.uint8).cpu()
        self.notes += state.notes

    def _continue_epoch_at_world_size(self, pos: Position) -> None:
        """A checkpoint saved mid-epoch by another number of processes: its steps took another number of
        windows, so the epoch goes on from the first global batch of this run's size that it had not
        finished (at most one batch's windows are seen twice); the schedule counts this run's steps."""
        saved, world = pos.world, self.dist.world
        if saved == world or pos.batch == 0:
            pos.world = world
            return
        self._world_changed = True
        b = self.data.settings.batch_size
        done = pos.batch * b * saved
        pos.batch, pos.world = done // (b * world), world
        self.notes.append(
            f"{self.resume!r} was trained by {saved} process(es) and continues with {world}: a step now takes "
            f"{b}x{world} sequences instead of {b}x{saved}. Epoch {pos.epoch + 1} goes on from window "
            f"{pos.batch * b * world:,} of its order ({done:,} were done), so the run is not the one the "
            f"checkpoint would have made at {saved} process(es).")

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

    def _batches_per_epoch(self) -> int:
        """Global batches in an epoch: with several processes each step takes a batch from each."""
        return self.data.train_loader.batches_per_epoch(self.dist.world)

    def _total_steps(self) -> tuple[int, float]:
        batches = self._batches_per_epoch()
        per_epoch = batches / self.config.grad_accum
        total = self._step_offset + (self.config.epochs * batches) // self.config.grad_accum
        if self._world_changed:  # the steps so far took other batches: count what is left from here
            p = self.pos
            total = p.step + ((self.config.epochs - p.epoch) * batches - p.batch) // self.config.grad_accum
        if self.config.max_steps:
            total = min(total, self.config.max_steps)
        return max(total, 0), per_epoch

    def _batches(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """(epoch, batch index, inputs, targets) from the current data position on."""
        if self.book_parts.data_order:
            yield from self._book_batches()
            return
        loader, rank, world = self.data.train_loader, self.dist.rank, self.dist.world
        epoch, start = self.pos.epoch, self.pos.batch
        while epoch < self.config.epochs:
            for b, (x, y) in enumerate(loader.epoch(epoch, start, rank, world), start=start):
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
        if self.dist.main:  # rank 0 keeps the run directory; the other ranks report nothing
            try:
                self._log = RunLog(self.run_id)
            except OSError as exc:
                event = FailedEvent(f"Cannot create the run directory: {exc}", 0)
                self.callback(event)
                return event
            from gpttui.core.runs import CommandInbox, StatusWriter

            self._status = StatusWriter(self._log.dir, self.run_id)
            self._inbox = CommandInbox(self._log.dir, self.control)
        out_of_memory = False
        try:
            return self._run(start_time)
        except GPTTUIError as exc:
            event: Event = FailedEvent(str(exc), self.pos.step, self.last_checkpoint)
        except torch.OutOfMemoryError:
            out_of_memory = True  # handled below, once this frame's references to the step's tensors are gone
        except KeyboardInterrupt:  # a second Ctrl+C: no save, but the log says how the run ended
            where = f"; the last checkpoint is {self.last_checkpoint!r}" if self.last_checkpoint else ""
            self._emit(FailedEvent(f"Interrupted at once (second Ctrl+C) after step {self.pos.step}, without "
                                   f"saving{where}.", self.pos.step, self.last_checkpoint))
            self._close_log()
            raise
        except Exception as exc:  # the UI must survive anything; the message says what happened
            out_of_memory = is_out_of_memory(exc)
            event = FailedEvent(describe_failure(exc), self.pos.step, self.last_checkpoint)
        if out_of_memory:
            event = self._out_of_memory()
        self._emit(event)
        self._close_log()
        return event

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()

    def _run(self, start_time: float) -> Event:
        device, n_params = self._build()
        loop = self._start(device, n_params, start_time)
        reason = "completed"
        decisions = self._decide(device, take_save=False)
        while self.pos.step < loop.total_steps:
            decisions = self._honour_control(loop, device, decisions)
            if decisions.stop:
                reason = self.control.stop_reason if self.control.stopped else "stopped"
                break
            step = self._optimizer_step(loop, device)
            if step is None:  # the data ran out
                break
            self._after_step(loop, device, step)
            # One process reads its control afresh; several act on what they agreed at the step.
            decisions = step.decisions or self._decide(device, take_save=False)
        return self._finish(loop, device, reason, start_time, decisions)

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
        train_model = wrap(train_model, self.dist, device)  # DDP with several processes
        tokens_per_step = (self.data.settings.batch_size * self.data.settings.context_length * cfg.grad_accum
                           * self.dist.world)
        if self._log is not None:
            self._log.write_config({"train_config": cfg.to_dict(), "model_config": self.model_config.to_dict(),
                                    "dataset": self.data.identity(), "resume": self.resume,
                                    "gpttui_version": __version__, "created": now_iso(),
                                    "processes": self.dist.world})
        if self.book_parts.data_order and self.pos.batch and self._book_epoch_rng is None:
            self.notes.append(f"{self.resume!r} was saved mid-epoch outside book mode: the rest of epoch "
                              f"{self.pos.epoch + 1} follows a new shuffle, so this run will not match the book's.")
        if self._resume_rng is not None:
            from gpttui.core import checkpoints

            self.notes += checkpoints.restore_rng_state(self._resume_rng) or []
        if self.scaler is not None and self._resume_scaler:
            self.scaler.load_state_dict(self._resume_scaler)
        flops.reset_peak_memory(device)
        self._emit(Started(self.run_id, str(self._log.dir) if self._log else "", cfg.to_dict(), self.model_config.to_dict(), n_params,
                           str(device), cfg.dtype, total_steps, per_epoch, tokens_per_step, self.pos.step,
                           self.resume, self.data.identity(), self.save_name, list(self.notes), self.dist.world))
        self.model.train()
        # One batch ahead on the device; not in the book's data order, whose DataLoader draws from the
        # global RNG when an epoch begins (drawn early, it would move every dropout mask after it).
        batches = self._batches() if self.book_parts.data_order else prefetch(self._batches(), device)
        loop = _Loop(train_model, total_steps, tokens_per_step, self._batches_per_epoch(), batches, start_time,
                     time.perf_counter())
        # MFU's two constants: the model's FLOPs per token, and the peak of every process's device
        loop.flops_per_token = flops.flops_per_token(self.model_config, self.data.settings.context_length)
        peak = flops.peak_flops(device, self.dtype, cfg.peak_tflops)
        loop.peak_flops = peak * self.dist.world if peak else None
        return loop

    def _decide(self, device: torch.device, take_save: bool) -> Decisions:
        """The control's standing requests (and the other processes' commands in runs/<id>/commands/);
        with several processes, agreed by all of them in one all-reduce."""
        if self._inbox is not None:
            self._inbox.poll()
        local = self.control.decide(take_save)
        if not self.dist.active:
            return local
        return Decisions.from_sums(agree(host_values(local.flags(), device), self.dist))

    def _honour_control(self, loop: _Loop, device: torch.device, decisions: Decisions) -> Decisions:
        """Between optimizer steps: a stop is returned; a pause waits here (serving snapshots, and saving
        when asked), every process agreeing each quarter second whether it still lasts."""
        if decisions.stop or not decisions.pause:
            if decisions.stop and self._status is not None:
                self._status.update(state="stopping")
            return decisions
        self._emit(StateEvent(True, self.pos.step))
        while decisions.pause and not decisions.stop:
            self.serve_snapshots()
            if decisions.save and self.pos.step:
                self.save(device)
            self.control.wait_while_paused(0.25)
            decisions = self._decide(device, take_save=True)
        self._emit(StateEvent(False, self.pos.step))
        loop.step_start = time.perf_counter()
        return self._honour_control(loop, device, decisions) if decisions.stop else decisions

    def _optimizer_step(self, loop: _Loop, device: torch.device) -> _Step | None:
        """One optimizer step over ``grad_accum`` batches; ``None`` when the data runs out first.

        The losses stay on the device; the step reads the host once, for its loss and gradient norm (with
        several processes, in the all-reduce that also agrees the control requests), and a non-finite loss
        stops the run before the update is applied."""
        cfg = self.config
        self._pos_before_step = dataclasses.replace(self.pos)
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            try:
                epoch, b, x, y = next(loop.batches)
            except StopIteration:
                return None
            with grad_sync(loop.model, micro == cfg.grad_accum - 1):  # DDP: gradients averaged once per step
                loss_sum += self._forward_backward(loop.model, x, y, device)
            self.pos.tokens_seen += x.numel() * self.dist.world
            if b + 1 >= loop.batches_per_epoch:
                self.pos.epoch, self.pos.batch = epoch + 1, 0
                loop.epoch_ended = True
            else:
                self.pos.epoch, self.pos.batch = epoch, b + 1
        lr = lr_at(self.pos.step, cfg, loop.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # the norm and the clipping see the true gradients
        clip = cfg.grad_clip if cfg.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(list(self.model.parameters()), clip)
        loss, grad_norm, decisions = self._read_step(loss_sum / cfg.grad_accum, norm, device)
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(
                f"The loss became {loss} at step {self.pos.step + 1} (epoch {epoch + 1}); training stopped "
                f"before applying it, {self._last_good()}. Try a lower learning rate, warmup or gradient clipping.")
        self._in_update = True
        if self.scaler is not None:  # skips the update when the scaled gradients overflowed, and adapts
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._in_update = False
        self.optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1
        return _Step(epoch, loss, lr, grad_norm, decisions)

    def _read_step(self, loss: torch.Tensor, norm: torch.Tensor,
                   device: torch.device) -> tuple[float, float, Decisions | None]:
        """The step's one host read: its loss and gradient norm; with several processes, the mean loss
        over the ranks and the control requests they agree on, in the same all-reduce."""
        values = torch.stack([loss.float(), norm.float()])
        if not self.dist.active:
            loss_value, norm_value = values.tolist()
            return loss_value, norm_value, None
        if self._inbox is not None:
            self._inbox.poll()
        flags = host_values(self.control.decide(take_save=True).flags(), device)
        sums = agree(torch.cat([values, flags]), self.dist)
        world = self.dist.world
        return sums[0] / world, sums[1] / world, Decisions.from_sums(sums[2:])

    def _forward_backward(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                          device: torch.device) -> torch.Tensor:
        """The loss of one batch (left on the device), its gradient accumulated, scaled by ``grad_accum``
        (and by fp16's loss scale)."""
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.sdpa_context(self.config.deterministic, device):
            with self._autocast(device):
                logits = model(x)
            # (N, V) logits: the 3-D form goes through nll_loss2d, which deterministic CUDA refuses
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            scaled = loss / self.config.grad_accum
            (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
        return loss.detach()

    def _after_step(self, loop: _Loop, device: torch.device, step: _Step) -> None:
        """Report the step; evaluate, sample and save when due; serve weight snapshots."""
        self._report_step(loop, step, device)
        sampled = False
        if (self.pos.step - 1) % self.config.eval_freq == 0:  # the book's global_step % eval_freq
            sampled = self._evaluate_and_report(device, step.epoch + 1)
        if loop.epoch_ended and not sampled:  # the book's sample after each epoch
            self._sample(device, step.epoch + 1)
            sampled = True
        loop.epoch_ended, loop.sampled_last = False, sampled
        if self.config.checkpoint_every and self.pos.step % self.config.checkpoint_every == 0:
            self.save(device)
        if step.decisions.save if step.decisions is not None else self.control.take_save_request():
            self.save(device)
        self.serve_snapshots()
        loop.step_start = time.perf_counter()

    def _report_step(self, loop: _Loop, step: _Step, device: torch.device) -> None:
        """The step event. A compiled run's first step is its compilation: reported apart, and kept out
        of tokens/s and the ETA."""
        now = time.perf_counter()
        dt = max(now - loop.step_start, 1e-9)
        tps = loop.tokens_per_step / dt
        warmup = dt if loop.first_step and self.config.compile else None
        loop.first_step = False
        if warmup is None:
            loop.tps_ema = tps if loop.tps_ema is None else 0.9 * loop.tps_ema + 0.1 * tps
            loop.step_times.append(dt)
        recent = loop.step_times[-50:] or [dt]
        eta = (sum(recent) / len(recent)) * (loop.total_steps - self.pos.step)
        shown_tps = loop.tps_ema if loop.tps_ema is not None else tps
        peak_memory = flops.peak_memory(device)  # allocator counters (CPU: peak RSS): no device sync
        mfu = flops.mfu(loop.flops_per_token, shown_tps, loop.peak_flops)
        self._emit(StepEvent(self.pos.step, step.epoch + 1, self.pos.tokens_seen, step.loss, step.lr, step.grad_norm,
                             shown_tps, now - loop.start_time, loop.total_steps, eta, peak_memory, mfu, warmup))

    def _finish(self, loop: _Loop, device: torch.device, reason: str, start_time: float,
                decisions: Decisions) -> Event:
        """The last sample (when completed), the final save, and the finished event."""
        if reason == "completed" and self.pos.step > 0 and not loop.sampled_last:
            self._sample(device, self.last_epoch())
        checkpoint = None
        if reason == "completed" or not decisions.nosave:
            if self.pos.step > 0 or self.resume:
                checkpoint = self.save(device)
        best = self.pos.best_val_loss if math.isfinite(self.pos.best_val_loss) else None
        event = FinishedEvent(reason, self.pos.step, self.pos.tokens_seen, time.perf_counter() - start_time,
                              checkpoint, best)
        self._emit(event)
        self._close_log()
        return event



__all__ = ["Trainer", "TrainConfig", "TrainControl", "NonFiniteLoss", "lr_at", "make_optimizer", "pick_device",
           # re-exported from gpttui.core.events and gpttui.core.runplan, where they live
           "Event", "Started", "StepEvent", "EvalEvent", "SampleEvent", "CheckpointEvent", "StateEvent",
           "FinishedEvent", "FailedEvent", "EVENT_TYPES", "Callback", "RunLog", "new_run_id", "read_run_events",
           "SavePlan", "plan_save", "dataset_matches", "checkpoint_data_settings", "prepare_checkpoint_data"]
