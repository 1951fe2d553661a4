"""The training engine: the book's ``train_model_simple`` made dependable.

Same semantics as the book (AdamW, evaluation every ``eval_freq`` steps on ``eval_iter`` batches,
a greedy sample after each epoch, tokens seen counted per input batch), plus warmup + cosine decay,
gradient clipping and accumulation, bf16 autocast, fused AdamW, optional ``torch.compile``, exact
resume from checkpoints, and a run directory with an append-only JSONL of events.

The trainer never touches a UI: it reports through event dataclasses given to a callback, and is
controlled from any thread through :class:`TrainControl` (pause / resume / stop / save now), honoured
at step boundaries.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch

from gpttui import __version__
from gpttui.core import paths
from gpttui.core.config import GPTConfig
from gpttui.core.data import DataSettings, PreparedData
from gpttui.core.errors import ConfigError, GPTTUIError
from gpttui.core.generate import sample_text
from gpttui.core.model import GPTModel, count_parameters, perplexity
from gpttui.core.tokenizer import Tokenizer

# --- configuration ---------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Training settings; the defaults are the book's chapter-5 run."""

    epochs: int = 10
    max_steps: int | None = None
    lr: float = 4e-4
    min_lr: float | None = None  # with a value: cosine decay to it after warmup
    weight_decay: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = None
    grad_accum: int = 1
    eval_freq: int = 5
    eval_iter: int = 5
    start_context: str = "Every effort moves you"
    sample_tokens: int = 50
    sample_at_eval: bool = False
    seed: int = 123
    device: str = "auto"
    dtype: str = "fp32"  # fp32 | bf16
    compile: bool = False
    save_name: str | None = None
    checkpoint_every: int = 0

    def validate(self) -> None:
        problems = []

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def finite(value: Any) -> bool:  # nan and inf are not: `not x > 0` lets inf through
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not whole(self.epochs) or self.epochs < 1:
            problems.append(f"epochs must be a whole number >= 1 (got {self.epochs!r})")
        if self.max_steps is not None and (not whole(self.max_steps) or self.max_steps < 1):
            problems.append(f"max steps must be a whole number >= 1 (got {self.max_steps!r})")
        if not finite(self.lr) or not self.lr > 0:
            problems.append(f"learning rate must be a finite number > 0 (got {self.lr!r})")
        if self.min_lr is not None:
            if not finite(self.min_lr) or self.min_lr < 0:
                problems.append(f"min lr must be a finite number >= 0 (got {self.min_lr!r})")
            elif finite(self.lr) and self.min_lr > self.lr:
                problems.append(f"min lr ({self.min_lr!r}) must not exceed the learning rate ({self.lr!r})")
        if not finite(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight decay must be a finite number >= 0 (got {self.weight_decay!r})")
        if not whole(self.warmup_steps) or self.warmup_steps < 0:
            problems.append(f"warmup steps must be a whole number >= 0 (got {self.warmup_steps!r})")
        if self.grad_clip is not None and (not finite(self.grad_clip) or not self.grad_clip > 0):
            problems.append(f"grad clip must be a finite number > 0, or off (got {self.grad_clip!r})")
        if not whole(self.grad_accum) or self.grad_accum < 1:
            problems.append(f"grad accumulation must be a whole number >= 1 (got {self.grad_accum!r})")
        if not whole(self.eval_freq) or not whole(self.eval_iter) or self.eval_freq < 1 or self.eval_iter < 1:
            problems.append(f"eval freq and eval iter must be whole numbers >= 1 "
                            f"(got {self.eval_freq!r} and {self.eval_iter!r})")
        if not whole(self.sample_tokens):
            problems.append(f"sample tokens must be a whole number, 0 for none (got {self.sample_tokens!r})")
        if self.dtype not in ("fp32", "bf16"):
            problems.append(f"dtype must be fp32 or bf16 (got {self.dtype!r})")
        if not whole(self.checkpoint_every) or self.checkpoint_every < 0:
            problems.append(f"checkpoint-every must be a whole number >= 0 (got {self.checkpoint_every!r})")
        if problems:
            raise ConfigError("Invalid training config: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        _check_field_types(cls, values, "training config")
        return cls(**values)


_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
                "list": (list,)}


def _check_field_types(cls: type, values: dict[str, Any], what: str) -> None:
    """Values read from a file must have their field's type (``int | None`` and the like), or a
    :class:`ConfigError` names the field."""
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        parts = [p.strip() for p in str(f.type).split("|")]
        if value is None and "None" in parts:
            continue
        allowed = tuple(t for p in parts for t in _FIELD_TYPES.get(p, (object,)))
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ConfigError(f"The {what} has {f.name} = {json.dumps(value, default=str)[:40]}, which should "
                              f"be {f.type}.")


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


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("MPS was asked for but is not available; use --device cpu or auto.")
    return device


# --- events ----------------------------------------------------------------------------------------


@dataclass
class Event:
    event: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, **dataclasses.asdict(self)}


