"""Training precision and determinism: which dtype a run really uses on its device, the autocast context
and loss scaler that go with it, deterministic kernels, and where a resumed run repeats itself bit for bit.

The trainer calls these once per run (:func:`resolve_dtype`, :func:`apply_determinism`) and around every
forward/backward pass (:func:`autocast`, :func:`sdpa_context`). No Textual here.

- fp32: plain float32 (the trainer allows TF32 matmuls on CUDA, see :mod:`gpttui.core.flops`).
- bf16: ``torch.autocast`` to bfloat16; needs compute capability 8.0 (Ampere) on CUDA, else fp16.
- fp16: ``torch.autocast`` to float16 with a :class:`torch.amp.GradScaler`, for GPUs without bf16
  (T4, V100). On the CPU it works (autocast and the scaler both support it) but is slow: for learning only.
"""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from gpttui.core.config import DTYPES
from gpttui.core.errors import ConfigError

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2): NVIDIA's documented values.
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r}).")


def cuda_has_bf16(device: torch.device) -> bool:
    """True when the CUDA device computes bf16 natively (compute capability 8.0 or newer).

    ``torch.cuda.is_bf16_supported()`` alone is not enough: newer torch answers True on a V100 (7.0),
    where bf16 is emulated and far slower than fp16, so the capability decides."""
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.cuda.is_bf16_supported()


def resolve_dtype(dtype: str, device: torch.device) -> tuple[str, str | None]:
    """The dtype a run on ``device`` will really use for the requested ``dtype``, and a note for the user
    (None when nothing changed or needs saying).

    bf16 on a CUDA GPU without bf16 falls back to fp16 with loss scaling and names the GPU. fp16 on the
    CPU stays fp16 (autocast and GradScaler support it) with a note that it is slow there. fp32 never
    changes. On Apple GPUs (MPS) fp16 becomes bf16 (see :func:`_mps_dtype`). An unknown name is a
    :class:`ConfigError`."""
    _check_dtype(dtype)
    device = torch.device(device)
    if dtype == "bf16" and device.type == "cuda" and not cuda_has_bf16(device):
        name = torch.cuda.get_device_name(device)
        return "fp16", f"{name} has no bf16: training in fp16 with loss scaling instead."
    if dtype == "fp16" and device.type == "cpu":
        return "fp16", ("fp16 on the CPU is slow (CPUs have no fast fp16 arithmetic) and is for learning "
                        "only; use bf16 or fp32 for real runs.")
    if device.type == "mps" and dtype != "fp32":
        return _mps_dtype(dtype)
    return dtype, None


def _mps_dtype(dtype: str) -> tuple[str, str | None]:
    """bf16 or fp16 on an Apple GPU. Loss scaling there has had bugs until recent torch (no float64 for
    the scale, fp16 gradients zeroed by the unscale kernel, the fused AdamW ignoring a skipped step:
    pytorch PRs 144022, 184286, 186360), so fp16 trains in bf16 instead, which needs no scaler; bf16 needs
    macOS 14, else fp32."""
    try:
        has_bf16 = bool(torch.backends.mps.is_macos_or_newer(14, 0))
    except (AttributeError, RuntimeError):  # no MPS backend in this build, or an old torch
        has_bf16 = False
    if has_bf16:
        if dtype == "bf16":
            return "bf16", None
        return "bf16", "fp16 loss scaling is unreliable on Apple GPUs (MPS): training in bf16 instead."
    return "fp32", f"{dtype} on Apple GPUs (MPS) needs macOS 14 or newer here: training in fp32 instead."


def autocast(device: torch.device, dtype: str) -> ContextManager:
    """The context a forward pass runs in: ``torch.autocast`` to bf16/fp16 on the device's type, or a
    no-op for fp32 (weights, optimizer state and gradients stay float32 in every case)."""
    _check_dtype(dtype)
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=TORCH_DTYPES[dtype])


