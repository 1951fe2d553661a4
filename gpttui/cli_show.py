"""``gpttui checkpoints show NAME``: a checkpoint's metadata as aligned ``key  value`` lines, the way a
person reads it (``--json`` prints the raw record for scripts)."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from gpttui.core.units import format_bytes, format_count

KEY_WIDTH = 11


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return fmt.format(value)
    return "–"


def _when(iso: Any) -> str:
    """Local time of an ISO timestamp, with the date; the raw text when it does not parse."""
    try:
        when = _dt.datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return str(iso or "?")
    if when.tzinfo is not None:
        when = when.astimezone()
    return when.strftime("%Y-%m-%d %H:%M")


def _model(cfg: dict) -> str:
    layers, heads = cfg.get("n_layers"), cfg.get("n_heads")
    return (f"{layers} layer{'s' * (layers != 1)} · {heads} head{'s' * (heads != 1)} · width {cfg.get('emb_dim')}"
            f" · context {cfg.get('context_length')} · vocab {cfg.get('vocab_size')}")


def _data(dataset: Any) -> list[tuple[str, str]]:
    if not isinstance(dataset, dict) or not dataset:
        return []
    label, source = dataset.get("label"), dataset.get("source")
    rows = [("data", str(label or source or "?") + (f" ({source})" if source and label and label != source else ""))]
    bits = [f"{dataset['tokens']:,} tokens"] if isinstance(dataset.get("tokens"), int) else []
    for key, name in (("context_length", "context"), ("stride", "stride"), ("batch_size", "batch"),
                      ("train_ratio", "train ratio"), ("tokenizer", "tokenizer")):
        if dataset.get(key) is not None:
            bits.append(f"{name} {dataset[key]}")
    if bits:
        rows.append(("", " · ".join(bits)))
    return rows


def _training(tc: Any) -> list[tuple[str, str]]:
    if not isinstance(tc, dict) or not tc:
        return []
    lr = f"lr {tc.get('lr')}" + (f" → {tc['min_lr']}" if tc.get("min_lr") is not None else "")
    return [("training", f"{lr} · warmup {tc.get('warmup_steps', 0)} · weight decay {tc.get('weight_decay')} · "
                         f"grad accum {tc.get('grad_accum', 1)} · seed {tc.get('seed')} · "
                         f"{tc.get('device')} {tc.get('dtype')}")]


def checkpoint_lines(info: dict[str, Any]) -> list[str]:
    """The lines of ``checkpoints show`` for ``checkpoints.show(name)``'s record: name, model shape,
    parameters, progress and losses, the data and training settings, created, size and path."""
    rows: list[tuple[str, str]] = [("name", str(info.get("name")))]
    if info.get("error"):
        rows += [("error", f"✗ {info['error']}"), ("size", format_bytes(info.get("size_bytes") or 0)),
                 ("path", str(info.get("path")))]
        return [f"{key:{KEY_WIDTH}} {value}".rstrip() for key, value in rows]
    cfg = info.get("model_config") if isinstance(info.get("model_config"), dict) else {}
    params = info.get("parameter_count")
    rows += [
        ("model", _model(cfg)),
        ("params", (f"{params:,} ({format_count(params)})" if isinstance(params, int) else "?")
         + f" · {info.get('dtype', '?')}"),
        ("source", str(info.get("source") or "?") + (f" · from {info['imported_from']}"
                                                    if info.get("imported_from") else "")),
        ("tokenizer", str(info.get("tokenizer") or "?")),
        ("step", f"{info.get('step') or 0:,} · epoch {info.get('epoch') or 0} · "
                 f"{info.get('tokens_seen') or 0:,} tokens seen"),
        ("loss", f"best val {_num(info.get('best_val_loss'))} · last val {_num(info.get('last_val_loss'))} · "
                 f"last train {_num(info.get('last_train_loss'))}"),
    ]
    rows += _data(info.get("dataset")) + _training(info.get("train_config"))
    rows += [
        ("optimizer", "saved (training continues with its AdamW state)" if info.get("has_optimizer")
         else "none (training continues with a fresh AdamW)"),
        ("created", f"{_when(info.get('created'))} · gpttui {info.get('gpttui_version', '?')}"),
        ("size", f"{format_bytes(info.get('size_bytes') or 0)} in {len(info.get('files') or {})} files"),
        ("path", str(info.get("path"))),
    ]
    if info.get("run_id"):
        rows.append(("run", str(info["run_id"])))
    if info.get("locked_by"):
        rows.append(("in use", str(info["locked_by"])))
    rows += [("note", str(note)) for note in info.get("notes") or []]
    return [f"{key:{KEY_WIDTH}} {value}".rstrip() for key, value in rows]
