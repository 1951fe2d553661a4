"""Human-readable durations and sizes, shared by the CLI and the app."""

from __future__ import annotations

import math


def format_duration(seconds: float | None, unknown: str = "?") -> str:
    """``m:ss`` or ``h:mm:ss``."""
    if seconds is None or not math.isfinite(seconds):
        return unknown
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_bytes(n: float) -> str:
    """``512 B``, ``1.5 MB`` ... (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_count(n: float | None) -> str:
    """``3.3M``, ``120.5K``, ``1.6B``; ``–`` when unknown."""
    if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n):
        return "–"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{int(n)}"
