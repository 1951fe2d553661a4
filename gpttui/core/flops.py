"""How hard a run works its device: model FLOPs per token, the device's peak FLOP/s, model FLOPs
utilisation (MFU), peak memory, and a label naming the device. No Textual here.

MFU = flops_per_token x tokens/s / peak FLOP/s, with the peak of the dtype the matmuls run in. It counts
the model's arithmetic only (not the recomputation or extra kernels an implementation adds), so it
compares fairly across implementations (PaLM, appendix B).
"""

from __future__ import annotations

import os
import sys

import torch

from gpttui.core.config import GPTConfig

# Dense peak TFLOP/s (no 2:4 sparsity: datasheets print sparse figures with an asterisk; these are half
# of those) by a fragment of the name torch.cuda.get_device_name gives. Matched in this order, case
# ignored, first hit wins: longer names come before their prefixes (A100 before A10, L40S and L40 before L4).
# fp32: plain FP32 (CUDA cores); tf32/bf16/fp16: tensor cores, FP32 accumulate. None: the GPU has no such
# mode (V100 and T4: no TF32, no bf16). Sources:
# - H100 SXM / PCIe / NVL, H200 SXM / NVL: NVIDIA H100 and H200 Tensor Core GPU datasheets (2023-2024).
# - A100: NVIDIA A100 datasheet (SXM and PCIe share the tensor figures). A10: NVIDIA A10 datasheet.
# - A10G (AWS g5): no NVIDIA datasheet; the figures AWS publishes (as tabled in Baseten's "NVIDIA A10 vs
#   A10G" comparison): about half the A10's tensor rate. Give --peak-tflops if yours differ.
# - L4, L40, L40S: NVIDIA L4 and L40/L40S datasheets. V100 (SXM2, PCIe, V100S): NVIDIA V100 datasheet.
# - T4: NVIDIA T4 datasheet. RTX 4090: NVIDIA Ada Lovelace architecture whitepaper, appendix table.
# - RTX 3090: NVIDIA Ampere GA102 whitepaper, appendix table.
PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},  # SXM5 ("H100 80GB HBM3")
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},  # SXM
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "A10G": {"fp32": 31.52, "tf32": 35.0, "bf16": 70.0, "fp16": 70.0},
    "A10": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0},
    "L40": {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0, "fp16": 181.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
    "V100S": {"fp32": 16.4, "tf32": None, "bf16": None, "fp16": 130.0},
    "V100-PCIE": {"fp32": 14.0, "tf32": None, "bf16": None, "fp16": 112.0},
    "V100": {"fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0},  # SXM2
    "T4": {"fp32": 8.1, "tf32": None, "bf16": None, "fp16": 65.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
    "RTX 3090": {"fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0},
}


def matmul_params(cfg: GPTConfig) -> int:
    """Parameters that take part in a matmul per token: every transformer block (biases and norms too,
    as PaLM and nanoGPT count them), the final norm, and the output head (vocab x width) once.

    Left out: the position embedding and the token embedding, which are table lookups, not matmuls.
    With tied weights the one shared matrix is both the lookup and the head: its matmul (the head) still
    happens, so it is counted once; untied, the head is counted and the separate token table is not.
    Either way the figure is the same for the same shape."""
    e, v = cfg.emb_dim, cfg.vocab_size
    qkv = 3 * e * e + (3 * e if cfg.qkv_bias else 0)
    per_layer = qkv + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e) + 4 * e
    return cfg.n_layers * per_layer + 2 * e + v * e


def flops_per_token(cfg: GPTConfig, context_length: int) -> float:
    """Training FLOPs per token (forward and backward): ``6 N + 12 L E T``.

    ``N`` is :func:`matmul_params` (the parameters without the position embedding; see there for the
    token embedding and tied weights): 2 FLOPs per parameter forward, 4 backward. ``12 L E T`` is
    attention's scores and weighted sum (each 2 E T FLOPs per token and layer forward, x3 with the
    backward), with ``T`` the training context. This is PaLM's appendix B and nanoGPT's ``estimate_mfu``:
    it counts the full T x T scores even though causal attention (and flash attention) needs only half,
    so MFU figures compare with theirs."""
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layers * cfg.emb_dim * context_length


def peak_flops_for_name(name: str, dtype: str, tf32: bool = True) -> float | None:
    """Dense peak FLOP/s of the GPU called ``name`` for ``dtype`` (bf16, fp16, fp32), from
    :data:`PEAK_TFLOPS`; None for a GPU the table does not know or a mode it lacks. fp32 compares
    against the TF32 peak when ``tf32`` (the trainer allows TF32 matmuls on CUDA) and the GPU has it."""
    low = name.lower()
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment.lower() in low:
            value = peaks.get("tf32") if dtype == "fp32" and tf32 else None
            if value is None:
                value = peaks.get(dtype)
            return None if value is None else value * 1e12
    return None


def peak_flops(device: torch.device, dtype: str, override_tflops: float | None = None, *,
               name: str | None = None) -> float | None:
    """The device's peak FLOP/s for ``dtype``: ``override_tflops`` (the --peak-tflops flag) when given,
    else the table's figure for the CUDA GPU's name (or ``name``, which tests pass instead of a GPU).
    None on the CPU and MPS without an override (no table: their peaks vary too much), and for unknown
    GPUs. fp32 on CUDA compares against the TF32 peak while TF32 matmuls are allowed."""
    if override_tflops is not None:
        return float(override_tflops) * 1e12
    device = torch.device(device)
    if name is None:
        if device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
    tf32 = device.type != "cuda" or torch.get_float32_matmul_precision() != "highest"
    return peak_flops_for_name(name, dtype, tf32=tf32)


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation, 0-1 (above 1 means the peak given is wrong); None without a peak."""
    if peak is None or not peak > 0 or not tokens_per_sec >= 0:
        return None
    return flops_per_token * tokens_per_sec / peak


# ---------------------------------------------------------------------------------------------
# Memory: allocator counters, read without synchronising the device
# ---------------------------------------------------------------------------------------------

_mps_peak: dict[str, int] = {}  # MPS has no peak counter: the largest figure seen between resets


def _cpu_peak_rss() -> int | None:
    """The process's peak resident memory in bytes: Linux's ``VmHWM`` (which :func:`reset_peak_memory`
    can reset), else ``getrusage``'s ``ru_maxrss`` (KiB on Linux, bytes on macOS); None on Windows."""
    from gpttui.core.resources import proc_kib

    peak = proc_kib("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def peak_memory(device: torch.device) -> int | None:
    """Most bytes held so far (since the last :func:`reset_peak_memory`). CUDA: the caching allocator's
    ``max_memory_allocated`` (tensors, not the cache around them); MPS: the largest
    ``driver_allocated_memory`` seen at the calls; CPU: the whole process's peak resident memory.
    Reads counters only: no device synchronisation, cheap enough for every logged step."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        try:
            now = int(torch.mps.driver_allocated_memory())
        except (AttributeError, RuntimeError):
            return None
        _mps_peak[str(device)] = peak = max(now, _mps_peak.get(str(device), 0))
        return peak
    if device.type == "cpu":
        return _cpu_peak_rss()
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start :func:`peak_memory` afresh (at the start of a run, after compile warm-up). On Linux the CPU
    peak is reset through ``/proc/self/clear_refs``; where that is refused it keeps the process's peak."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "mps":
        _mps_peak.pop(str(device), None)
    elif device.type == "cpu" and os.path.exists("/proc/self/clear_refs"):
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        except OSError:
            pass


def device_label(device: torch.device) -> str:
    """The device in words for tables and logs: ``NVIDIA H100 80GB HBM3 (cuda:0)``, ``cpu (16 threads)``,
    ``Apple GPU (mps)``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return str(device)


__all__ = ["PEAK_TFLOPS", "matmul_params", "flops_per_token", "peak_flops", "peak_flops_for_name", "mfu",
           "peak_memory", "reset_peak_memory", "device_label"]
