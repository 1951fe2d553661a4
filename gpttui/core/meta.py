"""The typed schema of a checkpoint's ``meta.json``: :func:`parse_meta` checks what is read,
:func:`build_meta` makes what is written (and what is written must read back)."""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

import gpttui
from gpttui.core.checkpoints import DEFAULT_META, FORMAT_VERSION, META_FILE, SOURCES
from gpttui.core.config import GPTConfig
from gpttui.core.errors import CheckpointError, ConfigError
from gpttui.core.fileio import jsonable
from gpttui.core.model import GPTModel, count_parameters


class MetaError(CheckpointError):
    """A meta.json that does not fit the schema."""


def _int(meta: Mapping[str, Any], key: str, file: Path, default: int | None = 0, minimum: int = 0) -> int | None:
    value = meta.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MetaError(f"{file}: {key} must be a whole number ≥ {minimum}, not {json.dumps(value)}.")
    return value


def _float(meta: Mapping[str, Any], key: str, file: Path) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise MetaError(f"{file}: {key} must be a number or null, not {json.dumps(value)}.")
    return float(value)


def _str(meta: Mapping[str, Any], key: str, file: Path, default: str | None = None) -> str | None:
    value = meta.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetaError(f"{file}: {key} must be text, not {json.dumps(value)}.")
    return value


def _dict(meta: Mapping[str, Any], key: str, file: Path, nullable: bool = True) -> dict[str, Any] | None:
    value = meta.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise MetaError(f"{file}: {key} must be an object, not {json.dumps(value)[:40]}.")
    return value


# Types of the dataset record's fields (PreparedData.identity()).
_DATASET_FIELDS: dict[str, tuple[type, ...]] = {
    "source": (str,), "label": (str,), "sha256": (str,), "tokenizer": (str,), "characters": (int,),
    "tokens": (int,), "train_ratio": (int, float), "context_length": (int,), "stride": (int, type(None)),
    "batch_size": (int,),
}


def _check_dataset(dataset: dict[str, Any] | None, file: Path) -> None:
    if dataset is None:
        return
    for key, types in _DATASET_FIELDS.items():
        if key in dataset and (not isinstance(dataset[key], types) or isinstance(dataset[key], bool)):
            raise MetaError(f"{file}: dataset.{key} has the wrong type ({json.dumps(dataset[key])[:40]}).")
    for key in ("context_length", "batch_size"):
        if key in dataset and dataset[key] < 1:
            raise MetaError(f"{file}: dataset.{key} must be at least 1.")


@dataclass(frozen=True)
class CheckpointMeta:
    """``meta.json`` once it has passed the schema. ``raw`` keeps every key (the typed fields included)."""

    format_version: int
    source: str
    model_config: GPTConfig
    tokenizer: str | None
    step: int  # optimizer steps done
    epoch: int  # 1-based epoch of the last step done; 0 before any step
    tokens_seen: int
    parameter_count: int | None
    last_train_loss: float | None
    last_val_loss: float | None
    best_val_loss: float | None
    created: str | None
    train_config: dict[str, Any]
    dataset: dict[str, Any] | None
    has_optimizer: bool
    has_trainer_state: bool
    run_dir: str | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


def parse_meta(meta: Any, file: Path) -> CheckpointMeta:
    """Check a loaded ``meta.json`` against the schema; :class:`MetaError` says what is wrong."""
    if not isinstance(meta, dict):
        raise MetaError(f"{file} should hold a JSON object, not {type(meta).__name__}.")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MetaError(f"{file} has no valid format_version: not a gpttui checkpoint.")
    if version > FORMAT_VERSION:
        raise MetaError(f"{file} has format version {version}, newer than this gpttui "
                        f"({gpttui.__version__}) reads ({FORMAT_VERSION}); upgrade gpttui.")
    model_config = _dict(meta, "model_config", file, nullable=False)
    try:
        cfg = GPTConfig.from_dict(model_config)
    except (ConfigError, TypeError, ValueError) as e:
        raise MetaError(f"{file} has an unusable model_config: {e}") from e
    for key in ("qkv_bias", "tie_weights"):
        if not isinstance(getattr(cfg, key), bool):
            raise MetaError(f"{file}: model_config.{key} must be true or false.")
    if not isinstance(cfg.drop_rate, (int, float)) or isinstance(cfg.drop_rate, bool):
        raise MetaError(f"{file}: model_config.drop_rate must be a number.")
    source = meta.get("source", "trained")
    if source not in SOURCES:
        raise MetaError(f"{file}: source must be one of {', '.join(SOURCES)}, not {json.dumps(source)}.")
    dataset = _dict(meta, "dataset", file)
    _check_dataset(dataset, file)
    flags = {}
    for key in ("has_optimizer", "has_trainer_state"):
        value = meta.get(key, False)
        if not isinstance(value, bool):
            raise MetaError(f"{file}: {key} must be true or false, not {json.dumps(value)}.")
        flags[key] = value
    train_config = _dict(meta, "train_config", file) or {}
    return CheckpointMeta(
        format_version=version, source=source, model_config=cfg, tokenizer=_str(meta, "tokenizer", file),
        step=_int(meta, "step", file), epoch=_int(meta, "epoch", file),
        tokens_seen=_int(meta, "tokens_seen", file), parameter_count=_int(meta, "parameter_count", file, None),
        last_train_loss=_float(meta, "last_train_loss", file), last_val_loss=_float(meta, "last_val_loss", file),
        best_val_loss=_float(meta, "best_val_loss", file), created=_str(meta, "created", file),
        train_config=train_config, dataset=dataset, run_dir=_str(meta, "run_dir", file), raw=meta, **flags)


def read_meta_file(path: Path) -> CheckpointMeta:
    """The parsed ``meta.json`` of the checkpoint folder ``path``."""
    file = path / META_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {path.name!r} is not a complete gpttui checkpoint.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise MetaError(f"{file} is not valid JSON (not UTF-8 text: {e}).") from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise MetaError(f"{file} is not valid JSON ({e}).") from e
    except OSError as e:
        raise CheckpointError(f"{file} cannot be read ({e}).") from e
    return parse_meta(data, file)


def build_meta(model: GPTModel, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None,
                has_optimizer: bool, has_trainer_state: bool) -> dict[str, Any]:
    reserved = ("format_version", "gpttui_version", "created", "model_config", "parameter_count", "dtype",
                "has_optimizer", "has_trainer_state")
    out: dict[str, Any] = {"format_version": FORMAT_VERSION}
    out.update(copy.deepcopy(DEFAULT_META))
    for key, value in (meta or {}).items():
        if key not in reserved:
            out[str(key)] = value
    if out["source"] not in SOURCES:
        raise CheckpointError(f"Unknown checkpoint source {out['source']!r}; expected one of {', '.join(SOURCES)}.")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    out.update({
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "gpttui_version": gpttui.__version__,
        "model_config": model.cfg.to_dict(),
        "parameter_count": count_parameters(model),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "has_optimizer": has_optimizer,
        "has_trainer_state": has_trainer_state,
    })
    try:
        return jsonable(out, "meta")
    except TypeError as e:
        raise CheckpointError(f"{e}".replace("as JSON", f"to {META_FILE}")) from None


__all__ = ["MetaError", "CheckpointMeta", "parse_meta", "read_meta_file", "build_meta"]
