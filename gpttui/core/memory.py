"""How much memory training a shape takes, counted part by part, and which batch size fits.

The count follows what PyTorch keeps alive at the peak of a training step (the start of the backward pass,
when every activation saved for it is still held and the logits' gradients are being made):

- weights: fp32 master weights (4 B/param); under bf16/fp16 autocast also the half-precision copy of every
  ``nn.Linear`` weight, which autocast makes in the forward pass and the backward pass keeps (2 B/param);
- gradients: fp32, 4 B/param (they outlive a step under gradient accumulation);
- AdamW: the two moments, 8 B/param (fused AdamW makes no per-step temporaries);
- activations: per layer, what autograd saves for the backward pass (see :func:`activation_bytes`), in
  4 bytes (fp32) or 2 bytes (what autocast makes in bf16/fp16; the residual stream and the LayerNorm inputs
  stay fp32 under autocast);
- logits: (batch x context x vocab) scores in the compute dtype, their fp32 log-softmax kept for the loss
  and its two fp32 gradients, made while the rest is still alive;
- overhead: on CUDA only, kernels loaded on first use, cuBLAS workspaces and the caching allocator's
  fragmentation (the CUDA context itself already is out of ``mem_get_info``'s free figure once torch has
  touched the GPU in this process). CPU and MPS get none.

Attention: ``scaled_dot_product_attention`` on CUDA runs the flash or memory-efficient kernel (fp32 too,
dropout too), which keeps O(batch x heads x context) softmax statistics, never the (context x context)
matrix. The CPU's fused kernel has no dropout: with ``drop_rate > 0`` torch falls back to the math path,
which keeps the attention weights, the dropout's noise and the dropped weights, each batch x heads x
context x context; MPS trains through the math path as well; book mode (:func:`~gpttui.core.model.use_book_math`)
materialises them on every device.

The count is for eager mode: under ``torch.compile`` Inductor fuses the GELU and the dropouts and may recompute,
so the estimate is an upper bound there. ``bench/bench_memory.py`` measures the peak on the CPU against the
estimate (within 12% for the nine shapes it runs, fp32, bf16 and book mode); the CUDA figures follow the same
count and have not been measured on a GPU yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gpttui.core.errors import ConfigError
from gpttui.core.units import format_bytes

if TYPE_CHECKING:
    import torch

    from gpttui.core.config import GPTConfig

_ACT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
CUDA_RESERVE = 512 << 20  # kernels, cuBLAS/cuDNN workspaces: a fixed allowance on CUDA
CUDA_FRAGMENTATION = 0.08  # the caching allocator's slack, as a share of what a step allocates and frees
MAX_BATCH_SEARCH = 1 << 20  # "batch up to N fits" is not searched past this


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate for one training shape on one device, and how it compares with the free memory."""

    device: str  # "cpu", "cuda:0", ...
    dtype: str  # fp32 | bf16 | fp16
    batch_size: int
    context_length: int
    weights: int  # bytes, as the other parts
    grads: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    total: int
    free: int | None  # available_memory(device); None when unknown
    max_batch: int | None  # the largest batch whose total fits `free` (None: free unknown; 0: none fits)

    @property
    def fits(self) -> bool | None:
        """Whether the total fits the free memory; None when the free memory is unknown."""
        return None if self.free is None else self.total <= self.free

    def parts(self) -> str:
        """``weights 0.5 GB, gradients 0.5 GB, AdamW 1.0 GB, activations 2.9 GB, logits 0.2 GB``."""
        items = [("weights", self.weights), ("gradients", self.grads), ("AdamW", self.optimizer),
                 ("activations", self.activations), ("logits", self.logits)]
        if self.overhead:
            items.append(("CUDA overhead", self.overhead))
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in items)

    def verdict(self) -> str:
        """What fits: ``batch up to 24 fits``, ``even batch 1 does not fit``, or ``free memory unknown``."""
        if self.free is None or self.max_batch is None:
            return "free memory unknown"
        if self.max_batch == 0:
            return "even batch 1 does not fit"
        more = "+" if self.max_batch >= MAX_BATCH_SEARCH else ""
        return f"batch up to {self.max_batch:,}{more} fits"

    def summary(self) -> str:
        """A short form for a narrow pane: ``Memory ≈ 1.2 GB (bf16) of 21.8 GB free on cpu; batch up to
        120 fits`` (the parts are left to :meth:`describe`)."""
        if self.free is None:
            return f"Memory ≈ {format_bytes(self.total)} ({self.dtype}) on {self.device}; {self.verdict()}"
        if self.fits is False:
            return (f"✗ Memory ≈ {format_bytes(self.total)} ({self.dtype}), only {format_bytes(self.free)} free on "
                    f"{self.device}: {self.verdict()}")
        return (f"Memory ≈ {format_bytes(self.total)} ({self.dtype}) of {format_bytes(self.free)} free on "
                f"{self.device}; {self.verdict()}")

    def describe(self) -> str:
        """One line: the total against the free memory, the parts, and the batch size that fits."""
        where = f"of {format_bytes(self.free)} free on {self.device}" if self.free is not None else f"on {self.device}"
        head = f"Memory: about {format_bytes(self.total)} {where} ({self.parts()}); "
        if self.fits is False:
            return head + f"does not fit: {self.verdict()}."
        return head + f"{self.verdict()}."


