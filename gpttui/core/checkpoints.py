"""Named checkpoints: save, load, list, rename, delete. (The book's ``.pth`` files: :mod:`gpttui.core.interop`.)

A checkpoint is a folder ``paths.checkpoints_dir() / <name>/`` holding

- ``model.safetensors``: the weights under the book's parameter names (no ``att.mask`` buffers), as
  contiguous CPU tensors. A tied ``out_head.weight`` (``GPTConfig.tie_weights``) is stored once and
  re-tied on load; the alias is recorded in the file's metadata.
- ``optimizer.pt`` (optional): ``optimizer.state_dict()``.
- ``trainer_state.pt`` (optional): RNG states, data position, whatever the trainer passes.
- ``meta.json``: model config, tokenizer, training config, progress, losses, dataset, provenance.

Every ``.pt`` file is read with ``torch.load(weights_only=True)`` (:func:`safe_torch_load`): a file
that needs arbitrary unpickling is refused, never executed.

Saving is atomic: files go to a hidden temporary folder beside the target, are fsynced, and the folder
is renamed into place. Replacing a checkpoint moves the old folder aside, renames the new one in, then
deletes the old one. A crash at any point leaves the old or the new checkpoint complete under its
name: leftovers of a crashed save are hidden folders (``.tmp-*``, ``.old-*``, ``.del-*`` tagged with
the writer's process id) that the next operation cleans up, or restores (an ``.old-*`` whose
checkpoint never got its replacement), once that process is gone.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import json
import math
import os
import pickle
import random
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

import gpttui
from gpttui.core import paths
from gpttui.core.config import GPTConfig
from gpttui.core.errors import CheckpointError, ConfigError, GPTTUIError
from gpttui.core.model import GPTModel, count_parameters

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
_TEMP_KINDS = (".tmp-", ".old-", ".del-")
_STALE_SECONDS_WITHOUT_PID_CHECK = 24 * 3600  # Windows: no safe liveness probe

# Filled in by save_checkpoint whatever the caller passes.
_RESERVED_META = ("format_version", "gpttui_version", "created", "model_config", "parameter_count",
                  "dtype", "has_optimizer", "has_trainer_state")
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


def checkpoint_exists(name: str) -> bool:
    """Whether a folder named ``name`` exists in the checkpoints folder (complete or not)."""
    path = checkpoint_path(name)
    _recover(path.parent)
    return path.is_dir()


def _existing(name: str) -> Path:
    path = checkpoint_path(name)
    _recover(path.parent)
    if not path.is_dir():
        raise CheckpointError(f"No checkpoint named {name!r} (looked in {path.parent}).")
    return path


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


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as JSON data: NaN/inf become null, numpy and tensor scalars plain numbers."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _jsonable(obj.item(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, GPTConfig):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj), where)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise CheckpointError(f"{where} is a {type(obj).__name__}, which cannot be written to {META_FILE}.")


# ---------------------------------------------------------------------------------------------
# RNG state (for trainer_state.pt)
# ---------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Torch CPU (and CUDA), Python ``random`` and numpy global RNG states, as weights_only-safe data."""
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
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng_state`. Parts that are missing (or CUDA without a GPU) are skipped."""
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]])
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["bit_generator"], np.asarray(s["keys"], dtype=np.uint32), int(s["pos"]),
                             int(s["has_gauss"]), float(s["cached_gaussian"])))


# ---------------------------------------------------------------------------------------------
# Atomic file-system helpers and crash recovery
# ---------------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hidden_dir(kind: str, name: str, parent: Path) -> Path:
    return parent / f"{kind}{name}-{os.getpid()}-{secrets.token_hex(4)}"


def _parse_hidden(entry: str) -> tuple[str, str, int] | None:
    """``(kind, name, pid)`` of a ``.tmp-``/``.old-``/``.del-`` folder name, else ``None``."""
    for kind in _TEMP_KINDS:
        if entry.startswith(kind):
            parts = entry[len(kind):].rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit():
                return kind, parts[0], int(parts[1])
    return None


def _process_gone(pid: int, path: Path) -> bool:
    if pid == os.getpid():
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows: go by age instead
        with contextlib.suppress(OSError):
            return _dt.datetime.now().timestamp() - path.stat().st_mtime > _STALE_SECONDS_WITHOUT_PID_CHECK
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, owned by someone else
        return False
    return False


def _recover(ckdir: Path) -> None:
    """Tidy up after crashed saves/deletes whose process is gone (best effort, never raises).

    ``.old-<name>-*``: the previous version of a checkpoint moved aside by a save. If ``<name>`` is
    missing the save died before renaming the new version in: the old one goes back. Otherwise it is
    stale and deleted. ``.tmp-*`` (an unfinished save) and ``.del-*`` (an unfinished delete) are deleted.
    """
    try:
        entries = sorted(os.listdir(ckdir))
    except OSError:
        return
    for entry in entries:
        parsed = _parse_hidden(entry)
        if parsed is None:
            continue
        kind, name, pid = parsed
        path = ckdir / entry
        if not path.is_dir() or not _process_gone(pid, path):
            continue
        with contextlib.suppress(OSError):
            target = ckdir / name
            if kind == ".old-" and not target.exists() and (path / META_FILE).is_file():
                os.rename(path, target)
                _fsync_dir(ckdir)
            else:
                shutil.rmtree(path)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# Saving
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


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _build_meta(model: GPTModel, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None,
                has_optimizer: bool, has_trainer_state: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"format_version": FORMAT_VERSION}
    out.update(copy.deepcopy(DEFAULT_META))
    for key, value in (meta or {}).items():
        if key not in _RESERVED_META:
            out[str(key)] = value
    if out["source"] not in SOURCES:
        raise CheckpointError(f"Unknown checkpoint source {out['source']!r}; expected one of "
                              f"{', '.join(SOURCES)}.")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    out.update({
        "created": _now_iso(),
        "gpttui_version": gpttui.__version__,
        "model_config": model.cfg.to_dict(),
        "parameter_count": count_parameters(model),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "has_optimizer": has_optimizer,
        "has_trainer_state": has_trainer_state,
    })
    return _jsonable(out, "meta")


def save_checkpoint(
    name: str,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Save ``model`` (a GPTModel, possibly compiled or DataParallel-wrapped) as checkpoint ``name``.

    ``optimizer`` is an optimizer or its ``state_dict()``. ``meta`` describes the run (keys of
    :data:`DEFAULT_META` and any others); config, parameter count, version and time are filled in.
    ``trainer_state`` is stored in ``trainer_state.pt`` with the current RNG states added under
    ``"rng"`` unless it has that key. Atomic; returns the checkpoint folder.
    """
    target = checkpoint_path(name)
    ckdir = target.parent
    _recover(ckdir)
    if not overwrite and target.exists():
        raise CheckpointError(f"Checkpoint {name!r} already exists; choose another name or allow "
                              "overwriting.")
    core = unwrap_model(model)
    if not isinstance(getattr(core, "cfg", None), GPTConfig):
        raise CheckpointError(f"Cannot save a {type(core).__name__}: expected a gpttui GPTModel.")

    # Everything that can fail on bad input is prepared before anything touches the disk.
    tensors, aliases = _weights_for_disk(core)
    opt_state = _optimizer_state(optimizer) if optimizer is not None else None
    tstate = None
    if trainer_state is not None:
        tstate = dict(trainer_state)
        tstate.setdefault("rng", capture_rng_state())
        tstate = _weights_only_safe(tstate, "trainer_state")
    full_meta = _build_meta(core, tensors, meta, opt_state is not None, tstate is not None)
    st_meta = {"format": "pt", "gpttui_format_version": str(FORMAT_VERSION),
               "aliases": json.dumps(aliases, sort_keys=True)}

    from safetensors.torch import save_file

    tmp = _hidden_dir(".tmp-", name, ckdir)
    old: Path | None = None
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / MODEL_FILE), metadata=st_meta)
        _fsync_file(tmp / MODEL_FILE)
        if opt_state is not None:
            _torch_save(opt_state, tmp / OPTIMIZER_FILE)
        if tstate is not None:
            _torch_save(tstate, tmp / TRAINER_STATE_FILE)
        _write_json(tmp / META_FILE, full_meta)  # last: a folder with meta.json is complete
        _fsync_dir(tmp)
        if target.exists():
            if not overwrite:
                raise CheckpointError(f"Checkpoint {name!r} already exists; choose another name or "
                                      "allow overwriting.")
            old = _hidden_dir(".old-", name, ckdir)
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(ckdir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            with contextlib.suppress(OSError):
                os.rename(old, target)
        if isinstance(e, Exception) and not isinstance(e, GPTTUIError):  # disk full, permissions...
            raise CheckpointError(f"Could not save checkpoint {name!r} in {ckdir}: {e}") from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    model: GPTModel
    config: GPTConfig
    meta: dict[str, Any]
    optimizer_state: dict[str, Any] | None
    trainer_state: dict[str, Any] | None
    path: Path
    name: str = ""


def read_meta(path: Path) -> dict[str, Any]:
    """The checked ``meta.json`` of the checkpoint folder ``path``."""
    file = path / META_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {path.name!r} is not a complete gpttui checkpoint.")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON (not UTF-8 text: {e}).") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}).") from e
    except OSError as e:
        raise CheckpointError(f"{file} cannot be read ({e}).") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file} should hold a JSON object, not {type(meta).__name__}.")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{file} has no format_version: not a gpttui checkpoint.")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file} has format version {version}, newer than this gpttui "
                              f"({gpttui.__version__}) reads ({FORMAT_VERSION}); upgrade gpttui.")
    if not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"{file} has no model_config.")
    return meta


def _config_from_meta(meta: Mapping[str, Any], file: Path) -> GPTConfig:
    try:
        return GPTConfig.from_dict(meta["model_config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{file} has an unusable model_config: {e}") from e


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


def _describe_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor],
                       where: str) -> str | None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [f"{k} is {tuple(got[k].shape)}, expected {tuple(expected[k].shape)}"
             for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")

    problems = []
    if missing:
        problems.append(f"missing tensors: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {few(wrong)}")
    return f"{where} does not match the model config ({'; '.join(problems)})." if problems else None


def _model_from_tensors(cfg: GPTConfig, tensors: dict[str, torch.Tensor], where: str) -> GPTModel:
    """A GPTModel built without random init, holding exactly ``tensors`` (strict; tied weights re-tied)."""
    with torch.device("meta"):
        model = GPTModel(cfg)
    expected = model.state_dict()
    problem = _describe_mismatch(expected, tensors, where)
    if problem:
        raise CheckpointError(problem)
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where} could not be loaded: {e}") from e
    if cfg.tie_weights:
        model.out_head.weight = model.tok_emb.weight
    return model


def load_checkpoint(name: str, *, device: str | torch.device = "cpu",
                    load_optimizer: bool = False) -> LoadedCheckpoint:
    """Load checkpoint ``name``: the model (on ``device``, in eval mode) and its meta.

    ``optimizer_state`` is read only with ``load_optimizer=True`` (``None`` when the checkpoint has
    none); ``trainer_state`` whenever the file exists. Problems raise :class:`CheckpointError`.
    """
    path = _existing(name)
    meta = read_meta(path)
    cfg = _config_from_meta(meta, path / META_FILE)
    tensors, aliases = _read_safetensors(path / MODEL_FILE)
    for alias, target in aliases.items():
        if target not in tensors:
            raise CheckpointError(f"{path / MODEL_FILE}: {alias} refers to {target}, which is missing.")
        tensors[alias] = tensors[target]
    if cfg.tie_weights and "out_head.weight" not in tensors and "tok_emb.weight" in tensors:
        tensors["out_head.weight"] = tensors["tok_emb.weight"]
    model = _model_from_tensors(cfg, tensors, str(path / MODEL_FILE))
    model.to(device)
    model.eval()

    optimizer_state = None
    if load_optimizer and (path / OPTIMIZER_FILE).exists():
        optimizer_state = safe_torch_load(path / OPTIMIZER_FILE)
        if not isinstance(optimizer_state, dict) or "state" not in optimizer_state:
            raise CheckpointError(f"{path / OPTIMIZER_FILE} does not hold an optimizer state_dict.")
    trainer_state = None
    if (path / TRAINER_STATE_FILE).exists():
        trainer_state = safe_torch_load(path / TRAINER_STATE_FILE)
        if not isinstance(trainer_state, dict):
            raise CheckpointError(f"{path / TRAINER_STATE_FILE} does not hold a dict.")
    return LoadedCheckpoint(model=model, config=cfg, meta=meta, optimizer_state=optimizer_state,
                            trainer_state=trainer_state, path=path, name=name)


# ---------------------------------------------------------------------------------------------
# Listing, showing, renaming, deleting
# ---------------------------------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    meta: dict[str, Any] | None
    size_bytes: int
    created: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def source(self) -> str | None:
        return (self.meta or {}).get("source")

    @property
    def step(self) -> int | None:
        return (self.meta or {}).get("step")

    @property
    def parameter_count(self) -> int | None:
        return (self.meta or {}).get("parameter_count")


def _files(path: Path) -> Iterator[Path]:
    for root, _dirs, files in os.walk(path):
        for f in files:
            yield Path(root) / f


def _size(path: Path) -> int:
    total = 0
    for f in _files(path):
        with contextlib.suppress(OSError):
            total += f.stat().st_size
    return total


def _mtime_iso(path: Path) -> str:
    try:
        ts = path.stat().st_mtime
    except OSError:
        ts = 0.0
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat()


def _sort_key(created: str) -> float:
    try:
        when = _dt.datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return float("-inf")
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


def _info(path: Path) -> CheckpointInfo:
    meta: dict[str, Any] | None = None
    error: str | None = None
    try:
        meta = read_meta(path)
        _config_from_meta(meta, path / META_FILE)
        if not (path / MODEL_FILE).is_file():
            error = f"{path / MODEL_FILE} is missing."
    except CheckpointError as e:
        error = str(e)
    created = meta.get("created") if meta else None
    if not isinstance(created, str) or _sort_key(created) == float("-inf"):
        created = _mtime_iso(path)
    return CheckpointInfo(name=path.name, path=path, meta=meta, size_bytes=_size(path), created=created,
                          error=error)


def list_checkpoints() -> list[CheckpointInfo]:
    """All checkpoints, newest first. Hidden (temporary) folders are skipped; a folder whose meta is
    missing or broken is listed with ``error`` set."""
    ckdir = paths.checkpoints_dir()
    _recover(ckdir)
    infos = []
    for entry in sorted(os.listdir(ckdir)):
        path = ckdir / entry
        if entry.startswith(".") or not path.is_dir():
            continue
        infos.append(_info(path))
    infos.sort(key=lambda i: (_sort_key(i.created), i.name), reverse=True)
    return infos


def show(name: str) -> dict[str, Any]:
    """Everything about checkpoint ``name``, without building the model: the keys of ``meta.json``
    (absent when it is broken, with ``error`` set) plus ``name``, ``path``, ``size_bytes``, ``files``
    (name -> bytes), ``error`` (``None`` when fine), ``tensors`` (how many are stored) and ``tied``
    (dropped key -> stored key)."""
    path = _existing(name)
    info = _info(path)
    result: dict[str, Any] = dict(info.meta or {})
    result.update({
        "name": info.name,
        "path": str(path),
        "size_bytes": info.size_bytes,
        "created": info.created,
        "files": {str(f.relative_to(path)): f.stat().st_size for f in sorted(_files(path))},
        "error": info.error,
    })
    if info.error is None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path / MODEL_FILE), framework="pt", device="cpu") as f:
                keys = list(f.keys())
                metadata = f.metadata() or {}
            result["tensors"] = len(keys)
            result["tied"] = json.loads(metadata.get("aliases", "{}"))
        except (SafetensorError, OSError, ValueError) as e:
            result["error"] = f"{path / MODEL_FILE} is corrupt or truncated ({e})."
    return result


def rename_checkpoint(old: str, new: str) -> Path:
    """Rename checkpoint ``old`` to ``new`` (which must not exist). Returns the new folder."""
    src = _existing(old)
    dst = checkpoint_path(new)
    if dst.exists():
        raise CheckpointError(f"Cannot rename {old!r} to {new!r}: checkpoint {new!r} already exists.")
    try:
        os.rename(src, dst)
        _fsync_dir(dst.parent)
    except OSError as e:
        raise CheckpointError(f"Could not rename checkpoint {old!r} to {new!r}: {e}") from e
    return dst


def delete_checkpoint(name: str) -> None:
    """Delete checkpoint ``name`` (moved out of sight first, so no half-deleted one is ever listed)."""
    path = _existing(name)
    doomed = _hidden_dir(".del-", name, path.parent)
    try:
        os.rename(path, doomed)
        _fsync_dir(path.parent)
    except OSError as e:
        raise CheckpointError(f"Could not delete checkpoint {name!r}: {e}") from e
    shutil.rmtree(doomed, ignore_errors=True)


__all__ = [
    "FORMAT_VERSION", "MODEL_FILE", "OPTIMIZER_FILE", "TRAINER_STATE_FILE", "META_FILE", "SOURCES",
    "DEFAULT_META", "CheckpointInfo", "LoadedCheckpoint", "validate_name", "checkpoint_path",
    "checkpoint_exists", "safe_torch_load", "unwrap_model", "clean_state_dict", "capture_rng_state",
    "restore_rng_state", "save_checkpoint", "load_checkpoint", "read_meta", "list_checkpoints", "show",
    "rename_checkpoint", "delete_checkpoint",
]
