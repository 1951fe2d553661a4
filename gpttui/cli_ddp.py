"""`gpttui train --nproc N`: the same command as N processes under torchrun (DDP, see
:mod:`gpttui.core.distributed`). This process only launches torchrun and waits for it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess

from gpttui.cli_output import Out


def without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag N`` or ``--flag=N``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def under_torchrun() -> bool:
    """Whether this process is one of torchrun's (it sets WORLD_SIZE for each)."""
    return "WORLD_SIZE" in os.environ


def run_torchrun(args: argparse.Namespace, out: Out) -> int:
    """Start ``gpttui train ...`` (without --nproc) as ``args.nproc`` torchrun processes and wait.

    They share this terminal: Ctrl+C and a closed SSH link reach torchrun and every worker, which finish
    the step, save (rank 0) and stop together; torchrun ends them all when one fails. A SIGTERM sent to
    this launcher alone is passed on to torchrun."""
    from gpttui.core.distributed import torchrun_command
    from gpttui.core.events import new_run_id

    argv = without_option(list(args.argv or []), "--nproc")
    run_id = args.run_id or new_run_id()
    if not args.run_id:
        argv += ["--run-id", run_id]
    out(f"Training with {args.nproc} processes (torchrun, DDP); run {run_id}.", err=True)
    env = dict(os.environ)
    # torchrun sets one thread per process (and prints a banner) unless told: share this machine's cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    child = subprocess.Popen(torchrun_command(args.nproc, argv), env=env)

    def forward(signum, frame):
        if signum != signal.SIGINT:  # the terminal's Ctrl+C has reached torchrun already
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, forward)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:  # pragma: no cover - the handler above replaces the default
            continue


__all__ = ["run_torchrun", "without_option", "under_torchrun"]