def grad_scaler(dtype: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (its small range loses small gradients without one), None otherwise.

    The scaler multiplies the loss before ``backward``, unscales the gradients before clipping
    (``scaler.unscale_``), skips the optimizer step when a gradient is inf/NaN and lowers the scale
    (``scaler.step`` / ``scaler.update``). Its ``state_dict`` belongs in the trainer state."""
    _check_dtype(dtype)
    if dtype != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def apply_determinism(enabled: bool, device: torch.device) -> str | None:
    """Deterministic kernels on (``enabled``) or back to torch's defaults; a note for the user, or None.

    On: ``torch.use_deterministic_algorithms(True)`` (strict: an op without a deterministic kernel
    raises instead of running), cuDNN deterministic and not benchmarking, and ``CUBLAS_WORKSPACE_CONFIG``
    set to ``:4096:8`` unless it already holds one of NVIDIA's deterministic values.

    cuBLAS reads that variable once, when torch first sizes its workspace (the first matmul on the GPU in
    this process): if a matmul already ran on the GPU before this call (an earlier run in the same app),
    the setting comes too late for this process: torch's own check reads the variable at every call, so
    it does not raise, but cuBLAS may keep its earlier workspace. Call this before the model goes to the
    GPU: memory already held there by torch's allocator is taken as the sign that cuBLAS may have
    started, and the note then says to start the run in a fresh process (``gpttui train
    --deterministic`` from the CLI is one).

    Attention (SDPA) on CUDA, from torch's ``sdp_utils.cpp`` / ``attention_backward.cu`` (torch >= 2.6,
    what gpttui needs): the forward passes of the flash, memory-efficient and math backends are
    deterministic; with strict ``use_deterministic_algorithms(True)`` the flash and memory-efficient
    backward passes switch to their deterministic variants (with ``warn_only=True`` they only warn and stay
    non-deterministic), and the cuDNN backend is never chosen. So the math backend need not be forced:
    :func:`sdpa_context` only keeps cuDNN attention out explicitly.

    Losses must take flattened (N, vocab) logits, as gpttui's do: ``cross_entropy`` on 3-D logits goes
    through ``nll_loss2d``, whose CUDA forward has no deterministic kernel and raises in strict mode.

    Off: the same switches back to torch's defaults (deterministic algorithms off, cuDNN not forced), so
    a later non-deterministic run in the same process is not slowed; the environment variable stays.
    """
    device = torch.device(device)
    if not enabled:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        return None
    late = device.type == "cuda" and torch.cuda.is_initialized() and torch.cuda.memory_reserved(device) > 0
    if os.environ.get(CUBLAS_ENV) not in CUBLAS_DETERMINISTIC:
        os.environ[CUBLAS_ENV] = CUBLAS_DETERMINISTIC[0]
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if device.type == "cpu":
        return "deterministic kernels: the CPU's already are; a resumed run repeats this one bit for bit."
    note = "deterministic kernels: a resumed run repeats this one bit for bit; slower."
    if device.type == "mps":
        note = "deterministic kernels where torch has them; on MPS a resumed run is not guaranteed to repeat bit for bit."
    elif late:
        note += (" CUDA was already in use in this process, so cuBLAS may not honour "
                 f"{CUBLAS_ENV}: start the run in a new process for a bit-exact resume.")
    return note


def sdpa_context(deterministic: bool, device: torch.device) -> ContextManager:
    """The context the trainer wraps forward and backward in: on CUDA with ``deterministic``, attention
    restricted to the backends that have a deterministic backward (flash, memory-efficient, math; not
    cuDNN), else a no-op. With strict deterministic algorithms torch already skips cuDNN attention; this
    keeps it out even if a caller turned on ``warn_only``. The backward pass runs the kernels its forward
    chose, so wrapping the forward pass is what matters; under ``torch.compile`` the backend is fixed when
    the graph is traced, at the first call, which the wrapping covers too."""
    if not deterministic or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def exactness_note(device: torch.device, deterministic: bool) -> str:
    """Where a resumed run repeats the original bit for bit, in plain words for this device."""
    kind = torch.device(device).type
    if kind == "cpu":
        return "Resume is bit-exact on the CPU: a resumed run repeats the original to the last bit."
    if kind == "cuda":
        if deterministic:
            return ("Resume is bit-exact on this GPU with --deterministic (same GPU model, torch and CUDA "
                    "versions, world size); slower kernels.")
        return ("Resume on a GPU is close but not bit-exact: some CUDA kernels sum in a varying order. "
                "Train with --deterministic for a bit-exact resume (slower).")
    if kind == "mps":
        return "Resume on Apple GPUs (MPS) is close but not guaranteed to be bit-exact."
    return f"Resume on {kind} is not guaranteed to be bit-exact."


__all__ = ["TORCH_DTYPES", "CUBLAS_ENV", "resolve_dtype", "autocast", "grad_scaler", "apply_determinism",
           "sdpa_context", "exactness_note", "cuda_has_bf16"]
