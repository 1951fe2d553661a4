"""Checkpoint files: what a checkpoint folder holds, safe loading, weights to and from disk.
(The book's ``.pth`` files and GPT-2 weights: :mod:`gpttui.core.interop`, :mod:`gpttui.core.gpt2_import`.)

A checkpoint is a folder ``<checkpoints dir>/<name>/`` holding

- ``model.safetensors``: the weights under the book's parameter names (no ``att.mask`` buffers), as
  contiguous CPU tensors. A tied ``out_head.weight`` (``GPTConfig.tie_weights``) is stored once and
  re-tied on load; the alias is recorded in the file's metadata.
- ``optimizer.pt`` (optional): ``optimizer.state_dict()``.
- ``trainer_state.pt`` (optional): RNG states, data position, whatever the trainer passes.
- ``meta.json``: model config, tokenizer, training config, progress, losses, dataset, provenance.

Every ``.pt`` file is read with ``torch.load(weights_only=True)`` (:func:`safe_torch_load`): a file
that needs arbitrary unpickling is refused, never executed.

The folder itself (names, atomic saves, crash recovery, locks, the meta.json schema) belongs to
:class:`gpttui.core.store.CheckpointStore`; the functions ``save_checkpoint``, ``load_checkpoint``,
``list_checkpoints``, ``show``, ``rename_checkpoint`` and ``delete_checkpoint`` here call it on the
default store.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from gpttui.core import paths
from gpttui.core.config import GPTConfig
from gpttui.core.errors import CheckpointError
from gpttui.core.model import GPTModel, unwrap_model  # noqa: F401  (unwrap_model: re-exported)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"

SOURCES = ("trained", "imported-gpt2", "imported-book")
MAX_NAME_LENGTH = 100
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DataParallel / DistributedDataParallel

# Defaults for what the caller describes (any other keys the caller passes are kept as well).
DEFAULT_META: dict[str, Any] = {
    "source": "trained",
    "tokenizer": None,
    "train_config": {},
    "step": 0,
    "epoch": 0,
    "tokens_seen": 0,
    "last_train_loss": None,
    "last_val_loss": None,
    "best_val_loss": None,
    "dataset": None,
}


# ---------------------------------------------------------------------------------------------
# Names and paths
# ---------------------------------------------------------------------------------------------


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a checkpoint folder, else raise :class:`CheckpointError`."""
    if not isinstance(name, str):
        raise CheckpointError(f"A checkpoint name must be text, not {type(name).__name__}.")
    if not name:
        raise CheckpointError("A checkpoint name cannot be empty.")
    shown = name if len(name) <= 40 else name[:40] + "..."
    if len(name) > MAX_NAME_LENGTH:
        raise CheckpointError(f"Checkpoint name {shown!r} is too long ({len(name)} characters, "
                              f"at most {MAX_NAME_LENGTH}).")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise CheckpointError(f"Checkpoint name {shown!r} cannot contain path separators.")
    if name.startswith("."):
        raise CheckpointError(f"Checkpoint name {shown!r} cannot start with a dot.")
    if ".." in name:
        raise CheckpointError(f"Checkpoint name {shown!r} cannot contain '..'.")
    if not _NAME_RE.fullmatch(name):
        raise CheckpointError(f"Checkpoint name {shown!r} may only use letters, digits and . _ + - "
                              "(and must start with a letter, digit or _).")
    if name.endswith("."):
        raise CheckpointError(f"Checkpoint name {shown!r} cannot end with a dot.")
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise CheckpointError(f"Checkpoint name {shown!r} is reserved on Windows; choose another.")
    return name


def checkpoint_path(name: str) -> Path:
    """The folder of checkpoint ``name`` (which may not exist)."""
    return paths.checkpoints_dir() / validate_name(name)


def _store():
    from gpttui.core.store import default_store

    return default_store()


def checkpoint_exists(name: str) -> bool:
    """Whether a checkpoint folder named ``name`` exists (complete or not)."""
    return _store().exists(name)


