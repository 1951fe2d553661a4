"""``gpttui runs``: list, show, follow and steer runs through their run directories (any process's)."""

from __future__ import annotations

import argparse
import json
import re


from gpttui.cli_output import EXIT_ERROR, EventPrinter, Out

# --- runs ------------------------------------------------------------------------------------------

def _fmt_run(r) -> str:
    total = f"/{r.total_steps}" if r.total_steps else ""
    best = f"{r.best_val_loss:.3f}" if isinstance(r.best_val_loss, (int, float)) else "-"
    return (f"{r.run_id:22} {r.state:9} {f'{r.step}{total}':>13} {best:>8}  {str(r.device or '-'):6} "
            f"{str(r.save_name or '-'):24} {r.last_checkpoint or '-'}")


def cmd_runs_list(args: argparse.Namespace) -> int:
    from gpttui.core.runs import list_runs

    out = Out()
    runs = list_runs()
    if args.json:
        out(json.dumps([r.to_dict() for r in runs]))
        return 0
    if not runs:
        out("No runs yet. Start one with `gpttui train` (add --detach to run it in the background).")
        return 0
    out(f"{'RUN':22} {'STATE':9} {'STEP':>13} {'BEST VAL':>8}  {'DEVICE':6} {'SAVES AS':24} LAST CHECKPOINT")
    for r in runs:
        out(_fmt_run(r))
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from gpttui.core.runs import find_run, run_status

    status = run_status(find_run(args.run_id))
    out = Out()
    if args.json:
        out(json.dumps(status.to_dict()))
        return 0
    for key, value in status.to_dict().items():
        if value is not None:
            out(f"{key:16} {value}")
    if status.state == "crashed":
        where = f"its last checkpoint is {status.last_checkpoint!r}" if status.last_checkpoint else "it saved no checkpoint"
        out(f"The run crashed ({status.message}); {where}.")
    return 0


def cmd_runs_logs(args: argparse.Namespace) -> int:
    """The run's events, printed as `gpttui train` prints them; with -f, followed until the run ends."""
    import time

    from gpttui.core.history import typed_event
    from gpttui.core.runs import EventFollower, find_run, run_status

    run_dir = find_run(args.run_id)
    out = Out()
    printer = EventPrinter(out, as_json=args.json)
    follower = EventFollower(run_dir)
    last_status = 0.0
    while True:
        ended = False
        for record in follower.read_new():
            if args.json:
                out(json.dumps(record))
            else:
                event = typed_event(record)
                if event is not None:
                    printer(event)
                    if record.get("event") == "step" and time.monotonic() - last_status > 5:
                        last_status = time.monotonic()
                        out(f"[step {event.step}/{event.total_steps}, loss {event.loss:.3f}]")
            ended = ended or record.get("event") in ("finished", "failed")
        if not args.follow or ended or not out.alive:
            return 0
        status = run_status(run_dir)
        if not status.live:
            out(f"[run {status.run_id} is {status.state}"
                + (f": {status.message}" if status.message else "")
                + (f"; last checkpoint {status.last_checkpoint!r}]" if status.last_checkpoint else "]"), err=True)
            return 0 if status.state in ("finished", "stopped") else 1
        time.sleep(0.25)


def cmd_runs_command(args: argparse.Namespace) -> int:
    from gpttui.core.runs import find_run, run_status, send_command

    run_dir = find_run(args.run_id)
    status = run_status(run_dir)
    out = Out()
    if not status.live:
        out(f"error: run {status.run_id} is {status.state}; nothing to {args.run_command}.", err=True)
        return EXIT_ERROR
    send_command(run_dir, args.run_command)
    out(f"Asked run {status.run_id} to {args.run_command}; it acts between two optimizer steps.")
    return 0


