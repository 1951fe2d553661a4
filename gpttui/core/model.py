"""The GPT model of chapter 4/5 of "Build a Large Language Model (From Scratch)".

Parameter names are the book's (``tok_emb``, ``trf_blocks.{i}.att.W_query`` ...), so a state_dict
saved by the book's code loads as is and ours loads into the book's code. The math is the book's,
computed through torch's fused kernels: causal ``scaled_dot_product_attention``, ``F.layer_norm``
(eps 1e-5, biased variance) and tanh-approximated ``F.gelu``. :func:`use_book_math` switches a model to
the book's own formulas (an explicit causal mask, softmax and ``nn.Dropout`` on the attention weights; the
written-out LayerNorm and GELU), which book mode trains with: same weights, same results to the last bit
as the book's code, slower.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gpttui.core.config import GPTConfig


class KVCache:
    """Keys and values of past positions, one entry per layer, for incremental decoding.

    Each layer's keys and values live in a buffer of shape (batch, heads, capacity, head_dim) that
    grows by doubling (up to ``capacity`` when given: the model's context length), so appending a
    token writes one slot instead of copying the whole cache as ``torch.cat`` would.
    """

    def __init__(self, n_layers: int, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._k: list[torch.Tensor | None] = [None] * n_layers
        self._v: list[torch.Tensor | None] = [None] * n_layers
        self._len = [0] * n_layers

    @property
    def length(self) -> int:
        return self._len[0]

    def layer_length(self, layer: int) -> int:
        return self._len[layer]

    @property
    def keys(self) -> list[torch.Tensor | None]:
        return [None if k is None else k[:, :, :n] for k, n in zip(self._k, self._len)]

    @property
    def values(self) -> list[torch.Tensor | None]:
        return [None if v is None else v[:, :, :n] for v, n in zip(self._v, self._len)]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (batch, heads, new, head_dim) after the layer's past; return all of it."""
        n, t = self._len[layer], k.shape[2]
        need = n + t
        buf_k, buf_v = self._k[layer], self._v[layer]
        if (buf_k is None or buf_k.shape[2] < need or buf_k.shape[:2] != k.shape[:2] or buf_k.shape[3] != k.shape[3]
                or buf_k.dtype != k.dtype or buf_k.device != k.device):
            size = max(need, 64, 2 * (0 if buf_k is None else buf_k.shape[2]))
            if self.capacity is not None:
                size = max(need, min(size, self.capacity))
            new_k = k.new_empty(k.shape[0], k.shape[1], size, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], size, v.shape[3])
            if n:
                new_k[:, :, :n] = buf_k[:, :, :n]
                new_v[:, :, :n] = buf_v[:, :, :n]
            self._k[layer], self._v[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, :, n:need] = k
        buf_v[:, :, n:need] = v
        self._len[layer] = need
        return buf_k[:, :, :need], buf_v[:, :, :need]

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions."""
        self._len = [min(n, max(0, length)) for n in self._len]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search)."""
        for i, (k, v) in enumerate(zip(self._k, self._v)):
            if k is not None:
                idx = index.to(k.device)
                self._k[i], self._v[i] = k.index_select(0, idx), v.index_select(0, idx)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = dropout
        self.book_math = False  # see use_book_math
        self._book_masks: dict[tuple[int, str], torch.Tensor] = {}
        # The book keeps a (context x context) ``mask`` buffer; SDPA's causal mode replaces it.
        # Book state_dicts carry it, so it is dropped on load (see _load_from_state_dict).

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        state_dict.pop(prefix + "mask", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        # Keys first, as the book computes them: the three gradients reaching x are then summed in the book's
        # order, which keeps book mode's gradients the book's to the bit.
        k = self.W_key(x).view(shape).transpose(1, 2)
        q = self.W_query(x).view(shape).transpose(1, 2)
        v = self.W_value(x).view(shape).transpose(1, 2)
        past = 0
        if cache is not None:
            past = cache.layer_length(layer)
            k, v = cache.append(layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if self.book_math and cache is None:
            out = self._book_attention(q, k, v)
        elif past == 0:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif t == 1:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:  # several new positions after a cached prefix: causal mask shifted by `past`
            total = k.shape[2]
            mask = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(diagonal=total - t)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(b, t, self.d_out)
        return self.out_proj(out)

    def _book_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The book's attention, op for op: scores, the upper triangle set to -inf, softmax of the scores
        over sqrt(head_dim), dropout on the weights (drawing from the global RNG as ``nn.Dropout``)."""
        t = q.shape[2]
        key = (t, str(q.device))
        mask = self._book_masks.get(key)
        if mask is None:
            mask = self._book_masks[key] = torch.triu(torch.ones(t, t, device=q.device), diagonal=1).bool()
        scores = q @ k.transpose(2, 3)
        scores.masked_fill_(mask, -torch.inf)
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        return weights @ v


class LayerNorm(nn.Module):
    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))
        self.book_math = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.book_math:
            mean = x.mean(dim=-1, keepdim=True)
            var = x.var(dim=-1, keepdim=True, unbiased=False)
            return self.scale * ((x - mean) / torch.sqrt(var + self.eps)) + self.shift
        return F.layer_norm(x, (x.shape[-1],), self.scale, self.shift, self.eps)


class GELU(nn.Module):
    book_math = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.book_math:
            c = torch.sqrt(torch.tensor(2.0 / torch.pi))
            return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * torch.pow(x, 3))))
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            GELU(),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.att = MultiHeadAttention(cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate,
                                      cfg.n_heads, cfg.qkv_bias)
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg.emb_dim)
        self.norm2 = LayerNorm(cfg.emb_dim)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache, layer))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """The book's ``GPTModel``. Accepts a :class:`GPTConfig` or the book's config dict."""

    def __init__(self, cfg: GPTConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            cfg = GPTConfig.from_dict(cfg)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            # A shared N(0, 1) embedding would make the initial logits huge: use GPT-2's 0.02.
            nn.init.normal_(self.tok_emb.weight, std=0.02)
            self.out_head.weight = self.tok_emb.weight

    def forward(self, in_idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (batch, seq, vocab); with ``last_only`` those of the last position only (batch, 1,
        vocab), which spares the output layer's work on a prompt when generating."""
        _, seq_len = in_idx.shape
        start = cache.length if cache is not None else 0
        if start + seq_len > self.cfg.context_length:
            raise ValueError(
                f"Sequence of {start + seq_len} tokens exceeds the context length "
                f"{self.cfg.context_length}; crop the input to the last {self.cfg.context_length} tokens."
            )
        positions = torch.arange(start, start + seq_len, device=in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))
        for i, block in enumerate(self.trf_blocks):
            x = block(x, cache, i)
        if last_only:
            x = x[:, -1:]
        return self.out_head(self.final_norm(x))

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layers, capacity=self.cfg.context_length)