# ---------------------------------------------------------------------------------------------
# Safe loading and state-dict helpers
# ---------------------------------------------------------------------------------------------


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, errors as :class:`CheckpointError`.

    ``weights_only`` restricts unpickling to tensors and plain data (dicts, lists, numbers, strings):
    a file that needs anything else (which could run code) is refused, not executed.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if "global" in line.lower()), "")
        if detail:  # a class or function reference: the pickle wants to build objects or call code
            raise CheckpointError(
                f"{path} contains code or Python objects other than tensors and plain data, so it was "
                "not loaded (gpttui only reads files that torch.load(weights_only=True) accepts; "
                f"loading it otherwise could run arbitrary code). Reason: {detail}"
            ) from e
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
        raise CheckpointError(f"{path} is corrupt, truncated or not a PyTorch file that can be loaded "
                              f"safely ({detail}); it was not loaded.") from e
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # RuntimeError (bad zip), EOFError (empty), KeyError (garbage), ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is corrupt, truncated or not a PyTorch file ({msg}).") from e


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without ``_orig_mod.`` (torch.compile) and ``module.`` (DataParallel) prefixes."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        clean = key
        while clean.startswith(_PREFIXES):
            for prefix in _PREFIXES:
                clean = clean.removeprefix(prefix)
        if clean in out:
            raise CheckpointError(f"State dict has both {key!r} and another key that is also {clean!r} "
                                  "once wrapper prefixes are removed.")
        out[clean] = value
    return out


