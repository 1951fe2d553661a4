"""UI responsiveness: event-loop lag while a gpt2-small-shaped model trains on CPU inside the app, and
the cost of the Train screen's chart redraw as a run's history grows.

1. Loop lag. The app runs headless (Textual's pilot, 120x40) on the builtin:pydoc corpus with the GPT-2
   tokenizer (GPTTUI_GPT2_BPE_DIR, set to ../shared/data/gpt2 when unset and that folder exists; the
   bytes tokenizer otherwise, and the output says so), context 256, batch 2. The Train screen's form is
   set to the gpt2-small shape (12 layers, 12 heads, 768 wide); everything else keeps the form's
   defaults (eval every 5 steps on 5 batches, a sample at each eval). A probe task in the app's own
   asyncio loop repeatedly awaits ``asyncio.sleep(0.02)`` and records (actual - expected) delay.
   Baseline: the same probe for the same time on the same screen with nothing training. Then: F6,
   the probe while the model is built (until the Started event), then the probe for --seconds while
   it trains. Reported: p50 / p99 / max lag, training steps done, redraws done (the screen's 0.25 s
   timer, and how many of them found new data) and what those redraws and chart renders cost on the
   UI thread. Target (the issue): p99 < 100 ms while training; < 50 ms with 200 checkpoints on disk
   (``--checkpoints 200 --watch checkpoints --save-every 2``: the Checkpoints screen's poll re-lists them
   after every save, in a thread worker; ``--cycle-screens 2`` adds screen switches, each listing them).

   Torch releases the GIL inside its ops, but the trainer's Python-side per-step work (the loop,
   autograd bookkeeping, optimizer dispatch, event building, RunHistory.feed, the JSONL write) holds
   it, as does every UI tick; with 2 cores, torch's intra-op threads also compete with the UI thread
   for CPU. The lag measured is the sum of both effects.

2. Chart redraw at 1k / 10k / 100k points. A RunHistory is filled with synthetic StepEvents (the
   point count) and EvalEvents (one every 5 steps: 20k for 100k steps); it replaces the session's
   history in a running app on the Train screen. Timed: ``history.snapshot()``, ``screen.redraw()``
   (``_drawn_version`` forced to -1 first; it includes the snapshot and the four ``set_series``), the
   four charts' ``render()`` (plotext's build at their on-screen size), and redraw + one
   ``pilot.pause()`` end to end. Ratios are against the smallest size.

Nothing is written to the real user dirs: GPTTUI_HOME is a temporary directory.

    python bench/bench_ui.py [--seconds 60] [--points 1000,10000,100000] [--reps 20] [--eval-freq N]
        [--checkpoints N] [--watch train|checkpoints] [--save-every SECONDS] [--cycle-screens SECONDS]
        [--preset NAME] [--skip-lag] [--skip-charts]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_BPE = (REPO.parent / "shared" / "data" / "gpt2").resolve()

_TMP_HOME = tempfile.TemporaryDirectory(prefix="gpttui-bench-ui-")
os.environ["GPTTUI_HOME"] = _TMP_HOME.name
os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(_TMP_HOME.name) / "tiktoken-cache")  # no stale/network cache
if not os.environ.get("GPTTUI_GPT2_BPE_DIR") and SHARED_BPE.is_dir():
    os.environ["GPTTUI_GPT2_BPE_DIR"] = str(SHARED_BPE)

sys.path.insert(0, str(REPO / "tests"))
import torch  # noqa: E402
from textual.widgets import Input, Select  # noqa: E402

from gpttui.core.data import DataSettings  # noqa: E402
from gpttui.core.history import RunHistory  # noqa: E402
from gpttui.core.train import EvalEvent, FailedEvent, Started, StepEvent  # noqa: E402
from gpttui.tui.app import create_app  # noqa: E402
from gpttui.tui.messages import TrainingEvent  # noqa: E402
from gpttui.tui.screens.train import TrainScreen  # noqa: E402
from gpttui.tui.widgets import MAX_CHART_POINTS, MetricChart  # noqa: E402
from tui_helpers import Messages, wait_workers  # noqa: E402  (the tests' waiting: message_hook, worker waits)

INTERVAL = 0.02
SIZE = (120, 40)
CHART_IDS = ("#chart-loss", "#chart-ppl", "#chart-lr", "#chart-tps")


# --- instrumentation (class-level wrappers, installed before the app is built, so the screen's
# --- set_interval(0.25, self.redraw) binds the wrapper; the app's code is unchanged)

class Probe:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.redraw_calls = 0
        self.redraw_full = 0  # calls that found a new history version and redrew the charts
        self.redraw_ms: list[float] = []  # full redraws only
        self.set_series_ms: list[float] = []
        self.render_ms: list[float] = []


PROBE = Probe()
_orig_redraw = TrainScreen.redraw
_orig_set_series = MetricChart.set_series
_orig_render = MetricChart.render


def _redraw(self: TrainScreen) -> None:
    before = getattr(self, "_drawn_version", None)
    t0 = time.perf_counter()
    _orig_redraw(self)
    dt = (time.perf_counter() - t0) * 1e3
    PROBE.redraw_calls += 1
    if self._drawn_version != before:
        PROBE.redraw_full += 1
        PROBE.redraw_ms.append(dt)


def _set_series(self: MetricChart, *args, **kwargs) -> None:
    t0 = time.perf_counter()
    _orig_set_series(self, *args, **kwargs)
    PROBE.set_series_ms.append((time.perf_counter() - t0) * 1e3)


def _render(self: MetricChart):
    t0 = time.perf_counter()
    try:
        return _orig_render(self)
    finally:
        PROBE.render_ms.append((time.perf_counter() - t0) * 1e3)


_orig_action_start = TrainScreen.action_start
START_MS: list[float] = []


def _action_start(self: TrainScreen) -> None:  # the F6 binding looks the action up by name
    t0 = time.perf_counter()
    _orig_action_start(self)
    START_MS.append((time.perf_counter() - t0) * 1e3)


TrainScreen.redraw = _redraw
TrainScreen.action_start = _action_start
MetricChart.set_series = _set_series
MetricChart.render = _render


# --- helpers

def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def lag_line(name: str, lags_ms: list[float]) -> str:
    if not lags_ms:
        return f"{name:<22} no samples"
    return (f"{name:<22} n={len(lags_ms):5d}  p50 {pct(lags_ms, 50):7.2f} ms  p99 {pct(lags_ms, 99):8.2f} ms  "
            f"max {max(lags_ms):8.2f} ms  mean {statistics.fmean(lags_ms):7.2f} ms  "
            f">100ms {sum(x > 100 for x in lags_ms):4d}")


def ms_stats(values: list[float]) -> str:
    if not values:
        return "n=0"
    return f"n={len(values)} p50 {pct(values, 50):.2f} ms, p99 {pct(values, 99):.2f} ms, max {max(values):.2f} ms"


SPIKE_MS = 50.0


async def measure_lag(seconds: float | None = None, stop: asyncio.Event | None = None,
                      spikes: list | None = None, context=None) -> list[float]:
    """(actual - expected) delay of asyncio.sleep(INTERVAL), in ms, for ``seconds`` or until ``stop``.
    Lags over SPIKE_MS go to ``spikes`` as (seconds into the phase, lag ms, context())."""
    lags: list[float] = []
    start = time.perf_counter()
    end = start + seconds if seconds is not None else math.inf
    while True:
        t0 = time.perf_counter()
        if t0 >= end or (stop is not None and stop.is_set()):
            return lags
        await asyncio.sleep(INTERVAL)
        t1 = time.perf_counter()
        lag = (t1 - t0 - INTERVAL) * 1e3
        lags.append(lag)
        if spikes is not None and lag > SPIKE_MS:
            spikes.append((t1 - start, lag, context() if context else ""))


def spike_lines(name: str, spikes: list, top: int = 6) -> list[str]:
    if not spikes:
        return [f"  {name}: no lag over {SPIKE_MS:.0f} ms"]
    worst = sorted(spikes, key=lambda s: -s[1])[:top]
    out = [f"  {name}: {len(spikes)} lags over {SPIKE_MS:.0f} ms; worst (time into phase, lag, state just after):"]
    out += [f"    t={t:6.2f} s  {lag:7.1f} ms  {ctx}" for t, lag, ctx in sorted(worst)]
    return out


async def wait_dataset(app, pilot) -> None:
    await pilot.pause()
    await wait_workers(app, ("dataset",))
    await pilot.pause()


def make_checkpoints(n: int) -> float:
    """``n`` tiny models saved as checkpoints (what the listing scans: folders, meta.json, sizes); the
    seconds one synchronous listing of them takes (what the UI thread paid before the listing moved to
    a worker)."""
    from gpttui.core import checkpoints
    from gpttui.core.config import GPTConfig
    from gpttui.core.model import GPTModel

    model = GPTModel(GPTConfig(vocab_size=257, context_length=16, emb_dim=16, n_heads=2, n_layers=1))
    for i in range(n):
        checkpoints.save_checkpoint(f"bench-{i:04d}", model, meta={"tokenizer": "bytes", "source": "trained"},
                                    overwrite=True)
    t0 = time.perf_counter()
    listed = checkpoints.list_checkpoints()
    seconds = time.perf_counter() - t0
    print(f"checkpoints on disk: {len(listed)}; one synchronous list_checkpoints(): {seconds * 1e3:.1f} ms")
    return seconds


async def every(seconds: float, stop: asyncio.Event, action) -> int:
    """``await action(n)`` every ``seconds`` until ``stop``; how many times."""
    n = 0
    while not stop.is_set():
        await action(n)
        n += 1
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass
    return n


def pick_tokenizer() -> tuple[str, str]:
    from gpttui.core.tokenizer import get_tokenizer

    try:
        tok = get_tokenizer("gpt2", download=False)
        return "gpt2", f"gpt2 ({getattr(tok, 'source', '?')})"
    except Exception as exc:  # noqa: BLE001 - a benchmark falls back
        return "bytes", (f"bytes -- FALLBACK: GPT-2 BPE files not found (GPTTUI_GPT2_BPE_DIR="
                         f"{os.environ.get('GPTTUI_GPT2_BPE_DIR')!r}; {type(exc).__name__}); "
                         "vocab 257 makes the output layer far cheaper than gpt2-small's")


# --- part 1: loop lag while training

async def bench_lag(seconds: float, tokenizer: str, eval_freq: int | None = None, preset: str = "gpt2-small",
                    cycle: float | None = None, save_every: float | None = None, watch: str = "train") -> None:
    """Part 1, phase by phase (baseline, model build, training, report). Long on purpose: a benchmark
    reads best top to bottom, each phase next to what it measures."""
    settings = DataSettings(source="builtin:pydoc", tokenizer=tokenizer, context_length=256, batch_size=2)
    app = create_app(settings=settings)
    events = Messages()
    async with app.run_test(size=SIZE, message_hook=events) as pilot:
        await wait_dataset(app, pilot)
        prepared = app.state.prepared
        if prepared is None or not prepared.stats.ok:
            print("dataset not ready:", getattr(getattr(prepared, "stats", None), "problems", None))
            return
        print(f"dataset: {prepared.corpus.label}, {prepared.stats.train_batches:,} train batches of "
              f"{settings.batch_size}x{settings.context_length}")
        if cycle:  # Textual restyles a mode's screen on its first two visits: not what is measured here
            for key in ("f5", "f3", "f4") * 2:
                await pilot.press(key)
                await pilot.pause()
                await wait_workers(app)
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        screen.query_one("#preset", Select).value = preset
        await pilot.pause()
        screen.query_one("#model_context", Input).value = "256"
        screen.query_one("#save_name", Input).value = "bench-ui"
        await pilot.pause()
        cfg = screen.model_config()

        if eval_freq is not None:
            screen.query_one("#eval_freq", Input).value = str(eval_freq)
            await pilot.pause()
        tc = screen.train_config()
        print(f"model: {cfg.n_layers} layers, {cfg.n_heads} heads, {cfg.emb_dim} wide, vocab {cfg.vocab_size}, "
              f"context {cfg.context_length}, drop {cfg.drop_rate}, tie {cfg.tie_weights}; train config: eval "
              f"every {tc.eval_freq} steps (and at step 1) on {tc.eval_iter} train + {tc.eval_iter} val batches, "
              f"{tc.sample_tokens}-token sample at each eval: {tc.sample_at_eval}")
        hist_ref = app.state.session

        def context() -> str:
            h = hist_ref.history
            seen = [m.event for m in events.seen if isinstance(m, TrainingEvent)]
            last = seen[-1].event if seen else "-"
            return f"steps done {len(h.steps)}, evals {len(h.evals)}, last non-step event {last}"

        # baseline: same screen, nothing training
        await pilot.pause(0.5)
        PROBE.reset()
        idle_spikes: list = []
        t0 = time.perf_counter()
        idle = await measure_lag(seconds, spikes=idle_spikes)
        idle_wall = time.perf_counter() - t0
        idle_redraws = (PROBE.redraw_calls, PROBE.redraw_full)

        # start; probe the model build until Started (or a failure)
        PROBE.reset()
        stop_probe = asyncio.Event()
        build_spikes: list = []
        startup_task = asyncio.create_task(measure_lag(stop=stop_probe, spikes=build_spikes, context=context))
        t_press = time.perf_counter()
        await pilot.press("f6")
        if not app.state.session.running:
            stop_probe.set()
            await startup_task
            print("training did not start:", str(screen.query_one("#status").render()))
            return
        first = await events.event(lambda e: isinstance(e, (Started, FailedEvent)), timeout=600)
        t_started = time.perf_counter()
        stop_probe.set()
        startup = await startup_task
        if isinstance(first, FailedEvent):
            print("training failed:", first.message)
            return
        print(f"started: {first.n_params / 1e6:.1f}M params on {first.device}, {first.dtype}; "
              f"F6 -> Started {t_started - t_press:.1f} s")

        # training
        PROBE.reset()
        hist = app.state.session.history
        steps0 = len(hist.steps)
        evals0 = len(hist.evals)
        t0 = time.perf_counter()
        busy_spikes: list = []
        stop_side = asyncio.Event()

        async def switch(n: int) -> None:
            await pilot.press(("f5", "f3", "f4")[n % 3])

        async def save_now(n: int) -> None:
            if n and app.state.session.control is not None:
                app.state.session.control.request_save()  # what F9 does: a CheckpointEvent, then a re-list

        sides = [asyncio.create_task(every(cycle, stop_side, switch)) if cycle else None,
                 asyncio.create_task(every(save_every, stop_side, save_now)) if save_every else None]
        if watch == "checkpoints":
            await pilot.press("f5")
        busy = await measure_lag(seconds, spikes=busy_spikes, context=context)
        busy_wall = time.perf_counter() - t0
        stop_side.set()
        switches, saves = [await t if t else 0 for t in sides]
        snap = hist.snapshot()
        steps = len(snap.steps) - steps0
        evals = len(snap.evals) - evals0
        last = snap.last_step
        busy_probe = (PROBE.redraw_calls, PROBE.redraw_full, list(PROBE.redraw_ms), list(PROBE.set_series_ms),
                      list(PROBE.render_ms))

        t_stop = time.perf_counter()
        app.state.session.stop(save=False)
        if app.state.session.worker is not None:
            await app.state.session.worker.wait()
        await pilot.pause()
        stop_s = time.perf_counter() - t_stop

    print()
    print(f"loop lag (asyncio.sleep({INTERVAL}) overshoot), {seconds:.0f} s each:")
    print(lag_line("idle (baseline)", idle))
    print(lag_line("model build", startup))
    print(lag_line("training", busy))
    for q in (50, 99):
        b, t = pct(idle, q), pct(busy, q)
        print(f"  ratio training/idle p{q}: x{t / b:.1f}" if b > 0 else f"  p{q}: idle {b:.2f} ms")
    print(f"  ratio training/idle max: x{max(busy) / max(idle):.1f}" if idle and max(idle) > 0 else "")
    if watch == "checkpoints":
        print("  measured on the Checkpoints screen (its 1 s poll re-lists the folder after each save)")
    if saves:
        print(f"  saves requested while training: {max(saves - 1, 0)} (each: CheckpointEvent, then a listing)")
    if switches:
        print(f"  screen switches while training (each lists the checkpoints in a worker; a switch itself "
              f"restyles the screen on the UI thread): {switches}")
    for target in (100, 50):
        verdict = "MET" if pct(busy, 99) < target else "NOT MET"
        print(f"  target p99 < {target} ms while training: {verdict} (p99 {pct(busy, 99):.1f} ms)")
    for line in (spike_lines("idle", idle_spikes) + spike_lines("model build", build_spikes)
                 + spike_lines("training", busy_spikes)):
        print(line)
    print(f"F6 handler (action_start, UI thread): {', '.join(f'{x:.1f} ms' for x in START_MS) or '-'}")
    print(f"idle: {idle_wall:.1f} s, redraw timer calls {idle_redraws[0]}, full redraws {idle_redraws[1]}")
    calls, full, redraw_ms, ss_ms, render_ms = busy_probe
    print(f"training: {busy_wall:.1f} s, {steps} optimizer steps ({steps / busy_wall:.2f} steps/s), {evals} evals"
          + (f", last step {last.step + 1}, loss {last.loss:.3f}, {last.tokens_per_sec:.0f} tok/s" if last else ""))
    print(f"  redraw timer calls {calls}, full redraws {full} (new data), chart renders {len(render_ms)}")
    print(f"  UI-thread cost while training: full redraw {ms_stats(redraw_ms)}")
    print(f"                                 set_series   {ms_stats(ss_ms)}")
    print(f"                                 chart render {ms_stats(render_ms)}")
    print(f"stop(save=False) -> worker done: {stop_s:.1f} s")


# --- part 2: chart redraw cost vs history size

def synthetic_history(n_steps: int, eval_every: int = 5) -> RunHistory:
    h = RunHistory()
    h.feed(Started("bench", "", {}, {}, 124_000_000, "cpu", "fp32", n_steps, float(n_steps), 512))
    tokens = 0
    best = math.inf
    for i in range(n_steps):
        tokens += 512
        loss = 3.0 + 8.0 * math.exp(-i / (n_steps / 10 + 1)) + 0.1 * math.sin(i * 0.37)
        lr = 4e-4 * min(1.0, (i + 1) / 100)
        h.feed(StepEvent(i, 1 + i // 10_000, tokens, loss, lr, 1.0 + 0.01 * (i % 17), 200.0 + (i % 13), i * 2.6,
                         n_steps, (n_steps - i) * 2.6))
        if i % eval_every == 0:
            val = loss + 0.2
            best = min(best, val)
            h.feed(EvalEvent(i, 1 + i // 10_000, tokens, loss, val, math.exp(loss), math.exp(val), best))
    return h


async def bench_charts(sizes: list[int], reps: int, tokenizer: str) -> None:
    """Part 2 (see the module docstring). Long on purpose: one timing loop, then its table."""
    histories = {}
    for n in sizes:
        t0 = time.perf_counter()
        histories[n] = synthetic_history(n)
        print(f"built history: {n:,} steps, {len(histories[n].evals):,} evals in {time.perf_counter() - t0:.2f} s")
    settings = DataSettings(source="builtin:pydoc", tokenizer=tokenizer, context_length=256, batch_size=2)
    app = create_app(settings=settings)
    rows = []
    async with app.run_test(size=SIZE) as pilot:
        await wait_dataset(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        charts = [screen.query_one(cid, MetricChart) for cid in CHART_IDS]
        sizes_txt = ", ".join(f"{c.id} {c.size.width}x{c.size.height}" for c in charts)
        print(f"chart sizes at {SIZE[0]}x{SIZE[1]}: {sizes_txt}")
        for n in sizes:
            h = histories[n]
            app.state.session.history = h
            snap_ms, redraw_ms, render_ms, e2e_ms, ss_ms, paint_ms = [], [], [], [], [], []
            # one warm-up round
            screen._drawn_version = -1
            for c in charts:
                c._signature = None
            screen.redraw()
            await pilot.pause()
            for _ in range(reps):
                t0 = time.perf_counter()
                h.snapshot()
                snap_ms.append((time.perf_counter() - t0) * 1e3)

                PROBE.reset()
                screen._drawn_version = -1
                for c in charts:
                    c._signature = None  # measure the full redraw, not the "nothing new" shortcut
                t0 = time.perf_counter()
                screen.redraw()
                redraw_ms.append((time.perf_counter() - t0) * 1e3)
                ss_ms.append(sum(PROBE.set_series_ms))

                t0 = time.perf_counter()
                for c in charts:
                    c.render()
                render_ms.append((time.perf_counter() - t0) * 1e3)

                # end to end: redraw, then until the compositor has re-rendered all four charts (this
                # includes waiting for Textual's next screen update, up to a frame)
                await pilot.pause()
                PROBE.reset()
                screen._drawn_version = -1
                for c in charts:
                    c._signature = None  # measure the full redraw, not the "nothing new" shortcut
                t0 = time.perf_counter()
                screen.redraw()
                while len(PROBE.render_ms) < len(charts) and time.perf_counter() - t0 < 5:
                    await asyncio.sleep(0.001)
                e2e_ms.append((time.perf_counter() - t0) * 1e3)
                paint_ms.append(sum(PROBE.render_ms))
            pts = sum(c.point_count for c in charts)
            rows.append((n, len(h.evals), statistics.median(snap_ms), statistics.median(redraw_ms),
                         statistics.median(ss_ms), statistics.median(render_ms), statistics.median(e2e_ms),
                         max(e2e_ms), statistics.median(paint_ms), pts))
        app.state.session.history = RunHistory()

    print()
    print(f"chart redraw cost ({reps} reps each, medians; 4 charts; 'drawn pts' = points plotted after "
          f"downsampling to <= {MAX_CHART_POINTS} per series):")
    print("  redraw() = snapshot + 4 set_series + status/progress; 4x render = the charts' render() called "
          "directly; to-painted = redraw() until the compositor re-rendered all 4 charts (incl. up to one "
          "frame of scheduling), of which 'in paint' is the charts' render()")
    print(f"{'steps':>8} {'evals':>7} {'snapshot':>10} {'redraw()':>10} {'set_series':>11} {'4x render':>10} "
          f"{'to-painted':>11} {'(max)':>9} {'in paint':>9} {'drawn pts':>10}")
    for n, ne, s, r, ss, rn, e, emax, pm, pts in rows:
        print(f"{n:>8,} {ne:>7,} {s:>8.2f}ms {r:>8.2f}ms {ss:>9.2f}ms {rn:>8.2f}ms {e:>9.2f}ms {emax:>7.1f}ms "
              f"{pm:>7.2f}ms {pts:>10,}")
    base = rows[0]
    for n, ne, s, r, ss, rn, e, emax, pm, pts in rows[1:]:
        print(f"  {n:,} vs {base[0]:,} steps (x{n / base[0]:.0f} data): snapshot x{s / base[2]:.1f}, "
              f"redraw() x{r / base[3]:.1f}, set_series x{ss / base[4]:.1f}, render x{rn / base[5]:.1f}, "
              f"to-painted x{e / base[6]:.1f}")
    big = rows[-1]
    print(f"  at {big[0]:,} steps: redraw() {big[3]:.1f} ms + chart paint {big[8]:.1f} ms on the UI thread for "
          f"every 0.25 s tick that has new data ({(big[3] + big[8]) / 250:.0%} of the tick); the snapshot's "
          f"{big[2]:.1f} ms is spent holding the history lock that the trainer's feed() waits on")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="lag measurement time, idle and training each")
    parser.add_argument("--points", default="1000,10000,100000", help="history sizes (steps) for the chart timing")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--eval-freq", type=int, default=None,
                        help="override the form's 'Eval every' (default: keep the form's 5; a large value "
                             "measures plain training steps without evals and samples)")
    parser.add_argument("--checkpoints", type=int, default=0,
                        help="save this many tiny checkpoints first (the listing scans them all)")
    parser.add_argument("--cycle-screens", type=float, default=None, metavar="SECONDS",
                        help="while training, switch Checkpoints/Train/Generate every SECONDS (each resume "
                             "lists the checkpoints)")
    parser.add_argument("--save-every", type=float, default=None, metavar="SECONDS",
                        help="while training, ask for a save every SECONDS (as F9 does)")
    parser.add_argument("--watch", choices=("train", "checkpoints"), default="train",
                        help="the screen shown while training is measured")
    parser.add_argument("--preset", default="gpt2-small", help="the model trained (a Train-screen preset)")
    parser.add_argument("--skip-lag", action="store_true")
    parser.add_argument("--skip-charts", action="store_true")
    args = parser.parse_args()

    tokenizer, tok_label = pick_tokenizer()
    try:
        load = os.getloadavg()
        load_txt = f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        load_txt = ""
    import textual

    print(f"python {sys.version.split()[0]}, textual {textual.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, {load_txt}")
    print(f"tokenizer: {tok_label}; GPTTUI_HOME={_TMP_HOME.name}")
    if args.checkpoints:
        make_checkpoints(args.checkpoints)
    if not args.skip_lag:
        await bench_lag(args.seconds, tokenizer, args.eval_freq, args.preset, args.cycle_screens, args.save_every,
                        args.watch)
        print()
    if not args.skip_charts:
        await bench_charts([int(x) for x in args.points.split(",") if x.strip()], args.reps, tokenizer)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        _TMP_HOME.cleanup()
