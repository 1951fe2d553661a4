"""Pure renderables: what the screens show, as text, built from plain data (no widgets, no app).

The checkpoint table's rows and the details pane, the training monitor's status text, the Dataset
screen's statistics and checks, and a generated turn with its per-token probabilities.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gpttui.core import checkpoints
from gpttui.core.printable import StreamEscaper, blank_reply_note, split_controls
from gpttui.core.generate import stop_phrase
from gpttui.core.units import format_bytes as human_bytes, format_count as human_count, format_duration

NONE = "–"
SOURCE_LABELS = {"trained": "trained", "imported-gpt2": "GPT-2", "imported-book": "book file"}
COLUMNS = (("Name", "name"), ("Model", "model"), ("Params", "params"), ("Source", "source"), ("Step", "step"),
           ("Tokens", "tokens"), ("Best val", "best_val"), ("Dataset", "dataset"), ("Created", "created"),
           ("Size", "size"))


# --- checkpoints: table rows and the details pane -------------------------------------------------


def local_time(iso: str | None, short: bool = False) -> str:
    """Local time of an ISO timestamp; ``short``: "Nov 23 20:28" this year, else "2024-11-23"."""
    try:
        when = _dt.datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return "?"
    if when.tzinfo is not None:
        when = when.astimezone()
    if short:
        return when.strftime("%b %d %H:%M" if when.year == _dt.datetime.now().year else "%Y-%m-%d")
    return when.strftime("%Y-%m-%d %H:%M")


def _number(value: Any, fmt: str = "{:.3f}") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return fmt.format(value)
    return "–"


def model_shape(cfg: dict | None) -> str:
    cfg = cfg or {}
    try:
        return (f"{cfg['n_layers']}L·{cfg['n_heads']}H·{cfg['emb_dim']}d "
                f"ctx {cfg['context_length']}")
    except KeyError:
        return "?"


def shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def short_error(info: checkpoints.CheckpointInfo) -> str:
    """A broken checkpoint's error without its folder's path (the details pane has it all)."""
    error = info.error or "broken"
    return error.replace(str(info.path) + "/", "").replace(str(info.path), info.name)


def row_cells(info: checkpoints.CheckpointInfo, problem_column: bool = False) -> list[Any]:
    """The table cells of one checkpoint, in :data:`COLUMNS` order (then its error, with
    ``problem_column``: the column the table gets when some checkpoint is broken)."""
    meta = info.meta or {}
    created = local_time(info.created, short=True)
    size = human_bytes(info.size_bytes)
    if not info.ok:
        cells = [info.name, Text("✗ broken", style="red"), "–", "–", "–", "–", "–", "–", created, size]
        return cells + [Text(shorten(short_error(info), 70), style="red")] if problem_column else cells
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    label = dataset.get("label") or dataset.get("source") or "–"
    return [
        info.name,
        model_shape(meta.get("model_config")),
        human_count(meta.get("parameter_count")),
        SOURCE_LABELS.get(str(meta.get("source")), str(meta.get("source") or "?")),
        f"{meta.get('step') or 0:,}",
        human_count(meta.get("tokens_seen") or 0),
        _number(meta.get("best_val_loss")),
        shorten(label, 16),
        created,
        size,
    ] + ([""] if problem_column else [])


def details_renderable(info: checkpoints.CheckpointInfo, note: str = "") -> Group:
    """The details pane for one checkpoint: a title, then a two-column grid (values wrap in their column)."""
    meta = info.meta or {}
    title = Text.assemble((info.name, "bold"), "  ·  ", str(meta.get("source") or "broken"))
    if not info.ok:
        return Group(title, Text(f"✗ {info.error or 'broken'}", style="red"),
                     Text("It cannot be loaded; delete it (d) or repair its folder:"), Text(str(info.path)))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows = _model_rows(meta, info) + _dataset_rows(meta.get("dataset")) + _training_rows(meta.get("train_config"))
    rows += _origin_rows(meta)
    rows.append(("Created", f"{local_time(info.created)} · gpttui {meta.get('gpttui_version', '?')}"))
    if meta.get("run_id"):
        rows.append(("Run", str(meta["run_id"])))
    rows.append(("Path", str(info.path)))
    for key, value in rows:
        grid.add_row(Text(key), Text(value))  # Text: user strings are never read as markup
    extra = [Text(f"! {text}", style="italic") for text in meta.get("notes") or []]
    if note:
        extra.append(Text(note, style="dim"))
    return Group(title, grid, *extra)


Rows = list[tuple[str, str]]


def _model_rows(meta: dict, info: checkpoints.CheckpointInfo) -> Rows:
    cfg = meta.get("model_config") or {}
    layers, heads = cfg.get("n_layers"), cfg.get("n_heads")
    params = meta.get("parameter_count")
    rows = [
        ("Model", f"{layers} layer{'s' * (layers != 1)} · {heads} head{'s' * (heads != 1)} · "
                  f"width {cfg.get('emb_dim')} · context {cfg.get('context_length')}"),
        ("", f"vocab {cfg.get('vocab_size')} · qkv bias {'on' if cfg.get('qkv_bias') else 'off'} · "
             f"{'tied' if cfg.get('tie_weights') else 'separate'} output head · dropout {cfg.get('drop_rate')}"),
        ("Params", (f"{params:,}" if isinstance(params, int) else "?")
         + f" · {meta.get('dtype', '?')} · {human_bytes(info.size_bytes)} on disk"),
        ("Tokenizer", str(meta.get("tokenizer") or "?")),
    ]
    if meta.get("source") == "trained" or meta.get("step"):
        rows.append(("Progress", f"step {meta.get('step') or 0:,} · epoch {meta.get('epoch') or 0} · "
                                 f"{meta.get('tokens_seen') or 0:,} tokens seen"))
        rows.append(("Loss", f"train {_number(meta.get('last_train_loss'))} · val "
                             f"{_number(meta.get('last_val_loss'))} · best val {_number(meta.get('best_val_loss'))}"))
    rows.append(("Optimizer", "saved (training continues with its AdamW state)" if meta.get("has_optimizer")
                 else "none (training continues with a fresh AdamW)"))
    return rows


def _dataset_rows(dataset: Any) -> Rows:
    if not isinstance(dataset, dict) or not dataset:
        return []
    rows = [("Dataset", str(dataset.get("label") or dataset.get("source") or "?"))]
    bits = [f"{dataset['tokens']:,} tokens"] if isinstance(dataset.get("tokens"), int) else []
    for key, name in (("context_length", "context"), ("stride", "stride"), ("batch_size", "batch"),
                      ("train_ratio", "train ratio")):
        if dataset.get(key) is not None:
            bits.append(f"{name} {dataset[key]}")
    if bits:
        rows.append(("", " · ".join(bits)))
    if dataset.get("source") and dataset.get("source") != dataset.get("label"):
        rows.append(("", str(dataset["source"])))
    return rows


def _training_rows(tc: Any) -> Rows:
    if not isinstance(tc, dict) or not tc:
        return []
    lr = f"lr {tc.get('lr')}" + (f" → {tc['min_lr']}" if tc.get("min_lr") is not None else "")
    bits = [lr, f"warmup {tc.get('warmup_steps', 0)}", f"wd {tc.get('weight_decay')}",
            f"clip {tc.get('grad_clip') if tc.get('grad_clip') is not None else 'off'}",
            f"accum {tc.get('grad_accum', 1)}", f"seed {tc.get('seed')}"]
    return [("Training", " · ".join(bits)),
            ("", f"epochs {tc.get('epochs')} · max steps {tc.get('max_steps') or '–'} · eval every "
                 f"{tc.get('eval_freq')} ({tc.get('eval_iter')} batches) · {tc.get('device')} {tc.get('dtype')}")]


def _origin_rows(meta: dict) -> Rows:
    if not meta.get("imported_from"):
        return []
    origin = meta.get("origin") if isinstance(meta.get("origin"), dict) else {}
    what = meta.get("gpt2_size") or ""
    how = []
    if origin.get("revision"):
        how.append(f"revision {str(origin['revision'])[:12]}")
    if meta.get("weights_format"):
        how.append(str(meta["weights_format"]))
    return [("Origin", f"{what + ' from ' if what else ''}{meta['imported_from']}"
             + (f" ({', '.join(how)})" if how else ""))]


# --- the training monitor ----------------------------------------------------------------------------


ENDINGS = {  # a FinishedEvent's reason, as the monitor says it
    "completed": "finished: every planned step done",
    "stopped": "stopped on request (F8, or `gpttui runs stop`)",
    "interrupted": "interrupted: the app or its terminal closed, or a signal",
}


def status_text(snap, width: int | None = None) -> str:
    """The monitor's status lines (markup) for a :class:`RunHistory` snapshot. The numbers come
    first, in lines that fit 78 columns (progress and time; losses; throughput, MFU, lr and gradient
    norm; the run, its peak memory and compile warm-up), so at 80×24 every one shows; a wider monitor
    (``width``) keeps more of them. A run that ended shows how long it took, never a stale ETA."""
    st, last, ev = snap.started, snap.last_step, snap.last_eval
    colour = {"running": "green", "paused": "yellow", "failed": "red", "crashed": "red",
              "finished": "cyan", "stopped": "cyan"}.get(snap.status, "white")
    ended = snap.finished is not None or snap.failed is not None or snap.status in ("crashed", "failed")
    lines = [f"[b {colour}]{snap.status}[/]"]
    if last is not None:
        lines[0] += f" · step {last.step:,}/{last.total_steps:,} ({snap.progress:.0%}) · epoch {last.epoch}"
        if snap.finished is not None:
            lines[0] += f" · took {format_duration(snap.finished.elapsed, NONE)}"
        else:
            lines[0] += f" · elapsed {format_duration(last.elapsed, NONE)}"
            if not ended:
                lines[0] += f" · ETA {format_duration(last.eta, NONE)}"
        loss = f"loss {last.loss:.3f}"
        if ev is not None:
            loss += f" · val {ev.val_loss:.3f} · train {ev.train_loss:.3f}"
        if snap.best_val_loss is not None:
            loss += f" · best val {snap.best_val_loss:.3f}"
        lines.append(loss)
        lines.append(throughput_line(last, width))
    if st is not None:
        lines.append(run_line(st, last, getattr(snap, "compile_seconds", None), width))
    if snap.failed is not None:
        lines.append(f"[red]✗ {escape(snap.failed.message)}[/red]")
    elif snap.finished is not None:
        f = snap.finished
        ending = ENDINGS.get(f.reason, f.reason)
        saved = f"saved as {escape(f.checkpoint)}" if f.checkpoint else "not saved"
        lines.append(f"{escape(ending)} at step {f.step:,} · {saved}")
    elif snap.checkpoints:
        c = snap.checkpoints[-1]
        lines.append(f"saved {escape(c.name)} at step {c.step:,}")
    return "\n".join(lines)


STATUS_WIDTH = 78  # the monitor's columns at 80 (the settings pane hidden while a run trains)


def fit_parts(parts: list[tuple[int, str]], width: int | None = None) -> str:
    """The non-empty texts of ``parts`` ``(rank, text)``, joined with " · " in their order, leaving out
    the highest rank (the least important) until the line fits ``width`` columns (at least
    :data:`STATUS_WIDTH`: a narrower monitor wraps anyway); rank 0 always stays."""
    kept, width = [p for p in parts if p[1]], max(width or 0, STATUS_WIDTH)
    while len(" · ".join(t for _, t in kept)) > width and any(rank for rank, _ in kept):
        kept.remove(max(kept, key=lambda p: p[0]))
    return " · ".join(t for _, t in kept)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def throughput_line(last, width: int | None = None) -> str:
    """Tokens seen, tokens/s, MFU (where the device's peak is known: not on CPU), lr and gradient norm
    on one line; where it would not fit, the tokens seen go first (ctrl+t puts them on the x axis), then
    the gradient norm, then the lr (charted)."""
    mfu = getattr(last, "mfu", None)
    return fit_parts([(4, f"{human_count(last.tokens_seen)} tokens seen"), (0, f"{last.tokens_per_sec:,.0f} tok/s"),
                      (1, f"MFU {mfu:.0%}" if _finite(mfu) else ""), (2, f"lr {last.lr:.2e}"),
                      (3, f"grad norm {last.grad_norm:.2f}")], width)


def warm_up_text(seconds: Any) -> str:
    """A compiled run's warm-up: "compiled in 52 s", or "compiled in 2:05"; "" when not compiled."""
    if not _finite(seconds):
        return ""
    return f"compiled in {seconds:.0f} s" if seconds < 99.5 else f"compiled in {format_duration(seconds)}"


def run_line(st, last, compile_seconds: float | None = None, width: int | None = None) -> str:
    """The run: device and dtype, peak memory (where the trainer measures it), the compile warm-up
    (``compile_seconds``, else the step's own), the parameter count and the run's id, on one line;
    where it would not fit, the parameter count goes first, then the warm-up (a one-off)."""
    peak = getattr(last, "peak_memory", None)
    warm = compile_seconds if compile_seconds is not None else getattr(last, "compile_seconds", None)
    return fit_parts([(0, f"{st.device} {st.dtype}"),
                      (1, f"peak mem {human_bytes(peak)}" if _finite(peak) and peak > 0 else ""),
                      (2, warm_up_text(warm)), (3, f"{human_count(st.n_params)} params"), (0, f"run {st.run_id}")],
                     width)


def context_note(model_context: int, data_context: int, data_set_by_user: bool) -> str:
    """Which context length wins when the model's and the Dataset screen's differ (markup)."""
    if data_context == model_context:
        return f"context {model_context} (model and data)"
    if not data_set_by_user:
        return (f"context {model_context} (the model's); the data's windows follow it "
                f"(the Dataset screen's {data_context} is only its default)")
    if data_context > model_context:
        return (f"[red]✗ context: the Dataset screen's {data_context} (set by you) exceeds the model's "
                f"{model_context}: lower one of them[/red]")
    return (f"[yellow]! context: the model's is {model_context}; the data's windows are {data_context} "
            f"(set by you on the Dataset screen)[/yellow]")


# --- the Dataset screen ------------------------------------------------------------------------------


def dataset_stats(prepared) -> str:
    """The statistics table (markup) of a :class:`PreparedData`."""
    s, st = prepared.stats, prepared.settings
    return "\n".join([
        f"[b]{escape(prepared.corpus.label)}[/b]",
        f"[dim]{'':9} {'total':>9} {'train':>9} {'val':>8}[/dim]",
        f"{'chars':9} {s.characters:>9,} {s.train_characters:>9,} {s.val_characters:>8,}",
        f"{'tokens':9} {s.tokens:>9,} {s.train_tokens:>9,} {s.val_tokens:>8,}",
        f"{'windows':9} {'':>9} {s.train_windows:>9,} {s.val_windows:>8,}",
        f"{'batches':9} {'':>9} {s.train_batches:>9,} {s.val_batches:>8,}",
        f"{'tok/epoch':9} {s.tokens_per_epoch:>9,}",
        f"[dim]{prepared.tokenized.tokenizer.name} · context {st.context_length} · "
        f"stride {st.effective_stride} · batch {st.batch_size}[/dim]",
    ])


def _size_unit(total: float) -> tuple[float, str]:
    """KB below 1 MB, MB up to 10 GB, GB above (10^3 steps, as download tools count)."""
    return (1e9, "GB") if total >= 1e10 else (1e6, "MB") if total >= 1e6 else (1e3, "KB")


def _sizes(done: float, total: float) -> str:
    """``230.1 of 512.0 MB``, or ``230.1 MB`` when the total is unknown (a dataset streamed from the Hub)."""
    div, unit = _size_unit(total or done)
    return f"{done / div:.1f} of {total / div:.1f} {unit}" if total else f"{done / div:.1f} {unit}"


def tokenize_line(report) -> str:
    """Beside the bar: ``Tokenizing 230.1 of 512.0 MB · 12.4 MB/s · 118.2M tokens · ETA 0:23``."""
    phase = {"reading": "Reading", "done": "Tokenized"}.get(report.phase, "Tokenizing")
    div, unit = _size_unit(report.rate)
    parts = [f"{phase} {_sizes(report.done_bytes, report.total_bytes)}", f"{report.rate / div:.1f} {unit}/s",
             f"{human_count(report.tokens)} tokens"]
    if report.eta is not None:
        parts.append(f"ETA {format_duration(report.eta)}")
    return " · ".join(parts)


def cancelled_line(report) -> str:
    """``Tokenizing cancelled at 45% (230.1 of 512.0 MB).`` (how far it got, when it had started)."""
    if report is None or not report.done_bytes:
        return "Tokenizing cancelled before it started."
    at = f"{report.fraction:.0%} ({_sizes(report.done_bytes, report.total_bytes)})" if report.fraction is not None \
        else _sizes(report.done_bytes, 0)
    return f"Tokenizing cancelled at {at}."


def sources_ordered(sources: list) -> list:
    """Skipped inputs first, so that a long list does not hide them; then the others in reading order."""
    return [s for s in sources if s.skipped] + [s for s in sources if not s.skipped]


def sources_title(sources: list) -> str:
    skipped = sum(1 for s in sources if s.skipped)
    return f"Inputs: {len(sources):,}" + (f" ({skipped:,} skipped)" if skipped else "")


SOURCE_NAME_CHARS = 60  # longer names keep their end (the file's name)


def sources_table(sources: list, limit: int, counted: bool = True) -> Table:
    """The inputs of a corpus: name (its notes under it: skipped in red, others in yellow), documents and
    tokens; skipped ones first; at most ``limit`` rows, then how many more. ``counted`` False: names only
    (the counts are not known)."""
    table = Table(box=None, show_header=counted, header_style="dim", padding=(0, 1, 0, 0))
    table.add_column("input", overflow="fold")
    if counted:
        table.add_column("docs", justify="right", no_wrap=True)
        table.add_column("tokens", justify="right", no_wrap=True)
    rows = sources_ordered(sources)
    for s in rows[:limit]:
        name = s.name if len(s.name) <= SOURCE_NAME_CHARS else "…" + s.name[-(SOURCE_NAME_CHARS - 1):]
        cell: Any = Text(name)
        said = s.notes() or ([] if s.skipped or s.documents else ["no text"])  # an empty file: left out
        if said:  # under the name, indented also where a long note wraps
            notes = Table.grid(padding=0)
            notes.add_column(width=2)
            notes.add_column()
            for note in said:
                style = "red" if note.startswith("skipped") else "dim" if note == "no text" else "yellow"
                notes.add_row("", Text(note, style=style))
            cell = Group(cell, notes)
        counts = [] if not counted else ["–", "–"] if s.skipped else [f"{s.documents:,}", f"{s.tokens:,}"]
        table.add_row(cell, *counts)
    hidden = rows[limit:]
    if hidden:
        skipped = sum(1 for s in hidden if s.skipped)
        table.add_row(Text(f"… and {len(hidden):,} more inputs" + (f" ({skipped:,} skipped)" if skipped else ""),
                           style="dim"))
    return table


def dataset_checks(stats) -> str:
    """Problems (red), warnings (yellow), or the green light (markup)."""
    notes = [f"[red]✗ {escape(p)}[/red]" for p in stats.problems]
    notes += [f"[yellow]! {escape(w)}[/yellow]" for w in stats.warnings]
    return "\n".join(notes or ["[green]✓ Ready to train: both loaders have data at these settings.[/green]"])


# --- the Generate screen -----------------------------------------------------------------------------


PROB_BANDS = ((0.6, "green", "≥60%"), (0.3, "yellow", "30–60%"), (0.1, "dark_orange", "10–30%"),
              (0.0, "red", "<10%"))  # (lowest probability, colour, legend label), surest first


def prob_style(p: float | None) -> str:
    """Colour of a token by the probability it had: sure (green) to surprising (red)."""
    if p is None:
        return ""
    return next(colour for low, colour, _ in PROB_BANDS if p >= low)


def prob_legend() -> Text:
    """What the probability colours mean, one coloured square per band (a square and its label never
    part at a line's end)."""
    text = Text("Probability:", style="dim")
    for _, colour, label in PROB_BANDS:
        text.append(" ")
        text.append("■\u00a0", style=colour)
        text.append(label.replace(" ", "\u00a0"))
    return text


INSPECTOR_HINT = "F7 / F8 (Ctrl+← / → outside inputs) pick a token: its probability and the alternatives."


def append_printable(text: Text, pieces: list[tuple[str, bool]], style: str | None = None) -> None:
    """Append model-written text, as :func:`split_controls` pieces: control characters as symbols,
    in bold (so a literal "␛" in the text still reads differently)."""
    for piece, control in pieces:
        text.append(piece, style=(f"{style or ''} bold".strip() if control else style) or None)


def turn_text(turn, colour: bool, selected: int | None) -> Text:
    """One prompt and its continuation; with ``colour`` each token by its probability, ``selected`` reversed.
    Control characters are shown as symbols, never sent raw; a reply that shows nothing says so."""
    text = Text()
    text.append(f"{turn.model} ▸ ", style="dim")
    append_printable(text, split_controls(turn.prompt), "bold")
    escaper = StreamEscaper()
    for i, tok in enumerate(turn.tokens):
        style = prob_style(tok.prob) if colour else ""
        if colour and i == selected:
            style += " reverse"
        append_printable(text, escaper.pieces(tok.text), style or None)
    if turn.result is not None:
        append_printable(text, escaper.flush_pieces())
        r = turn.result
        note = blank_reply_note(turn.text)
        if note:
            text.append(f"\n{note}", style="italic yellow")
        text.append(f"\n{r.new_tokens} tokens · {r.tokens_per_sec:.1f} tok/s · {stop_phrase(r.stopped_by)}",
                    style="dim italic")
    elif turn.error:
        text.append(f"\n✗ {turn.error}", style="red")
    else:
        text.append(" ▌", style="blink")
    return text


def token_details(tok, where: str = "") -> Text:
    """A token (``where``: e.g. "token 7 of 12"), its probability and the alternatives the model
    weighed, compact enough for a few lines under the chat. Texts as Python literals: a newline or
    an ESC token reads '\\n' or '\\x1b'."""
    text = Text()
    if where:
        text.append(f"{where}: ", style="dim")
    text.append(repr(tok.text), style="bold")
    if tok.prob is not None:
        text.append("  ")
        text.append(f"p = {tok.prob:.3f}", style=prob_style(tok.prob))
    if tok.alternatives:
        text.append("\nweighed: ", style="dim")
        for i, alt in enumerate(tok.alternatives):
            marker = "▸" if alt.token_id == tok.token_id else ""
            text.append(" · " if i else "", style="dim")
            text.append(f"{marker}{alt.prob:.3f} {alt.text!r}", style=prob_style(alt.prob))
    return text
