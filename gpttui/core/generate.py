"""Text generation: greedy, sampling (temperature, top-k, top-p, repetition penalty) and beam search,
streamed token by token, with a KV cache.

- :func:`stream` yields a :class:`TokenEvent` per new token (the text it adds, and on request its
  probability and the top alternatives), for a UI to show as it comes; :func:`generate` runs it to the
  end and returns a :class:`GenerationResult`; :func:`generate_ids` works on token-id tensors.
- Generation stops after ``max_new_tokens``, on the end-of-text id, on any of the ``stop`` strings
  (even one spread over several tokens; the stop string itself is not part of the text), or when the
  ``cancel`` event (a :class:`threading.Event`) is set, checked before every token.
- Greedy output is the book's ``generate_text_simple`` / ``generate(temperature=0)`` token for token,
  past the context length too: the book runs the model on the last ``context_length`` tokens at every
  step. With the cache, each new token is one position fed to the cached keys/values while prompt +
  output fit the context; once they do not, positions shift at every step (the model's position
  embeddings are absolute), so from then on each step runs the last ``context_length`` tokens afresh,
  exactly as the book does.
- Sampling uses a private :class:`torch.Generator` seeded with ``seed`` (never the global RNG, which a
  trainer in another thread may be using) and draws one uniform number per token on the CPU, so a
  seed gives the same text with and without the cache, on any device.
- The model runs in eval mode under ``torch.inference_mode`` (per step, so the caller's grad mode is
  untouched between tokens) and gets back the train/eval mode it had. It runs in its own dtype:
  :func:`cast_for_inference` makes bf16 weights (faster on CPU than bf16 autocast, which casts every
  weight again at every token: see bench/bench_generate.py).

The logits processors are pure functions, applied in this order: :func:`apply_repetition_penalty`,
:func:`apply_temperature`, :func:`apply_top_k`, :func:`apply_top_p`.

``generate_greedy`` and ``sample_text`` are what the trainer uses for the samples it prints.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gpttui.core.config import GPTConfig
from gpttui.core.errors import ConfigError
from gpttui.core.model import GPTModel, MultiHeadAttention, generation_memory_estimate
from gpttui.core.resources import check_fits
from gpttui.core.tokenizer import StreamDecoder, Tokenizer

EOT = "eot"
"""``SamplingConfig.eos_id`` default: stop at the tokenizer's end-of-text id."""

STOP_REASONS = ("max_tokens", "eos", "stop", "cancel")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --- configuration ---------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SamplingConfig:
    """How to pick the next tokens. ``temperature`` 0 is greedy (argmax); ``num_beams`` > 1 is beam
    search (deterministic: needs temperature 0). ``top_k``/``top_p`` only matter when sampling.
    ``length_penalty`` divides a beam's summed log-probability by ``new_tokens ** length_penalty``
    (0: plain sum; > 0 favours longer sequences). ``eos_id``: ``"eot"`` (the tokenizer's end-of-text
    id), a token id, or None to never stop on a token. ``stop`` strings end the text before them."""

    max_new_tokens: int = 50
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    eos_id: int | str | None = EOT
    use_cache: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        elif isinstance(self.stop, (list, tuple)):
            self.stop = tuple(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def problems(self) -> list[str]:
        """What is wrong with these settings, one readable line each (empty when all is well)."""
        p: list[str] = []
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            p.append(f"max_new_tokens must be a whole number >= 1 (got {self.max_new_tokens!r})")
        if not _is_number(self.temperature) or self.temperature < 0:
            p.append(f"temperature must be a number >= 0; 0 means greedy (got {self.temperature!r})")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            p.append(f"top_k must be a whole number >= 1, or None for no limit (got {self.top_k!r})")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0 < self.top_p <= 1):
            p.append(f"top_p must be a number in (0, 1], or None for no limit (got {self.top_p!r})")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            p.append(f"repetition_penalty must be a number > 0; 1 means none (got {self.repetition_penalty!r})")
        if not _is_int(self.num_beams) or self.num_beams < 1:
            p.append(f"num_beams must be a whole number >= 1 (got {self.num_beams!r})")
        elif self.num_beams > 1 and _is_number(self.temperature) and self.temperature > 0:
            p.append(f"beam search (num_beams={self.num_beams}) is deterministic: set temperature to 0, "
                     "or use num_beams=1 to sample")
        if not _is_number(self.length_penalty):
            p.append(f"length_penalty must be a finite number (got {self.length_penalty!r})")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            p.append(f"seed must be a whole number in [0, 2**63), or None for a random one (got {self.seed!r})")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            p.append(f"stop must be a list of non-empty strings (got {self.stop!r})")
        if not (self.eos_id is None or self.eos_id == EOT or (_is_int(self.eos_id) and self.eos_id >= 0)):
            p.append(f"eos_id must be a token id >= 0, {EOT!r} (the tokenizer's end of text) or None "
                     f"(got {self.eos_id!r})")
        if not isinstance(self.use_cache, bool):
            p.append(f"use_cache must be True or False (got {self.use_cache!r})")
        return p

    def validate(self) -> "SamplingConfig":
        """Return self, or raise :class:`ConfigError` listing every invalid setting."""
        problems = self.problems()
        if problems:
            raise ConfigError("Invalid generation settings: " + "; ".join(problems) + ".")
        return self

    def replace(self, **changes: Any) -> "SamplingConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SamplingConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"Unknown generation settings: {', '.join(unknown)}.")
        return cls(**d).validate()