@dataclass
class Started(Event):
    event: ClassVar[str] = "started"
    run_id: str
    run_dir: str
    config: dict
    model_config: dict
    n_params: int
    device: str
    dtype: str
    total_steps: int
    steps_per_epoch: float
    tokens_per_step: int
    start_step: int = 0
    resumed_from: str | None = None
    dataset: dict = field(default_factory=dict)
    save_name: str | None = None  # where this run saves (held for the whole run)
    notes: list = field(default_factory=list)  # decisions the user should know about


@dataclass
class StepEvent(Event):
    event: ClassVar[str] = "step"
    step: int  # optimizer steps done, this one included: 1 after the first step (the book's global_step + 1)
    epoch: int  # 1-based, as the book prints it
    tokens_seen: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_sec: float
    elapsed: float
    total_steps: int
    eta: float | None = None


@dataclass
class EvalEvent(Event):
    event: ClassVar[str] = "eval"
    step: int
    epoch: int
    tokens_seen: int
    train_loss: float
    val_loss: float
    train_ppl: float
    val_ppl: float
    best_val_loss: float


@dataclass
class SampleEvent(Event):
    event: ClassVar[str] = "sample"
    step: int
    epoch: int
    prompt: str
    text: str


@dataclass
class CheckpointEvent(Event):
    event: ClassVar[str] = "checkpoint"
    step: int
    name: str
    path: str


@dataclass
class StateEvent(Event):
    """Paused or running again."""

    event: ClassVar[str] = "state"
    paused: bool
    step: int


@dataclass
class FinishedEvent(Event):
    event: ClassVar[str] = "finished"
    reason: str  # completed | stopped | interrupted
    step: int
    tokens_seen: int
    elapsed: float
    checkpoint: str | None = None
    best_val_loss: float | None = None


@dataclass
class FailedEvent(Event):
    event: ClassVar[str] = "failed"
    message: str
    step: int
    last_checkpoint: str | None = None


EVENT_TYPES = {cls.event: cls for cls in (Started, StepEvent, EvalEvent, SampleEvent, CheckpointEvent,
                                          StateEvent, FinishedEvent, FailedEvent)}
Callback = Callable[[Event], None]


# --- control -------------------------------------------------------------------------------------


