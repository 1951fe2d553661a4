"""How a run is planned, in one place for every front end (the CLI and the app ask here):

- the model's shape and the data's context length for a new model (:func:`plan_model`): the model owns
  the context length, and the data's windows follow it unless the user sets one;
- what a continued run takes from its checkpoint (:func:`resume_data_defaults`, :func:`train_config_for`,
  :func:`checkpoint_data_settings`, :func:`prepare_checkpoint_data`), and whether the data is the text
  the checkpoint learned from (:func:`dataset_matches`);
- where a run saves (:func:`plan_save`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from gpttui.core.config import GPTConfig, TrainConfig, preset
from gpttui.core.data import DataSettings, PreparedData
from gpttui.core.errors import ConfigError, TokenizerError
from gpttui.core.tokenizer import Tokenizer, tokenizer_for

# The training settings a continued run takes from its checkpoint unless the user gives them.
RESUMED_TRAIN_FIELDS = ("epochs", "max_steps", "lr", "min_lr", "weight_decay", "warmup_steps", "grad_clip",
                        "grad_accum", "eval_freq", "eval_iter", "start_context", "sample_tokens", "seed", "device",
                        "dtype", "checkpoint_every", "book", "deterministic")
# The data settings a checkpoint records (PreparedData.identity()) that a continued run reuses.
_RESUMED_DATA_FIELDS = ("source", "context_length", "stride", "batch_size", "train_ratio", "text_field", "split")


# --- a new model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunShape:
    """A new model's shape, and the context length of the data's windows (the model's, or what the
    user set, which the model then takes too)."""

    model_config: GPTConfig
    context_length: int


def plan_model(preset_name: str, *, vocab_size: int, context_length: int | None = None,
               **shape: Any) -> RunShape:
    """The model config of ``preset_name`` (``shape`` overrides its fields: n_layers, n_heads, emb_dim,
    drop_rate, qkv_bias, tie_weights; ``None`` keeps the preset's) and the data's context length.

    One owner for the context length, the model: without ``context_length`` the preset's context is the
    model's and the data's windows follow it (``tiny``: 128); with it, both take the user's value.
    """
    config = preset(preset_name, vocab_size=vocab_size, context_length=context_length, **shape)
    return RunShape(config, config.context_length)


def data_settings_for(given: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> DataSettings:
    """Data settings from what the user gave (``None``: not given) over ``defaults`` (a plan's: the
    model's context length, or a checkpoint's :func:`resume_data_defaults`) over :class:`DataSettings`'s."""
    values = {f.name: f.default for f in fields(DataSettings)}
    values.update(defaults or {})
    values.update({k: v for k, v in given.items() if v is not None})
    return DataSettings(**{k: v for k, v in values.items() if k in {f.name for f in fields(DataSettings)}})


# --- continuing a checkpoint ------------------------------------------------------------------------


def resume_data_defaults(meta: Any) -> dict[str, Any]:
    """The data settings a continued run takes from checkpoint ``meta`` (a CheckpointMeta) unless the user
    sets them: its dataset's source, context length, stride, batch size and train ratio as recorded, its
    tokenizer, and the model's context length when the checkpoint records no dataset (imported weights)."""
    ds = meta.dataset or {}
    out = {k: ds[k] for k in _RESUMED_DATA_FIELDS if ds.get(k) is not None or k == "stride" and k in ds}
    out.setdefault("context_length", meta.model_config.context_length)
    try:
        out["tokenizer"] = ds.get("tokenizer") or tokenizer_for(meta)
    except TokenizerError:
        pass  # no tokenizer fits: the run fails on it with the numbers
    return out


def train_config_for(given: Mapping[str, Any], meta: Any = None) -> TrainConfig:
    """The training config: the settings the user gave (every key present counts, ``None`` included),
    over the settings checkpoint ``meta`` was trained with (:data:`RESUMED_TRAIN_FIELDS`, when
    continuing), over :class:`TrainConfig`'s defaults."""
    saved = dict(meta.train_config) if meta is not None else {}
    values = {k: v for k, v in saved.items() if k in RESUMED_TRAIN_FIELDS}
    values.update(given)
    return TrainConfig.from_dict(values)


def checkpoint_data_settings(meta: Any) -> DataSettings | None:
    """The data settings a checkpoint was trained with (``None`` when it records no dataset)."""
    defaults = resume_data_defaults(meta)
    if not defaults.get("source"):
        return None
    return data_settings_for({}, defaults)


@dataclass
class Position:
    """Where a run is: counters and the data position (what trainer_state.pt keeps)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # 0-based epoch of the next batch
    batch: int = 0  # index of the next batch within that epoch
    tokens_seen: int = 0
    best_val_loss: float = float("inf")
    world: int = 1  # processes that trained it (a batch index counts global batches of that many)


@dataclass
class ResumeState:
    """What a continued run starts from (:func:`load_resume`)."""

    model: Any  # GPTModel, on the CPU
    model_config: GPTConfig
    position: Position
    same_data: bool  # trains on the text the checkpoint learned from
    step_offset: int  # steps done before this data's epoch 0 (other data: the checkpoint's steps)
    history: dict | None  # the checkpoint's loss curve
    optimizer_state: dict | None  # None: AdamW starts fresh
    rng: dict | None  # None: not restored (other data, or no trainer state)
    notes: list[str] = field(default_factory=list)
    scaler: dict | None = None  # fp16's GradScaler state


def load_resume(name: str, data: PreparedData, tokenizer: Tokenizer, *, fresh_optimizer: bool = False) -> ResumeState:
    """Model, optimizer state, RNG, data position and loss curve of checkpoint ``name``, to continue it on
    ``data``.

    A trained checkpoint must bring its AdamW state and trainer state (position, RNG): a missing one is an
    error unless ``fresh_optimizer`` says to continue knowingly (fresh AdamW, counters from meta.json, the
    data from the top). Imported weights never had them: they start a fresh AdamW. On other data the
    counters go on and the data starts from the top.
    """
    from gpttui.core.store import default_store

    loaded = default_store().load(name, device="cpu", load_optimizer=True)
    typed = loaded.typed
    if loaded.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"Checkpoint {name!r} has a vocabulary of {loaded.config.vocab_size}, "
                          f"smaller than the {tokenizer.name} tokenizer's {tokenizer.vocab_size}.")
    if typed.tokenizer and typed.tokenizer != tokenizer.name:
        raise ConfigError(f"Checkpoint {name!r} was trained with the {typed.tokenizer} tokenizer, "
                          f"not {tokenizer.name}.")
    state, opt = loaded.trainer_state, loaded.optimizer_state
    _check_resume_files(name, loaded, state, opt, fresh_optimizer)
    position, rng = _resume_position(loaded, state, fresh_optimizer)
    notes = []
    if fresh_optimizer:
        notes.append("AdamW starts fresh (--fresh-optimizer): its moments are rebuilt over the first steps.")
    elif opt is None and typed.source != "trained":
        notes.append(f"{name!r} holds imported weights without optimizer state: AdamW starts fresh.")
    same_data = dataset_matches(typed.dataset, data)
    step_offset = 0
    if not same_data:  # other text: keep the counters, start its data from the top
        position.epoch, position.batch = 0, 0
        step_offset, rng = position.step, None
    history = state["history"] if state is not None and isinstance(state.get("history"), dict) else None
    scaler = state.get("scaler") if state is not None and rng is not None else None
    return ResumeState(loaded.model, loaded.config, position, same_data, step_offset, history,
                       None if fresh_optimizer else opt, rng, notes, scaler if isinstance(scaler, dict) else None)


def _check_resume_files(name: str, loaded: Any, state: dict | None, opt: dict | None, fresh_optimizer: bool) -> None:
    """A trained checkpoint without its optimizer or trainer state cannot be resumed exactly."""
    missing = []
    if loaded.typed.source == "trained" or loaded.typed.has_trainer_state:
        if opt is None:
            missing.append(f"{loaded.path / 'optimizer.pt'} (AdamW's moments)")
        if state is None:
            missing.append(f"{loaded.path / 'trainer_state.pt'} (data position, RNG and loss curve)")
    if missing and not fresh_optimizer:
        raise ConfigError(f"Cannot resume {name!r} exactly: {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} missing. Continue knowingly with a fresh "
                          "optimizer (--fresh-optimizer), or restore the file.")


def _resume_position(loaded: Any, state: dict | None, fresh_optimizer: bool) -> tuple[Position, dict | None]:
    """The data position and RNG from trainer_state.pt; without it (or with a fresh optimizer), the
    counters from meta.json, the data from the top and no RNG."""
    typed = loaded.typed
    if state is None or fresh_optimizer:
        best = typed.best_val_loss if typed.best_val_loss is not None else float("inf")
        return Position(typed.step, 0, 0, typed.tokens_seen, best), None
    pos = state.get("position", {})
    try:
        position = Position(int(pos.get("step", 0)), int(pos.get("epoch", 0)), int(pos.get("batch", 0)),
                            int(pos.get("tokens_seen", 0)), float(pos.get("best_val_loss", float("inf"))),
                            max(1, int(pos.get("world", 1))))
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{loaded.path / 'trainer_state.pt'} has an unreadable position ({e}).") from e
    return position, state.get("rng")


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


def default_name(store: Any, data_source: str, model_config: Any = None) -> str:
    """A new model's name when the user gives none: its text and shape, ``pydoc-2L128d`` (``-2``, ``-3``...
    when taken), which tells runs apart in a list better than a timestamp; the run id names its folder."""
    from gpttui.core.store import unique_name

    shape = f"-{model_config.n_layers}L{model_config.emb_dim}d" if model_config is not None else ""
    return unique_name(store, f"{_slug(data_source)}{shape}")


def plan_save(store: Any, *, resume: str | None, requested: str | None, same_data: bool, data_source: str,
              run_id: str, model_config: Any = None) -> SavePlan:
    """The one decision of where a run saves (the CLI and the app both ask here).

    - A new model saves as ``requested`` or, unnamed, as :func:`default_name` (its text and shape: a free
      name); an existing name needs the user's word.
    - Continuing a checkpoint on its own data saves over it (its loss curve goes on in the checkpoint).
    - Continuing it on other data saves under a new name (``NAME-on-<data>``) unless the user names a
      checkpoint, and replacing one (the original included) needs the user's word.
    """
    from gpttui.core.store import unique_name

    if resume is None:
        if requested is None:
            return SavePlan(default_name(store, data_source, model_config), False)
        name = requested
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


def prepare_checkpoint_data(meta: Any, tokenizer: Tokenizer, progress: Any = None) -> PreparedData:
    """The checkpoint's own training data, prepared as it was; :class:`DataError` when the text is gone or
    has changed since (then it is not the data the checkpoint learned from)."""
    from gpttui.core.data import prepare_data
    from gpttui.core.errors import DataError

    settings = checkpoint_data_settings(meta)
    if settings is None:
        raise DataError("This checkpoint records no training data (imported weights): pick a dataset to train on.")
    prepared = prepare_data(settings, tokenizer, progress=progress)  # from the token cache when unchanged
    if prepared.corpus.sha256 != meta.dataset.get("sha256"):
        raise DataError(f"{settings.source} has changed since the checkpoint was trained on it; it is not the same "
                        "text any more.")
    return prepared


def _slug(source: str) -> str:
    """A data source as a piece of a checkpoint name: ``builtin:pydoc`` -> ``pydoc``, ``~/x/book.txt`` ->
    ``book``, a folder -> its name."""
    name = Path(source.removeprefix("builtin:").rstrip("/\\")).name
    stem = Path(name).stem if Path(name).suffix else name
    slug = re.sub(r"[^A-Za-z0-9_+-]+", "-", stem).strip("-.")
    return (slug or "data")[:40]


__all__ = ["RunShape", "plan_model", "data_settings_for", "resume_data_defaults", "train_config_for",
           "checkpoint_data_settings", "prepare_checkpoint_data", "dataset_matches", "SavePlan", "plan_save",
           "default_name",
           "RESUMED_TRAIN_FIELDS", "Position", "ResumeState", "load_resume"]
