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
import copy
import datetime as _dt
import errno
import json
import math
import os
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

import gpttui
from gpttui.core import paths
from gpttui.core.checkpoints import (
    DEFAULT_META, FORMAT_VERSION, META_FILE, MODEL_FILE, OPTIMIZER_FILE, SOURCES, TRAINER_STATE_FILE,
    _fsync_dir, _fsync_file, _jsonable, _model_from_tensors, _torch_save, _write_json, _optimizer_state, _weights_for_disk, _weights_only_safe, capture_rng_state,
    safe_torch_load, unwrap_model, validate_name)
from gpttui.core.config import GPTConfig
from gpttui.core.errors import CheckpointError, ConfigError, GPTTUIError
from gpttui.core.model import GPTModel, count_parameters

_TEMP_KINDS = (".tmp-", ".old-", ".del-")
LOCKS_DIR = ".locks"
HEARTBEAT_SECONDS = 15.0
# A lock from another host (whose pid cannot be checked) is stale once its heartbeat is this old.
STALE_AFTER_SECONDS = 10 * 60
_STALE_SECONDS_WITHOUT_PID_CHECK = 24 * 3600  # Windows: no safe liveness probe for leftovers


# ---------------------------------------------------------------------------------------------
# The typed schema of meta.json
# ---------------------------------------------------------------------------------------------


class MetaError(CheckpointError):
    """A meta.json that does not fit the schema."""


def _int(meta: Mapping[str, Any], key: str, file: Path, default: int | None = 0, minimum: int = 0) -> int | None:
    value = meta.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MetaError(f"{file}: {key} must be a whole number ≥ {minimum}, not {json.dumps(value)}.")
    return value


def _float(meta: Mapping[str, Any], key: str, file: Path) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise MetaError(f"{file}: {key} must be a number or null, not {json.dumps(value)}.")
    return float(value)


def _str(meta: Mapping[str, Any], key: str, file: Path, default: str | None = None) -> str | None:
    value = meta.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetaError(f"{file}: {key} must be text, not {json.dumps(value)}.")
    return value


def _dict(meta: Mapping[str, Any], key: str, file: Path, nullable: bool = True) -> dict[str, Any] | None:
    value = meta.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise MetaError(f"{file}: {key} must be an object, not {json.dumps(value)[:40]}.")
    return value


# Types of the dataset record's fields (PreparedData.identity()).
_DATASET_FIELDS: dict[str, tuple[type, ...]] = {
    "source": (str,), "label": (str,), "sha256": (str,), "tokenizer": (str,), "characters": (int,),
    "tokens": (int,), "train_ratio": (int, float), "context_length": (int,), "stride": (int, type(None)),
    "batch_size": (int,),
}


def _check_dataset(dataset: dict[str, Any] | None, file: Path) -> None:
    if dataset is None:
        return
    for key, types in _DATASET_FIELDS.items():
        if key in dataset and (not isinstance(dataset[key], types) or isinstance(dataset[key], bool)):
            raise MetaError(f"{file}: dataset.{key} has the wrong type ({json.dumps(dataset[key])[:40]}).")
    for key in ("context_length", "batch_size"):
        if key in dataset and dataset[key] < 1:
            raise MetaError(f"{file}: dataset.{key} must be at least 1.")


@dataclass(frozen=True)
class CheckpointMeta:
    """``meta.json`` once it has passed the schema. ``raw`` keeps every key (the typed fields included)."""

    format_version: int
    source: str
    model_config: GPTConfig
    tokenizer: str | None
    step: int  # optimizer steps done
    epoch: int  # 1-based epoch of the last step done; 0 before any step
    tokens_seen: int
    parameter_count: int | None
    last_train_loss: float | None
    last_val_loss: float | None
    best_val_loss: float | None
    created: str | None
    train_config: dict[str, Any]
    dataset: dict[str, Any] | None
    has_optimizer: bool
    has_trainer_state: bool
    run_dir: str | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


