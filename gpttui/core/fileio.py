"""Files written whole or not at all, and data made JSON-safe: the one place core writes files durably.

- :func:`atomic_write` writes a file beside its target under a hidden temporary name, fsyncs it, then
  puts it in place: by ``os.replace`` (``replace=True``), or by ``os.link`` so that an existing target,
  even one that appeared meanwhile, is never clobbered (``replace=False``, O_EXCL semantics).
- :func:`write_durably` writes a file in place and fsyncs it (for files inside a folder that is itself
  renamed into place, as the checkpoint store does).
- :func:`jsonable` turns numbers, paths, dataclasses, numpy and tensor scalars into JSON data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Union

import numpy as np

Content = Union[bytes, str, Callable[[IO[bytes]], None]]


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(f: IO[bytes], content: Content) -> None:
    if isinstance(content, str):
        f.write(content.encode("utf-8"))
    elif isinstance(content, bytes):
        f.write(content)
    else:
        content(f)


def write_durably(path: Path, content: Content, *, mode: str = "wb") -> None:
    """Write ``content`` (bytes, text, or a function given the open binary file) to ``path``; fsynced."""
    with open(path, mode) as f:
        _write(f, content)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike[str], content: Content, *, replace: bool = True,
                 durable: bool = True) -> None:
    """Write ``path`` whole or not at all (a hidden temporary file beside it, then put in place).

    ``replace=True``: by ``os.replace`` (an existing file, or a symbolic link itself, is replaced as a
    whole; a file it links to is not written into). ``replace=False``: by ``os.link`` of the temporary
    file to ``path``, which raises :class:`FileExistsError` if ``path`` exists, even one created since
    the caller looked. Where the file system has no hard links, the existence check is repeated just
    before ``os.replace``. ``durable`` fsyncs the file and its folder (off for caches).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        if durable:
            write_durably(tmp, content, mode="xb")
        else:
            with open(tmp, "xb") as f:
                _write(f, content)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # no hard links here (FAT, some network file systems)
                if os.path.lexists(path):
                    raise FileExistsError(f"{path} exists") from None
                os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_json(path: Path, data: Any, *, atomic: bool = True) -> None:
    """``data`` as indented JSON (NaN and inf refused: pass it through :func:`jsonable` first), durably."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    if atomic:
        atomic_write(path, text)
    else:
        write_durably(path, text)


def jsonable(obj: Any, where: str = "value", *, inf_as_text: bool = False) -> Any:
    """``obj`` as JSON data: NaN becomes null, numpy and tensor scalars plain numbers, paths and dates
    text, dataclasses (and objects with ``to_dict``) dicts. Infinities become null, or ``"inf"`` /
    ``"-inf"`` with ``inf_as_text`` (the run log's events: a best loss of inf is not a missing one).
    Anything else raises :class:`TypeError` naming ``where``."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return ("inf" if obj > 0 else "-inf") if inf_as_text and not math.isnan(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, f"{where}[{k!r}]", inf_as_text=inf_as_text) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [jsonable(v, f"{where}[{i}]", inf_as_text=inf_as_text) for i, v in enumerate(items)]
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if isinstance(obj, np.generic) or (torch is not None and isinstance(obj, torch.Tensor) and obj.numel() == 1):
        return jsonable(obj.item(), where, inf_as_text=inf_as_text)
    raise TypeError(f"{where} is a {type(obj).__name__}, which cannot be written as JSON.")


__all__ = ["atomic_write", "write_durably", "write_json", "fsync_file", "fsync_dir", "jsonable"]
