"""Starting a training run as its own process, from any front end (the CLI's ``train --detach`` and the
app's "in the background"): :func:`train_argv` writes the ``gpttui train`` arguments of a planned run,
:func:`launch_detached` starts them in their own session, with the output in ``runs/<id>/train.log``.

A detached run outlives the process that started it (and its terminal): it is followed and steered
through its run directory (:mod:`gpttui.core.runs`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no torch, numpy or tiktoken at import: the CLI imports this module at start
    from gpttui.core.config import GPTConfig, TrainConfig
    from gpttui.core.data import DataSettings

OFF = "off"  # `--min-lr off`, `--max-steps off`: no value (over a resumed checkpoint's)


def _opt(flag: str, value: object) -> list[str]:
    """``--flag=value`` (one word, so a value starting with '-' is never read as a flag)."""
    return [f"{flag}={value}"]


def _bool_flag(flag: str, value: bool) -> list[str]:
    return [f"--{flag}" if value else f"--no-{flag}"]


def _data_args(settings: DataSettings) -> list[str]:
    argv = _opt("--data", settings.source) + _opt("--tokenizer", settings.tokenizer)
    argv += _opt("--context-length", settings.context_length)
    argv += _opt("--stride", OFF if settings.stride is None else settings.stride)
    argv += _opt("--batch-size", settings.batch_size) + _opt("--train-ratio", repr(float(settings.train_ratio)))
    argv += _opt("--data-seed", settings.seed)
    argv += _opt("--text-field", settings.text_field) + _opt("--split", settings.split)
    return argv


def _model_args(model_config: GPTConfig, settings: DataSettings) -> list[str]:
    """The shape as explicit flags over the ``tiny`` preset (every field given, so the preset adds nothing)."""
    from gpttui.core.tokenizer import TOKENIZER_VOCAB

    vocab = TOKENIZER_VOCAB.get(settings.tokenizer)
    if vocab is not None and model_config.vocab_size != vocab:
        raise ValueError(f"a new model's vocabulary ({model_config.vocab_size}) is the {settings.tokenizer} "
                         f"tokenizer's ({vocab}) on the command line")
    argv = ["--preset=tiny"] + _opt("--n-layers", model_config.n_layers) + _opt("--n-heads", model_config.n_heads)
    argv += _opt("--emb-dim", model_config.emb_dim) + _opt("--drop-rate", repr(float(model_config.drop_rate)))
    argv += _opt("--model-context-length", model_config.context_length)
    argv += _bool_flag("qkv-bias", model_config.qkv_bias) + _bool_flag("tie-weights", model_config.tie_weights)
    return argv


def _train_args(config: TrainConfig) -> list[str]:
    """Every TrainConfig field, including the ones that mean "none" (so a resumed checkpoint's own
    settings never leak in where the caller chose none)."""
    c = config
    argv = _opt("--epochs", c.epochs) + _opt("--max-steps", OFF if c.max_steps is None else c.max_steps)
    argv += _opt("--lr", repr(float(c.lr))) + _opt("--min-lr", OFF if c.min_lr is None else repr(float(c.min_lr)))
    argv += _opt("--weight-decay", repr(float(c.weight_decay))) + _opt("--warmup-steps", c.warmup_steps)
    argv += _opt("--grad-clip", 0 if c.grad_clip is None else repr(float(c.grad_clip)))
    argv += _opt("--grad-accum", c.grad_accum) + _opt("--eval-freq", c.eval_freq) + _opt("--eval-iter", c.eval_iter)
    argv += _opt("--start-context", c.start_context) + _opt("--sample-tokens", c.sample_tokens)
    argv += _bool_flag("sample-at-eval", c.sample_at_eval)
    argv += _opt("--seed", c.seed) + _opt("--device", c.device) + _opt("--dtype", c.dtype)
    argv += _opt("--checkpoint-every", c.checkpoint_every)
    argv += _bool_flag("book", c.book) + _bool_flag("deterministic", c.deterministic)
    if c.peak_tflops is not None:
        argv += _opt("--peak-tflops", repr(float(c.peak_tflops)))
    if c.compile:
        argv.append("--compile")
    if c.save_name:
        argv += _opt("--save", c.save_name)
    return argv


def train_argv(settings: DataSettings, model_config: GPTConfig | None, config: TrainConfig, *,
               resume: str | None, overwrite: bool, fresh_optimizer: bool = False, nproc: int = 1) -> list[str]:
    """The ``gpttui train ...`` arguments (``train`` first, without the program) that run exactly this:
    the data settings, the new model's shape (``model_config``; ``None`` when resuming), every training
    setting, and what to continue and whether it may replace a checkpoint; ``nproc`` > 1 trains with that
    many processes (torchrun DDP, :mod:`gpttui.core.distributed`)."""
    if model_config is None and resume is None:
        raise ValueError("give a model config for a new model, or a checkpoint to resume")
    argv = ["train"] + _data_args(settings)
    if resume is not None:
        argv += _opt("--resume", resume)
    else:
        argv += _model_args(model_config, settings)
    argv += _train_args(config)
    if overwrite:
        argv.append("--overwrite")
    if fresh_optimizer:
        argv.append("--fresh-optimizer")
    if nproc != 1:
        argv += _opt("--nproc", nproc)
    return argv


def _has_run_id(argv: list[str]) -> bool:
    return any(a == "--run-id" or a.startswith("--run-id=") for a in argv)


def launch_detached(argv: list[str], run_id: str | None = None) -> tuple[str, Path, int]:
    """Start ``gpttui <argv>`` (a ``train`` command) in its own session, stdin from /dev/null, output to
    ``runs/<id>/train.log``; returns ``(run_id, run_dir, pid)`` at once. The run gets ``--run-id``
    (``run_id``, or a new one) so its directory is known before the child writes anything; a
    ``starting`` status.json is written for it until it writes its own."""
    from gpttui.core import paths
    from gpttui.core.events import new_run_id
    from gpttui.core.runs import write_starting_status

    run_id = run_id or new_run_id()
    run_dir = paths.runs_dir() / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = list(argv)
    if not _has_run_id(argv):
        argv += ["--run-id", run_id]
    with open(run_dir / "train.log", "ab") as log, open(os.devnull, "rb") as devnull:
        child = subprocess.Popen([sys.executable, "-m", "gpttui", *argv], stdin=devnull, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    try:
        write_starting_status(run_dir, run_id, child.pid)
    except OSError:
        pass  # the child writes its own status as it starts
    # Reap the child when it ends, so that a long-lived launcher (the app) never keeps a zombie whose pid
    # still answers: a killed run must read as crashed. A daemon thread: it never holds the launcher up.
    threading.Thread(target=child.wait, name=f"gpttui-reap-{run_id}", daemon=True).start()
    return run_id, run_dir, child.pid


__all__ = ["train_argv", "launch_detached", "OFF"]
