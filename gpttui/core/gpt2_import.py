"""Import OpenAI's pretrained GPT-2 weights as an ordinary gpttui checkpoint (book, chapter 5.5).

Sources (:func:`resolve_source`):

- a local folder in Hugging Face layout: ``config.json`` plus ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``), or ``pytorch_model.bin`` (read with
  ``torch.load(weights_only=True)``: a pickle that wants to run code is refused);
- a size name (``gpt2-small``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``; also ``gpt2``, ``124M``
  ...): ``config.json`` + ``model.safetensors`` of ``openai-community/gpt2[-size]``, taken from the
  local Hugging Face cache when they are there (so a model downloaded once imports offline), else
  downloaded into that cache with ``huggingface_hub`` (optional: ``pip install 'gpttui[hub]'``);
- OpenAI's original TensorFlow checkpoint folder (``hparams.json``, ``model.ckpt.*``), read with
  ``tf.train.load_variable`` as the book's ``gpt_download.py`` does (needs ``pip install 'gpttui[tf]'``).

Mapping (Hugging Face names; TensorFlow names are first renamed to these, see :func:`tf_name_to_hf`):
GPT-2's ``Conv1D`` weights are stored ``(in, out)``, so ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``
and ``mlp.c_proj`` weights are transposed into ``nn.Linear`` layout; ``c_attn`` is split into
``W_query``/``W_key``/``W_value``; ``ln_*`` weight/bias become ``scale``/``shift``; ``wte`` is the token
embedding and (tied) the output head; ``wpe`` the position embedding; the ``attn.bias`` /
``attn.masked_bias`` buffers are dropped. Every name and shape is checked from the file headers before
any tensor is read; anything missing, unexpected or mis-shaped is reported at once and nothing is saved.

Untrusted input: the config must not describe more weights than the files hold, its vocabulary must suit
the tokenizer (gpt2: at least 50257), and every tensor passes :func:`interop.check_untrusted_tensors`
(no expanded or overlapping tensors in a ``pytorch_model.bin``, no NaN/inf unless ``allow_nonfinite``)
before it is copied. :func:`read_gpt2` returns the model and meta unsaved; :func:`import_gpt2` also saves.

Memory: safetensors files are memory-mapped and opened once per tensor, so each source tensor's pages are
released as soon as it is converted; converted tensors are written straight into their final place and
the model is built on the meta device (no random initialisation), then saved with no further copy. The
peak is about one copy of the weights (plus one tensor) instead of the two or three of a naive load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlparse

import numpy as np
import torch

from gpttui.core import checkpoints, interop
from gpttui.core.config import GPT2_SHAPES, GPTConfig
from gpttui.core.errors import CheckpointError, ConfigError
from gpttui.core.model import GPTModel, count_parameters

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
HUB_FILES = ("config.json", "model.safetensors")
DEFAULT_ENDPOINT = "https://huggingface.co"
GPT2_VOCAB_SIZE = 50257
GPT2_CONTEXT = 1024
_CONNECT_TIMEOUT = 5.0

SOURCE = "imported-gpt2"
HF_CONFIG = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TF_HPARAMS = "hparams.json"

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "float16", "bfloat16", "float32", "float64"}
_IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers, not weights
_LAYER = re.compile(r"h\.(\d+)\.(.+)")


class ImportCancelled(CheckpointError):
    """The import was cancelled through its ``cancel`` event; nothing was saved."""


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


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


def _hub_error_reason(e: BaseException) -> str:
    name = type(e).__name__
    text = " ".join(str(e).split())
    if name == "OfflineModeIsEnabled" or "offline mode" in text.lower():
        return "offline mode is on (HF_HUB_OFFLINE is set) and the files are not in the local cache"
    if name == "LocalEntryNotFoundError":
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            return "offline mode is on (HF_HUB_OFFLINE is set) and the files are not in the local cache"
        return "the Hub cannot be reached and the files are not in the local cache"
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return f"the repository is not available ({name})"
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{name}: {text}" if text else name


def _resolve_hub(size: str, *, name: str | None, cache_dir: str | os.PathLike[str] | None,
                 endpoint: str | None, progress: ProgressFn | None, cancel: threading.Event | None,
                 on_stage: StageFn | None, local_files_only: bool) -> ResolvedSource:
    repo_id = SIZE_REPOS[size]
    try:
        import huggingface_hub
        from huggingface_hub import constants as hub_constants
    except ImportError:
        raise CheckpointError(
            f"Importing {size} by name needs huggingface_hub, which is not installed: "
            f"pip install 'gpttui[hub]'.\nOr {_manual_instructions(repo_id, name, endpoint, 'download')}") from None
    cache = str(cache_dir) if cache_dir is not None else None

    def origin(cfg_path: str, cached: bool) -> dict[str, Any]:
        return {"type": "hub", "repo_id": repo_id, "revision": _commit_of(cfg_path), "cached": cached,
                "path": str(Path(cfg_path).parent)}

    if on_stage:
        on_stage(f"Looking for {repo_id} in the Hugging Face cache")
    cached = [huggingface_hub.try_to_load_from_cache(repo_id, f, cache_dir=cache) for f in HUB_FILES]
    if all(isinstance(c, str) and Path(c).is_file() for c in cached):
        return ResolvedSource("safetensors", Path(cached[0]), [Path(cached[1])], origin(cached[0], True), size)

    def failed(reason: str) -> CheckpointError:
        return CheckpointError(f"Could not download {size} ({repo_id}) from the Hugging Face Hub: {reason}.\n"
                               f"{_manual_instructions(repo_id, name, endpoint)}")

    offline_env = bool(getattr(hub_constants, "HF_HUB_OFFLINE", False))
    if local_files_only:
        raise failed("only the local cache was searched (offline), and the files are not there")
    if not offline_env:  # with HF_HUB_OFFLINE, huggingface_hub itself fails at once
        reason = _reachable(_endpoint(endpoint))
        if reason:
            raise failed(f"you seem to be offline: {reason}")
    if cancel is not None and cancel.is_set():
        raise ImportCancelled("Import cancelled; nothing was imported.")
    paths: list[str] = []
    try:
        with _quiet_hub_logs():
            for filename in HUB_FILES:
                if on_stage:
                    on_stage(f"Downloading {filename} from {repo_id}")
                bar = _progress_bar_class(progress if filename != HF_CONFIG else None, cancel, filename)
                paths.append(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache,
                                                             endpoint=endpoint, tqdm_class=bar))
    except ImportCancelled:
        raise
    except Exception as e:  # offline, DNS, HTTP, disk full...: one message, no traceback
        raise failed(_hub_error_reason(e)) from e
    if cancel is not None and cancel.is_set():
        raise ImportCancelled("Import cancelled; nothing was imported.")
    return ResolvedSource("safetensors", Path(paths[0]), [Path(paths[1])], origin(paths[0], False), size)


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


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}).") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object.")
    return data


def _positive_int(d: Mapping[str, Any], keys: Iterable[str], problems: list[str]) -> int:
    keys = list(keys)
    for key in keys:
        value = d.get(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        problems.append(f"{key} must be a positive integer (got {value!r})")
        return 0
    problems.append(f"{' / '.join(keys)} is missing")
    return 0


def _make_config(values: dict[str, Any], where: str) -> GPTConfig:
    try:
        return GPTConfig(**values)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from e


def config_from_hf(config: Mapping[str, Any], where: str = HF_CONFIG) -> GPTConfig:
    """Our config for a Hugging Face GPT-2 ``config.json``: qkv bias on, context ``n_positions``
    (or ``n_ctx``), tied head unless ``tie_word_embeddings`` is false, dropout ``resid_pdrop``
    (``embd_pdrop``, default 0.1). Settings our model does not implement are refused."""
    problems: list[str] = []
    model_type = config.get("model_type")
    if model_type is not None and model_type != "gpt2":
        raise CheckpointError(f"{where} describes a {model_type!r} model, not GPT-2 (model_type 'gpt2').")
    vocab = _positive_int(config, ["vocab_size"], problems)
    emb = _positive_int(config, ["n_embd"], problems)
    layers = _positive_int(config, ["n_layer"], problems)
    heads = _positive_int(config, ["n_head"], problems)
    context = _positive_int(config, ["n_positions", "n_ctx"], problems)
    unsupported = []
    act = config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        unsupported.append(f"activation_function {act!r} (only the tanh GELU, 'gelu_new')")
    eps = config.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or not math.isclose(float(eps), 1e-5, rel_tol=1e-6):
        unsupported.append(f"layer_norm_epsilon {eps!r} (only 1e-5)")
    inner = config.get("n_inner")
    if inner is not None and inner != 4 * emb:
        unsupported.append(f"n_inner {inner!r} (only 4 * n_embd)")
    if config.get("scale_attn_weights", True) is not True:
        unsupported.append("scale_attn_weights false")
    if config.get("scale_attn_by_inverse_layer_idx", False):
        unsupported.append("scale_attn_by_inverse_layer_idx")
    if config.get("add_cross_attention", False):
        unsupported.append("add_cross_attention")
    if problems:
        raise CheckpointError(f"{where} is not a usable GPT-2 config: {'; '.join(problems)}.")
    if unsupported:
        raise CheckpointError(f"{where} uses settings gpttui's GPT model does not implement: "
                              f"{'; '.join(unsupported)}.")
    drop = config.get("resid_pdrop", config.get("embd_pdrop", 0.1))
    if not isinstance(drop, (int, float)) or isinstance(drop, bool):
        drop = 0.1
    tie = config.get("tie_word_embeddings", True) is not False
    return _make_config({"vocab_size": vocab, "context_length": context, "emb_dim": emb, "n_heads": heads,
                         "n_layers": layers, "drop_rate": float(drop), "qkv_bias": True,
                         "tie_weights": tie}, where)


def config_from_tf_hparams(hparams: Mapping[str, Any], where: str = TF_HPARAMS) -> GPTConfig:
    """Our config for OpenAI's ``hparams.json`` (``n_vocab``, ``n_ctx``, ``n_embd``, ``n_head``,
    ``n_layer``), as the book's ``gpt_download.py`` reads it."""
    problems: list[str] = []
    vocab = _positive_int(hparams, ["n_vocab"], problems)
    context = _positive_int(hparams, ["n_ctx"], problems)
    emb = _positive_int(hparams, ["n_embd"], problems)
    heads = _positive_int(hparams, ["n_head"], problems)
    layers = _positive_int(hparams, ["n_layer"], problems)
    if problems:
        raise CheckpointError(f"{where} is not a usable GPT-2 hparams file: {'; '.join(problems)}.")
    return _make_config({"vocab_size": vocab, "context_length": context, "emb_dim": emb, "n_heads": heads,
                         "n_layers": layers, "drop_rate": 0.1, "qkv_bias": True, "tie_weights": True}, where)


