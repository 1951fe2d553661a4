"""Where the GPT-2 weights of an import come from: a folder, the Hugging Face cache, or the Hub.

:func:`resolve_source` turns what the user typed into a :class:`ResolvedSource` (format, config file,
weight files, origin), touching no tensor:

- a local folder in Hugging Face layout: ``config.json`` plus ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``), or ``pytorch_model.bin`` (shards listed in
  ``pytorch_model.bin.index.json``);
- a size name (``gpt2-small``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``; also ``gpt2``, ``124M``
  ...): ``config.json`` + ``model.safetensors`` of ``openai-community/gpt2[-size]``, taken from the
  local Hugging Face cache when they are there (so a model downloaded once imports offline), else
  downloaded into that cache with ``huggingface_hub`` (optional: ``pip install 'gpttui[hub]'``);
- OpenAI's original TensorFlow checkpoint folder (``hparams.json``, ``model.ckpt.*``).

Hub failures are told apart by huggingface_hub's own exception classes (``huggingface_hub.errors``,
or ``huggingface_hub.utils`` in the versions before those classes moved there), imported only when a
download failed: huggingface_hub stays optional.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from gpttui.core.errors import CheckpointError

ProgressFn = Callable[[int, int], None]
StageFn = Callable[[str], None]

# Size names and the Hugging Face repositories holding their weights.
SIZE_REPOS: dict[str, str] = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
_SIZE_ALIASES: dict[str, str] = {
    "gpt2": "gpt2-small", "small": "gpt2-small", "124m": "gpt2-small",
    "medium": "gpt2-medium", "355m": "gpt2-medium",
    "large": "gpt2-large", "774m": "gpt2-large",
    "xl": "gpt2-xl", "1558m": "gpt2-xl",
    **{size: size for size in SIZE_REPOS},
    **{repo.lower(): size for size, repo in SIZE_REPOS.items()},
    **{repo.split("/")[1]: size for size, repo in SIZE_REPOS.items() if size != "gpt2-small"},
}
HUB_FILES = ("config.json", "model.safetensors")  # what a size name downloads
DEFAULT_ENDPOINT = "https://huggingface.co"
_CONNECT_TIMEOUT = 5.0

HF_CONFIG = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TF_HPARAMS = "hparams.json"


class ImportCancelled(CheckpointError):
    """The import was cancelled through its ``cancel`` event; nothing was saved."""



@dataclass
class ResolvedSource:
    """Where the weights of one import come from."""

    format: str  # "safetensors", "bin" or "tf"
    config_file: Path  # config.json, or hparams.json for TensorFlow
    weight_files: list[Path]  # for "tf": the checkpoint prefix (".../model.ckpt")
    origin: dict[str, Any]  # {"type": "dir"|"hub"|"tf", "path"/"repo_id", ...}, recorded in the meta
    size: str | None = None  # the size name asked for (hub), else inferred from the shapes later

    @property
    def label(self) -> str:
        return self.origin.get("repo_id") or self.origin.get("path") or str(self.config_file.parent)

    def data_files(self) -> list[Path]:
        """The files holding the tensors (for "tf": ``model.ckpt.data-*`` beside the prefix)."""
        if self.format == "tf":
            prefix = self.weight_files[0]
            return sorted(prefix.parent.glob(prefix.name + ".data-*"))
        return list(self.weight_files)


def size_name(source: str) -> str | None:
    """The canonical size name (``gpt2-small`` ...) that ``source`` names, or ``None``."""
    return _SIZE_ALIASES.get(str(source).strip().lower())


def _endpoint(endpoint: str | None) -> str:
    if endpoint:
        return endpoint.rstrip("/")
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/")
    except Exception:  # not installed, or an odd version
        return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def repo_urls(repo_id: str, endpoint: str | None = None) -> dict[str, str]:
    """The repository page and the direct URLs of the files an import needs."""
    base = f"{_endpoint(endpoint)}/{repo_id}"
    return {"tree": f"{base}/tree/main", **{f: f"{base}/resolve/main/{f}" for f in HUB_FILES}}


def _manual_instructions(repo_id: str, name: str | None, endpoint: str | None, first: str = "Download") -> str:
    urls = repo_urls(repo_id, endpoint)
    return (f"{first} {' and '.join(HUB_FILES)} of {repo_id} from {urls['tree']}\n"
            f"  {urls[HUB_FILES[0]]}\n  {urls[HUB_FILES[1]]}\n"
            f"into a folder DIR, then run: gpttui import-gpt2 DIR --name {name or 'NAME'}")


def _hf_folder(directory: Path) -> ResolvedSource | None:
    config = directory / HF_CONFIG
    if not config.is_file():
        return None
    origin = {"type": "dir", "path": str(directory.resolve())}
    if (directory / SAFETENSORS_FILE).is_file():
        return ResolvedSource("safetensors", config, [directory / SAFETENSORS_FILE], origin)
    for index_name, fmt in ((SAFETENSORS_INDEX, "safetensors"), (BIN_INDEX, "bin")):
        if (directory / index_name).is_file():
            return ResolvedSource(fmt, config, _shards(directory / index_name), origin)
    if (directory / BIN_FILE).is_file():
        return ResolvedSource("bin", config, [directory / BIN_FILE], origin)
    raise CheckpointError(f"{directory} has {HF_CONFIG} but no {SAFETENSORS_FILE} or {BIN_FILE}: download "
                          "the weights file into the same folder.")


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index} is not a readable shard index ({e}).") from e
    files = []
    for n in names:
        if not isinstance(n, str) or Path(n).name != n:
            raise CheckpointError(f"{index} names a shard outside its folder ({n!r}).")
        if not (index.parent / n).is_file():
            raise CheckpointError(f"{index} lists {n}, which is missing from {index.parent}.")
        files.append(index.parent / n)
    return files


def _tf_folder(directory: Path) -> ResolvedSource | None:
    hparams = directory / TF_HPARAMS
    if not hparams.is_file():
        return None
    prefix = None
    state = directory / "checkpoint"  # TF's pointer file: model_checkpoint_path: "model.ckpt"
    if state.is_file():
        m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(encoding="utf-8", errors="replace"),
                      re.MULTILINE)
        if m and Path(m.group(1)).name == m.group(1):
            prefix = directory / m.group(1)
    if prefix is None:
        indexes = sorted(directory.glob("*.index"))
        if not indexes:
            return None
        prefix = indexes[0].with_suffix("")
    return ResolvedSource("tf", hparams, [prefix], {"type": "tf", "path": str(directory.resolve())})


def _resolve_path(path: Path) -> ResolvedSource:
    if path.is_file():  # a weights file or config.json: its folder, preferring that file
        folder = path.parent
        found = _hf_folder(folder)
        if found is None:
            raise CheckpointError(f"{folder} has no {HF_CONFIG} beside {path.name}: give the folder holding "
                                  f"{HF_CONFIG} and {SAFETENSORS_FILE} (or {BIN_FILE}).")
        if path.name.endswith(".safetensors"):
            found = ResolvedSource("safetensors", found.config_file, [path], found.origin)
        elif path.suffix == ".bin":
            found = ResolvedSource("bin", found.config_file, [path], found.origin)
        return found
    found = _hf_folder(path) or _tf_folder(path)
    if found is None:
        raise CheckpointError(
            f"{path} is not a GPT-2 folder: expected {HF_CONFIG} + {SAFETENSORS_FILE} or {BIN_FILE} "
            f"(Hugging Face layout), or {TF_HPARAMS} + model.ckpt.* (OpenAI's TensorFlow checkpoint).")
    return found


def _commit_of(path: str) -> str | None:
    parent = Path(path).parent
    return parent.name if parent.parent.name == "snapshots" else None


@contextlib.contextmanager
def _quiet_hub_logs():
    """huggingface_hub logs retries as warnings on stderr, which a terminal UI must not get."""
    logger = logging.getLogger("huggingface_hub")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _progress_bar_class(progress: ProgressFn | None, cancel: threading.Event | None, what: str):
    """A silent tqdm class for huggingface_hub: reports (bytes done, total) and raises on cancel."""
    from tqdm.std import tqdm

    class _Bar(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            kwargs.pop("name", None)
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            if cancel is not None and cancel.is_set():
                raise ImportCancelled(f"Download of {what} cancelled; nothing was imported "
                                      "(the partial download is kept in the Hugging Face cache and resumes "
                                      "next time).")
            self.done += int(n or 0)
            total = int(self.total or 0)
            if progress is not None:
                progress(self.done, max(total, self.done))
            return None

    return _Bar


def _reachable(endpoint: str) -> str | None:
    """``None`` if a TCP connection to the endpoint opens within a few seconds, else the reason.

    Without it an offline machine spends ~25 s in huggingface_hub's retries. Behind a proxy the check is
    left to huggingface_hub."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                        "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT):
            return None
    except OSError as e:
        return f"cannot connect to {host} ({e.strerror or e})"


