"""Configuration: the model's shape (the book's config dict as a dataclass, plus named presets) and the
training settings (:class:`TrainConfig`, the book's chapter-5 run by default)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from gpttui.core.errors import ConfigError

# Keys of the book's GPT_CONFIG_124M dict, and the dataclass field each maps to.
BOOK_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT model. Field names are the book's ``GPT_CONFIG_124M`` keys."""

    vocab_size: int = 50257
    context_length: int = 256
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_weights: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer (got {value!r})")
        if not problems and self.emb_dim % self.n_heads:
            problems.append(f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")
        try:
            drop_ok = 0.0 <= float(self.drop_rate) < 1.0
        except (TypeError, ValueError):
            drop_ok = False
        if not drop_ok:
            problems.append(f"drop_rate must be a number in [0, 1) (got {self.drop_rate!r})")
        if problems:
            raise ConfigError("Invalid model config: " + "; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GPTConfig":
        """Build from the book's config dict (or our own ``to_dict``). Unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"Unknown model config keys: {', '.join(unknown)}.")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_book_dict(self) -> dict[str, Any]:
        """The book's config dict (GPT_CONFIG_124M keys), for code written against the book."""
        return {k: getattr(self, k) for k in BOOK_KEYS}

    def replace(self, **changes: Any) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads


# Shapes of OpenAI's GPT-2 sizes. Trained from scratch they use the book's context of 256;
# imported weights use 1024 (see ``preset(..., context_length=1024)``).
GPT2_SHAPES: dict[str, dict[str, int]] = {
    "gpt2-small": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},  # 124M
    "gpt2-medium": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},  # 355M
    "gpt2-large": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},  # 774M
    "gpt2-xl": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},  # 1558M
}

# GPT-2 has 1024 positions: a GPT-2 shape is kept to that (its imported weights have no more).
GPT2_MAX_CONTEXT = 1024

# Small shapes that learn something in minutes on a laptop CPU.
CPU_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"emb_dim": 128, "n_layers": 2, "n_heads": 4, "context_length": 128, "tie_weights": True},
    "mini": {"emb_dim": 256, "n_layers": 4, "n_heads": 8, "context_length": 256, "tie_weights": True},
}

PRESETS: dict[str, str] = {
    "tiny": "2 layers, 128 wide, context 128 (CPU, minutes)",
    "mini": "4 layers, 256 wide, context 256 (CPU, tens of minutes)",
    "gpt2-small": "GPT-2 124M shape (12 layers, 768 wide)",
    "gpt2-medium": "GPT-2 355M shape (24 layers, 1024 wide)",
    "gpt2-large": "GPT-2 774M shape (36 layers, 1280 wide)",
    "gpt2-xl": "GPT-2 1558M shape (48 layers, 1600 wide)",
}


def preset(name: str, **overrides: Any) -> GPTConfig:
    """A named model shape; keyword arguments override any field (e.g. ``vocab_size=257``). A GPT-2
    shape takes a context of at most :data:`GPT2_MAX_CONTEXT` (1024) tokens."""
    if name in GPT2_SHAPES:
        base: dict[str, Any] = dict(GPT2_SHAPES[name], context_length=256)
    elif name in CPU_SHAPES:
        base = dict(CPU_SHAPES[name])
    else:
        raise ConfigError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    base.update({k: v for k, v in overrides.items() if v is not None})
    context = base.get("context_length")
    if name in GPT2_SHAPES and isinstance(context, int) and context > GPT2_MAX_CONTEXT:
        raise ConfigError(f"The {name} preset takes a context length of at most {GPT2_MAX_CONTEXT} tokens, as "
                          f"GPT-2 (got {context:,}); lower the context length.")
    return GPTConfig(**base)


# The book's dict, for reference and tests.
GPT_CONFIG_124M: dict[str, Any] = {
    "vocab_size": 50257,
    "context_length": 256,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}