def infer_size(cfg: GPTConfig) -> str | None:
    """The GPT-2 size name whose shape ``cfg`` has (vocabulary 50257, context 1024), else ``None``."""
    if cfg.vocab_size != GPT2_VOCAB_SIZE or cfg.context_length != GPT2_CONTEXT:
        return None
    for size, shape in GPT2_SHAPES.items():
        if (shape["emb_dim"], shape["n_layers"], shape["n_heads"]) == (cfg.emb_dim, cfg.n_layers, cfg.n_heads):
            return size
    return None


# ---------------------------------------------------------------------------------------------
# Tensor readers: names, shapes and dtypes from the headers first; data one tensor at a time
# ---------------------------------------------------------------------------------------------


class _Reader:
    where: str

    def entries(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Canonical name (Hugging Face, no ``transformer.`` prefix) -> (shape, dtype)."""
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        """The tensor, in the stored layout and dtype (possibly memory-mapped: copy before keeping)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _canonical(key: str) -> str:
    return key[len("transformer."):] if key.startswith("transformer.") else key


def _add_entry(table: dict[str, Any], raw: str, value: Any, where: str) -> None:
    key = _canonical(raw)
    if key in table:
        raise CheckpointError(f"{where} holds {key!r} twice (with and without the 'transformer.' prefix, or "
                              "in two shards).")
    table[key] = value


class _SafetensorsReader(_Reader):
    def __init__(self, files: list[Path]) -> None:
        from safetensors import SafetensorError, safe_open

        self.where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} shards)"
        self._file: dict[str, tuple[Path, str]] = {}
        self._entries: dict[str, tuple[tuple[int, ...], str]] = {}
        for file in files:
            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    for raw in f.keys():
                        sl = f.get_slice(raw)
                        _add_entry(self._entries, raw, (tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype())),
                                   self.where)
                        self._file[_canonical(raw)] = (file, raw)
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"{file} is not a valid safetensors file: corrupt or truncated ({e}).") from e

    def entries(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return dict(self._entries)

    def get(self, key: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        file, raw = self._file[key]
        # One open per tensor: the mapping (and its resident pages) goes away once the tensor is converted.
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                return f.get_tensor(raw)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{file}: {raw} cannot be read ({e}).") from e


class _TorchBinReader(_Reader):
    """``pytorch_model.bin`` (shards): loaded whole, each file's tensors checked at once for expanded,
    overlapping or more-than-the-file tensors (:func:`interop.check_untrusted_tensors`; values are checked
    tensor by tensor in :func:`convert`)."""

    def __init__(self, files: list[Path]) -> None:
        self.where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} shards)"
        self._tensors: dict[str, torch.Tensor] = {}
        for file in files:
            obj = interop.load_untrusted_torch_file(file)  # weights_only=True: code payloads are refused
            if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
                obj = obj["state_dict"]
            if not isinstance(obj, Mapping) or not obj:
                raise CheckpointError(f"{file} does not hold a state_dict (a dict of tensors).")
            mine: dict[str, torch.Tensor] = {}
            for raw, value in obj.items():
                if not isinstance(raw, str) or not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{file} does not hold a state_dict: {raw!r} is a "
                                          f"{type(value).__name__}, not a tensor.")
                _add_entry(self._tensors, raw, value, self.where)
                mine[_canonical(raw)] = value
            del obj
            # The causal-mask buffers are dropped unread, so they may be whatever they are.
            interop.check_untrusted_tensors({k: v for k, v in mine.items() if not _IGNORED.fullmatch(k)},
                                            file_size=file.stat().st_size, where=str(file), check_values=False)

    def entries(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in self._tensors.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._tensors.pop(key)  # dropped once converted: memory stays at about one copy

    def close(self) -> None:
        self._tensors.clear()


def tf_name_to_hf(name: str) -> str | None:
    """The Hugging Face name of an OpenAI TensorFlow variable, ``None`` for names GPT-2 does not have.

    ``model/wte`` -> ``wte.weight``, ``model/h3/attn/c_attn/w`` -> ``h.3.attn.c_attn.weight``,
    ``model/h0/ln_1/g`` -> ``h.0.ln_1.weight``, ``model/ln_f/b`` -> ``ln_f.bias`` (the book's
    ``load_gpt2_params_from_tf_ckpt`` walks the same ``model/h{i}/...`` tree)."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "model":
        return None
    parts = parts[1:]
    if parts in (["wte"], ["wpe"]):
        return f"{parts[0]}.weight"
    prefix = ""
    if re.fullmatch(r"h\d+", parts[0]):
        prefix = f"h.{int(parts[0][1:])}."
        parts = parts[1:]
    leaf = {"w": "weight", "g": "weight", "b": "bias"}.get(parts[-1]) if parts else None
    if leaf is None or len(parts) < 2 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts[:-1]):
        return None
    return prefix + ".".join(parts[:-1] + [leaf])


class _TFReader(_Reader):
    """TensorFlow variables (``name -> shape`` plus a loader), renamed to Hugging Face names; the
    ``(1, in, out)`` Conv1D weights are squeezed to ``(in, out)`` as the book's ``np.squeeze`` does."""

    def __init__(self, where: str, shapes: Iterable[tuple[str, Iterable[int]]],
                 load: Callable[[str], Any]) -> None:
        self.where = where
        self._load = load
        self._raw: dict[str, str] = {}
        self._entries: dict[str, tuple[tuple[int, ...], str]] = {}
        for raw, shape in shapes:
            shape = tuple(int(s) for s in shape)
            key = tf_name_to_hf(raw)
            if key is None:
                key = raw  # reported as unexpected
            elif len(shape) == 3 and shape[0] == 1:
                shape = shape[1:]
            if key in self._entries:
                raise CheckpointError(f"{where} holds two variables for {key!r}.")
            self._raw[key] = raw
            self._entries[key] = (shape, "float32")

    def entries(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return dict(self._entries)

    def get(self, key: str) -> torch.Tensor:
        array = np.asarray(self._load(self._raw[key]))
        if not np.issubdtype(array.dtype, np.floating):
            raise CheckpointError(f"{self.where}: {self._raw[key]} is {array.dtype}, not floating point.")
        return torch.from_numpy(array.reshape(self._entries[key][0]))


def _tf_reader(resolved: ResolvedSource) -> _TFReader:
    try:
        import tensorflow as tf  # type: ignore[import-not-found]
    except ImportError:
        raise CheckpointError(
            f"{resolved.origin['path']} is OpenAI's TensorFlow checkpoint, and reading it needs TensorFlow, "
            "which is not installed: pip install 'gpttui[tf]'. Or import the same weights in Hugging Face "
            "format, which needs no TensorFlow: gpttui import-gpt2 gpt2-small (or gpt2-medium, gpt2-large, "
            "gpt2-xl) --name NAME.") from None
    prefix = str(resolved.weight_files[0])
    try:
        shapes = tf.train.list_variables(prefix)
    except Exception as e:  # tf raises its own NotFoundError / DataLossError
        raise CheckpointError(f"{prefix} is not a readable TensorFlow checkpoint ({e}).") from e
    return _TFReader(prefix, shapes, lambda n: tf.train.load_variable(prefix, n))


# ---------------------------------------------------------------------------------------------
# The mapping
# ---------------------------------------------------------------------------------------------


def _expected(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face names and shapes of every tensor a GPT-2 of shape ``cfg`` has (``lm_head`` aside)."""
    v, c, e = cfg.vocab_size, cfg.context_length, cfg.emb_dim
    out: dict[str, tuple[int, ...]] = {"wte.weight": (v, e), "wpe.weight": (c, e)}
    for i in range(cfg.n_layers):
        h = f"h.{i}."
        out.update({
            h + "ln_1.weight": (e,), h + "ln_1.bias": (e,),
            h + "attn.c_attn.weight": (e, 3 * e), h + "attn.c_attn.bias": (3 * e,),
            h + "attn.c_proj.weight": (e, e), h + "attn.c_proj.bias": (e,),
            h + "ln_2.weight": (e,), h + "ln_2.bias": (e,),
            h + "mlp.c_fc.weight": (e, 4 * e), h + "mlp.c_fc.bias": (4 * e,),
            h + "mlp.c_proj.weight": (4 * e, e), h + "mlp.c_proj.bias": (e,),
        })
    out.update({"ln_f.weight": (e,), "ln_f.bias": (e,)})
    return out


def _own(view: torch.Tensor) -> torch.Tensor:
    """A fresh, contiguous float32 tensor holding ``view`` (one copy: layout and dtype at once)."""
    return torch.empty(tuple(view.shape), dtype=torch.float32).copy_(view)


def _targets(key: str, e: int) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """Our parameter(s) made from the Hugging Face tensor ``key`` (``e`` = emb_dim)."""
    if key == "wte.weight":
        return [("tok_emb.weight", _own)]
    if key == "wpe.weight":
        return [("pos_emb.weight", _own)]
    if key in ("ln_f.weight", "ln_f.bias"):
        return [("final_norm." + ("scale" if key.endswith("weight") else "shift"), _own)]
    m = _LAYER.fullmatch(key)
    assert m is not None, key
    b, rest = f"trf_blocks.{m.group(1)}.", m.group(2)
    names = ("W_query", "W_key", "W_value")
    if rest == "attn.c_attn.weight":  # (e, 3e): columns [q | k | v], each transposed to (out, in)
        return [(f"{b}att.{n}.weight", lambda t, i=i: _own(t[:, i * e:(i + 1) * e].T)) for i, n in enumerate(names)]
    if rest == "attn.c_attn.bias":
        return [(f"{b}att.{n}.bias", lambda t, i=i: _own(t[i * e:(i + 1) * e])) for i, n in enumerate(names)]
    simple = {
        "ln_1.weight": ("norm1.scale", False), "ln_1.bias": ("norm1.shift", False),
        "ln_2.weight": ("norm2.scale", False), "ln_2.bias": ("norm2.shift", False),
        "attn.c_proj.weight": ("att.out_proj.weight", True), "attn.c_proj.bias": ("att.out_proj.bias", False),
        "mlp.c_fc.weight": ("ff.layers.0.weight", True), "mlp.c_fc.bias": ("ff.layers.0.bias", False),
        "mlp.c_proj.weight": ("ff.layers.2.weight", True), "mlp.c_proj.bias": ("ff.layers.2.bias", False),
    }
    ours, transpose = simple[rest]
    return [(b + ours, (lambda t: _own(t.T)) if transpose else _own)]


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _check(entries: Mapping[str, tuple[tuple[int, ...], str]], expected: Mapping[str, tuple[int, ...]],
           cfg: GPTConfig, where: str) -> bool:
    """Raise listing every missing, unexpected, mis-shaped or non-float tensor. True if lm_head is present."""
    optional = {"lm_head.weight": (cfg.vocab_size, cfg.emb_dim)}
    missing = [k for k in expected if k not in entries]
    if not cfg.tie_weights and "lm_head.weight" not in entries:
        missing.append("lm_head.weight (the config unties it from wte)")
    unexpected = [k for k in entries if k not in expected and k not in optional and not _IGNORED.fullmatch(k)]
    wrong = []
    not_float = []
    for key, (shape, dtype) in entries.items():
        want = expected.get(key, optional.get(key))
        if want is None:
            continue
        if tuple(shape) != tuple(want):
            wrong.append(f"{key} is {tuple(shape)}, expected {tuple(want)}")
        elif dtype not in _FLOAT_DTYPES:
            not_float.append(f"{key} ({dtype})")
    problems = []
    if missing:
        problems.append(f"missing tensors: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_few(wrong)}")
    if not_float:
        problems.append(f"not floating point: {_few(not_float)}")
    if problems:
        shape = (f"{cfg.n_layers} layers, {cfg.n_heads} heads, width {cfg.emb_dim}, vocabulary "
                 f"{cfg.vocab_size}, context {cfg.context_length}")
        raise CheckpointError(f"{where} does not hold the GPT-2 weights its config describes ({shape}): "
                              f"{'; '.join(problems)}. Nothing was imported.")
    return "lm_head.weight" in entries


def _build_model(cfg: GPTConfig, tensors: dict[str, torch.Tensor]) -> GPTModel:
    """A GPTModel holding ``tensors`` themselves: built on the meta device, so no random weights exist."""
    with torch.device("meta"):
        model = GPTModel(cfg)
    if cfg.tie_weights:
        tensors["out_head.weight"] = tensors["tok_emb.weight"]
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:  # a bug in the mapping, not in the file: _check has seen every tensor
        raise CheckpointError(f"The converted weights do not fit the model: {e}") from e
    if cfg.tie_weights:
        model.out_head.weight = model.tok_emb.weight
    return model.eval()


def _config_numel(cfg: GPTConfig) -> int:
    """How many values the GPT-2 tensors of ``cfg`` hold (without ``lm_head``), by arithmetic."""
    v, c, e, n = cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_layers
    return v * e + c * e + n * (12 * e * e + 13 * e) + 2 * e


def _check_config_fits_files(cfg: GPTConfig, files: list[Path], where: str) -> None:
    """Refuse a config that describes more weights than the files can hold (at 2 bytes a value, the
    smallest float type accepted), before anything is built from it."""
    size = 0
    for f in files:
        with contextlib.suppress(OSError):
            size += f.stat().st_size
    need = _config_numel(cfg) * 2
    if need > size:
        raise CheckpointError(
            f"{where} describes {_config_numel(cfg):,} weights ({need / 1e9:.3g} GB at 16 bits), but the weight "
            f"files hold {size / 1e9:.3g} GB; the config does not match the weights (a crafted or broken "
            "folder). Nothing was imported.")


def convert(reader: _Reader, cfg: GPTConfig, *, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, allow_nonfinite: bool = False) -> tuple[GPTModel, list[str]]:
    """Our model from a reader of GPT-2 tensors, checked first, converted one tensor at a time.

    Every tensor goes through :func:`interop.check_untrusted_tensors` (shape, layout, NaN/inf unless
    ``allow_nonfinite``) before it is copied. Returns the model (eval mode) and notes.
    ``cfg.tie_weights`` becomes false when the file has an ``lm_head.weight`` that differs from ``wte``."""
    expected = _expected(cfg)
    entries = reader.entries()
    has_head = _check(entries, expected, cfg, reader.where)
    order = [k for k in entries if k in expected]  # file order: sequential reads
    total = sum(math.prod(shape) * 4 for shape in expected.values())
    if has_head:
        total += cfg.vocab_size * cfg.emb_dim * 4
    done = 0
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for key in order + (["lm_head.weight"] if has_head else []):
        if cancel is not None and cancel.is_set():
            raise ImportCancelled("Import cancelled; nothing was imported.")
        t = reader.get(key)
        notes += interop.check_untrusted_tensors(
            {key: t}, {key: expected.get(key, (cfg.vocab_size, cfg.emb_dim))}, allow_nonfinite=allow_nonfinite,
            where=reader.where)
        if key == "lm_head.weight":
            if torch.equal(t, out["tok_emb.weight"].to(t.dtype)):
                cfg = cfg.replace(tie_weights=True)
            else:
                cfg = cfg.replace(tie_weights=False)
                out["out_head.weight"] = _own(t)
                notes.append("lm_head.weight differs from wte.weight, so the output head is not tied.")
        else:
            for ours, fn in _targets(key, cfg.emb_dim):
                out[ours] = fn(t)
        del t
        done += math.prod(expected.get(key, (cfg.vocab_size, cfg.emb_dim))) * 4
        if progress is not None:
            progress(done, total)
    if not has_head and not cfg.tie_weights:  # unreachable: _check reports it
        raise CheckpointError(f"{reader.where} has no lm_head.weight.")
    return _build_model(cfg, out), notes


def model_from_tf_variables(variables: Mapping[str, Any], hparams: Mapping[str, Any]) -> GPTModel:
    """Our model from OpenAI TensorFlow variables given as arrays (``{"model/wte": array, ...}``, the
    names and shapes ``tf.train.list_variables`` shows) and the ``hparams.json`` dict: the same
    mapping the TensorFlow import uses, without TensorFlow."""
    cfg = config_from_tf_hparams(hparams)
    reader = _TFReader("TensorFlow variables", [(k, np.shape(v)) for k, v in variables.items()],
                       lambda n: variables[n])
    return convert(reader, cfg)[0]


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


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


def _weight_files(resolved: ResolvedSource) -> list[Path]:
    if resolved.format == "tf":  # model.ckpt -> model.ckpt.data-00000-of-00001 ...
        prefix = resolved.weight_files[0]
        return sorted(prefix.parent.glob(prefix.name + ".data-*"))
    return list(resolved.weight_files)


def load_resolved(resolved: ResolvedSource, *, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, tokenizer: str | None = None,
                  allow_nonfinite: bool = False) -> LoadedGPT2:
    """Read, check and convert the files of ``resolved`` into a GPTModel (eval mode, float32, CPU).

    The config is checked against the size of the weight files, and against ``tokenizer`` when given
    (:func:`interop.check_tokenizer`), before any weights are read; every tensor is checked as it is
    read (:func:`interop.check_untrusted_tensors`; NaN/inf refused unless ``allow_nonfinite``)."""
    if resolved.format == "tf":
        cfg = config_from_tf_hparams(_read_json(resolved.config_file), str(resolved.config_file))
    else:
        cfg = config_from_hf(_read_json(resolved.config_file), str(resolved.config_file))
    if tokenizer is not None:
        interop.check_tokenizer(cfg.vocab_size, tokenizer, str(resolved.config_file))
    if resolved.format == "tf":
        reader: _Reader = _tf_reader(resolved)
    else:
        reader = (_SafetensorsReader(resolved.weight_files) if resolved.format == "safetensors"
                  else _TorchBinReader(resolved.weight_files))
    try:
        _check_config_fits_files(cfg, _weight_files(resolved), str(resolved.config_file))
        model, notes = convert(reader, cfg, progress=progress, cancel=cancel, allow_nonfinite=allow_nonfinite)
    finally:
        reader.close()
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
    if cancel is not None and cancel.is_set():
        raise ImportCancelled("Import cancelled; nothing was imported.")
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
    "import_gpt2",
]