class Alternative(NamedTuple):
    token_id: int
    text: str
    prob: float


@dataclass
class TokenEvent:
    """One new token. ``text`` is what it adds to the output; it can be "" while bytes of a UTF-8
    character split over tokens are pending, or while the text might be the start of a stop string
    (it comes out with a later token). A last event with ``token_id`` None may carry such held-back
    text when generation ends on the end-of-text id or a cancel.

    With ``details``: ``prob`` is the probability the token had in the distribution it was chosen
    from (sampling: after repetition penalty, temperature, top-k and top-p; greedy and beam search:
    the softmax of the logits after the repetition penalty), and ``alternatives`` the most likely
    tokens of that distribution, the chosen one included when it is among them."""

    token_id: int | None
    text: str
    prob: float | None = None
    alternatives: tuple[Alternative, ...] = ()


@dataclass
class GenerationResult:
    text: str  # the continuation (prompt excluded, stop string excluded)
    token_ids: list[int]  # the new tokens (end-of-text excluded; a stop string's last token included)
    new_tokens: int
    tokens_per_sec: float  # decode speed: tokens after the first / their time (prompt excluded)
    stopped_by: str  # one of STOP_REASONS
    prompt_tokens: int = 0
    seed: int | None = None  # the seed used when sampling (drawn at random when none was given)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- logits processors (pure functions on (..., vocab) logits) --------------------------------------


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
    return _penalize(logits, present, penalty)


def _penalize(logits: torch.Tensor, present: torch.Tensor, penalty: float) -> torch.Tensor:
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


# --- model helpers ------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _context_length(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        return int(cfg.context_length)
    return int(model.pos_emb.num_embeddings)  # the book's GPTModel has no cfg