class TrainControl:
    """Pause / resume / stop / save-now from any thread; the trainer honours them between steps."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._save_now = threading.Event()
        self._lock = threading.Lock()
        self._snapshots: list[Future] = []
        self.save_on_stop = True
        self.stop_reason = "stopped"

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self, save: bool = True, reason: str = "stopped") -> None:
        self.save_on_stop = save
        self.stop_reason = reason
        self._stop.set()
        self._running.set()  # wake a paused trainer

    def request_save(self) -> None:
        self._save_now.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def take_save_request(self) -> bool:
        if self._save_now.is_set():
            self._save_now.clear()
            return True
        return False

    def wait_while_paused(self) -> None:
        self._running.wait()

    def request_snapshot(self) -> Future:
        """A copy of the model's weights, taken by the trainer between two steps (so it never mixes
        weights from before and after an update). Resolves to a state_dict of CPU tensors."""
        future: Future = Future()
        with self._lock:
            self._snapshots.append(future)
        return future

    def take_snapshot_requests(self) -> list[Future]:
        with self._lock:
            requests, self._snapshots = self._snapshots, []
        return requests


# --- run directory -------------------------------------------------------------------------------


class RunLog:
    """``$GPTTUI_HOME/runs/<id>/``: config.json and an append-only events.jsonl, flushed per event."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.dir = paths.runs_dir() / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")

    def write_config(self, config: dict) -> None:
        tmp = self.dir / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.dir / "config.json")

    def append(self, event: Event) -> None:
        self._events.write(json.dumps(_jsonable(event.to_dict())) + "\n")
        self._events.flush()

    def close(self) -> None:
        try:
            self._events.close()
        except OSError:
            pass  # a full disk: the events written so far were flushed one by one


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        elif isinstance(v, dict):
            v = _jsonable(v)
        out[k] = v
    return out


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def read_run_events(run_dir: str | Path) -> list[dict]:
    """The events of a run so far (another process may still be appending)."""
    events = []
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return events
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return events


# --- the trainer ---------------------------------------------------------------------------------


class NonFiniteLoss(GPTTUIError):
    pass


@dataclass
class _Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # 0-based epoch of the next batch
    batch: int = 0  # index of the next batch within that epoch
    tokens_seen: int = 0
    best_val_loss: float = float("inf")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The book's AdamW over all parameters; fused where torch supports it on this device."""
    params = list(model.parameters())
    if device.type in ("cuda", "cpu", "mps"):
        try:
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def dataset_matches(dataset: dict | None, data: PreparedData) -> bool:
    """Whether a checkpoint's dataset record (``meta.json``'s ``dataset``) is the text of ``data``."""
    if not dataset:
        return False
    return (dataset.get("sha256") == data.corpus.sha256
            and dataset.get("tokenizer", data.tokenized.tokenizer.name) == data.tokenized.tokenizer.name)


@dataclass
class SavePlan:
    """Where a run will save. ``replaces`` (a message) is set when that would replace an existing
    checkpoint, which needs the user's explicit word (``--overwrite``, or a yes in the app)."""

    name: str
    continuing: bool  # saves over the very checkpoint it resumes, on that checkpoint's own data
    replaces: str | None = None
    note: str | None = None


def plan_save(store: Any, *, resume: str | None, requested: str | None, same_data: bool, data_source: str,
              run_id: str) -> SavePlan:
    """The one decision of where a run saves (the CLI and the app both ask here).

    - A new model saves as ``requested`` or ``run-<id>``; an existing name needs the user's word.
    - Continuing a checkpoint on its own data saves over it (its loss curve goes on in the checkpoint).
    - Continuing it on other data saves under a new name (``NAME-on-<data>``) unless the user names a
      checkpoint, and replacing one (the original included) needs the user's word.
    """
    from gpttui.core.store import unique_name

    if resume is None:
        name = requested or f"run-{run_id}"
        if store.exists(name):
            return SavePlan(name, False, f"Checkpoint {name!r} already exists; choose another name, or say to "
                                         "replace it (--overwrite).")
        return SavePlan(name, False)
    if requested in (None, resume) and same_data:
        return SavePlan(resume, True)
    if requested is None:
        name = unique_name(store, f"{resume}-on-{_slug(data_source)}")
        return SavePlan(name, False, note=f"{resume!r} was trained on other data, so this run saves as {name!r} "
                                          f"and {resume!r} stays as it is.")
    if requested == resume:
        return SavePlan(resume, False, f"{resume!r} was trained on other data; continuing it on this text saves "
                                       "under a new name unless you say to replace it (--overwrite).")
    if store.exists(requested):
        return SavePlan(requested, False, f"Checkpoint {requested!r} already exists; choose another name, or say "
                                          "to replace it (--overwrite).")
    return SavePlan(requested, False)