def _linear_params(cfg: "GPTConfig") -> int:
    """Parameters in ``nn.Linear`` layers (the ones autocast copies to half precision), out_head included."""
    e = cfg.emb_dim
    per_layer = 3 * e * e + (3 * e if cfg.qkv_bias else 0) + (e * e + e) + (4 * e * e + 4 * e) + (4 * e * e + e)
    return cfg.n_layers * per_layer + cfg.vocab_size * e


def attention_materialised(cfg: "GPTConfig", device_type: str, book_math: bool = False) -> bool:
    """Whether the (context x context) attention weights are kept for the backward pass: book mode's
    written-out attention; MPS (math path); the CPU when dropout is on (its fused kernel has none)."""
    if book_math or device_type == "mps":
        return True
    return device_type == "cpu" and cfg.drop_rate > 0


def activation_bytes(cfg: "GPTConfig", batch_size: int, context_length: int, dtype: str = "fp32",
                     device_type: str = "cuda", book_math: bool = False) -> int:
    """Bytes autograd keeps for the backward pass of one forward pass, logits excepted.

    Per block, in units of batch x context x emb_dim: the block's fp32 input (kept by LayerNorm 1); the
    LayerNorm output as the q/k/v projections' input (fp32 once, or three half copies: autocast casts it for
    each projection); q, k, v and the attention output (kept by SDPA and the output projection); the fp32
    residual after attention (LayerNorm 2's input); LayerNorm 2's output (the MLP's input); the MLP's 4E
    hidden before and after GELU; with dropout, the masks of the two residual dropouts (a 1-byte mask on
    CUDA, a noise tensor in the activation's dtype on the CPU). Plus the attention matrices when
    :func:`attention_materialised`, the embedding dropout, the final LayerNorm's input and output, and the
    token ids and targets."""
    if dtype not in _ACT_BYTES:
        raise ConfigError(f"dtype must be one of {', '.join(_ACT_BYTES)} (got {dtype!r}).")
    a = _ACT_BYTES[dtype]
    half = a == 2
    n = batch_size * context_length
    e, h, t = cfg.emb_dim, cfg.n_heads, context_length
    dropout = cfg.drop_rate > 0
    mask = (1 if device_type == "cuda" else a) if dropout else 0
    per_block = 4 + (6 if half else 4) + 4 * a + 4 + a + 8 * a + 2 * mask  # x N·E bytes
    stats = 2 * 2 * 4 + 4 * h / e  # LayerNorm mean/rstd, SDPA's log-sum-exp (x N·E bytes)
    blocks = cfg.n_layers * n * e * (per_block + stats)
    if attention_materialised(cfg, device_type, book_math):
        # softmax output; with dropout also its noise and the dropped weights (fp32 softmax under autocast)
        score = 4 if half else a
        per_matrix = score * (3 if dropout else 1) if device_type != "cuda" else score + ((1 + a) if dropout else 0)
        # the backward pass of the last block makes about three more (the gradients flowing through them)
        blocks += (cfg.n_layers * per_matrix + 3 * score) * batch_size * h * t * t
    if book_math:  # written-out LayerNorm and GELU keep their intermediate steps
        blocks += cfg.n_layers * n * e * (2 * 4 * 4 + 4 * 4 * a)
    ends = n * e * ((4 if dropout else 0) + 4 + a) + n * 16
    return int(blocks + ends)


def logits_bytes(cfg: "GPTConfig", batch_size: int, context_length: int, dtype: str = "fp32") -> int:
    """The output layer's share: logits in the compute dtype (held until the step ends), their fp32
    log-softmax (kept by the loss), and the two fp32 gradients the loss's backward makes from them."""
    a = _ACT_BYTES.get(dtype, 4)
    return batch_size * context_length * cfg.vocab_size * (a + 3 * 4)


def _resolve(device: "str | torch.device") -> tuple[str, str, int | None]:
    """(name as shown, device type, free bytes) for a device name such as auto, cpu, cuda, cuda:1, mps."""
    from gpttui.core.resources import available_memory, pick_device

    dev = pick_device(device) if isinstance(device, str) else device
    if dev.type == "cuda" and dev.index is None:
        import torch

        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev), dev.type, available_memory(dev)


def _plan(cfg: "GPTConfig", batch_size: int, context_length: int, dtype: str, device: str, device_type: str,
          free: int | None, book_math: bool) -> MemoryPlan:
    from gpttui.core.model import parameter_count

    params = parameter_count(cfg)
    weights = 4 * params + (2 * _linear_params(cfg) if dtype != "fp32" else 0)
    acts = activation_bytes(cfg, batch_size, context_length, dtype, device_type, book_math)
    logits = logits_bytes(cfg, batch_size, context_length, dtype)
    overhead = CUDA_RESERVE + math.ceil(CUDA_FRAGMENTATION * (acts + logits)) if device_type == "cuda" else 0
    total = weights + 4 * params + 8 * params + acts + logits + overhead
    plan = MemoryPlan(device, dtype, batch_size, context_length, weights, 4 * params, 8 * params, acts, logits,
                      overhead, total, free, None)
    return plan


