"""The checkpoint store: one object that owns the checkpoints folder.

``CheckpointStore(root)`` recovers interrupted saves once when it is opened, then lists, reads, saves,
renames and deletes checkpoints. It alone decides names:

- a save never replaces an existing checkpoint unless the caller says so (``overwrite=True``), or the
  caller holds the name's :class:`NameLease` that was granted for it (a training run saving again);
- a run reserves its save name before it trains (:meth:`CheckpointStore.reserve`): a lock file with the
  holder's pid, host and process start time, refreshed by a heartbeat. A second run asking for a held name
  fails at once; a lock whose holder is gone is detected, reported and taken over; rename and delete
  refuse a name in use;
- every ``meta.json`` is parsed by one typed schema (:func:`parse_meta`): a checkpoint that fails it is
  listed as unreadable with the reason, and never breaks a listing.

On disk a checkpoint is a folder ``<root>/<name>/`` (see :mod:`gpttui.core.checkpoints` for the files).
Saving is atomic: files go to a hidden ``.tmp-*`` folder, are fsynced, and the folder is renamed into
place; a replaced checkpoint is moved aside (``.old-*``) first and deleted last. A crash at any point
leaves the old or the new checkpoint complete under its name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from gpttui.core import paths
from gpttui.core.checkpoints import (
    FORMAT_VERSION, META_FILE, MODEL_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE, model_from_state_dict,
    _optimizer_state, _weights_for_disk, _weights_only_safe, capture_rng_state, safe_torch_load, unwrap_model,
    validate_name)
from gpttui.core.config import GPTConfig
from gpttui.core.errors import CheckpointError, GPTTUIError
from gpttui.core.fileio import fsync_dir, fsync_file, write_durably, write_json
from gpttui.core.locks import LockInfo, NameLease, NameLocks, _pid_alive
from gpttui.core.meta import CheckpointMeta, MetaError, build_meta, parse_meta, read_meta_file  # noqa: F401
from gpttui.core.model import GPTModel

_TEMP_KINDS = (".tmp-", ".old-", ".del-")
_STALE_SECONDS_WITHOUT_PID_CHECK = 24 * 3600  # Windows: no safe liveness probe for leftovers


# ---------------------------------------------------------------------------------------------
# What the store hands out
# ---------------------------------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    """One entry of a listing. ``meta`` is the raw meta.json dict, present only when it passed the
    schema (so its typed keys can be trusted); ``error`` says why a checkpoint is unreadable."""

    name: str
    path: Path
    meta: dict[str, Any] | None
    size_bytes: int
    created: str
    error: str | None = None
    typed: CheckpointMeta | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def source(self) -> str | None:
        return self.typed.source if self.typed else None

    @property
    def step(self) -> int | None:
        return self.typed.step if self.typed else None

    @property
    def parameter_count(self) -> int | None:
        return self.typed.parameter_count if self.typed else None


@dataclass
class LoadedCheckpoint:
    model: GPTModel
    config: GPTConfig
    meta: dict[str, Any]
    optimizer_state: dict[str, Any] | None
    trainer_state: dict[str, Any] | None
    path: Path
    name: str = ""
    typed: CheckpointMeta | None = None


# ---------------------------------------------------------------------------------------------
# File-system helpers
# ---------------------------------------------------------------------------------------------


def free_bytes(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(path).free
    return None


def describe_os_error(e: OSError, what: str, where: Path) -> str:
    """One line for a failed write: disk full names the folder and the free space."""
    from gpttui.core.units import format_bytes

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(where)
        room = f" ({format_bytes(free)} free)" if free is not None else ""
        return (f"{what}: the disk holding {where} is full{room}. Free some space (or delete old checkpoints) "
                "and try again; nothing already saved was changed.")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}: no permission to write in {where} ({e.strerror})."
    return f"{what}: {e.strerror or e} ({where})."


def _is_disk_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e`` (torch wraps write failures in RuntimeError: 'unexpected pos')."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    if ("No space left on device" in text or "os error 28" in text or "unexpected pos" in text
            or "file write failed" in text):  # torch's and safetensors' wrappers of a failed write
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


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


def sort_key(created: str | None) -> float:
    try:
        when = _dt.datetime.fromisoformat(created)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("-inf")
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


# ---------------------------------------------------------------------------------------------
# Leftovers of crashed saves, renames and deletes
# ---------------------------------------------------------------------------------------------


def _hidden_dir(kind: str, name: str, parent: Path) -> Path:
    return parent / f"{kind}{name}-{os.getpid()}-{secrets.token_hex(4)}"


def _parse_hidden(entry: str) -> tuple[str, str, int] | None:
    """``(kind, name, pid)`` of a ``.tmp-``/``.old-``/``.del-`` entry, else ``None``."""
    for kind in _TEMP_KINDS:
        if entry.startswith(kind):
            parts = entry[len(kind):].rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit():
                return kind, parts[0], int(parts[1])
    return None


def _leftover_gone(pid: int, path: Path) -> bool:
    if pid == os.getpid():
        return False
    alive = _pid_alive(pid)
    if alive is None:
        with contextlib.suppress(OSError):
            return time.time() - path.lstat().st_mtime > _STALE_SECONDS_WITHOUT_PID_CHECK
        return False
    return not alive


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class CheckpointStore:
    """The checkpoints folder ``root`` (default: ``paths.checkpoints_dir()``)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, recover: bool = True) -> None:
        self.root = Path(root) if root is not None else paths.checkpoints_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.locks = NameLocks(self.root)
        self.recovered: list[str] = self.recover() if recover else []

    # -- names and paths
    def path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        return self.path(name).is_dir()

    def _existing(self, name: str) -> Path:
        path = self.path(name)
        if not path.is_dir():
            raise CheckpointError(f"No checkpoint named {name!r} (looked in {self.root}).")
        return path

    # -- recovery
    def recover(self) -> list[str]:
        """Tidy up after crashed saves, renames and deletes whose process is gone (never raises).

        ``.old-<name>-*``: the previous version of a checkpoint moved aside by a save. If ``<name>`` is
        missing, the save died before renaming the new version in: the old one goes back. Otherwise it is
        stale and deleted. ``.tmp-*`` (an unfinished save) and ``.del-*`` (an unfinished delete) are
        deleted; a ``.del-*`` that is a symlink is unlinked (its target is not touched). Returns what was done.
        """
        done: list[str] = []
        try:
            entries = sorted(os.listdir(self.root))
        except OSError:
            return done
        for entry in entries:
            parsed = _parse_hidden(entry)
            if parsed is None:
                continue
            kind, name, pid = parsed
            path = self.root / entry
            if not _leftover_gone(pid, path):
                continue
            with contextlib.suppress(OSError):
                target = self.root / name
                if path.is_symlink() or not path.is_dir():
                    path.unlink()
                elif kind == ".old-" and not target.exists() and (path / META_FILE).is_file():
                    os.rename(path, target)
                    fsync_dir(self.root)
                    done.append(f"restored checkpoint {name!r} from an interrupted save")
                    continue
                else:
                    shutil.rmtree(path)
                done.append(f"removed {entry}")
        return done

    # -- locks
    def lock_holder(self, name: str) -> LockInfo | None:
        """The live holder of ``name``, or ``None`` (a stale lock does not count)."""
        return self.locks.holder(name)

    def _refuse_if_held(self, name: str, action: str, lease: NameLease | None = None) -> None:
        self.locks.refuse_if_held(name, action, lease)

    def reserve(self, name: str, *, overwrite: bool = False, purpose: str = "a training run",
                continuing: bool = False) -> NameLease:
        """Take the name ``name`` for a run that will save under it.

        Refused when another live run holds it, or when a checkpoint of that name exists and neither
        ``overwrite`` (the user's explicit word) nor ``continuing`` (the run resumes that very checkpoint)
        is given. A stale lock (holder gone) is taken over and reported in ``lease.took_over``.
        """
        validate_name(name)
        if self.exists(name) and not (overwrite or continuing):
            raise CheckpointError(f"Checkpoint {name!r} already exists; choose another name, or say to replace "
                                  "it (--overwrite).")
        return self.locks.acquire(name, may_replace=overwrite or continuing, purpose=purpose)

    # -- reading
    def info(self, name: str) -> CheckpointInfo:
        return self._info(self._existing(name))

    def _info(self, path: Path) -> CheckpointInfo:
        typed: CheckpointMeta | None = None
        error: str | None = None
        try:
            typed = read_meta_file(path)
            if not (path / MODEL_FILE).is_file():
                error = f"{path / MODEL_FILE} is missing."
        except CheckpointError as e:
            error = str(e)
        created = typed.created if typed else None
        if not isinstance(created, str) or sort_key(created) == float("-inf"):
            created = _mtime_iso(path)
        return CheckpointInfo(name=path.name, path=path, meta=typed.raw if typed else None, size_bytes=_size(path),
                              created=created, error=error, typed=typed)

    def list(self) -> list[CheckpointInfo]:
        """All checkpoints, newest first; hidden entries skipped; a broken one is listed with ``error``."""
        infos = []
        try:
            entries = sorted(os.listdir(self.root))
        except OSError as e:
            raise CheckpointError(f"Cannot read the checkpoints folder {self.root}: {e.strerror}.") from e
        for entry in entries:
            path = self.root / entry
            if entry.startswith(".") or not path.is_dir():
                continue
            try:
                infos.append(self._info(path))
            except Exception as e:  # never let one checkpoint break the listing
                infos.append(CheckpointInfo(entry, path, None, 0, _mtime_iso(path), f"unreadable: {e}"))
        infos.sort(key=lambda i: (sort_key(i.created), i.name), reverse=True)
        return infos

    def read_meta(self, name: str) -> CheckpointMeta:
        return read_meta_file(self._existing(name))

    def load(self, name: str, *, device: str | torch.device = "cpu", load_optimizer: bool = False) -> LoadedCheckpoint:
        """The model (on ``device``, eval mode) and meta of ``name``; the optimizer state with
        ``load_optimizer``; the trainer state whenever its file exists."""
        from gpttui.core.checkpoints import read_weights

        path = self._existing(name)
        typed = read_meta_file(path)
        cfg = typed.model_config
        tensors = read_weights(path / MODEL_FILE, cfg)
        model = model_from_state_dict(cfg, tensors, str(path / MODEL_FILE))
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
        return LoadedCheckpoint(model=model, config=cfg, meta=typed.raw, optimizer_state=optimizer_state,
                                trainer_state=trainer_state, path=path, name=name, typed=typed)

    def show(self, name: str) -> dict[str, Any]:
        """Everything about ``name`` without building the model: meta.json's keys (absent when broken),
        plus ``name``, ``path``, ``size_bytes``, ``created``, ``files``, ``error``, ``tensors``, ``tied``
        and ``locked_by`` (who trains it now, or ``None``)."""
        path = self._existing(name)
        info = self._info(path)
        result: dict[str, Any] = dict(info.meta or {})
        holder = self.lock_holder(name)
        result.update({
            "name": info.name, "path": str(path), "size_bytes": info.size_bytes, "created": info.created,
            "files": {str(f.relative_to(path)): f.stat().st_size for f in sorted(_files(path))},
            "error": info.error, "locked_by": holder.describe() if holder else None,
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

    # -- writing
    def save(self, name: str, model: nn.Module, *, optimizer: Any = None, meta: Mapping[str, Any] | None = None,
             trainer_state: Mapping[str, Any] | None = None, overwrite: bool = False,
             lease: NameLease | None = None) -> Path:
        """Save ``model`` (a GPTModel, possibly compiled or DDP-wrapped) as ``name``, atomically.

        An existing ``name`` is replaced only with ``overwrite=True`` or a ``lease`` on ``name`` that
        may replace it (granted by :meth:`reserve`); a name another live run holds is refused.
        """
        target = self.path(name)
        if lease is not None:
            if lease.name != name:
                raise CheckpointError(f"The run holds the name {lease.name!r}, not {name!r}.")
            if not lease.held():
                raise CheckpointError(f"The lock on {name!r} was lost (another process took it); not saving "
                                      "over it.")
        self._refuse_if_held(name, "save", lease)
        may_replace = overwrite or (lease is not None and (lease.may_replace or lease.saved_once))
        if target.exists() and not may_replace:
            raise CheckpointError(f"Checkpoint {name!r} already exists; choose another name, or say to replace "
                                  "it (--overwrite).")
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
        full_meta = build_meta(core, tensors, meta, opt_state is not None, tstate is not None)
        parse_meta(full_meta, target / META_FILE)  # what we write must read back
        st_meta = {"format": "pt", "gpttui_format_version": str(FORMAT_VERSION),
                   "aliases": json.dumps(aliases, sort_keys=True)}

        self._write(name, target, may_replace, tensors, st_meta, opt_state, tstate, full_meta)
        if lease is not None:
            lease.saved_once = True
        return target

    def _write(self, name: str, target: Path, may_replace: bool, tensors: dict[str, torch.Tensor],
               st_meta: dict[str, str], opt_state: Any, tstate: Any, full_meta: dict[str, Any]) -> None:
        """The files into a hidden ``.tmp-`` folder, fsynced, then renamed into place (a replaced
        checkpoint moved aside first, deleted last); on failure the old one stays."""
        from safetensors.torch import save_file

        tmp = _hidden_dir(".tmp-", name, self.root)
        old: Path | None = None
        try:
            tmp.mkdir()
            save_file(tensors, str(tmp / MODEL_FILE), metadata=st_meta)
            fsync_file(tmp / MODEL_FILE)
            if opt_state is not None:
                write_durably(tmp / OPTIMIZER_FILE, lambda f: torch.save(opt_state, f))
            if tstate is not None:
                write_durably(tmp / TRAINER_STATE_FILE, lambda f: torch.save(tstate, f))
            write_json(tmp / META_FILE, full_meta, atomic=False)  # last: a folder with meta.json is complete
            fsync_dir(tmp)
            if target.exists():
                if not may_replace:
                    raise CheckpointError(f"Checkpoint {name!r} appeared while saving; not replacing it.")
                old = _hidden_dir(".old-", name, self.root)
                os.rename(target, old)
            os.rename(tmp, target)
            fsync_dir(self.root)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and old.exists() and not target.exists():
                with contextlib.suppress(OSError):
                    os.rename(old, target)
            disk = _is_disk_error(e)
            if disk is not None:
                raise CheckpointError(describe_os_error(disk, f"Could not save checkpoint {name!r}", self.root)) from e
            if isinstance(e, Exception) and not isinstance(e, GPTTUIError):
                raise CheckpointError(f"Could not save checkpoint {name!r} in {self.root}: {e}") from e
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def rename(self, old: str, new: str) -> Path:
        """Rename ``old`` to ``new`` (which must not exist); refused while either name is in use."""
        src = self._existing(old)
        dst = self.path(new)
        self._refuse_if_held(old, "rename")
        self._refuse_if_held(new, "rename to")
        if dst.exists() or dst.is_symlink():
            raise CheckpointError(f"Cannot rename {old!r} to {new!r}: checkpoint {new!r} already exists.")
        try:
            os.rename(src, dst)
            fsync_dir(self.root)
        except OSError as e:
            raise CheckpointError(f"Could not rename checkpoint {old!r} to {new!r}: {e.strerror or e}.") from e
        return dst

    def delete(self, name: str) -> None:
        """Delete ``name``: moved out of sight first, so no half-deleted checkpoint is ever listed. A
        checkpoint that is a symlink loses the link only; the folder it points to is left alone."""
        path = self.path(name)
        if not path.is_dir() and not path.is_symlink():
            raise CheckpointError(f"No checkpoint named {name!r} (looked in {self.root}).")
        self._refuse_if_held(name, "delete")
        if path.is_symlink():
            try:
                path.unlink()
                fsync_dir(self.root)
            except OSError as e:
                raise CheckpointError(f"Could not delete checkpoint {name!r}: {e.strerror or e}.") from e
            return
        doomed = _hidden_dir(".del-", name, self.root)
        try:
            os.rename(path, doomed)
            fsync_dir(self.root)
        except OSError as e:
            raise CheckpointError(f"Could not delete checkpoint {name!r}: {e.strerror or e}.") from e
        shutil.rmtree(doomed, ignore_errors=True)


def unique_name(store: CheckpointStore, base: str) -> str:
    """``base`` (made a valid name), or ``base-2``, ``base-3``... whichever is free and not locked."""
    import re

    base = re.sub(r"[^A-Za-z0-9._+-]+", "-", base).strip("-.")[:90] or "checkpoint"
    if not base[0].isalnum() and base[0] != "_":
        base = "_" + base
    candidate, n = base, 1
    while store.exists(candidate) or store.lock_holder(candidate) is not None:
        n += 1
        candidate = f"{base}-{n}"
    return validate_name(candidate)


def default_store() -> CheckpointStore:
    """The store under ``paths.checkpoints_dir()`` (``$GPTTUI_HOME`` honoured at each call)."""
    return CheckpointStore()


__all__ = ["CheckpointStore", "CheckpointInfo", "CheckpointMeta", "LoadedCheckpoint", "LockInfo", "NameLease",
           "MetaError", "parse_meta", "read_meta_file", "default_store", "describe_os_error", "free_bytes"]