def _to_cpu(obj: Any) -> Any:
    """Tensors moved to the CPU (detached), containers rebuilt, everything else as is."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


_SAFE_SCALARS = (str, bytes, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def _weights_only_safe(obj: Any, where: str) -> Any:
    """``obj`` with numpy values, paths and sets turned into types ``weights_only`` loading accepts."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, _SAFE_SCALARS):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {k if isinstance(k, (str, int, float, bool, type(None))) else str(k):
                _weights_only_safe(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_weights_only_safe(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (list, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [_weights_only_safe(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise CheckpointError(f"{where} is a {type(obj).__name__}, which cannot be stored in a checkpoint "
                          "(only tensors, numbers, strings, lists, tuples, dicts and numpy arrays).")


# ---------------------------------------------------------------------------------------------
# RNG state (for trainer_state.pt)
# ---------------------------------------------------------------------------------------------


def _mps_ready() -> bool:
    """MPS exists here and its generator can be read (``torch.mps`` lacks the calls in some builds)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available() and hasattr(torch, "mps")
                and hasattr(torch.mps, "get_rng_state"))


def capture_rng_state() -> dict[str, Any]:
    """Torch CPU, CUDA (every device, once CUDA is in use) and MPS, Python ``random`` and numpy global
    RNG states, as weights_only-safe data."""
    version, internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss_next],
        "numpy": {"bit_generator": str(np_name), "keys": np.asarray(np_keys).tolist(), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    if _mps_ready():
        state["mps"] = torch.mps.get_rng_state().cpu()
    return state


def _restore_cuda(states: list[Any]) -> str | None:
    """Set every CUDA device's generator, or say why not (no GPU here, another number of them)."""
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have != len(states):
        where = "this machine has none" if have == 0 else f"this machine has {have}"
        return (f"The saved random state is for {len(states)} CUDA device(s) and {where}: GPU random numbers "
                "(dropout on the GPU) start afresh, so the resumed run will not repeat the original exactly.")
    torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in states])
    return None


def _restore_mps(state: Any) -> str | None:
    if not _mps_ready():
        return ("The saved random state includes an Apple GPU (MPS) part and this machine has no MPS: its random "
                "numbers start afresh, so the resumed run will not repeat the original exactly.")
    torch.mps.set_rng_state(torch.as_tensor(state, dtype=torch.uint8).cpu())
    return None


def restore_rng_state(state: Mapping[str, Any]) -> list[str]:
    """Undo :func:`capture_rng_state`. Missing parts are skipped; a device part this machine cannot take
    (CUDA state without a GPU or for another number of GPUs, MPS state without MPS) is skipped too and
    the returned notes say so, for the caller to show (callers that ignore them lose nothing else)."""
    notes: list[str] = []
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if state.get("cuda"):
        notes.append(_restore_cuda(list(state["cuda"])))
    if state.get("mps") is not None:
        notes.append(_restore_mps(state["mps"]))
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["bit_generator"], np.asarray(s["keys"], dtype=np.uint32), int(s["pos"]),
                             int(s["has_gauss"]), float(s["cached_gaussian"])))
    return [note for note in notes if note]


# ---------------------------------------------------------------------------------------------
# Weights to and from disk (the store in gpttui.core.store does the files, names and locks)
# ---------------------------------------------------------------------------------------------


def _weights_for_disk(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU tensors with clean keys, each storage once; ``aliases`` maps dropped keys to kept."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    pointers: set[int] = set()
    for key, value in clean_state_dict(model.state_dict()).items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value.detach()
        ident = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(),
                 tuple(value.shape), tuple(value.stride()), value.dtype)
        if value.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        cpu = value.cpu().contiguous()
        if cpu.untyped_storage().nbytes() != cpu.numel() * cpu.element_size() or cpu.data_ptr() in pointers:
            cpu = cpu.clone()  # a view into a larger (or shared) storage: store just its own bytes
        pointers.add(cpu.data_ptr())
        tensors[key] = cpu
    return tensors, aliases


def _optimizer_state(optimizer: Any) -> dict[str, Any]:
    state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    if not isinstance(state, Mapping) or "state" not in state or "param_groups" not in state:
        raise CheckpointError("The optimizer state must be an optimizer or its state_dict() "
                              "(a dict with 'state' and 'param_groups').")
    return _weights_only_safe(_to_cpu(dict(state)), "optimizer state")


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise CheckpointError(f"{file} is missing.")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file} is corrupt or truncated ({e}).") from e
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
        if not isinstance(aliases, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise CheckpointError(f"{file} has unreadable alias metadata ({e}).") from e
    return tensors, aliases


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def model_from_state_dict(cfg: GPTConfig, tensors: dict[str, torch.Tensor], where: str) -> GPTModel:
    """A GPTModel holding exactly ``tensors`` (strict; built on the meta device, so no random weights
    exist; a tied head re-tied). Every missing, unexpected or mis-shaped tensor is reported at once."""
    with torch.device("meta"):
        model = GPTModel(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} is {tuple(tensors[k].shape)}, expected {tuple(expected[k].shape)}"
             for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    problems = [f"{what}: {_few(items)}" for what, items in
                (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", wrong)) if items]
    if problems:
        raise CheckpointError(f"{where} does not match the model config ({'; '.join(problems)}).")
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where} could not be loaded: {e}") from e
    if cfg.tie_weights:
        model.out_head.weight = model.tok_emb.weight
    return model


def read_weights(file: Path, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``model.safetensors``, aliases (tied weights) restored."""
    tensors, aliases = _read_safetensors(file)
    for alias, target in aliases.items():
        if target not in tensors:
            raise CheckpointError(f"{file}: {alias} refers to {target}, which is missing.")
        tensors[alias] = tensors[target]
    if cfg.tie_weights and "out_head.weight" not in tensors and "tok_emb.weight" in tensors:
        tensors["out_head.weight"] = tensors["tok_emb.weight"]
    return tensors


# ---------------------------------------------------------------------------------------------
# The store's operations on the default store (``$GPTTUI_HOME``), for callers that need one call
# ---------------------------------------------------------------------------------------------


def save_checkpoint(name: str, model: nn.Module, *, optimizer: Any = None, meta: Mapping[str, Any] | None = None,
                    trainer_state: Mapping[str, Any] | None = None, overwrite: bool = False,
                    lease: Any = None) -> Path:
    """:meth:`CheckpointStore.save` on the default store. An existing ``name`` is kept unless
    ``overwrite`` (or a lease that may replace it) is given."""
    return _store().save(name, model, optimizer=optimizer, meta=meta, trainer_state=trainer_state,
                         overwrite=overwrite, lease=lease)


def load_checkpoint(name: str, *, device: str | torch.device = "cpu", load_optimizer: bool = False):
    """:meth:`CheckpointStore.load` on the default store."""
    return _store().load(name, device=device, load_optimizer=load_optimizer)


def read_meta(path: Path) -> dict[str, Any]:
    """The checked ``meta.json`` (raw dict) of the checkpoint folder ``path``."""
    from gpttui.core.store import read_meta_file

    return read_meta_file(path).raw


def list_checkpoints():
    """All checkpoints of the default store, newest first (broken ones with ``error`` set)."""
    return _store().list()


def show(name: str) -> dict[str, Any]:
    return _store().show(name)


def rename_checkpoint(old: str, new: str) -> Path:
    return _store().rename(old, new)


def delete_checkpoint(name: str) -> None:
    _store().delete(name)


def __getattr__(attr: str) -> Any:  # types that live in the store module
    if attr in ("CheckpointInfo", "LoadedCheckpoint", "CheckpointStore", "CheckpointMeta"):
        from gpttui.core import store

        return getattr(store, attr)
    raise AttributeError(attr)


__all__ = [
    "FORMAT_VERSION", "MODEL_FILE", "OPTIMIZER_FILE", "TRAINER_STATE_FILE", "META_FILE", "SOURCES",
    "DEFAULT_META", "validate_name", "checkpoint_path",
    "checkpoint_exists", "safe_torch_load", "unwrap_model", "clean_state_dict", "capture_rng_state",
    "restore_rng_state", "save_checkpoint", "load_checkpoint", "read_meta", "list_checkpoints", "show",
    "rename_checkpoint", "delete_checkpoint",
]
