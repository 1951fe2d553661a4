"""The Checkpoints screen's table, fitted to its width: which columns, in which form, how wide.

Pure functions of plain data (no widgets), so the fitting is tested without an app. A column that does not
fit is dropped or shown in a compact form rather than cut: the table never scrolls sideways, every value
keeps its unit ("78.6 MB"), and the details pane below has everything in full.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.text import Text

from gpttui.core import checkpoints
from gpttui.core.units import format_bytes, format_count
from gpttui.tui.render import SOURCE_LABELS, _number, model_shape, short_error

NONE = "–"
PADDING = 2  # DataTable's cell_padding (1) on each side of a column


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cap: int | None = None  # the widest it gets (longer values end in "…")


# In the order shown. Name, step, best val and size always stay (the table's point); the rest go when short.
COLUMNS = (Column("name", "Name"), Column("model", "Model"), Column("params", "Params"),
           Column("source", "Source"), Column("step", "Step"), Column("tokens", "Tokens"),
           Column("best_val", "Best val"), Column("dataset", "Dataset", cap=24), Column("created", "Created"),
           Column("size", "Size"), Column("problem", "Problem", cap=60))
FLEXIBLE = ("name", "dataset", "problem")  # the columns that take spare width, up to their values' width
NAME_MIN = 8

# What gives way when the width is short, in this order (each step is applied until the table fits):
# ("compact", key) shows that column's short form; ("cap", key, n) narrows it; ("drop", key) removes it.
DEGRADE: tuple[tuple, ...] = (
    ("cap", "dataset", 14), ("compact", "model"), ("compact", "created"), ("cap", "problem", 40),
    ("drop", "tokens"), ("drop", "dataset"), ("cap", "problem", 24), ("drop", "problem"), ("drop", "source"),
    ("drop", "params"),
    ("cap", "name", 24), ("drop", "created"), ("drop", "model"),
)


@dataclass(frozen=True)
class Layout:
    """The chosen columns: ``(key, label, width)`` each, and which of them show their compact form."""

    columns: tuple[tuple[str, str, int], ...]
    compact: frozenset[str]

    @property
    def keys(self) -> list[str]:
        return [key for key, _, _ in self.columns]

    @property
    def total(self) -> int:
        return sum(width + PADDING for _, _, width in self.columns)


def compact_time(iso: Any, now: _dt.datetime | None = None) -> str:
    """A saved time short enough for a narrow column: "06:14" today, "Nov 28" this year, "Nov 2025" before."""
    when = _parse(iso)
    if when is None:
        return "?"
    now = now or _dt.datetime.now()
    if when.date() == now.date():
        return when.strftime("%H:%M")
    return when.strftime("%b %d" if when.year == now.year else "%b %Y")


def full_time(iso: Any, now: _dt.datetime | None = None) -> str:
    """"Nov 28 06:14" this year, "2025-11-28" before."""
    when = _parse(iso)
    if when is None:
        return "?"
    now = now or _dt.datetime.now()
    return when.strftime("%b %d %H:%M" if when.year == now.year else "%Y-%m-%d")


def _parse(iso: Any) -> _dt.datetime | None:
    try:
        when = _dt.datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return None
    return when.astimezone().replace(tzinfo=None) if when.tzinfo is not None else when


def compact_shape(cfg: dict | None) -> str:
    """"12L·12H·768d": the model's shape without its context length (the details pane has it)."""
    cfg = cfg or {}
    try:
        return f"{cfg['n_layers']}L·{cfg['n_heads']}H·{cfg['emb_dim']}d"
    except KeyError:
        return "?"


Cell = Any  # str or rich Text
Forms = dict[str, tuple[Cell, Cell]]  # per column key: (full form, compact form)


