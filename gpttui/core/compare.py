"""Comparing runs by their logs: one summary per run and their val losses side by side at the same steps
(what `gpttui runs compare` prints; the app's Compare screen draws the same histories)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from gpttui.core.history import RunHistory
from gpttui.core.runs import EventFollower, run_status


@dataclass
class RunSummary:
    run_id: str
    name: str
    state: str
    steps: int
    tokens_seen: int
    train_loss: float | None  # at the last evaluation
    val_loss: float | None  # at the last evaluation
    best_val_loss: float | None
    best_val_step: int | None
    last_checkpoint: str | None

    @property
    def val_ppl(self) -> float | None:
        return math.exp(min(self.val_loss, 700.0)) if self.val_loss is not None else None

    def to_dict(self) -> dict:
        return {**asdict(self), "val_ppl": self.val_ppl}


def load_run(run_dir: str | Path) -> tuple[RunSummary, RunHistory]:
    """A run's summary and its history, read from its directory (a damaged log gives what it holds)."""
    run_dir = Path(run_dir)
    history = RunHistory()
    EventFollower(run_dir).feed(history)
    status = run_status(run_dir)
    snap = history.snapshot()
    evals = snap.evals
    val = [v for v in evals.values.get("val_loss", []) if math.isfinite(v)]
    best = min(val) if val else None
    best_step = None
    if best is not None:
        best_step = int(evals.step[list(evals.values["val_loss"]).index(best)])
    last_step = snap.last_step
    return RunSummary(
        run_id=status.run_id, name=status.save_name or status.run_id, state=status.state,
        steps=last_step.step if last_step else status.step, tokens_seen=last_step.tokens_seen if last_step else 0,
        train_loss=_finite(snap.last_eval.train_loss) if snap.last_eval else None,
        val_loss=_finite(snap.last_eval.val_loss) if snap.last_eval else None,
        best_val_loss=best, best_val_step=best_step, last_checkpoint=status.last_checkpoint,
    ), history


def val_loss_table(histories: list[RunHistory], rows: int = 10, x: str = "step") -> tuple[list[int], list[list[float | None]]]:
    """Up to ``rows`` evaluation points (steps, or tokens seen with ``x="tokens"``), spread over the union of
    the runs' evaluations and always including the last; per point, each run's val loss there (``None``
    where that run did not evaluate at that point)."""
    per_run = []
    for history in histories:
        evals = history.snapshot().evals
        xs = evals.tokens if x == "tokens" else evals.step
        per_run.append(dict(zip((int(v) for v in xs), evals.values.get("val_loss", []))))
    points = sorted(set().union(*per_run)) if per_run else []
    if len(points) > rows > 0:
        picks = {round(i * (len(points) - 1) / (rows - 1)) for i in range(rows)} if rows > 1 else {len(points) - 1}
        points = [points[i] for i in sorted(picks)]
    table = [[_finite(run.get(p)) for run in per_run] for p in points]
    return points, table


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


__all__ = ["RunSummary", "load_run", "val_loss_table"]