def _max_batch(cfg: "GPTConfig", context_length: int, dtype: str, device: str, device_type: str, free: int,
               book_math: bool) -> int:
    """The largest batch whose total fits ``free`` (0 when batch 1 does not). The total is affine in the
    batch size, so it is solved for and then nudged by whole batches to absorb rounding."""
    def total(b: int) -> int:
        return _plan(cfg, b, context_length, dtype, device, device_type, free, book_math).total

    fixed, per = total(0), total(1) - total(0)
    if per <= 0:
        return MAX_BATCH_SEARCH
    best = max(0, min(MAX_BATCH_SEARCH, (free - fixed) // per))
    while best > 0 and total(best) > free:
        best -= 1
    while best < MAX_BATCH_SEARCH and total(best + 1) <= free:
        best += 1
    return best


def plan_memory(model_config: "GPTConfig", batch_size: int, context_length: int | None = None, *,
                dtype: str = "fp32", device: "str | torch.device" = "auto", book_math: bool = False,
                free: int | None = None, device_type: str | None = None) -> MemoryPlan:
    """The :class:`MemoryPlan` of training ``model_config`` with batches of ``batch_size`` x
    ``context_length`` (the model's when None) in ``dtype`` on ``device`` (auto, cpu, cuda, cuda:N, mps),
    compared with its free memory (:func:`~gpttui.core.resources.available_memory`, which
    ``GPTTUI_MAX_MEMORY`` caps). ``book_math``: the model runs the book's written-out attention.
    ``device_type`` (cpu, cuda, mps) with ``free`` estimates for a device this machine lacks (no look-up).
    Raises :class:`ConfigError` for an unknown dtype or an unavailable device."""
    if dtype not in _ACT_BYTES:
        raise ConfigError(f"dtype must be one of {', '.join(_ACT_BYTES)} (got {dtype!r}).")
    ctx = model_config.context_length if context_length is None else context_length
    if device_type is None:
        name, device_type, free = _resolve(device)
    else:
        name = str(device)
    plan = _plan(model_config, batch_size, ctx, dtype, name, device_type, free, book_math)
    if free is None:
        return plan
    best = _max_batch(model_config, ctx, dtype, name, device_type, free, book_math)
    return replace(plan, max_batch=best)


def _smaller_batch(batch_size: int, grad_accum: int, target: int) -> tuple[int, int]:
    """A batch size at most ``target`` and the gradient accumulation that keeps the sequences per step
    (exactly when a divisor of them is close to ``target``, else rounded up)."""
    sequences = batch_size * grad_accum
    target = max(1, min(target, batch_size - 1))
    for b in range(target, max(1, target // 2) - 1, -1):
        if sequences % b == 0:
            return b, sequences // b
    return target, math.ceil(sequences / target)


def oom_advice(model_config: "GPTConfig", batch_size: int, context_length: int, *, dtype: str,
               device: "str | torch.device", grad_accum: int = 1, in_use: int = 0) -> str:
    """What to lower after an out-of-memory error, with numbers: the batch size the plan says fits (half
    the current one when the free memory is unknown or the plan thought it fitted), with the
    ``--grad-accum`` that keeps the sequences per step; bf16/fp16 when training in fp32; a shorter context.
    ``in_use``: bytes this run still holds on the device (e.g. ``torch.cuda.memory_allocated()`` while the
    model and optimizer are kept to save them), counted as free since the plan counts them again.
    One sentence; never raises (it runs in an error handler)."""
    try:
        name, device_type, free = _resolve(device)
        free = None if free is None else free + max(0, in_use)
        plan: MemoryPlan | None = plan_memory(model_config, batch_size, context_length, dtype=dtype, device=name,
                                              device_type=device_type, free=free)
    except Exception:  # noqa: BLE001 - advice must not replace the error it advises on
        plan = None
    options = []
    if batch_size > 1:
        target = batch_size // 2
        if plan is not None and plan.max_batch is not None and 0 < plan.max_batch < batch_size:
            target = plan.max_batch
        b, accum = _smaller_batch(batch_size, grad_accum, target)
        sequences = batch_size * grad_accum
        keep = "to keep" if b * accum == sequences else "for about"
        options.append(f"lower the batch size to {b} (with --grad-accum {accum} {keep} {sequences} sequences "
                       "per step)")
    if dtype == "fp32":
        gpu = str(device).startswith("cuda") or str(device) == "auto"
        options.append("use --dtype bf16" + (" (or fp16 on GPUs without bf16)" if gpu else ""))
    if context_length > 1:
        options.append(f"use a shorter context (--context-length {max(1, context_length // 2)})")
    options.append("pick a smaller preset")
    text = ", ".join(options[:-1]) + f", or {options[-1]}" if len(options) > 1 else options[0]
    return text[0].upper() + text[1:] + "."


__all__ = ["MemoryPlan", "plan_memory", "oom_advice", "activation_bytes", "logits_bytes", "attention_materialised"]