def _num(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def cmd_runs_compare(args: argparse.Namespace) -> int:
    """Runs side by side: a summary row per run, then their val losses at the same steps (or tokens)."""
    from gpttui.core.compare import load_run, val_loss_table
    from gpttui.core.runs import find_run

    out = Out()
    dirs = []
    for run_id in args.run_ids:
        run_dir = find_run(run_id)
        if run_dir not in dirs:
            dirs.append(run_dir)
    loaded = [load_run(d) for d in dirs]
    summaries = [s for s, _ in loaded]
    points, table = val_loss_table([h for _, h in loaded], rows=args.rows, x=args.x)
    if args.json:
        out(json.dumps({"runs": [s.to_dict() for s in summaries], "x": args.x,
                        "val_loss": [{"x": p, "runs": row} for p, row in zip(points, table)]}))
        return 0
    width = max(12, *(len(s.name) for s in summaries))
    out(f"{'NAME':{width}} {'RUN':22} {'STATE':9} {'STEPS':>8} {'TOKENS':>11} {'TRAIN':>7} {'VAL':>7} "
        f"{'VAL PPL':>9} {'BEST VAL':>14}")
    for s in summaries:
        best = f"{_num(s.best_val_loss)} @{s.best_val_step}" if s.best_val_loss is not None else "-"
        out(f"{s.name:{width}} {s.run_id:22} {s.state:9} {s.steps:>8,} {s.tokens_seen:>11,} {_num(s.train_loss):>7} "
            f"{_num(s.val_loss):>7} {_num(s.val_ppl, '.1f'):>9} {best:>14}")
    if not points:
        out("\nNo evaluations yet: nothing to set side by side.")
        return 0
    label = "tokens seen" if args.x == "tokens" else "step"
    out(f"\nval loss by {label}:")
    cols = [max(8, len(s.name)) for s in summaries]
    out(f"{label:>12}  " + "  ".join(f"{s.name:>{w}}" for s, w in zip(summaries, cols)))
    for point, row in zip(points, table):
        out(f"{point:>12,}  " + "  ".join(f"{_num(v):>{w}}" for v, w in zip(row, cols)))
    if args.plot:
        _plot_val_loss(out, summaries, [h for _, h in loaded], args.x)
    return 0


def _plot_val_loss(out: Out, summaries, histories, x: str) -> None:
    """The val-loss curves overlaid, drawn by plotext in the terminal (plain characters when piped)."""
    import shutil
    import sys

    import plotext as plt

    plt.clear_figure()
    columns, lines = shutil.get_terminal_size((100, 30))
    plt.plotsize(min(columns, 140), max(12, min(lines - 4, 30)))
    coloured = sys.stdout.isatty()
    if not coloured:  # piped: no colours, so one character per run tells the curves apart
        plt.theme("clear")
    for i, (summary, history) in enumerate(zip(summaries, histories)):
        evals = history.snapshot().evals
        xs = list(evals.tokens if x == "tokens" else evals.step)
        ys = list(evals.values.get("val_loss", []))
        if xs:
            plt.plot(xs, ys, label=summary.name, marker="braille" if coloured else PLAIN_MARKERS[i % len(PLAIN_MARKERS)])
    plt.title("val loss")
    plt.xlabel("tokens seen" if x == "tokens" else "step")
    chart = plt.build()
    out("")
    out(chart if coloured else re.sub(r"\x1b\[[0-9;]*m", "", chart))


PLAIN_MARKERS = ("*", "+", "o", "x", "#", "@", "%", "&")


def add_runs_parser(sub) -> None:
    """`gpttui runs ...`."""
    p = sub.add_parser("runs", help="list, follow and steer training runs (also ones in the background)")
    rsub = p.add_subparsers(dest="runs_command", required=True)
    q = rsub.add_parser("list", help="every run, live ones first")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_runs_list)
    q = rsub.add_parser("show", help="a run's status (crashed runs: their last checkpoint)")
    q.add_argument("run_id", metavar="ID")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_runs_show)
    for name, help_text in (("logs", "a run's events"), ("attach", "follow a run's events until it ends")):
        q = rsub.add_parser(name, help=help_text)
        q.add_argument("run_id", metavar="ID")
        q.add_argument("--json", action="store_true", help="the events as JSON lines")
        if name == "logs":
            q.add_argument("-f", "--follow", action="store_true", help="keep following until the run ends")
        else:
            q.set_defaults(follow=True)
        q.set_defaults(func=cmd_runs_logs)
    q = rsub.add_parser("compare", help="runs side by side: summary, and val loss at the same steps")
    q.add_argument("run_ids", metavar="ID", nargs="+", help="run ids (a unique prefix is enough)")
    q.add_argument("--x", choices=["step", "tokens"], default="step", help="line runs up by step (default) or tokens seen")
    q.add_argument("--rows", type=int, default=10, help="evaluation points to show (default 10)")
    q.add_argument("--plot", action="store_true", help="also draw the val-loss curves in the terminal")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_runs_compare)
    for command in ("pause", "resume", "stop", "save"):
        q = rsub.add_parser(command, help=f"ask a live run to {command}" + (" now" if command == "save" else ""))
        q.add_argument("run_id", metavar="ID")
        q.set_defaults(func=cmd_runs_command, run_command=command)
