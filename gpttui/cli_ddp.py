"""`gpttui train --nproc N`: the same command as N processes under torchrun (DDP, see
:mod:`gpttui.core.distributed`). This process only launches torchrun and waits for it."""

from __future__ import annotations

import argparse
import logging
import os

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
    """Run ``gpttui train ...`` (without --nproc) as ``args.nproc`` torchrun processes; this process is
    torchrun's agent (in-process, so a worker's failure reads as its own message, not a launcher traceback).

    The workers share this terminal: Ctrl+C and a closed SSH link reach each of them, and they finish the
    step, save (rank 0) and stop together; torchrun passes its own signals on, gives them 30 s, and ends
    them all when one fails. Returns the exit code of the first process that failed (0 when none did)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from gpttui.core.distributed import torchrun_args
    from gpttui.core.events import new_run_id

    argv = without_option(list(args.argv or []), "--nproc")
    run_id = args.run_id or new_run_id()
    if not args.run_id:
        argv += ["--run-id", run_id]
    out(f"Training with {args.nproc} processes (torchrun, DDP); run {run_id}.", err=True)
    # torchrun sets one thread per process (and prints a banner) unless told: share this machine's cores.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    for name in list(logging.root.manager.loggerDict):  # the workers speak for themselves
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(torchrun_args(args.nproc, argv)))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code < 0:
            out(f"Rank {rank} was ended by signal {-code}.", err=True)
            return 128 - code
        return code or 1
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


__all__ = ["run_torchrun", "without_option", "under_torchrun"]