def _shape(model: nn.Module) -> GPTConfig | None:
    """The model's GPTConfig (read off the modules for the book's GPTModel, which has none)."""
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, GPTConfig):
        return cfg
    try:
        return GPTConfig(vocab_size=int(model.tok_emb.num_embeddings), context_length=int(model.pos_emb.num_embeddings),
                         emb_dim=int(model.tok_emb.embedding_dim), n_heads=int(model.trf_blocks[0].att.num_heads),
                         n_layers=len(model.trf_blocks), drop_rate=0.0)
    except (AttributeError, IndexError, TypeError, ConfigError):
        return None


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def cast_for_inference(model: nn.Module, dtype: str | torch.dtype = "bf16", copy_model: bool = False) -> nn.Module:
    """The model with weights in ``dtype`` ("fp32" or "bf16"), for generation. In place (as
    ``model.to``), or on a deep copy with ``copy_model`` (e.g. when a trainer still uses the model).
    Tied weights stay tied."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"Unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    if copy_model:
        model = copy.deepcopy(model)
    return model.to(dtype)


class _DecodeWeights:
    """Our GPTModel's weights laid out for decoding: the query, key and value projections fused into
    one matrix (one matrix-vector product per layer instead of three), and on CPU with bf16 weights,
    every matrix pre-packed for oneDNN (its bf16 matrix-vector products are ~1.5x faster than
    ``F.linear``'s, which re-lays the weights out at every call). The model's parameters (and their
    names) are untouched: this is a copy, kept per model and rebuilt when a parameter's data or version
    changes (an optimizer step, ``load_state_dict``; not a write through ``.data``)."""

    def __init__(self, model: GPTModel) -> None:
        cfg = model.cfg
        self.emb_dim, self.n_heads = cfg.emb_dim, cfg.n_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        w = model.tok_emb.weight
        self.packed = w.device.type == "cpu" and w.dtype == torch.bfloat16 and _mkldnn_bf16()
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        self.tok_emb, self.pos_emb = d(model.tok_emb.weight), d(model.pos_emb.weight)
        self.layers = []
        for block in model.trf_blocks:
            att = block.att
            wqkv = torch.cat([att.W_query.weight, att.W_key.weight, att.W_value.weight]).detach()
            bqkv = (torch.cat([att.W_query.bias, att.W_key.bias, att.W_value.bias]).detach()
                    if att.W_query.bias is not None else None)
            ff0, ff2 = block.ff.layers[0], block.ff.layers[2]
            self.layers.append((
                (d(block.norm1.scale), d(block.norm1.shift), block.norm1.eps),
                self._pack(wqkv), bqkv,
                self._pack(att.out_proj.weight), d(att.out_proj.bias),
                (d(block.norm2.scale), d(block.norm2.shift), block.norm2.eps),
                self._pack(ff0.weight), d(ff0.bias), self._pack(ff2.weight), d(ff2.bias),
            ))
        fn = model.final_norm
        self.final_norm = (d(fn.scale), d(fn.shift), fn.eps)
        self.head = self._pack(model.out_head.weight)

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        weight = weight.detach()
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 1) if self.packed else weight

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               gelu: bool = False) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                                      "tanh" if gelu else "")
        y = F.linear(x, weight, bias)
        return F.gelu(y, approximate="tanh") if gelu else y

    def residual(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        """``x + linear(y)``, in one oneDNN call when packed."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(y, x, weight, bias, "add")
        return x + F.linear(y, weight, bias)

    def forward(self, idx: torch.Tensor, cache: "_DecodeCache") -> torch.Tensor:
        """Logits of the last position (batch, vocab) for new tokens ``idx`` after the cached ones:
        the model's forward pass (eval mode), written out for speed."""
        b, t = idx.shape
        e, h, hd = self.emb_dim, self.n_heads, self.head_dim
        start = cache.length
        x = (F.embedding(idx, self.tok_emb) + self.pos_emb[start:start + t]).view(b * t, e)
        lin = self.linear
        mask = None
        if start and t > 1:  # several new positions after cached ones: causal mask shifted by `start`
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        for i, (n1, wqkv, bqkv, wo, bo, n2, w1, b1, w2, b2) in enumerate(self.layers):
            y = F.layer_norm(x, (e,), n1[0], n1[1], n1[2])
            qkv = lin(y, wqkv, bqkv).view(b, t, 3, h, hd)
            k, v = cache.append(i, qkv[:, :, 1:].permute(2, 0, 3, 1, 4))
            q = qkv[:, :, 0].transpose(1, 2)
            if start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = self.residual(x, y.transpose(1, 2).reshape(b * t, e), wo, bo)
            y = F.layer_norm(x, (e,), n2[0], n2[1], n2[2])
            x = self.residual(x, lin(y, w1, b1, gelu=True), w2, b2)
        fn = self.final_norm
        last = x.view(b, t, e)[:, -1]
        return lin(F.layer_norm(last, (e,), fn[0], fn[1], fn[2]), self.head, None)


class _DecodeCache:
    """Keys and values for :class:`_DecodeWeights`: per layer one buffer (2, batch, heads, capacity,
    head_dim), written in place (one copy per layer and token)."""

    def __init__(self, n_layers: int, capacity: int) -> None:
        self.capacity = capacity
        self.kv: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers

    @property
    def length(self) -> int:
        return self.lengths[0]

    def append(self, layer: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t = self.lengths[layer], kv.shape[3]
        buf = self.kv[layer]
        if buf is None or buf.shape[1] != kv.shape[1] or buf.dtype != kv.dtype:
            two, b, h, _, d = kv.shape
            buf = self.kv[layer] = kv.new_empty(two, b, h, self.capacity, d)
        buf[:, :, :, n:n + t] = kv
        self.lengths[layer] = n + t
        return buf[0, :, :, :n + t], buf[1, :, :, :n + t]

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions."""
        self.lengths = [min(n, max(0, length)) for n in self.lengths]

    def reorder(self, index: torch.Tensor) -> None:
        for i, buf in enumerate(self.kv):
            if buf is not None:
                self.kv[i] = buf.index_select(1, index.to(buf.device))


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


_decode_weights: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, _DecodeWeights]]" = weakref.WeakKeyDictionary()
_decode_lock = threading.Lock()


def _decoder_for(model: nn.Module) -> _DecodeWeights | None:
    """Decode weights of our GPTModel (kept while its parameters stay the same), or None for other
    models (e.g. the book's), which run their own forward pass."""
    if type(model) is not GPTModel or not all(isinstance(b.att, MultiHeadAttention) for b in model.trf_blocks):
        return None
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())
    with _decode_lock:
        hit = _decode_weights.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        _decode_weights.pop(model, None)  # free the stale copy before building the new one
    try:
        with torch.inference_mode():
            weights = _DecodeWeights(model)
    except RuntimeError:  # an unusual build without the oneDNN ops: the model's own forward
        return None
    with _decode_lock:
        _decode_weights[model] = (key, weights)
    return weights


class _Runner:
    """Next-token logits for growing sequences (batch, length), through the KV cache while they fit
    the context, then (as the book does) on the last ``context_length`` tokens at every step."""

    def __init__(self, model: nn.Module, context_length: int, use_cache: bool, fast: bool = True) -> None:
        self.model = model
        self.ctx = context_length
        self.cache = model.new_cache() if use_cache and hasattr(model, "new_cache") else None
        self.fast = _decoder_for(model) if self.cache is not None and fast else None
        if self.fast is not None:
            self.cache = _DecodeCache(len(self.fast.layers), context_length)
        self.windowed = False

    def __call__(self, seqs: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            return self.model(seqs[:, -self.ctx:])[:, -1]
        if seqs.shape[1] > self.ctx:
            # Past the context, positions shift at every step: from now on each step runs the last
            # `context_length` tokens afresh, as the book does (the cache only holds that pass).
            self.windowed = True
        if self.windowed:
            self.cache.crop(0)
            new = seqs[:, -self.ctx:]
        else:
            new = seqs[:, self.cache.length:]
        if self.fast is not None:
            return self.fast.forward(new, self.cache)
        return self.model(new, cache=self.cache, last_only=True)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


class _Timer:
    """Compute time of the first token (prompt processing included) and of the rest (decode)."""

    def __init__(self) -> None:
        self.first = 0.0
        self.decode = 0.0
        self.decoded = 0

    def add(self, index: int, seconds: float) -> None:
        if index == 0:
            self.first += seconds
        else:
            self.decode += seconds
            self.decoded += 1

    def tokens_per_sec(self, new_tokens: int) -> float:
        if self.decoded and self.decode > 0:
            return self.decoded / self.decode
        if new_tokens and self.first > 0:
            return new_tokens / self.first
        return 0.0


@dataclass
class _Step:
    token: int
    prob: float | None = None
    alt_ids: list[int] = field(default_factory=list)
    alt_probs: list[float] = field(default_factory=list)


class _Job:
    """Everything the token loops need, resolved and checked."""

    def __init__(self, model: nn.Module, prompt_ids: Sequence[int], cfg: SamplingConfig, eos_id: int | None,
                 cancel: threading.Event | None, n_alternatives: int, vocab_limit: int | None) -> None:
        self.model = _unwrap(model)
        self.cfg = cfg
        self.prompt_ids = list(prompt_ids)
        self.eos_id = eos_id
        self.cancel = cancel
        self.n_alt = n_alternatives
        self.vocab_limit = vocab_limit
        self.device = _device(self.model)
        self.ctx = _context_length(self.model)
        self._check_size()
        self.timer = _Timer()
        self.seed = cfg.seed
        if not cfg.greedy and self.seed is None:
            self.seed = secrets.randbits(63)

    def _check_size(self) -> None:
        """Refuse settings that cannot fit before anything is allocated: beams far beyond any use, or
        beams whose caches and scores need more memory than is free. (``max_new_tokens`` has no bound:
        nothing is sized by it, the output streams until it is stopped.)"""
        vocab = _vocab_size(self.model)
        beams = self.cfg.num_beams
        if beams > vocab * vocab:
            raise ConfigError(f"num_beams ({beams:,}) is beyond any use for a vocabulary of {vocab:,} tokens "
                              f"(at most {vocab * vocab:,}, its square); use fewer beams (a handful is usual).")
        shape = _shape(self.model)
        if shape is None:
            return
        rows, reachable = 1, 1  # live beams: at most vocab ** steps of them
        if beams > 1:
            for _ in range(min(self.cfg.max_new_tokens, 64)):
                reachable *= vocab
                if reachable >= beams:
                    break
            rows = min(beams, reachable)
        param = next(self.model.parameters(), None)
        width = param.element_size() if param is not None and param.is_floating_point() else 4
        needed = generation_memory_estimate(shape, rows, width)
        what = f"Beam search with {beams:,} beams" if beams > 1 else "Generation"
        check_fits(needed, self.device, what, "use fewer beams" if beams > 1 else "")

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def process(self, logits: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """Float logits with the vocabulary limit and the repetition penalty applied."""
        logits = logits.float()
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits[..., self.vocab_limit:] = float("-inf")
        if present is not None:
            logits = _penalize(logits, present, self.cfg.repetition_penalty)
        return logits

    def presence(self, rows: int, vocab: int) -> torch.Tensor | None:
        if self.cfg.repetition_penalty == 1.0:
            return None
        present = torch.zeros(rows, vocab, dtype=torch.bool, device=self.device)
        if self.prompt_ids:
            present[:, torch.tensor(self.prompt_ids, device=self.device)] = True
        return present

    def details(self, dist: torch.Tensor, token: int) -> _Step:
        """A step with the chosen token's probability and the top alternatives, from probabilities."""
        k = min(self.n_alt, dist.shape[-1])
        top_p, top_i = torch.topk(dist, k)
        return _Step(token, float(dist[token]), top_i.tolist(), top_p.tolist())


def _sampling_loop(job: _Job) -> Iterator[_Step]:
    """Greedy or sampled tokens, one at a time; returns the stop reason."""
    cfg, model = job.cfg, job.model
    n_prompt = len(job.prompt_ids)
    # The tokens so far, in a buffer sized by the context, not by max_new_tokens (which may be huge: the
    # output then streams until stopped). When it is full, only the last context_length + 1 tokens are
    # kept: the model never sees more than the last context_length (and the runner, which has seen more
    # than that already, keeps running windows).
    keep = job.ctx + 1
    capacity = n_prompt + min(cfg.max_new_tokens, 2 * keep)
    seq = torch.empty(1, capacity, dtype=torch.long, device=job.device)
    seq[0, :n_prompt] = torch.tensor(job.prompt_ids, dtype=torch.long)
    length = n_prompt
    runner = _Runner(model, job.ctx, cfg.use_cache)
    generator = None if cfg.greedy else torch.Generator().manual_seed(job.seed)
    present: torch.Tensor | None = None
    for i in range(cfg.max_new_tokens):
        if job.cancelled():
            return "cancel"
        start = time.perf_counter()
        with torch.inference_mode():
            raw = runner(seq[:, :length])
            if present is None and cfg.repetition_penalty != 1.0:
                present = job.presence(1, raw.shape[-1])
            logits = job.process(raw, present)[0]
            if cfg.greedy:
                token = int(torch.argmax(logits))
                step = job.details(torch.softmax(logits, -1), token) if job.n_alt else _Step(token)
            else:
                logits = apply_temperature(logits, cfg.temperature)
                logits = apply_top_k(logits, cfg.top_k)
                logits = apply_top_p(logits, cfg.top_p)
                probs = torch.softmax(logits, -1)
                token = int(sample_from(probs[None], generator)[0])
                step = job.details(probs, token) if job.n_alt else _Step(token)
            if token != job.eos_id:
                if length == capacity:
                    seq[0, :keep] = seq[0, length - keep:length].clone()
                    length = keep
                seq[0, length] = token
                length += 1
                if present is not None:
                    present[0, token] = True
        job.timer.add(i, time.perf_counter() - start)
        if token == job.eos_id:
            return "eos"
        yield step
    return "max_tokens"


def _beam_search(job: _Job) -> tuple[list[_Step], str, float]:
    """Beam search: keeps the ``num_beams`` most likely sequences by summed log-probability at every
    step. A sequence that picks the end-of-text id among its beam's best candidates is finished; the
    search ends after ``max_new_tokens``, or once ``num_beams`` sequences are finished and no live one
    scores better (transformers' ``early_stopping=False`` rule). Returns the best sequence by
    ``sum_logprob / new_tokens ** length_penalty`` (end-of-text counted), why it stopped, and its score."""
    cfg, model = job.cfg, job.model
    k, lp = cfg.num_beams, cfg.length_penalty
    seqs = torch.tensor([job.prompt_ids], dtype=torch.long, device=job.device)
    sums = torch.zeros(1, dtype=torch.float64)
    hist: list[list[_Step]] = [[]]
    present: torch.Tensor | None = None
    finished: list[tuple[float, list[_Step], bool]] = []
    runner = _Runner(model, job.ctx, cfg.use_cache)
    stopped = "max_tokens"

    def norm(total: float, n: int) -> float:
        return total / (max(n, 1) ** lp)

    for step_no in range(cfg.max_new_tokens):
        if job.cancelled():
            stopped = "cancel"
            break
        start = time.perf_counter()
        with torch.inference_mode():
            raw = runner(seqs)
            vocab = raw.shape[-1]
            if present is None and cfg.repetition_penalty != 1.0:
                present = job.presence(1, vocab)
            logp = torch.log_softmax(job.process(raw, present), dim=-1).cpu().double()  # (beams, vocab)
            cand = (sums[:, None] + logp).view(-1)
            top_scores, top_idx = torch.topk(cand, min(2 * k, cand.numel()))
            if job.n_alt:
                alt_p, alt_i = torch.topk(logp, min(job.n_alt, vocab), dim=-1)
                alt_p = alt_p.exp()
            chosen: list[tuple[int, int, float]] = []
            for rank, (score, flat) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
                if score == float("-inf"):
                    break
                beam, token = divmod(flat, vocab)
                if token == job.eos_id:
                    if rank < k:
                        finished.append((norm(score, step_no + 1), hist[beam] + [_Step(token)], True))
                    continue
                chosen.append((beam, token, score))
                if len(chosen) == k:
                    break
            if not chosen:
                job.timer.add(step_no, time.perf_counter() - start)
                stopped = "eos"
                hist = []
                break
            beam_idx = [b for b, _, _ in chosen]
            tokens = [t for _, t, _ in chosen]
            new_hist = []
            for b, t, _ in chosen:
                s = _Step(t, math.exp(float(logp[b, t])))
                if job.n_alt:
                    s.alt_ids, s.alt_probs = alt_i[b].tolist(), alt_p[b].tolist()
                new_hist.append(hist[b] + [s])
            hist = new_hist
            index = torch.tensor(beam_idx, dtype=torch.long, device=job.device)
            tok_t = torch.tensor(tokens, dtype=torch.long, device=job.device)
            seqs = torch.cat([seqs.index_select(0, index), tok_t[:, None]], dim=1)
            if seqs.shape[1] > job.ctx + 1:  # the runner has seen more than the context: windows from now on
                seqs = seqs[:, -(job.ctx + 1):]
            sums = torch.tensor([s for _, _, s in chosen], dtype=torch.float64)
            if present is not None:
                present = present.index_select(0, index)
                present[torch.arange(len(tokens), device=job.device), tok_t] = True
            if len(beam_idx) != seqs.shape[0] or beam_idx != list(range(len(beam_idx))):
                runner.reorder(index)
        job.timer.add(step_no, time.perf_counter() - start)
        if len(finished) >= k:
            worst_kept = sorted((f[0] for f in finished), reverse=True)[k - 1]
            best_live = max(norm(s, step_no + 1) for s in sums.tolist())
            if best_live <= worst_kept:
                stopped = "eos"
                break
    for s, h in zip(sums.tolist(), hist):
        finished.append((norm(s, len(h)), h, False))
    if not finished:
        return [], stopped, float("-inf")
    score, best, ended_eos = max(finished, key=lambda f: f[0])
    if ended_eos:
        return best[:-1], "eos", score
    return best, ("cancel" if stopped == "cancel" else "max_tokens"), score


def _beam_loop(job: _Job) -> Iterator[_Step]:
    steps, stopped, _ = _beam_search(job)
    for step in steps:
        if job.cancelled():
            return "cancel"
        yield step
    return stopped


def _token_loop(job: _Job) -> Iterator[_Step]:
    return _beam_loop(job) if job.cfg.num_beams > 1 else _sampling_loop(job)


# --- text ------------------------------------------------------------------------------------------


class _TextTracker:
    """The continuation's text: UTF-8 characters completed across tokens, stop strings found, and
    text that may be the start of a stop string held back until it is known not to be."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str]) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.emitted = 0

    def _stop_at(self, searched_from: int) -> int:
        start = max(0, searched_from - self.longest + 1)
        hits = [p for s in self.stops if (p := self.text.find(s, start)) >= 0]
        return min(hits) if hits else -1

    def _held(self) -> int:
        for n in range(min(self.longest - 1, len(self.text) - self.emitted), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def push(self, token: int) -> tuple[str, bool]:
        """The text to emit for ``token``, and whether a stop string is now complete."""
        before = len(self.text)
        self.text += self.decoder.push(token)
        if self.stops:
            hit = self._stop_at(before)
            if hit >= 0:
                delta = self.text[self.emitted:hit]
                self.text, self.emitted = self.text[:hit], hit
                return delta, True
        end = len(self.text) - (self._held() if self.stops else 0)
        delta, self.emitted = self.text[self.emitted:end], end
        return delta, False

    def flush(self) -> str:
        self.text += self.decoder.flush()
        delta, self.emitted = self.text[self.emitted:], len(self.text)
        return delta


def _token_text(tokenizer: Tokenizer, token: int) -> str:
    return tokenizer.token_bytes(token).decode("utf-8", errors="replace")


def _resolve_eos(cfg: SamplingConfig, tokenizer: Tokenizer | None, vocab: int) -> int | None:
    if cfg.eos_id is None:
        return None
    if cfg.eos_id == EOT:
        return None if tokenizer is None else tokenizer.eot_id
    if cfg.eos_id >= vocab:
        raise ConfigError(f"eos_id {cfg.eos_id} is outside the model's vocabulary of {vocab} tokens.")
    return int(cfg.eos_id)


def _vocab_size(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    return int(cfg.vocab_size) if cfg is not None else int(model.tok_emb.num_embeddings)


def _check_prompt(ids: Sequence[int], vocab: int) -> None:
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ConfigError(f"Prompt token id {bad[0]} is outside the model's vocabulary of {vocab} tokens "
                          "(is this the checkpoint's tokenizer?).")


class Stream:
    """Iterator of :class:`TokenEvent`; ``result`` holds the :class:`GenerationResult` once it is
    exhausted (or closed). Settings are checked when it is made; work starts at the first ``next``."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, prompt: str | Sequence[int],
                 cfg: SamplingConfig | None = None, cancel: threading.Event | None = None,
                 details: bool = False, n_alternatives: int = 5) -> None:
        cfg = (cfg or SamplingConfig()).validate()
        if not _is_int(n_alternatives) or n_alternatives < 1:
            raise ConfigError(f"n_alternatives must be a whole number >= 1 (got {n_alternatives!r}).")
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            ids = [tokenizer.eot_id]  # as the book's samples do: an empty prompt starts a document
        inner = _unwrap(model)
        vocab = _vocab_size(inner)
        _check_prompt(ids, vocab)
        eos = _resolve_eos(cfg, tokenizer, vocab)
        limit = tokenizer.vocab_size if tokenizer.vocab_size < vocab else None
        self.job = _Job(model, ids, cfg, eos, cancel, n_alternatives if details else 0, limit)
        self.result: GenerationResult | None = None
        self._it = self._run()

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> TokenEvent:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    def _event(self, step: _Step, text: str) -> TokenEvent:
        alts = tuple(Alternative(i, _token_text(self.tokenizer, i), p) for i, p in zip(step.alt_ids, step.alt_probs))
        return TokenEvent(step.token, text, step.prob, alts)

    def _run(self) -> Iterator[TokenEvent]:
        job, model = self.job, self.job.model
        tracker = _TextTracker(self.tokenizer, self.cfg.stop)
        tokens: list[int] = []
        stopped = "max_tokens"
        was_training = model.training
        model.eval()
        loop = _token_loop(job)
        try:
            while True:
                try:
                    step = next(loop)
                except StopIteration as done:
                    stopped = done.value or "max_tokens"
                    break
                tokens.append(step.token)
                text, hit = tracker.push(step.token)
                if hit:
                    stopped = "stop"
                    yield self._event(step, text)
                    break
                if len(tokens) == self.cfg.max_new_tokens:
                    text += tracker.flush()
                yield self._event(step, text)
            if stopped != "stop":
                rest = tracker.flush()
                if rest:
                    yield TokenEvent(None, rest)
        except GeneratorExit:  # closed before the end: as good as cancelled
            stopped = "cancel"
            raise
        finally:
            loop.close()
            model.train(was_training)
            self.result = GenerationResult(
                text=tracker.text, token_ids=tokens, new_tokens=len(tokens),
                tokens_per_sec=job.timer.tokens_per_sec(len(tokens)), stopped_by=stopped,
                prompt_tokens=len(job.prompt_ids), seed=job.seed if not self.cfg.greedy else self.cfg.seed)


def stream(model: nn.Module, tokenizer: Tokenizer, prompt: str | Sequence[int], cfg: SamplingConfig | None = None,
           cancel: threading.Event | None = None, details: bool = False, n_alternatives: int = 5) -> Stream:
    """Generate from ``prompt`` (text, or token ids), one :class:`TokenEvent` per new token. The
    returned :class:`Stream` has the :class:`GenerationResult` in ``.result`` once exhausted. Beam
    search finds the whole sequence first, then streams it."""
    return Stream(model, tokenizer, prompt, cfg, cancel, details, n_alternatives)


def generate(model: nn.Module, tokenizer: Tokenizer, prompt: str | Sequence[int], cfg: SamplingConfig | None = None,
             cancel: threading.Event | None = None) -> GenerationResult:
    """Generate from ``prompt`` to the end; the continuation and how it went."""
    s = Stream(model, tokenizer, prompt, cfg, cancel)
    for _ in s:
        pass
    assert s.result is not None
    return s.result


def generate_ids(model: nn.Module, idx: torch.Tensor, cfg: SamplingConfig | None = None, *,
                 tokenizer: Tokenizer | None = None, cancel: threading.Event | None = None) -> torch.Tensor:
    """The book's interface: ``idx`` (1, n) token ids in, (1, n + new) out (on ``idx``'s device). The
    default ``eos_id`` ("eot") needs ``tokenizer`` (without one, no end-of-text stop), and so do stop
    strings. Also runs the book's own GPTModel (without the cache: set ``use_cache=False``)."""
    cfg = (cfg or SamplingConfig()).validate()
    if idx.dim() != 2 or idx.shape[0] != 1:
        raise ConfigError(f"generate_ids takes one sequence, shape (1, n); got shape {tuple(idx.shape)}.")
    prompt = idx[0].tolist()
    if tokenizer is not None:
        s = Stream(model, tokenizer, prompt, cfg, cancel)
        for _ in s:
            pass
        new = s.result.token_ids
    else:
        if cfg.stop:
            raise ConfigError("Stop strings need a tokenizer: pass tokenizer=... to generate_ids.")
        if not prompt:
            raise ConfigError("generate_ids needs at least one prompt token.")
        inner = _unwrap(model)
        vocab = _vocab_size(inner)
        _check_prompt(prompt, vocab)
        job = _Job(model, prompt, cfg, _resolve_eos(cfg, None, vocab), cancel, 0, None)
        was_training = inner.training
        inner.eval()
        try:
            new = [step.token for step in _token_loop(job)]
        finally:
            inner.train(was_training)
    tail = torch.tensor([new], dtype=idx.dtype, device=idx.device)
    return torch.cat([idx, tail], dim=1)


# --- what the trainer uses ---------------------------------------------------------------------------


def generate_greedy(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
                    eos_id: int | None = None) -> torch.Tensor:
    """The book's ``generate_text_simple`` (with its ``eos_id`` stop for one sequence), on any batch,
    through the KV cache while the sequence fits ``context_size``."""
    inner = _unwrap(model)
    was_training = inner.training
    inner.eval()
    try:
        ctx = min(context_size, _context_length(inner))
        runner = _Runner(inner, ctx, use_cache=ctx == _context_length(inner), fast=False)
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                logits = runner(idx)
                idx_next = torch.argmax(logits, dim=-1, keepdim=True)
                if eos_id is not None and idx.shape[0] == 1 and int(idx_next) == eos_id:
                    break
                idx = torch.cat((idx, idx_next), dim=1)
    finally:
        inner.train(was_training)
    return idx.clone()


def sample_text(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
                context_size: int, device: torch.device | str = "cpu") -> str:
    """The book's ``generate_and_print_sample``: greedy continuation of ``prompt``, prompt included."""
    ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate_greedy(model, idx, max_new_tokens, context_size)
    return tokenizer.decode(out[0].tolist())


__all__ = [
    "EOT", "STOP_REASONS", "SamplingConfig", "TokenEvent", "Alternative", "GenerationResult", "Stream",
    "stream", "generate", "generate_ids", "generate_greedy", "sample_text", "cast_for_inference",
    "apply_repetition_penalty", "apply_temperature", "apply_top_k", "apply_top_p", "sample_from",
]