class _NeverRaised(Exception):
    """Stands in for a huggingface_hub exception class that the installed version lacks."""


def _hub_error_class(name: str) -> type[BaseException]:
    """huggingface_hub's exception class ``name``: from ``huggingface_hub.errors`` where newer versions keep
    them all, else from ``huggingface_hub.utils`` (0.20 to 0.2x keep the download errors there)."""
    homes = []
    with contextlib.suppress(ImportError):
        from huggingface_hub import errors

        homes.append(errors)
    with contextlib.suppress(ImportError):
        from huggingface_hub import utils

        homes.append(utils)
    for home in homes:
        cls = getattr(home, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls
    return _NeverRaised


def _causes(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from (huggingface_hub wraps the one that tells most)."""
    chain: list[BaseException] = []
    current: BaseException | None = e
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


_OFFLINE_MODE = "offline mode is on (HF_HUB_OFFLINE is set) and the files are not in the local cache"


def _hub_error_reason(e: BaseException, offline_mode: bool) -> str:
    """Why a download failed, in a few words, told by huggingface_hub's exception classes.
    ``offline_mode``: huggingface_hub's own setting (``HF_HUB_OFFLINE``)."""
    if any(isinstance(c, _hub_error_class("OfflineModeIsEnabled")) for c in _causes(e)):
        return _OFFLINE_MODE
    if isinstance(e, _hub_error_class("LocalEntryNotFoundError")):
        return _OFFLINE_MODE if offline_mode else "the Hub cannot be reached and the files are not in the local cache"
    name = type(e).__name__
    if isinstance(e, _hub_error_class("RepositoryNotFoundError")):  # GatedRepoError is one too
        return f"the repository is not available ({name})"
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{name}: {text}" if text else name


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ImportCancelled("Import cancelled; nothing was imported.")


def _import_hub(size: str, name: str | None, endpoint: str | None) -> Any:
    """The huggingface_hub module, or the error saying to install it (or what to download by hand)."""
    try:
        import huggingface_hub
        import huggingface_hub.constants  # a submodule the package does not load as an attribute
    except ImportError:
        raise CheckpointError(
            f"Importing {size} by name needs huggingface_hub, which is not installed: pip install 'gpttui[hub]'."
            f"\nOr {_manual_instructions(SIZE_REPOS[size], name, endpoint, 'download')}") from None
    return huggingface_hub


def _hub_source(size: str, config_path: str, weights_path: str, cached: bool) -> ResolvedSource:
    origin = {"type": "hub", "repo_id": SIZE_REPOS[size], "revision": _commit_of(config_path), "cached": cached,
              "path": str(Path(config_path).parent)}
    return ResolvedSource("safetensors", Path(config_path), [Path(weights_path)], origin, size)


def _download(hub: Any, repo_id: str, cache: str | None, endpoint: str | None, progress: ProgressFn | None,
              cancel: threading.Event | None, on_stage: StageFn | None) -> list[str]:
    """:data:`HUB_FILES` of ``repo_id``, downloaded into the cache: their paths."""
    paths = []
    with _quiet_hub_logs():
        for filename in HUB_FILES:
            if on_stage:
                on_stage(f"Downloading {filename} from {repo_id}")
            bar = _progress_bar_class(progress if filename != HF_CONFIG else None, cancel, filename)
            paths.append(hub.hf_hub_download(repo_id, filename, cache_dir=cache, endpoint=endpoint, tqdm_class=bar))
    return paths


def _resolve_hub(size: str, *, name: str | None, cache_dir: str | os.PathLike[str] | None,
                 endpoint: str | None, progress: ProgressFn | None, cancel: threading.Event | None,
                 on_stage: StageFn | None, local_files_only: bool) -> ResolvedSource:
    repo_id = SIZE_REPOS[size]
    hub = _import_hub(size, name, endpoint)
    cache = str(cache_dir) if cache_dir is not None else None
    if on_stage:
        on_stage(f"Looking for {repo_id} in the Hugging Face cache")
    cached = [hub.try_to_load_from_cache(repo_id, f, cache_dir=cache) for f in HUB_FILES]
    if all(isinstance(c, str) and Path(c).is_file() for c in cached):
        return _hub_source(size, cached[0], cached[1], cached=True)

    def failed(reason: str) -> CheckpointError:
        return CheckpointError(f"Could not download {size} ({repo_id}) from the Hugging Face Hub: {reason}.\n"
                               f"{_manual_instructions(repo_id, name, endpoint)}")

    offline_mode = bool(getattr(hub.constants, "HF_HUB_OFFLINE", False))
    if local_files_only:
        raise failed("only the local cache was searched (offline), and the files are not there")
    if not offline_mode:  # with HF_HUB_OFFLINE, huggingface_hub itself fails at once
        reason = _reachable(_endpoint(endpoint))
        if reason:
            raise failed(f"you seem to be offline: {reason}")
    raise_if_cancelled(cancel)
    try:
        paths = _download(hub, repo_id, cache, endpoint, progress, cancel, on_stage)
    except ImportCancelled:
        raise
    except Exception as e:  # offline, DNS, HTTP, disk full...: one message, no traceback
        raise failed(_hub_error_reason(e, offline_mode)) from e
    raise_if_cancelled(cancel)
    return _hub_source(size, paths[0], paths[1], cached=False)


def resolve_source(source: str | os.PathLike[str], *, name: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None, endpoint: str | None = None,
                   progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                   on_stage: StageFn | None = None, local_files_only: bool = False) -> ResolvedSource:
    """Find the files of ``source``: an existing folder (or file in it), else a size name (Hub/cache).

    For a size name: the Hugging Face cache (``cache_dir``, default huggingface_hub's) is looked at first;
    otherwise (unless ``local_files_only``) ``config.json`` and ``model.safetensors`` are downloaded into
    it from ``endpoint`` (default huggingface_hub's), ``progress(bytes_done, total)`` following the
    download and ``cancel`` stopping it (:class:`ImportCancelled`). Failing, the error says what to
    download and where to put it (``name`` is used in that message)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_path(path)
    size = size_name(text)
    if size is not None:
        return _resolve_hub(size, name=name, cache_dir=cache_dir, endpoint=endpoint, progress=progress,
                            cancel=cancel, on_stage=on_stage, local_files_only=local_files_only)
    raise CheckpointError(f"{text!r} is neither a folder nor a GPT-2 size: give a folder (config.json + "
                          f"model.safetensors, or OpenAI's TensorFlow checkpoint) or one of "
                          f"{', '.join(SIZE_REPOS)}.")