def parse_meta(meta: Any, file: Path) -> CheckpointMeta:
    """Check a loaded ``meta.json`` against the schema; :class:`MetaError` says what is wrong."""
    if not isinstance(meta, dict):
        raise MetaError(f"{file} should hold a JSON object, not {type(meta).__name__}.")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MetaError(f"{file} has no valid format_version: not a gpttui checkpoint.")
    if version > FORMAT_VERSION:
        raise MetaError(f"{file} has format version {version}, newer than this gpttui "
                        f"({gpttui.__version__}) reads ({FORMAT_VERSION}); upgrade gpttui.")
    model_config = _dict(meta, "model_config", file, nullable=False)
    try:
        cfg = GPTConfig.from_dict(model_config)
    except (ConfigError, TypeError, ValueError) as e:
        raise MetaError(f"{file} has an unusable model_config: {e}") from e
    for key in ("qkv_bias", "tie_weights"):
        if not isinstance(getattr(cfg, key), bool):
            raise MetaError(f"{file}: model_config.{key} must be true or false.")
    if not isinstance(cfg.drop_rate, (int, float)) or isinstance(cfg.drop_rate, bool):
        raise MetaError(f"{file}: model_config.drop_rate must be a number.")
    source = meta.get("source", "trained")
    if source not in SOURCES:
        raise MetaError(f"{file}: source must be one of {', '.join(SOURCES)}, not {json.dumps(source)}.")
    dataset = _dict(meta, "dataset", file)
    _check_dataset(dataset, file)
    flags = {}
    for key in ("has_optimizer", "has_trainer_state"):
        value = meta.get(key, False)
        if not isinstance(value, bool):
            raise MetaError(f"{file}: {key} must be true or false, not {json.dumps(value)}.")
        flags[key] = value
    train_config = _dict(meta, "train_config", file) or {}
    return CheckpointMeta(
        format_version=version, source=source, model_config=cfg, tokenizer=_str(meta, "tokenizer", file),
        step=_int(meta, "step", file), epoch=_int(meta, "epoch", file),
        tokens_seen=_int(meta, "tokens_seen", file), parameter_count=_int(meta, "parameter_count", file, None),
        last_train_loss=_float(meta, "last_train_loss", file), last_val_loss=_float(meta, "last_val_loss", file),
        best_val_loss=_float(meta, "best_val_loss", file), created=_str(meta, "created", file),
        train_config=train_config, dataset=dataset, run_dir=_str(meta, "run_dir", file), raw=meta, **flags)


def read_meta_file(path: Path) -> CheckpointMeta:
    """The parsed ``meta.json`` of the checkpoint folder ``path``."""
    file = path / META_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {path.name!r} is not a complete gpttui checkpoint.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise MetaError(f"{file} is not valid JSON (not UTF-8 text: {e}).") from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise MetaError(f"{file} is not valid JSON ({e}).") from e
    except OSError as e:
        raise CheckpointError(f"{file} cannot be read ({e}).") from e
    return parse_meta(data, file)


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


fsync_file, fsync_dir = _fsync_file, _fsync_dir


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


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


