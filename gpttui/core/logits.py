"""Logits processors and the sampler of text generation: pure functions on (..., vocab) logits.

Generation applies them in this order: :func:`apply_repetition_penalty`, :func:`apply_temperature`,
:func:`apply_top_k`, :func:`apply_top_p`, then draws with :func:`sample_from`. Each returns a new
tensor; none touches its input.
"""

from __future__ import annotations

from typing import Sequence

import torch

from gpttui.core.errors import ConfigError


def apply_repetition_penalty(logits: torch.Tensor, token_ids: torch.Tensor | Sequence[int],
                             penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: for every token in ``token_ids`` (prompt and output so far), a
    positive logit is divided by ``penalty``, a negative one multiplied by it. ``token_ids`` is a list,
    or a tensor with the leading shape of ``logits`` plus one dimension of ids (one row per batch row)."""
    if penalty <= 0:
        raise ConfigError(f"repetition_penalty must be > 0 (got {penalty!r}).")
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)
    if penalty == 1.0 or ids.numel() == 0:
        return logits.clone()
    if ids.dim() == 1 and logits.dim() > 1:
        ids = ids.expand(*logits.shape[:-1], ids.shape[0])
    present = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    present.scatter_(-1, ids, True)
    return penalize(logits, present, penalty)


def penalize(logits: torch.Tensor, present: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty on the logits where ``present`` (a bool mask of their shape) is set."""
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, scaled, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``: above 1 flattens the distribution, below 1 sharpens it."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0 to scale logits (got {temperature!r}); "
                          "temperature 0 means greedy decoding, the argmax of the logits.")
    return logits / temperature


def apply_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (and any tied with the k-th, as the book does),
    set the others to -inf."""
    if k is None or k >= logits.shape[-1]:
        return logits.clone()
    if k < 1:
        raise ConfigError(f"top_k must be >= 1 (got {k!r}).")
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities add up to at
    least ``p`` (always at least the most likely one), set the others to -inf."""
    if p is None or p >= 1.0:
        return logits.clone()
    if not p > 0:
        raise ConfigError(f"top_p must be in (0, 1] (got {p!r}).")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # probability mass of the tokens ranked above
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_from(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of ``probs`` (batch, vocab), by inverse transform sampling with one uniform
    number per row from ``generator`` (a CPU generator; computed on the CPU in float64)."""
    cdf = probs.detach().cpu().double().cumsum(-1)  # float64 on the CPU: MPS has no float64
    u = torch.rand((cdf.shape[0], 1), generator=generator, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


__all__ = ["apply_repetition_penalty", "apply_temperature", "apply_top_k", "apply_top_p", "penalize", "sample_from"]
