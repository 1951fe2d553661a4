"""Batches onto the device one step ahead: while the device computes step n, the inputs of step n+1 are
already on their way (pinned host memory, non-blocking copies), so the host never waits for a copy."""

from __future__ import annotations

from typing import Iterator

import torch

Batch = tuple[int, int, torch.Tensor, torch.Tensor]  # (epoch, batch index, inputs, targets)


def _to_device(item: Batch, device: torch.device) -> Batch:
    epoch, b, x, y = item
    if device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    return epoch, b, x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def prefetch(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    """``batches`` with each one copied to ``device`` when the one before it is handed out. On the CPU
    there is nothing to copy and the batches pass through as they are."""
    if device.type == "cpu":
        yield from batches
        return
    ahead = None
    for item in batches:
        item = _to_device(item, device)
        if ahead is not None:
            yield ahead
        ahead = item
    if ahead is not None:
        yield ahead


__all__ = ["prefetch", "Batch"]