def use_book_math(model: nn.Module, on: bool = True) -> nn.Module:
    """Compute with the book's formulas (``on``) or torch's fused kernels; the weights are untouched.
    Incremental decoding with a KV cache always uses the fused attention."""
    for module in unwrap_model(model).modules():
        if isinstance(module, (MultiHeadAttention, LayerNorm, GELU)):
            module.book_math = on
    return model


def count_parameters(model: nn.Module) -> int:
    """Parameters as the book counts them: shared (tied) tensors once."""
    return sum(p.numel() for p in model.parameters())


def parameter_count(cfg: GPTConfig) -> int:
    """The same figure as :func:`count_parameters`, from the config alone (no model built)."""
    e, v = cfg.emb_dim, cfg.vocab_size
    qkv = 3 * e * e + (3 * e if cfg.qkv_bias else 0)
    per_layer = qkv + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e) + 4 * e
    head = 0 if cfg.tie_weights else v * e
    return v * e + cfg.context_length * e + cfg.n_layers * per_layer + 2 * e + head


def training_memory_estimate(cfg: GPTConfig, batch_size: int, dtype: str = "fp32", device_type: str = "cpu") -> int:
    """Bytes to train ``cfg`` with AdamW on batches of ``batch_size`` x its context: the total of
    :func:`gpttui.core.memory.plan_memory` (weights, gradients, moments, activations, logits, overhead)
    for a device of type ``device_type`` (cpu, cuda, mps; nothing is looked up)."""
    from gpttui.core.memory import plan_memory

    return plan_memory(cfg, batch_size, dtype=dtype, device=device_type, device_type=device_type).total


def generation_memory_estimate(cfg: GPTConfig, rows: int = 1, bytes_per_value: int = 4) -> int:
    """Rough bytes that generating ``rows`` sequences at once (beams) needs on top of the weights: per
    row a KV cache of the whole context (twice, while beam search reorders it), the activations of a
    full-context pass (generation past the context re-runs the last ``context_length`` tokens), and the
    next-token scores (float and float64 copies of ``vocab_size`` logits)."""
    t, e = cfg.context_length, cfg.emb_dim
    kv = cfg.n_layers * 2 * t * e * bytes_per_value
    window = 10 * t * e * bytes_per_value
    scores = 40 * cfg.vocab_size
    return rows * (2 * kv + window + scores + 16 * t)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` (``_orig_mod``) and DataParallel/DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        return model


def book_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """Our weights under the book's exact keys, ``att.mask`` buffers included, untied copies."""
    cfg = model.cfg
    sd = {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}
    mask = torch.triu(torch.ones(cfg.context_length, cfg.context_length), diagonal=1)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        out[key] = value
        if key.endswith(".att.out_proj.bias"):
            out[key.replace(".att.out_proj.bias", ".att.mask")] = mask.clone()
    return out


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                    device: torch.device | str) -> torch.Tensor:
    """The book's ``calc_loss_batch``: mean cross-entropy of the next-token predictions."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model: nn.Module, device: torch.device | str,
                     num_batches: int | None = None) -> float:
    """The book's ``calc_loss_loader``: mean batch loss over the first ``min(num_batches, len)``
    batches (all when None); nan for an empty loader."""
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
