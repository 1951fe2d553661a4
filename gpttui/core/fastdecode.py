"""The decode fast path: our GPTModel's eval-mode forward pass written out once more, for generating
one token at a time faster than ``GPTModel.forward`` with its :class:`~gpttui.core.model.KVCache`.

Why a second forward pass, and what it buys (bench/bench_generate.py, GPT-2 small shape, CPU):

- the query, key and value projections are fused into one matrix: one matrix-vector product per
  layer instead of three;
- on CPU with bf16 weights, every matrix is pre-packed for oneDNN through private ops
  (``torch.ops.mkldnn._reorder_linear_weight``, ``_linear_pointwise`` and its ``.binary`` form, which
  also adds the residual): their bf16 matrix-vector products are ~1.5x faster than ``F.linear``'s,
  which lays the weights out again at every call;
- the keys and values go to one preallocated buffer per layer (:class:`DecodeCache`).

What it must equal: ``GPTModel.forward`` (eval mode) — the logits of a prompt and then token by token,
and so the same greedy tokens (tests/test_generate.py checks both, with and without the private ops).

Fallbacks, so that generation never depends on it:

- without the private ops (a torch build without oneDNN, their absence in a later torch, no bf16
  support; probed once by :func:`onednn_bf16`), or for fp32 weights or a GPU, the same pass runs on
  ``F.linear``;
- :func:`decoder_for` returns None for anything but our own GPTModel (the book's, a model whose
  attention was replaced), or if laying out the weights fails: the caller then runs the model's own
  forward pass with its KV cache.

The model's parameters (and their names) are untouched: the decode weights are a copy, kept per model
and rebuilt when a parameter's data or version changes (an optimizer step, ``load_state_dict``; not a
write through ``.data``).
"""

from __future__ import annotations

import functools
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from gpttui.core.model import GPTModel, MultiHeadAttention


@functools.lru_cache(maxsize=None)
def onednn_bf16() -> bool:
    """Whether the private oneDNN ops the packed bf16 path uses exist and compute a linear layer right
    (checked once, on a 2x2 example)."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        ops = torch.ops.mkldnn
        x = torch.ones(1, 2, dtype=torch.bfloat16)
        w = ops._reorder_linear_weight(torch.ones(2, 2, dtype=torch.bfloat16), 1)
        y = ops._linear_pointwise(x, w, None, "none", [], "")  # x @ 1 = [2, 2]
        z = ops._linear_pointwise.binary(x, y, w, None, "add")  # y + x @ 1 = [4, 4]
        return bool(torch.equal(y.float(), torch.full((1, 2), 2.0)) and torch.equal(z.float(), torch.full((1, 2), 4.0)))
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):
        return False


class DecodeCache:
    """Keys and values for :class:`DecodeWeights`: per layer one buffer (2, batch, heads, capacity,
    head_dim), written in place (one copy per layer and token). The interface of the model's
    ``KVCache`` that generation uses: ``length``, ``crop``, ``reorder``."""

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


class DecodeWeights:
    """Our GPTModel's weights laid out for decoding (fused q/k/v; oneDNN-packed for bf16 on CPU when
    :func:`onednn_bf16`), and the forward pass over them."""

    def __init__(self, model: GPTModel) -> None:
        cfg = model.cfg
        self.emb_dim, self.n_heads = cfg.emb_dim, cfg.n_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        w = model.tok_emb.weight
        self.packed = w.device.type == "cpu" and w.dtype == torch.bfloat16 and onednn_bf16()
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

    def new_cache(self, capacity: int) -> DecodeCache:
        return DecodeCache(len(self.layers), capacity)

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

    def forward(self, idx: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """Logits of the last position (batch, vocab) for new tokens ``idx`` after the cached ones:
        ``GPTModel.forward`` in eval mode, layer by layer."""
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


_weights: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, DecodeWeights]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def decoder_for(model: nn.Module) -> DecodeWeights | None:
    """Decode weights of our GPTModel (kept while its parameters stay the same), or None for other
    models (e.g. the book's), which run their own forward pass."""
    if type(model) is not GPTModel or not all(isinstance(b.att, MultiHeadAttention) for b in model.trf_blocks):
        return None
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())
    with _lock:
        hit = _weights.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        _weights.pop(model, None)  # free the stale copy before building the new one
    try:
        with torch.inference_mode():
            weights = DecodeWeights(model)
    except RuntimeError:  # the oneDNN ops failing on these weights: the model's own forward
        return None
    with _lock:
        _weights[model] = (key, weights)
    return weights


__all__ = ["DecodeCache", "DecodeWeights", "decoder_for", "onednn_bf16"]
