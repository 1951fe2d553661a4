"""The devices a run can train on, as a front end offers them (no Textual here: the CLI could list them too).

- :func:`list_devices`: ``auto`` (saying what it resolves to), ``cpu``, one entry per CUDA GPU with its
  name and memory, and ``mps`` where it exists; nothing that this machine lacks.
- :func:`max_processes` / :func:`check_processes`: how many training processes (torchrun DDP) a device
  takes: one per GPU on CUDA, up to the CPU count on CPU (gloo), one on MPS.

The listing asks torch once per process (:func:`list_devices` caches it): the devices of a machine do
not change while an app runs, and asking CUDA for its GPUs' properties initialises it, which costs time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gpttui.core.errors import ConfigError

GIB = 1 << 30


@dataclass(frozen=True)
class DeviceChoice:
    """One device a run can be given: ``value`` is what ``TrainConfig.device`` / ``--device`` takes,
    ``label`` what a menu shows, ``kind`` the device type it trains on (``auto``'s: what it resolves to)."""

    value: str  # auto | cpu | cuda:N | mps
    label: str
    kind: str  # cpu | cuda | mps
    name: str = ""  # a GPU's name (CUDA)
    total_memory: int | None = None  # a GPU's memory in bytes (CUDA)


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def cuda_device_count() -> int:
    """CUDA GPUs torch sees (0 without CUDA, or when the driver cannot be reached)."""
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except (RuntimeError, AssertionError):  # a CPU build, or a broken driver: no GPU to offer
        return 0


def _cuda_choices() -> list[DeviceChoice]:
    """``cuda:N — <name>, <total GiB>`` for each GPU."""
    import torch

    choices = []
    for index in range(cuda_device_count()):
        props = torch.cuda.get_device_properties(index)
        label = f"cuda:{index} — {props.name}, {props.total_memory / GIB:.0f} GiB"
        choices.append(DeviceChoice(f"cuda:{index}", label, "cuda", props.name, int(props.total_memory)))
    return choices


def _auto_choice(cuda: list[DeviceChoice]) -> DeviceChoice:
    """``auto``, labelled with what :func:`gpttui.core.resources.pick_device` would pick on this machine
    (the current CUDA device, else MPS, else the CPU)."""
    if cuda:
        import torch

        current = f"cuda:{torch.cuda.current_device()}"
        return DeviceChoice("auto", f"auto ({current})", "cuda")
    if _mps_available():
        return DeviceChoice("auto", "auto (mps)", "mps")
    return DeviceChoice("auto", "auto (cpu)", "cpu")


_listed: list[DeviceChoice] | None = None


def list_devices(refresh: bool = False) -> list[DeviceChoice]:
    """The devices of this machine, in menu order: auto, cpu, every CUDA GPU, then mps where available.
    Cached after the first call (``refresh`` asks torch again). A CUDA driver that fails to answer
    leaves the GPUs out (the CPU still trains; ``--device cuda`` then says what is wrong)."""
    global _listed
    if _listed is None or refresh:
        try:
            cuda = _cuda_choices()
            auto = _auto_choice(cuda)
        except (RuntimeError, AssertionError):  # e.g. "CUDA driver initialization failed"
            cuda, auto = [], _auto_choice([])
        choices = [auto, DeviceChoice("cpu", "cpu", "cpu"), *cuda]
        if _mps_available():
            choices.append(DeviceChoice("mps", "mps", "mps"))
        _listed = choices
    return list(_listed)


def device_kind(value: str) -> str:
    """``cpu``, ``cuda`` or ``mps``: the type a device value trains on (``auto``: what it resolves to here)."""
    for choice in list_devices():
        if choice.value == value:
            return choice.kind
    return value.split(":", 1)[0]


def max_processes(device: str) -> int:
    """How many training processes ``device`` takes: one per GPU on CUDA (DDP with NCCL), as many as
    the machine has CPUs on CPU (DDP with gloo; more would only share the same cores), one on MPS
    (no DDP backend)."""
    kind = device_kind(device)
    if kind == "cuda":
        return max(1, cuda_device_count())
    if kind == "cpu":
        return max(1, os.cpu_count() or 1)
    return 1


def check_processes(n: int, device: str) -> None:
    """ConfigError, saying the limit and why, when ``n`` processes cannot train on ``device``."""
    if n < 1:
        raise ConfigError(f"Processes must be at least 1 (got {n}).")
    limit = max_processes(device)
    if n <= limit:
        return
    kind = device_kind(device)
    if kind == "cuda":
        gpus = cuda_device_count()
        why = f"one process per GPU, and this machine has {gpus or 'no'} GPU{'s' * (gpus != 1)}"
    elif kind == "cpu":
        why = f"this machine has {limit} CPUs"
    else:
        why = "MPS trains in one process: DDP has no MPS backend"
    raise ConfigError(f"{n} processes cannot train on {device}: at most {limit} ({why}).")


__all__ = ["DeviceChoice", "list_devices", "cuda_device_count", "device_kind", "max_processes", "check_processes"]