def checkpoint_data_settings(meta: Any) -> DataSettings | None:
    """The data settings a checkpoint was trained with (``None`` when it records no dataset)."""
    ds = meta.dataset
    if not ds or not ds.get("source"):
        return None
    return DataSettings(source=ds["source"], tokenizer=ds.get("tokenizer") or meta.tokenizer or "gpt2",
                        context_length=ds.get("context_length") or meta.model_config.context_length,
                        stride=ds.get("stride"), batch_size=ds.get("batch_size") or 2,
                        train_ratio=ds.get("train_ratio", 0.9))


def prepare_checkpoint_data(meta: Any, tokenizer: Tokenizer, progress: Any = None) -> PreparedData:
    """The checkpoint's own training data, prepared as it was; :class:`DataError` when the text is gone or
    has changed since (then it is not the data the checkpoint learned from)."""
    from gpttui.core.data import prepare_data, read_corpus
    from gpttui.core.errors import DataError

    settings = checkpoint_data_settings(meta)
    if settings is None:
        raise DataError("This checkpoint records no training data (imported weights): pick a dataset to train on.")
    corpus = read_corpus(settings.source)
    if corpus.sha256 != meta.dataset.get("sha256"):
        raise DataError(f"{settings.source} has changed since the checkpoint was trained on it; it is not the same "
                        "text any more.")
    return prepare_data(settings, tokenizer, corpus=corpus, progress=progress)


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
        self.save_name = config.save_name or (None if resume else f"run-{self.run_id}")  # resume: decided in _build
        self.lease = None  # the store's NameLease on save_name, held while the run lives
        self.notes: list[str] = []
        self._step_offset = 0  # steps done before this data's epoch 0 (resumed on other data)
        self.same_data = False  # resumed on the checkpoint's own text
        self.model: GPTModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.pos = _Position()
        self.last_checkpoint: str | None = None
        self.history: dict[str, list] = {"train_losses": [], "val_losses": [], "tokens_seen": [], "steps": []}
        self._log: RunLog | None = None

    # -- reporting
    def _emit(self, event: Event) -> None:
        if self._log is not None:
            try:
                self._log.append(event)
            except OSError:
                pass  # a full disk must not kill the run; the UI still gets the event
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
            self._load_resume(vocab)
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
            self._resume_opt, self._resume_rng = None, None
        if self.model_config.context_length < self.data.settings.context_length:
            raise ConfigError(
                f"The data's context length ({self.data.settings.context_length}) exceeds the model's "
                f"({self.model_config.context_length}); lower the data's context length.")
        self.model.to(device)
        self.optimizer = make_optimizer(self.model, cfg, device)
        if self._resume_opt is not None:
            self.optimizer.load_state_dict(self._resume_opt)
        return device, count_parameters(self.model)

    def _load_resume(self, vocab: int) -> None:
        """Model, optimizer, RNG, data position and history from the checkpoint being continued.

        A trained checkpoint must bring its AdamW state and trainer state (position, RNG): a missing one
        is an error unless ``fresh_optimizer`` says to continue knowingly (fresh AdamW, counters from
        meta.json, the data from the top). Imported weights never had them: they start a fresh AdamW.
        """
        from gpttui.core.store import default_store

        store = default_store()
        loaded = store.load(self.resume, device="cpu", load_optimizer=True)
        typed = loaded.typed
        if loaded.config.vocab_size < vocab:
            raise ConfigError(f"Checkpoint {self.resume!r} has a vocabulary of {loaded.config.vocab_size}, "
                              f"smaller than the {self.tokenizer.name} tokenizer's {vocab}.")
        if typed.tokenizer and typed.tokenizer != self.tokenizer.name:
            raise ConfigError(f"Checkpoint {self.resume!r} was trained with the {typed.tokenizer} tokenizer, "
                              f"not {self.tokenizer.name}.")
        self.model = loaded.model
        self.model_config = loaded.config
        self.same_data = self.data_matches(typed.dataset)
        state = loaded.trainer_state
        opt = loaded.optimizer_state
        missing = []
        if typed.source == "trained" or typed.has_trainer_state:
            if opt is None:
                missing.append(f"{loaded.path / 'optimizer.pt'} (AdamW's moments)")
            if state is None:
                missing.append(f"{loaded.path / 'trainer_state.pt'} (data position, RNG and loss curve)")
        if missing and not self.fresh_optimizer:
            raise ConfigError(f"Cannot resume {self.resume!r} exactly: {' and '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} missing. Continue knowingly with a fresh "
                              "optimizer (--fresh-optimizer), or restore the file.")
        self._resume_opt, self._resume_rng = None, None
        if state is not None and not self.fresh_optimizer:
            pos = state.get("position", {})
            try:
                self.pos = _Position(int(pos.get("step", 0)), int(pos.get("epoch", 0)), int(pos.get("batch", 0)),
                                     int(pos.get("tokens_seen", 0)), float(pos.get("best_val_loss", float("inf"))))
            except (TypeError, ValueError, AttributeError) as e:
                raise ConfigError(f"{loaded.path / 'trainer_state.pt'} has an unreadable position ({e}).") from e
            self._resume_rng = state.get("rng")
        else:  # counters from meta.json; the data from the top
            self.pos = _Position(typed.step, 0, 0, typed.tokens_seen,
                                 typed.best_val_loss if typed.best_val_loss is not None else float("inf"))
        if state is not None and isinstance(state.get("history"), dict):
            self.history = state["history"]
        if opt is not None and not self.fresh_optimizer:
            self._resume_opt = opt
        elif self.fresh_optimizer:
            self.notes.append("AdamW starts fresh (--fresh-optimizer): its moments are rebuilt over the first "
                              "steps.")
        elif typed.source != "trained":
            self.notes.append(f"{self.resume!r} holds imported weights without optimizer state: AdamW starts fresh.")
        if not self.same_data:  # other text: keep the counters, start its data from the top
            self.pos.epoch, self.pos.batch = 0, 0
            self._step_offset = self.pos.step
            self._resume_rng = None

    def data_matches(self, dataset: dict | None) -> bool:
        """Whether ``dataset`` (a checkpoint's record) is the text this run trains on."""
        return dataset_matches(dataset, self.data)

    def _reserve_save_name(self) -> None:
        """Decide where this run saves, and hold that name for the whole run (see the store)."""
        from gpttui.core.store import default_store

        store = default_store()
        plan = plan_save(store, resume=self.resume, requested=self.save_name, same_data=self.same_data,
                         data_source=self.data.corpus.source, run_id=self.run_id)
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
        loader = self.data.train_loader
        epoch, start = self.pos.epoch, self.pos.batch
        while epoch < self.config.epochs:
            for b, (x, y) in enumerate(loader.epoch(epoch, start), start=start):
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
        with self._autocast(device):
            text = sample_text(self.model, self.tokenizer, self.config.start_context, self.config.sample_tokens,
                               self.model_config.context_length, device)
        self._emit(SampleEvent(self.pos.step, epoch, self.config.start_context, text))

    # -- checkpoints
    def trainer_state(self, device: torch.device) -> dict[str, Any]:
        from gpttui.core import checkpoints

        p = self.pos
        return {
            "position": {"step": p.step, "epoch": p.epoch, "batch": p.batch, "tokens_seen": p.tokens_seen,
                         "best_val_loss": p.best_val_loss},
            "rng": checkpoints.capture_rng_state(),
            "history": self.history,
            "run_id": self.run_id,
        }

    def save(self, device: torch.device, name: str | None = None) -> str:
        from gpttui.core import checkpoints

        name = name or self.save_name
        assert name is not None
        p = self.pos
        if not all(bool(torch.isfinite(t).all()) for t in self.model.parameters()):
            where = (f"the last good checkpoint is {self.last_checkpoint!r}" if self.last_checkpoint
                     else "no checkpoint was saved in this run")
            raise NonFiniteLoss(f"The weights became non-finite by step {p.step}; they were not saved, {where}. "
                                "Try a lower learning rate, warmup or gradient clipping.")
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

    # -- the loop
    def run(self) -> Event:
        """Train until done, stopped or failed; returns the final (finished or failed) event."""
        try:
            return self._run_logged()
        finally:
            self._cancel_snapshots()
            if self.lease is not None:
                self.lease.release()

    def _run_logged(self) -> Event:
        start_time = time.perf_counter()
        try:
            self._log = RunLog(self.run_id)
        except OSError as exc:
            event = FailedEvent(f"Cannot create the run directory: {exc}", 0)
            self.callback(event)
            return event
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
            disk = exc if isinstance(exc, OSError) else None
            if disk is not None:
                from gpttui.core.store import describe_os_error

                message = describe_os_error(disk, "Training stopped", Path(disk.filename or paths.data_dir()))
            else:
                message = f"{type(exc).__name__}: {exc}"
            event = FailedEvent(message, self.pos.step, self.last_checkpoint)
        self._emit(event)
        self._log.close()
        return event

    def _cancel_snapshots(self) -> None:
        for future in self.control.take_snapshot_requests():
            future.cancel()  # the run is over: the caller copies the weights itself

    def _run(self, start_time: float) -> Event:
        cfg = self.config
        device, n_params = self._build()
        total_steps, per_epoch = self._total_steps()
        if total_steps < 1:
            raise ConfigError("Nothing to train: the training loader has fewer batches than one optimizer step.")
        if self.resume and total_steps <= self.pos.step:
            why = (f"--max-steps {cfg.max_steps} is already reached" if cfg.max_steps and cfg.max_steps <= self.pos.step
                   else f"its {cfg.epochs} epoch(s) are done")
            raise ConfigError(f"Checkpoint {self.resume!r} is at step {self.pos.step}: {why}, so there is nothing to "
                              f"train and it was left as it is. Ask for more (e.g. --max-steps "
                              f"{self.pos.step + 10}, or more --epochs).")
        model = self.model
        train_model: torch.nn.Module = torch.compile(model) if cfg.compile else model
        tokens_per_step = self.data.settings.batch_size * self.data.settings.context_length * cfg.grad_accum
        self._log.write_config({"train_config": cfg.to_dict(), "model_config": self.model_config.to_dict(),
                                "dataset": self.data.identity(), "resume": self.resume,
                                "gpttui_version": __version__, "created": _now()})
        self._emit(Started(self.run_id, str(self._log.dir), cfg.to_dict(), self.model_config.to_dict(), n_params,
                           str(device), cfg.dtype, total_steps, per_epoch, tokens_per_step, self.pos.step,
                           self.resume, self.data.identity(), self.save_name, list(self.notes)))
        if self._resume_rng is not None:
            from gpttui.core import checkpoints

            checkpoints.restore_rng_state(self._resume_rng)
        model.train()
        params = [p for p in model.parameters()]
        clip = cfg.grad_clip if cfg.grad_clip else float("inf")
        tps_ema: float | None = None
        step_times: list[float] = []
        batches = self._batches()
        micro = 0
        step_start = time.perf_counter()
        step_loss = 0.0
        reason = "completed"
        epoch_ended = sampled_last = False
        while self.pos.step < total_steps:
            if micro == 0:  # control is honoured between optimizer steps only
                if self.control.stopped:
                    reason = self.control.stop_reason
                    break
                if self.control.paused:
                    self._emit(StateEvent(True, self.pos.step))
                    self.serve_snapshots()
                    self.control.wait_while_paused()
                    self._emit(StateEvent(False, self.pos.step))
                    step_start = time.perf_counter()
                    continue
            try:
                epoch, b, x, y = next(batches)
            except StopIteration:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with self._autocast(device):
                logits = train_model(x)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                self.optimizer.zero_grad(set_to_none=True)
                where = (f"the last good checkpoint is {self.last_checkpoint!r}" if self.last_checkpoint
                         else "no checkpoint was saved in this run")
                raise NonFiniteLoss(
                    f"The loss became {loss_value} at step {self.pos.step + 1} (epoch {epoch + 1}); training stopped "
                    f"before applying it, {where}. Try a lower learning rate, warmup or gradient clipping.")
            (loss / cfg.grad_accum).backward()
            step_loss += loss_value / cfg.grad_accum
            self.pos.tokens_seen += x.numel()
            if b + 1 >= len(self.data.train_loader):
                self.pos.epoch, self.pos.batch = epoch + 1, 0
                epoch_ended = True
            else:
                self.pos.epoch, self.pos.batch = epoch, b + 1
            micro += 1
            if micro < cfg.grad_accum:
                continue
            micro = 0
            lr = lr_at(self.pos.step, cfg, total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.pos.step += 1
            step = self.pos.step  # steps done, this one included
            now = time.perf_counter()
            dt = max(now - step_start, 1e-9)
            tps = tokens_per_step / dt
            tps_ema = tps if tps_ema is None else 0.9 * tps_ema + 0.1 * tps
            step_times.append(dt)
            recent = step_times[-50:]
            eta = (sum(recent) / len(recent)) * (total_steps - self.pos.step)
            self._emit(StepEvent(step, epoch + 1, self.pos.tokens_seen, step_loss, lr, grad_norm, tps_ema,
                                 now - start_time, total_steps, eta))
            step_loss = 0.0
            sampled_last = False
            if (step - 1) % cfg.eval_freq == 0:  # the book's global_step % eval_freq
                train_loss, val_loss = self.evaluate(device)
                if math.isfinite(val_loss):
                    self.pos.best_val_loss = min(self.pos.best_val_loss, val_loss)
                self.history["train_losses"].append(train_loss)
                self.history["val_losses"].append(val_loss)
                self.history["tokens_seen"].append(self.pos.tokens_seen)
                self.history["steps"].append(step)
                self._emit(EvalEvent(step, epoch + 1, self.pos.tokens_seen, train_loss, val_loss,
                                     perplexity(train_loss), perplexity(val_loss), self.pos.best_val_loss))
                if cfg.sample_at_eval:
                    self._sample(device, epoch + 1)
                    sampled_last = True
            if epoch_ended and not sampled_last:  # the book's sample after each epoch
                self._sample(device, epoch + 1)
                sampled_last = True
            epoch_ended = False
            if cfg.checkpoint_every and self.pos.step % cfg.checkpoint_every == 0:
                self.save(device)
            if self.control.take_save_request():
                self.save(device)
            self.serve_snapshots()
            step_start = time.perf_counter()
        if reason == "completed" and self.pos.step > 0 and not sampled_last:
            self._sample(device, self.pos.epoch + (0 if self.pos.batch == 0 else 1))
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


def _slug(source: str) -> str:
    """A data source as a piece of a checkpoint name: ``builtin:pydoc`` -> ``pydoc``, ``~/x/book.txt`` ->
    ``book``, a folder -> its name."""
    import re

    name = Path(source.removeprefix("builtin:").rstrip("/\\")).name
    stem = Path(name).stem if Path(name).suffix else name
    slug = re.sub(r"[^A-Za-z0-9_+-]+", "-", stem).strip("-.")
    return (slug or "data")[:40]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
