"""Beam search: keeps the ``num_beams`` most likely sequences by summed log-probability at every step.

A sequence that picks the end-of-text id among its beam's best candidates is finished; the search ends
after ``max_new_tokens``, or once ``num_beams`` sequences are finished and no live one scores better
(transformers' ``early_stopping=False`` rule). The best sequence is the one with the highest
``sum_logprob / new_tokens ** length_penalty`` (end-of-text counted). Deterministic: the sampling
settings other than the repetition penalty do not apply.
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import torch

from gpttui.core.decoding import Job, Runner, Step


class _Beams:
    """The live sequences (token ids, summed log-probabilities, steps so far) and the finished ones."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.k = job.cfg.num_beams
        self.seqs = torch.tensor([job.prompt_ids], dtype=torch.long, device=job.device)
        self.sums = torch.zeros(1, dtype=torch.float64)
        self.hist: list[list[Step]] = [[]]
        self.present: torch.Tensor | None = None
        self.finished: list[tuple[float, list[Step], bool]] = []  # (score, steps, ended on end-of-text)

    def norm(self, total: float, n: int) -> float:
        return total / (max(n, 1) ** self.job.cfg.length_penalty)

    def log_probs(self, raw: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (beams, vocab) on the CPU in float64, after the repetition penalty."""
        if self.present is None and self.job.cfg.repetition_penalty != 1.0:
            self.present = self.job.presence(1, raw.shape[-1])
        return torch.log_softmax(self.job.process(raw, self.present), dim=-1).cpu().double()

    def select(self, logp: torch.Tensor, step_no: int) -> list[tuple[int, int, float]]:
        """The next ``k`` live (beam, token, summed score) among the 2k best candidates; end-of-text
        candidates ranked within the first k finish their sequence."""
        vocab = logp.shape[-1]
        cand = (self.sums[:, None] + logp).view(-1)
        top_scores, top_idx = torch.topk(cand, min(2 * self.k, cand.numel()))
        chosen: list[tuple[int, int, float]] = []
        for rank, (score, flat) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            if score == float("-inf"):
                break
            beam, token = divmod(flat, vocab)
            if token == self.job.eos_id:
                if rank < self.k:
                    self.finished.append((self.norm(score, step_no + 1), self.hist[beam] + [Step(token)], True))
                continue
            chosen.append((beam, token, score))
            if len(chosen) == self.k:
                break
        return chosen

    def advance(self, chosen: list[tuple[int, int, float]], logp: torch.Tensor, runner: Runner) -> None:
        """Extend the chosen beams by their tokens (and the runner's cache with them)."""
        job = self.job
        if job.n_alt:
            alt_p, alt_i = torch.topk(logp, min(job.n_alt, logp.shape[-1]), dim=-1)
            alt_p = alt_p.exp()
        beam_idx = [b for b, _, _ in chosen]
        rows_before = self.seqs.shape[0]
        tokens = [t for _, t, _ in chosen]
        new_hist = []
        for b, t, _ in chosen:
            s = Step(t, math.exp(float(logp[b, t])))
            if job.n_alt:
                s.alt_ids, s.alt_probs = alt_i[b].tolist(), alt_p[b].tolist()
            new_hist.append(self.hist[b] + [s])
        self.hist = new_hist
        index = torch.tensor(beam_idx, dtype=torch.long, device=job.device)
        tok_t = torch.tensor(tokens, dtype=torch.long, device=job.device)
        self.seqs = torch.cat([self.seqs.index_select(0, index), tok_t[:, None]], dim=1)
        if self.seqs.shape[1] > job.ctx + 1:  # the runner has seen more than the context: windows from now on
            self.seqs = self.seqs[:, -(job.ctx + 1):]
        self.sums = torch.tensor([s for _, _, s in chosen], dtype=torch.float64)
        if self.present is not None:
            self.present = self.present.index_select(0, index)
            self.present[torch.arange(len(tokens), device=job.device), tok_t] = True
        if len(beam_idx) != rows_before or beam_idx != list(range(rows_before)):  # the cache follows
            runner.reorder(index)

    def settled(self, step_no: int) -> bool:
        """``k`` sequences are finished and no live one scores better than the worst of them."""
        if len(self.finished) < self.k:
            return False
        worst_kept = sorted((f[0] for f in self.finished), reverse=True)[self.k - 1]
        best_live = max(self.norm(s, step_no + 1) for s in self.sums.tolist())
        return best_live <= worst_kept

    def best(self, stopped: str) -> tuple[list[Step], str, float]:
        for s, h in zip(self.sums.tolist(), self.hist):
            self.finished.append((self.norm(s, len(h)), h, False))
        if not self.finished:
            return [], stopped, float("-inf")
        score, best, ended_eos = max(self.finished, key=lambda f: f[0])
        if ended_eos:
            return best[:-1], "eos", score
        return best, ("cancel" if stopped == "cancel" else "max_tokens"), score


def beam_search(job: Job) -> tuple[list[Step], str, float]:
    """The best sequence's steps (end-of-text excluded), why the search stopped, and its score."""
    beams = _Beams(job)
    runner = Runner(job.model, job.ctx, job.cfg.use_cache)
    stopped = "max_tokens"
    for step_no in range(job.cfg.max_new_tokens):
        if job.cancelled():
            stopped = "cancel"
            break
        start = time.perf_counter()
        with torch.inference_mode():
            logp = beams.log_probs(runner(beams.seqs))
            chosen = beams.select(logp, step_no)
            if chosen:
                beams.advance(chosen, logp, runner)
        job.timer.add(step_no, time.perf_counter() - start)
        if not chosen:
            stopped = "eos"
            beams.hist = []
            break
        if beams.settled(step_no):
            stopped = "eos"
            break
    return beams.best(stopped)


def beam_loop(job: Job) -> Iterator[Step]:
    """:func:`beam_search`'s best sequence, streamed; returns the stop reason."""
    steps, stopped, _ = beam_search(job)
    for step in steps:
        if job.cancelled():
            return "cancel"
        yield step
    return stopped


__all__ = ["beam_search", "beam_loop"]