# Training precisions: fp32; bf16 autocast; fp16 autocast with a GradScaler (GPUs without bf16: T4, V100).
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Training settings; the defaults are the book's chapter-5 run."""

    epochs: int = 10
    max_steps: int | None = None
    lr: float = 4e-4
    min_lr: float | None = None  # with a value: cosine decay to it after warmup
    weight_decay: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = None
    grad_accum: int = 1
    eval_freq: int = 5
    eval_iter: int = 5
    start_context: str = "Every effort moves you"
    sample_tokens: int = 50
    sample_at_eval: bool = False
    seed: int = 123
    device: str = "auto"
    dtype: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler)
    compile: bool = False
    deterministic: bool = False  # deterministic kernels (CUDA): bit-exact resume there too, slower
    peak_tflops: float | None = None  # the device's peak TFLOP/s for MFU (default: gpttui.core.flops' table)
    save_name: str | None = None
    checkpoint_every: int = 0
    book: bool = False  # book mode: the book's loop, RNG use and math exactly (gpttui.core.book)

    def validate(self) -> None:
        problems = []

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def finite(value: Any) -> bool:  # nan and inf are not: `not x > 0` lets inf through
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not whole(self.epochs) or self.epochs < 1:
            problems.append(f"epochs must be a whole number >= 1 (got {self.epochs!r})")
        if self.max_steps is not None and (not whole(self.max_steps) or self.max_steps < 1):
            problems.append(f"max steps must be a whole number >= 1 (got {self.max_steps!r})")
        if not finite(self.lr) or not self.lr > 0:
            problems.append(f"learning rate must be a finite number > 0 (got {self.lr!r})")
        if self.min_lr is not None:
            if not finite(self.min_lr) or self.min_lr < 0:
                problems.append(f"min lr must be a finite number >= 0 (got {self.min_lr!r})")
            elif finite(self.lr) and self.min_lr > self.lr:
                problems.append(f"min lr ({self.min_lr!r}) must not exceed the learning rate ({self.lr!r})")
        if not finite(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight decay must be a finite number >= 0 (got {self.weight_decay!r})")
        if not whole(self.warmup_steps) or self.warmup_steps < 0:
            problems.append(f"warmup steps must be a whole number >= 0 (got {self.warmup_steps!r})")
        if self.grad_clip is not None and (not finite(self.grad_clip) or not self.grad_clip > 0):
            problems.append(f"grad clip must be a finite number > 0, or off (got {self.grad_clip!r})")
        if not whole(self.grad_accum) or self.grad_accum < 1:
            problems.append(f"grad accumulation must be a whole number >= 1 (got {self.grad_accum!r})")
        if not whole(self.eval_freq) or not whole(self.eval_iter) or self.eval_freq < 1 or self.eval_iter < 1:
            problems.append(f"eval freq and eval iter must be whole numbers >= 1 "
                            f"(got {self.eval_freq!r} and {self.eval_iter!r})")
        if not whole(self.sample_tokens):
            problems.append(f"sample tokens must be a whole number, 0 for none (got {self.sample_tokens!r})")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if self.peak_tflops is not None and (not finite(self.peak_tflops) or not self.peak_tflops > 0):
            problems.append(f"peak TFLOP/s must be a finite number > 0 (got {self.peak_tflops!r})")
        if not whole(self.checkpoint_every) or self.checkpoint_every < 0:
            problems.append(f"checkpoint-every must be a whole number >= 0 (got {self.checkpoint_every!r})")
        if problems:
            raise ConfigError("Invalid training config: " + "; ".join(problems) + ".")
        if self.book:
            from gpttui.core.book import book_conflicts

            conflicts = book_conflicts(self)
            if conflicts:
                raise ConfigError("Book mode runs the book's loop as printed, which has no " + ", no ".join(conflicts)
                                  + ". Turn these off, or train without book mode.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        _check_field_types(cls, values, "training config")
        return cls(**values)


_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
                "list": (list,)}


def _check_field_types(cls: type, values: dict[str, Any], what: str) -> None:
    """Values read from a file must have their field's type (``int | None`` and the like), or a
    :class:`ConfigError` names the field."""
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        parts = [p.strip() for p in str(f.type).split("|")]
        if value is None and "None" in parts:
            continue
        allowed = tuple(t for p in parts for t in _FIELD_TYPES.get(p, (object,)))
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ConfigError(f"The {what} has {f.name} = {json.dumps(value, default=str)[:40]}, which should "
                              f"be {f.type}.")


__all__ = ["TrainConfig", "DTYPES", "GPTConfig", "preset", "PRESETS", "GPT2_SHAPES", "GPT2_MAX_CONTEXT", "GPT_CONFIG_124M", "BOOK_KEYS"]
