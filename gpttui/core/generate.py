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

Where each part lives:

- here: the settings (:class:`SamplingConfig`, and :func:`parse_stop_strings` for stop strings typed
  in one line), the events and result, the text (UTF-8 across tokens, stop strings) and the public
  functions;
- :mod:`gpttui.core.logits`: the logits processors, pure functions applied in this order:
  :func:`apply_repetition_penalty`, :func:`apply_temperature`, :func:`apply_top_k`,
  :func:`apply_top_p`, then :func:`sample_from` (re-exported here);
- :mod:`gpttui.core.decoding`: the token loop's machinery (the model as next-token logits through the
  KV cache, the checked job, the greedy/sampling loop);
- :mod:`gpttui.core.beam_search`: beam search;
- :mod:`gpttui.core.fastdecode`: the decode fast path (fused q/k/v, oneDNN-packed bf16 weights) with
  its fallbacks; it must compute the model's own logits.

``generate_greedy`` and ``sample_text`` are what the trainer uses for the samples it prints.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from gpttui.core.beam_search import beam_loop
from gpttui.core.decoding import Job, Runner, Step, context_length, sampling_loop, unwrap_model, vocab_size
from gpttui.core.errors import ConfigError
from gpttui.core.logits import (  # noqa: F401  (re-exported: the logits processors are part of this API)
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    sample_from,
)
from gpttui.core.tokenizer import StreamDecoder, Tokenizer

EOT = "eot"
"""``SamplingConfig.eos_id`` default: stop at the tokenizer's end-of-text id."""

STOP_REASONS = ("max_tokens", "eos", "stop", "cancel")
STOP_PHRASES = {"max_tokens": "reached max tokens", "eos": "the model ended the text",
                "stop": "hit a stop string", "cancel": "stopped by you"}
"""How a reply ended, in words (``stopped by stop`` read badly): for footers of replies, app and CLI."""


def stop_phrase(reason: str) -> str:
    """:data:`STOP_PHRASES`' words for one of :data:`STOP_REASONS` (an unknown reason as it is)."""
    return STOP_PHRASES.get(reason, f"stopped ({reason})")


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


# --- stop strings typed in one line (the app's field) ---------------------------------------------


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "|": "|", '"': '"', "'": "'"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.S)


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) > 1:  # \xHH, \uHHHH, \UHHHHHHHH
        value = int(code[1:], 16)
        return chr(value) if value <= 0x10FFFF else match.group(0)
    return _ESCAPES.get(code, match.group(0))  # an unknown escape stays as typed


def parse_stop_strings(text: str) -> tuple[str, ...]:
    """Stop strings typed in one line: separated by ``|``, each stripped of surrounding spaces (wrap one
    in double quotes to keep them: ``" "``), with the escapes ``\\n``, ``\\t``, ``\\r``, ``\\0``,
    ``\\\\`` (a backslash), ``\\|`` (a ``|`` inside a stop string), ``\\"``, ``\\xHH``, ``\\uHHHH``,
    ``\\UHHHHHHHH``. Every other character is kept as it is ("é", "日本"), and so is a backslash that
    starts no escape. Empty pieces are dropped. E.g. ``\\n\\n | "."`` gives ("\\n\\n", ".")."""
    pieces, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "|":
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    stops = []
    for piece in pieces:
        piece = piece.strip()
        body = piece[1:-1]
        if len(piece) >= 2 and piece[0] == piece[-1] == '"' and (len(body) - len(body.rstrip("\\"))) % 2 == 0:
            piece = body  # quoted (the closing quote is not an escaped \")
        piece = _ESCAPE.sub(_unescape, piece)
        if piece:
            stops.append(piece)
    return tuple(stops)


# --- events and result ----------------------------------------------------------------------------


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


# --- the model's dtype ----------------------------------------------------------------------------


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


# --- the token loops ---------------------------------------------------------------------------------


def _token_loop(job: Job) -> Iterator[Step]:
    return beam_loop(job) if job.cfg.num_beams > 1 else sampling_loop(job)


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
        inner = unwrap_model(model)
        vocab = vocab_size(inner)
        _check_prompt(ids, vocab)
        eos = _resolve_eos(cfg, tokenizer, vocab)
        limit = tokenizer.vocab_size if tokenizer.vocab_size < vocab else None
        self.job = Job(model, ids, cfg, eos, cancel, n_alternatives if details else 0, limit)
        self.result: GenerationResult | None = None
        self._it = self._run()

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> TokenEvent:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    def _event(self, step: Step, text: str) -> TokenEvent:
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
        new = generate(model, tokenizer, prompt, cfg, cancel).token_ids
    else:
        if cfg.stop:
            raise ConfigError("Stop strings need a tokenizer: pass tokenizer=... to generate_ids.")
        if not prompt:
            raise ConfigError("generate_ids needs at least one prompt token.")
        inner = unwrap_model(model)
        vocab = vocab_size(inner)
        _check_prompt(prompt, vocab)
        job = Job(model, prompt, cfg, _resolve_eos(cfg, None, vocab), cancel, 0, None)
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
    inner = unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        ctx = min(context_size, context_length(inner))
        runner = Runner(inner, ctx, use_cache=ctx == context_length(inner), fast=False)
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
    "EOT", "STOP_REASONS", "STOP_PHRASES", "stop_phrase", "SamplingConfig", "TokenEvent", "Alternative",
    "GenerationResult", "Stream",
    "stream", "generate", "generate_ids", "generate_greedy", "sample_text", "cast_for_inference",
    "apply_repetition_penalty", "apply_temperature", "apply_top_k", "apply_top_p", "sample_from",
    "parse_stop_strings",
]
