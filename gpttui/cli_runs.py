"""``gpttui runs``: list, show, follow and steer runs through their run directories (any process's)."""

from __future__ import annotations

import argparse
import json


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
    for command in ("pause", "resume", "stop", "save"):
        q = rsub.add_parser(command, help=f"ask a live run to {command}" + (" now" if command == "save" else ""))
        q.add_argument("run_id", metavar="ID")
        q.set_defaults(func=cmd_runs_command, run_command=command)