# ---------------------------------------------------------------------------------------------
# Process identity (for leftovers of crashed saves and for name locks)
# ---------------------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
        return data[data.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool | None:
    """Whether ``pid`` runs on this host (``None``: cannot tell, e.g. on Windows)."""
    if os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


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
# Name locks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockInfo:
    """Who holds a checkpoint name."""

    name: str
    pid: int
    host: str
    purpose: str
    started: str
    heartbeat: float  # the lock file's mtime
    token: str
    process_start: str | None = None

    def describe(self) -> str:
        age = max(0.0, time.time() - self.heartbeat)
        here = "this process" if self.is_mine_process() else f"pid {self.pid} on {self.host}"
        return f"{self.purpose} ({here}, since {self.started[:19].replace('T', ' ')}, heartbeat {age:.0f} s ago)"

    def is_mine_process(self) -> bool:
        return self.pid == os.getpid() and self.host == socket.gethostname()

    def stale_reason(self) -> str | None:
        """Why the holder is gone, or ``None`` while it may still be running."""
        if self.host == socket.gethostname():
            alive = _pid_alive(self.pid)
            if alive is False:
                return f"process {self.pid} is gone"
            if alive and self.process_start and _process_start(self.pid) not in (None, self.process_start):
                return f"process {self.pid} is gone (its pid now belongs to another process)"
            if alive is not None:
                return None
        age = time.time() - self.heartbeat
        if age > STALE_AFTER_SECONDS:
            return f"no heartbeat for {age / 60:.0f} minutes"
        return None


class NameLease:
    """A held checkpoint name: only its holder may save under it. Release it (or use ``with``) when done;
    a heartbeat thread keeps the lock fresh meanwhile."""

    def __init__(self, store: "CheckpointStore", name: str, lock_path: Path, info: LockInfo,
                 may_replace: bool, took_over: LockInfo | None, stale_reason: str | None) -> None:
        self.store = store
        self.name = name
        self.lock_path = lock_path
        self.info = info
        self.may_replace = may_replace  # the checkpoint existed and the caller allowed replacing it
        self.took_over = took_over  # a stale lock that was taken over, with its reason
        self.stale_reason = stale_reason
        self.released = False
        self.saved_once = False  # after its first save the run may replace its own checkpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"gpttui-lock-{name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.lock_path)

    def held(self) -> bool:
        """Whether the lock file on disk is still this lease's."""
        if self.released:
            return False
        current = self.store._read_lock(self.name)
        return current is not None and current.token == self.info.token

    def release(self) -> None:
        if self.released:
            return
        self._stop.set()
        if self.held():
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
        self.released = True

    def __enter__(self) -> "NameLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class CheckpointStore:
    """The checkpoints folder ``root`` (default: ``paths.checkpoints_dir()``)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, recover: bool = True) -> None:
        self.root = Path(root) if root is not None else paths.checkpoints_dir()
        self.root.mkdir(parents=True, exist_ok=True)
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
    def _lock_path(self, name: str) -> Path:
        return self.root / LOCKS_DIR / f"{validate_name(name)}.lock"

    def _read_lock(self, name: str) -> LockInfo | None:
        path = self._lock_path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            mtime = path.stat().st_mtime
            return LockInfo(name=name, pid=int(data["pid"]), host=str(data["host"]),
                            purpose=str(data.get("purpose", "a run")), started=str(data.get("started", "")),
                            heartbeat=mtime, token=str(data["token"]), process_start=data.get("process_start"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # Unreadable (half-written by a writer that died): treat as a stale lock with no owner.
            with contextlib.suppress(OSError):
                return LockInfo(name=name, pid=-1, host="?", purpose="unknown", started="",
                                heartbeat=path.stat().st_mtime, token="")
            return None

    def lock_holder(self, name: str) -> LockInfo | None:
        """The live holder of ``name``, or ``None`` (a stale lock does not count)."""
        info = self._read_lock(name)
        if info is None:
            return None
        if info.pid == -1:
            return None if time.time() - info.heartbeat > 60 else info
        return None if info.stale_reason() else info

    def _refuse_if_held(self, name: str, action: str, lease: NameLease | None = None) -> None:
        holder = self.lock_holder(name)
        if holder is not None and not (lease is not None and lease.name == name and holder.token == lease.info.token):
            raise CheckpointError(f"Cannot {action} checkpoint {name!r}: it is in use by {holder.describe()}. "
                                  "Wait for that run to end, or stop it first.")

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
        lock_dir = self.root / LOCKS_DIR
        lock_dir.mkdir(exist_ok=True)
        path = self._lock_path(name)
        token = secrets.token_hex(8)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose, "started": _now_iso(),
                  "token": token, "process_start": _process_start(os.getpid())}
        took_over: LockInfo | None = None
        reason: str | None = None
        for _attempt in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                current = self._read_lock(name)
                if current is None:
                    continue  # released meanwhile
                why = current.stale_reason() if current.pid != -1 else (
                    "the lock file is unreadable" if time.time() - current.heartbeat > 60 else None)
                if why is None:
                    raise CheckpointError(f"Checkpoint name {name!r} is in use by {current.describe()}; "
                                          "choose another name or wait for that run to end.") from None
                # Move the stale lock aside under a unique name; only one contender succeeds.
                aside = path.with_name(f"{path.name}.stale-{token}")
                try:
                    os.rename(path, aside)
                except FileNotFoundError:
                    continue
                moved = self._read_lock_file(aside)
                if moved is not None and moved != current.token:
                    with contextlib.suppress(OSError):  # we moved a fresh lock of a faster contender: put it back
                        os.link(aside, path)
                    with contextlib.suppress(OSError):
                        os.unlink(aside)
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(aside)
                took_over, reason = current, why
                continue
            try:
                os.write(fd, json.dumps(record).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            info = self._read_lock(name)
            assert info is not None
            return NameLease(self, name, path, info, may_replace=overwrite or continuing, took_over=took_over,
                             stale_reason=reason)
        raise CheckpointError(f"Could not take the name {name!r}: other runs keep taking it.")

    @staticmethod
    def _read_lock_file(path: Path) -> str | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return str(json.loads(path.read_text(encoding="utf-8"))["token"])
        return None

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
        full_meta = _build_meta(core, tensors, meta, opt_state is not None, tstate is not None)
        parse_meta(full_meta, target / META_FILE)  # what we write must read back
        st_meta = {"format": "pt", "gpttui_format_version": str(FORMAT_VERSION),
                   "aliases": json.dumps(aliases, sort_keys=True)}

        from safetensors.torch import save_file

        tmp = _hidden_dir(".tmp-", name, self.root)
        old: Path | None = None
        try:
            tmp.mkdir()
            save_file(tensors, str(tmp / MODEL_FILE), metadata=st_meta)
            fsync_file(tmp / MODEL_FILE)
            if opt_state is not None:
                _torch_save(opt_state, tmp / OPTIMIZER_FILE)
            if tstate is not None:
                _torch_save(tstate, tmp / TRAINER_STATE_FILE)
            _write_json(tmp / META_FILE, full_meta)  # last: a folder with meta.json is complete
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
        if lease is not None:
            lease.saved_once = True
        return target

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


def _build_meta(model: GPTModel, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None,
                has_optimizer: bool, has_trainer_state: bool) -> dict[str, Any]:
    reserved = ("format_version", "gpttui_version", "created", "model_config", "parameter_count", "dtype",
                "has_optimizer", "has_trainer_state")
    out: dict[str, Any] = {"format_version": FORMAT_VERSION}
    out.update(copy.deepcopy(DEFAULT_META))
    for key, value in (meta or {}).items():
        if key not in reserved:
            out[str(key)] = value
    if out["source"] not in SOURCES:
        raise CheckpointError(f"Unknown checkpoint source {out['source']!r}; expected one of {', '.join(SOURCES)}.")
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
