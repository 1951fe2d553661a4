"""Import OpenAI's pretrained GPT-2 weights as an ordinary gpttui checkpoint (book, chapter 5.5).

The import in three steps, each in its own module:

- where the files are (:mod:`gpttui.core.gpt2_sources`): :func:`resolve_source` takes a folder in Hugging
  Face layout (``config.json`` + ``model.safetensors``, shards, or ``pytorch_model.bin``), a size name
  (``gpt2-small`` ... ``gpt2-xl``: the Hugging Face cache, else a download with the optional
  ``huggingface_hub``), or OpenAI's TensorFlow checkpoint folder (read with ``tf.train.load_variable``
  as the book's ``gpt_download.py`` does; needs ``pip install 'gpttui[tf]'``);
- what they hold and how it becomes the book's model (:mod:`gpttui.core.gpt2_weights`): the config, the
  declarative weight map (:data:`~gpttui.core.gpt2_weights.WEIGHT_MAP`), readers that check every name
  and shape from the headers first and convert one tensor at a time into a model built on the meta device;
- here: the entry points. :func:`read_gpt2` returns the model and meta unsaved; :func:`import_gpt2` also
  saves it as a checkpoint.

Untrusted input: the config must not describe more weights than the files hold, its vocabulary must suit
the tokenizer (gpt2: at least 50257), and every tensor passes :func:`interop.check_untrusted_tensors`
before it is copied. Memory: about one copy of the weights (plus one tensor) at the peak.

Every name that other code imports from here (sources, configs, the mapping) stays importable here.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpttui.core import checkpoints, interop
from gpttui.core.config import GPTConfig
from gpttui.core.errors import CheckpointError
from gpttui.core.gpt2_sources import (
    BIN_FILE, BIN_INDEX, DEFAULT_ENDPOINT, HF_CONFIG, HUB_FILES, SAFETENSORS_FILE, SAFETENSORS_INDEX, SIZE_REPOS,
    TF_HPARAMS, ImportCancelled, ProgressFn, ResolvedSource, StageFn, raise_if_cancelled, repo_urls,
    resolve_source, size_name,
)
from gpttui.core.gpt2_weights import (
    GPT2_CONTEXT, GPT2_VOCAB_SIZE, WEIGHT_MAP, Weight, config_from_hf, config_from_tf_hparams, convert,
    infer_size, model_from_tf_variables, read_model, tf_name_to_hf,
)
from gpttui.core.model import GPTModel, count_parameters

SOURCE = "imported-gpt2"


@dataclass
class LoadedGPT2:
    model: GPTModel
    config: GPTConfig
    size: str | None
    origin: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    name: str
    path: Path
    config: GPTConfig
    size: str | None
    origin: dict[str, Any]
    parameter_count: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def load_resolved(resolved: ResolvedSource, *, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, tokenizer: str | None = None,
                  allow_nonfinite: bool = False) -> LoadedGPT2:
    """Read, check and convert the files of ``resolved`` into a GPTModel (eval mode, float32, CPU).

    The config is checked against the size of the weight files, and against ``tokenizer`` when given
    (:func:`interop.check_tokenizer`), before any weights are read; every tensor is checked as it is
    read (:func:`interop.check_untrusted_tensors`; NaN/inf refused unless ``allow_nonfinite``)."""
    model, notes = read_model(resolved, progress=progress, cancel=cancel, tokenizer=tokenizer,
                              allow_nonfinite=allow_nonfinite)
    size = resolved.size or infer_size(model.cfg)
    return LoadedGPT2(model, model.cfg, size, dict(resolved.origin), notes)


def load_gpt2(source: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
              endpoint: str | None = None, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, on_stage: StageFn | None = None,
              local_files_only: bool = False, allow_nonfinite: bool = False) -> LoadedGPT2:
    """GPT-2 from ``source`` (folder or size name, see :func:`resolve_source`) as a GPTModel, unsaved."""
    resolved = resolve_source(source, cache_dir=cache_dir, endpoint=endpoint, progress=progress,
                              cancel=cancel, on_stage=on_stage, local_files_only=local_files_only)
    if on_stage:
        on_stage(f"Converting {resolved.label}")
    return load_resolved(resolved, progress=progress, cancel=cancel, allow_nonfinite=allow_nonfinite)


def read_gpt2(source: str | os.PathLike[str], *, tokenizer: str = "gpt2", allow_nonfinite: bool = False,
              name_hint: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
              endpoint: str | None = None, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, on_stage: StageFn | None = None,
              local_files_only: bool = False) -> interop.ImportedModel:
    """GPT-2 from ``source`` as an :class:`interop.ImportedModel` (model and meta), not saved.

    ``source`` is a folder (Hugging Face layout or OpenAI's TensorFlow checkpoint) or a size name
    (``gpt2-small`` ... ``gpt2-xl``: Hugging Face cache, else the Hub). The vocabulary must suit
    ``tokenizer`` (gpt2: at least 50257 tokens); tensors are checked as :func:`load_resolved` says
    (NaN/inf refused unless ``allow_nonfinite``). ``progress(done, total)`` follows the download, then
    the conversion, in bytes (``on_stage(text)`` announces each stage); setting ``cancel`` stops either
    (:class:`ImportCancelled`). ``name_hint`` only appears in the what-to-download message."""
    resolved = resolve_source(source, name=name_hint, cache_dir=cache_dir, endpoint=endpoint, progress=progress,
                              cancel=cancel, on_stage=on_stage, local_files_only=local_files_only)
    if on_stage:
        on_stage(f"Converting {resolved.label}")
    loaded = load_resolved(resolved, progress=progress, cancel=cancel, tokenizer=tokenizer,
                           allow_nonfinite=allow_nonfinite)
    raise_if_cancelled(cancel)
    origin = loaded.origin
    meta: dict[str, Any] = {
        "source": SOURCE,
        "tokenizer": tokenizer,
        "gpt2_size": loaded.size,
        "origin": origin,
        "imported_from": origin.get("repo_id") or origin.get("path"),
        "weights_format": resolved.format,
    }
    if loaded.notes:
        meta["notes"] = list(loaded.notes)
    return interop.ImportedModel(model=loaded.model, meta=meta, notes=list(loaded.notes))


def import_gpt2(source: str | os.PathLike[str], name: str, *, overwrite: bool = False, tokenizer: str = "gpt2",
                allow_nonfinite: bool = False, cache_dir: str | os.PathLike[str] | None = None,
                endpoint: str | None = None, progress: ProgressFn | None = None,
                cancel: threading.Event | None = None, on_stage: StageFn | None = None,
                local_files_only: bool = False) -> ImportResult:
    """:func:`read_gpt2`, then save as checkpoint ``name`` (source ``imported-gpt2``); the checkpoint
    store refuses an existing name unless ``overwrite``.

    Any problem raises :class:`CheckpointError` and leaves no checkpoint behind. The checkpoint has no
    optimizer state, so ``train --resume`` continues pre-training with a fresh optimizer."""
    start = time.monotonic()
    checkpoints.validate_name(name)
    if not overwrite and checkpoints.checkpoint_exists(name):  # early, before a download or a big read
        raise CheckpointError(f"Checkpoint {name!r} already exists; choose another name (or overwrite it).")
    imported = read_gpt2(source, tokenizer=tokenizer, allow_nonfinite=allow_nonfinite, name_hint=name,
                         cache_dir=cache_dir, endpoint=endpoint, progress=progress, cancel=cancel,
                         on_stage=on_stage, local_files_only=local_files_only)
    meta = imported.meta
    if on_stage:
        on_stage(f"Saving checkpoint {name!r}")
    n_params = count_parameters(imported.model)
    path = checkpoints.save_checkpoint(name, imported.model, meta=meta, overwrite=overwrite)
    cfg = imported.config
    del imported
    return ImportResult(name=name, path=path, config=cfg, size=meta["gpt2_size"], origin=meta["origin"],
                        parameter_count=n_params, seconds=time.monotonic() - start, notes=meta.get("notes", []))


__all__ = [
    "SIZE_REPOS", "HUB_FILES", "SOURCE", "ImportCancelled", "ResolvedSource", "LoadedGPT2", "ImportResult",
    "size_name", "repo_urls", "resolve_source", "config_from_hf", "config_from_tf_hparams", "infer_size",
    "tf_name_to_hf", "convert", "model_from_tf_variables", "load_resolved", "load_gpt2", "read_gpt2",
    "import_gpt2", "WEIGHT_MAP", "Weight", "HF_CONFIG", "SAFETENSORS_FILE", "SAFETENSORS_INDEX", "BIN_FILE",
    "BIN_INDEX", "TF_HPARAMS", "DEFAULT_ENDPOINT", "GPT2_VOCAB_SIZE", "GPT2_CONTEXT",
]