def cell_forms(info: checkpoints.CheckpointInfo, now: _dt.datetime | None = None) -> Forms:
    """Every cell of one checkpoint in its full and compact forms, by column key."""
    meta = info.meta or {}
    created = (full_time(info.created, now), compact_time(info.created, now))
    size = format_bytes(info.size_bytes)
    if not info.ok:
        cells: Forms = {key: (NONE, NONE) for key in ("params", "source", "step", "tokens", "best_val", "dataset")}
        broken = Text("✗ broken", style="red")
        problem = Text(" ".join(short_error(info).split()), style="red")
        cells.update(name=(info.name, info.name), model=(broken, broken), created=created, size=(size, size),
                     problem=(problem, problem))
        return cells
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    label = " ".join(str(dataset.get("label") or dataset.get("source") or NONE).split())
    source = SOURCE_LABELS.get(str(meta.get("source")), str(meta.get("source") or "?"))
    step = f"{meta.get('step') or 0:,}"
    tokens = format_count(meta.get("tokens_seen") or 0)
    best = _number(meta.get("best_val_loss"))
    return {"name": (info.name, info.name),
            "model": (model_shape(meta.get("model_config")), compact_shape(meta.get("model_config"))),
            "params": (format_count(meta.get("parameter_count")),) * 2, "source": (source, source),
            "step": (step, step), "tokens": (tokens, tokens), "best_val": (best, best), "dataset": (label, label),
            "created": created, "size": (size, size), "problem": ("", "")}


def _width(cell: Cell) -> int:
    return cell_len(cell) if isinstance(cell, str) else cell.cell_len


def fit(rows: list[Forms], width: int, problem_column: bool) -> Layout:
    """The columns that fit in ``width`` cells (the table's inside), giving way in :data:`DEGRADE` order;
    spare width goes to the flexible columns (name, dataset, problem) up to their widest value."""
    keys = [c.key for c in COLUMNS if c.key != "problem" or problem_column]
    caps = {c.key: c.cap for c in COLUMNS}
    compact: set[str] = set()
    widest = {c.key: tuple(max([_width(c.label)] + [_width(r[c.key][form]) for r in rows]) for form in (0, 1))
              for c in COLUMNS if c.key in keys}  # measured once: a few hundred rows stay quick

    def natural(key: str) -> int:
        return widest[key][1 if key in compact else 0]

    def widths() -> dict[str, int]:
        out = {}
        for key in keys:
            cap = caps[key]
            label = _width(next(c.label for c in COLUMNS if c.key == key))
            out[key] = natural(key) if cap is None else max(label, min(cap, natural(key)))
        return out

    def total(w: dict[str, int]) -> int:
        return sum(v + PADDING for v in w.values())

    current = widths()
    for step in DEGRADE:
        if total(current) <= width:
            break
        what, key = step[0], step[1]
        if key not in keys:
            continue
        if what == "drop":
            keys.remove(key)
        elif what == "compact":
            compact.add(key)
        else:
            caps[key] = min(caps[key] or step[2], step[2])
        current = widths()

    def grow(key: str) -> None:  # spare width to ``key``, up to its widest value (and its column's cap)
        spare = width - total(current)
        cap = next(c.cap for c in COLUMNS if c.key == key) or natural(key)
        if key in current and spare > 0:
            current[key] += max(0, min(spare, min(natural(key), cap) - current[key]))

    grow("problem")  # when something is broken, what is wrong comes first
    for key in ("created", "model"):  # a full form comes back where a dropped column made room
        if key in compact and key in keys:
            compact.discard(key)
            wider = {**current, key: widths()[key]}
            if total(wider) <= width:
                current = wider
            else:
                compact.add(key)
    over = total(current) - width
    if over > 0:  # the name takes what is left (its full text is in the details pane)
        current["name"] = max(NAME_MIN, current["name"] - over)
    for key in ("name", "dataset"):
        grow(key)
    labels = {c.key: c.label for c in COLUMNS}
    return Layout(tuple((key, labels[key], current[key]) for key in keys), frozenset(compact))


def row(forms: Forms, layout: Layout) -> list[Cell]:
    """One row's cells for ``layout``, each cut to its column with "…" when longer."""
    cells = []
    for key, _, width in layout.columns:
        cell = forms[key][1 if key in layout.compact else 0]
        cells.append(_cut(cell, width))
    return cells


def _cut(cell: Cell, width: int) -> Cell:
    if _width(cell) <= width:
        return cell
    text = Text(cell) if isinstance(cell, str) else cell.copy()
    text.truncate(width, overflow="ellipsis")
    return text if not isinstance(cell, str) else text.plain
