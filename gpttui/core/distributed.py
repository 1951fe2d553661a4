"""Training with several processes: torchrun's DDP, on the engine as it is.

``gpttui train --nproc N ...`` runs torchrun's agent in-process, as ``torchrun --standalone --nproc-per-node N -m
gpttui train ...`` (:func:`torchrun_args`); ``torchrun -m gpttui train ...`` with torchrun's own rendezvous
flags does the same across machines. Each process finds its place in the environment torchrun sets
(:func:`from_env`), joins the process group (:func:`start`: NCCL between GPUs, gloo on the CPU) and trains
its share of every global batch (``BatchLoader.epoch(..., rank, world)``); DDP averages the gradients.

What the trainer does differently with more than one process:
- rank 0 alone writes: the run directory, its events, status and checkpoints; the others report nothing;
- gradients are averaged once per optimizer step (``no_sync`` on the other micro-steps);
- the step's loss, its gradient norm and every rank's control requests (stop, pause, save now) travel in
  one all-reduce (:func:`agree`), so all ranks take the same decisions at the same step and none is left
  waiting in a collective: a stop on any rank stops them all, and a non-finite loss fails them all.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch

from gpttui.core.errors import ConfigError

# Rank 0 evaluates, samples and saves while the others wait in the next step's all-reduce: give that time.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a run: ``rank`` of ``world`` processes, ``local_rank`` on this machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes (events, checkpoints)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = DistInfo()


def from_env(environ: Mapping[str, str] | None = None) -> DistInfo:
    """The rank and world size torchrun gives each process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
    one process when they are not set."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1") or 1)
        rank = int(env.get("RANK", "0") or 0)
        local = int(env.get("LOCAL_RANK", str(rank)) or 0)
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them).") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is not within WORLD_SIZE {world}.")
    return DistInfo(rank, world, local)


def rank_device(info: DistInfo, device: str) -> str:
    """The device this rank trains on: with several processes each takes the GPU of its local rank
    (``auto``, ``cuda`` and any ``cuda:N``: ``CUDA_VISIBLE_DEVICES`` says which GPUs), or the CPU. One
    process keeps ``device`` as given."""
    if not info.active:
        return device
    if device == "auto":
        return f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):  # cuda:N too: CUDA_VISIBLE_DEVICES picks the GPUs
        return f"cuda:{info.local_rank}"
    if device == "cpu":
        return "cpu"
    raise ConfigError(f"Several processes train on CUDA GPUs (NCCL) or the CPU (gloo), not on {device}.")


def start(info: DistInfo, device: str) -> str:
    """Join the process group (NCCL on CUDA, gloo on the CPU) when ``info`` has several processes;
    returns this rank's device name (:func:`rank_device`)."""
    name = rank_device(info, device)
    if not info.active:
        return name
    import torch.distributed as td

    if td.is_initialized():
        return name
    cuda = name.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(name))
    td.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if td.get_world_size() != info.world or td.get_rank() != info.rank:
        raise ConfigError(f"The process group has rank {td.get_rank()} of {td.get_world_size()}, but the "
                          f"environment says {info.rank} of {info.world}.")
    return name


def finish() -> None:
    """Leave the process group (idempotent)."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active:
        import torch.distributed as td

        td.barrier()


def agree(values: torch.Tensor, info: DistInfo) -> list[float]:
    """Every rank's ``values`` summed over the ranks (one all-reduce), read on the host: the step's one
    synchronisation when several processes train."""
    if info.active:
        import torch.distributed as td

        td.all_reduce(values, op=td.ReduceOp.SUM)
    return values.tolist()


def host_values(values: list[float], device: torch.device) -> torch.Tensor:
    """Host numbers (flags) as a float32 tensor on ``device`` without waiting for the device (pinned copy)."""
    t = torch.tensor(values, dtype=torch.float32)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``model`` in DDP when several processes train. Its buffers are constants (the causal mask), so
    they are not broadcast at every forward."""
    if not info.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    import inspect

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:  # newer torch
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def grad_sync(model: torch.nn.Module, sync: bool):
    """The context of one micro-step: DDP averages gradients only on the step's last one (``sync``)."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def torchrun_args(nproc: int, argv: list[str]) -> list[str]:
    """torchrun's arguments that run ``gpttui <argv>`` as ``nproc`` processes on this machine (standalone
    rendezvous on a free local port)."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "gpttui", *argv]


__all__ = ["DistInfo", "SINGLE", "from_env", "rank_device", "start", "finish", "barrier", "agree", "host_values",
           "wrap", "grad_sync", "torchrun_args", "COLLECTIVE_TIMEOUT"]
