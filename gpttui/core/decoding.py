"""The token loop of text generation: a model turned into next-token logits for growing sequences
(:class:`Runner`, through the KV cache and the decode fast path), the settings resolved and checked
(:class:`Job`), and the greedy/sampling loop (:func:`sampling_loop`). Beam search, the other loop, is
in :mod:`gpttui.core.beam_search`; the streaming, text and public API in :mod:`gpttui.core.generate`.

A loop is a generator of :class:`Step` (one per new token) that returns why it stopped (one of
``generate.STOP_REASONS``), checking the job's cancel event before every token.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch import nn

from gpttui.core.checkpoints import unwrap_model
from gpttui.core.config import GPTConfig
from gpttui.core.errors import ConfigError
from gpttui.core.fastdecode import decoder_for
from gpttui.core.logits import apply_temperature, apply_top_k, apply_top_p, penalize, sample_from
from gpttui.core.model import generation_memory_estimate
from gpttui.core.resources import check_fits

if TYPE_CHECKING:
    from gpttui.core.generate import SamplingConfig


# --- what generation reads off a model (ours has a cfg; the book's GPTModel does not) ------------------


def context_length(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        return int(cfg.context_length)
    return int(model.pos_emb.num_embeddings)


def vocab_size(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    return int(cfg.vocab_size) if cfg is not None else int(model.tok_emb.num_embeddings)


def model_shape(model: nn.Module) -> GPTConfig | None:
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


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --- next-token logits ------------------------------------------------------------------------------


class Runner:
    """Next-token logits for growing sequences (batch, length), through the KV cache while they fit
    the context, then (as the book does) on the last ``context_length`` tokens at every step. With
    ``fast``, our GPTModel runs through :mod:`gpttui.core.fastdecode` (when it applies)."""

    def __init__(self, model: nn.Module, context_length: int, use_cache: bool, fast: bool = True) -> None:
        self.model = model
        self.ctx = context_length
        self.cache = model.new_cache() if use_cache and hasattr(model, "new_cache") else None
        self.fast = decoder_for(model) if self.cache is not None and fast else None
        if self.fast is not None:
            self.cache = self.fast.new_cache(context_length)
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


# --- the job ------------------------------------------------------------------------------------------


class Timer:
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
class Step:
    """One new token; with details, its probability and the top alternatives (ids, probabilities)."""

    token: int
    prob: float | None = None
    alt_ids: list[int] = field(default_factory=list)
    alt_probs: list[float] = field(default_factory=list)


class Job:
    """Everything the token loops need, resolved and checked."""

    def __init__(self, model: nn.Module, prompt_ids: Sequence[int], cfg: "SamplingConfig", eos_id: int | None,
                 cancel: threading.Event | None, n_alternatives: int, vocab_limit: int | None) -> None:
        self.model = unwrap_model(model)
        self.cfg = cfg
        self.prompt_ids = list(prompt_ids)
        self.eos_id = eos_id
        self.cancel = cancel
        self.n_alt = n_alternatives
        self.vocab_limit = vocab_limit
        self.device = model_device(self.model)
        self.ctx = context_length(self.model)
        self._check_size()
        self.timer = Timer()
        self.seed = cfg.seed
        if not cfg.greedy and self.seed is None:
            self.seed = secrets.randbits(63)

    def _check_size(self) -> None:
        """Refuse settings that cannot fit before anything is allocated: beams far beyond any use, or
        beams whose caches and scores need more memory than is free. (``max_new_tokens`` has no bound:
        nothing is sized by it, the output streams until it is stopped.)"""
        vocab = vocab_size(self.model)
        beams = self.cfg.num_beams
        if beams > vocab * vocab:
            raise ConfigError(f"num_beams ({beams:,}) is beyond any use for a vocabulary of {vocab:,} tokens "
                              f"(at most {vocab * vocab:,}, its square); use fewer beams (a handful is usual).")
        shape = model_shape(self.model)
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
            logits = penalize(logits, present, self.cfg.repetition_penalty)
        return logits

    def presence(self, rows: int, vocab: int) -> torch.Tensor | None:
        if self.cfg.repetition_penalty == 1.0:
            return None
        present = torch.zeros(rows, vocab, dtype=torch.bool, device=self.device)
        if self.prompt_ids:
            present[:, torch.tensor(self.prompt_ids, device=self.device)] = True
        return present

    def details(self, dist: torch.Tensor, token: int) -> Step:
        """A step with the chosen token's probability and the top alternatives, from probabilities."""
        k = min(self.n_alt, dist.shape[-1])
        top_p, top_i = torch.topk(dist, k)
        return Step(token, float(dist[token]), top_i.tolist(), top_p.tolist())


# --- greedy and sampling --------------------------------------------------------------------------------


def _choose(job: Job, logits: torch.Tensor, generator: torch.Generator | None) -> Step:
    """The next token from one row of processed logits: argmax (greedy), or a draw after temperature,
    top-k and top-p."""
    cfg = job.cfg
    if generator is None:
        token = int(torch.argmax(logits))
        return job.details(torch.softmax(logits, -1), token) if job.n_alt else Step(token)
    logits = apply_temperature(logits, cfg.temperature)
    logits = apply_top_k(logits, cfg.top_k)
    logits = apply_top_p(logits, cfg.top_p)
    probs = torch.softmax(logits, -1)
    token = int(sample_from(probs[None], generator)[0])
    return job.details(probs, token) if job.n_alt else Step(token)


def sampling_loop(job: Job) -> Iterator[Step]:
    """Greedy or sampled tokens, one at a time; returns the stop reason."""
    cfg = job.cfg
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
    runner = Runner(job.model, job.ctx, cfg.use_cache)
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
            step = _choose(job, job.process(raw, present)[0], generator)
            token = step.token
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


__all__ = ["Job", "Runner", "Step", "Timer", "context_length", "model_device", "model_shape", "sampling_loop",
           "unwrap_model", "vocab_size"]
