"""Memory checks made before big allocations, so a setting that cannot fit is refused with the numbers
(needed vs free) instead of growing until the machine runs out.

- :func:`pick_device`: the device a name (``auto``, ``cpu``, ``cuda:1``, ``mps``) stands for.
- :func:`available_memory`: bytes free on a device, or None when it cannot be told. CPU: the kernel's
  ``MemAvailable`` (Linux), lowered to what the process's cgroup (a container's limit) still allows;
  CUDA: ``torch.cuda.mem_get_info`` plus what torch's allocator holds unused; MPS: the recommended
  working set minus what the driver holds. ``GPTTUI_MAX_MEMORY`` (e.g. ``8G``) caps the figure, for a
  machine shared with others.
- :func:`check_fits`: ConfigError when a job needs more than that.
- :func:`preflight_training`: the checks to make before a model is built for training (the memory
  plan of :mod:`gpttui.core.memory` against the free memory).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gpttui.core.errors import ConfigError
from gpttui.core.units import format_bytes, format_count

if TYPE_CHECKING:
    from gpttui.core.config import GPTConfig
    from gpttui.core.memory import MemoryPlan

MEMORY_ENV = "GPTTUI_MAX_MEMORY"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in ``"512M"``, ``"8G"``, ``"1.5GiB"``, ``"2TB"`` or ``"1000000"`` (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"{MEMORY_ENV} must be a size such as 8G or 512M (got {text!r}).")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def proc_kib(path: str, key: str) -> int | None:
    """Bytes in a ``key: N kB`` line of a Linux /proc file (``/proc/meminfo``, ``/proc/self/status``);
    None when there is no such file or line."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _meminfo_available() -> int | None:
    return proc_kib("/proc/meminfo", "MemAvailable")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) and anything odd: None


def _inactive_file(stat_path: Path, key: str) -> int:
    """Page cache the kernel can drop (it counts as used in the cgroup's usage)."""
    try:
        for line in stat_path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _cgroup_available() -> int | None:
    """What the memory limits of this process's cgroup and its parents still allow (None: no limit)."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    best: int | None = None
    root = Path("/sys/fs/cgroup")
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # cgroup v2
            base, limit_f, usage_f, stat_key = root, "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):  # cgroup v1
            base, limit_f, usage_f, stat_key = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", \
                "total_inactive_file"
        else:
            continue
        d = base / rel.lstrip("/")
        for _ in range(64):  # the cgroup and its parents up to the mount point
            limit = _read_int(d / limit_f)
            if limit is not None and limit < 1 << 60:  # v1 writes "no limit" as a huge number
                usage = _read_int(d / usage_f) or 0
                usage -= min(usage, _inactive_file(d / "memory.stat", stat_key))
                free = max(0, limit - usage)
                best = free if best is None else min(best, free)
            if d == base or base not in d.parents:
                break
            d = d.parent
    return best


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("MPS was asked for but is not available; use --device cpu or auto.")
    return device


def _device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else pick_device(device)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device`` ("auto", "cpu", "cuda", "cuda:1", "mps", or a
    torch.device), or None when it cannot be told (then no check is made)."""
    dev = _device(device)
    free: int | None = None
    try:
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            free = int(torch.cuda.mem_get_info(index)[0])
            free += max(0, torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
        elif dev.type == "mps":
            mps = torch.mps
            free = max(0, int(mps.recommended_max_memory()) - int(mps.driver_allocated_memory()))
        elif dev.type == "cpu":
            free = _meminfo_available()
            limited = _cgroup_available()
            if limited is not None:
                free = limited if free is None else min(free, limited)
    except (AttributeError, RuntimeError, ValueError, AssertionError):
        free = None
    cap = os.environ.get(MEMORY_ENV, "").strip()
    if cap:
        limit = parse_size(cap)
        free = limit if free is None else min(free, limit)
    return free


def _where(dev: torch.device) -> str:
    if dev.type == "cpu":
        return "RAM"
    return f"memory on {dev}"


def check_fits(needed_bytes: int, device: torch.device | str, what: str, hint: str = "") -> None:
    """Raise :class:`ConfigError` when ``what`` (e.g. "Training this model") needs more than the free
    memory of ``device``; ``hint`` says what to change. No check when the free memory is unknown."""
    dev = _device(device)
    free = available_memory(dev)
    if free is None or needed_bytes <= free:
        return
    capped = f" ({MEMORY_ENV} is set)" if os.environ.get(MEMORY_ENV, "").strip() else ""
    raise ConfigError(f"{what} needs about {format_bytes(needed_bytes)} of {_where(dev)}, but only "
                      f"{format_bytes(free)} is free{capped}" + (f"; {hint}." if hint else "."))


def preflight_training(model_config: "GPTConfig", batch_size: int, device: torch.device | str = "auto",
                       context_length: int | None = None, dtype: str = "fp32",
                       book_math: bool = False) -> "MemoryPlan":
    """The checks to make before a model is built for training: the data's ``context_length`` (the
    model's when None) fits the model's position table, and the training memory (weights, gradients,
    AdamW moments, activations and logits of a ``batch_size`` x context batch in ``dtype``, see
    :mod:`gpttui.core.memory`) fits the free memory of ``device``. Returns the
    :class:`~gpttui.core.memory.MemoryPlan`; raises :class:`ConfigError` with its numbers and the batch
    size that fits."""
    from gpttui.core.memory import plan_memory
    from gpttui.core.model import parameter_count

    model_ctx = model_config.context_length
    ctx = model_ctx if context_length is None else context_length
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"Batch size must be a whole number >= 1 (got {batch_size!r}).")
    if not isinstance(ctx, int) or isinstance(ctx, bool) or ctx < 1:
        raise ConfigError(f"Context length must be a whole number >= 1 (got {ctx!r}).")
    if ctx > model_ctx:
        raise ConfigError(f"The data's context length ({ctx:,}) exceeds the model's ({model_ctx:,} positions); "
                          "lower the context length.")
    dev = _device(device)
    plan = plan_memory(model_config, batch_size, ctx, dtype=dtype, device=dev, book_math=book_math)
    if plan.fits is False:
        capped = f" ({MEMORY_ENV} is set)" if os.environ.get(MEMORY_ENV, "").strip() else ""
        lower = "lower --batch-size or --context-length" if plan.max_batch else "lower --context-length"
        dtype_hint = ", use --dtype bf16" if dtype == "fp32" else ""
        raise ConfigError(
            f"Training {format_count(parameter_count(model_config))} parameters with batch {batch_size} x context "
            f"{ctx:,} in {dtype} needs about {format_bytes(plan.total)} of {_where(dev)} ({plan.parts()}), but only "
            f"{format_bytes(plan.free or 0)} is free{capped}: {plan.verdict()}; {lower}{dtype_hint}, or pick a "
            "smaller preset.")
    return plan


__all__ = ["MEMORY_ENV", "parse_size", "available_memory", "check_fits", "preflight_training"]
