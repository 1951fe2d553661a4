"""What GPT-2 files hold and how it becomes the book's model: configs, the weight map, readers, conversion.

The weight map (:data:`WEIGHT_MAP`) is one table, in the spirit of litgpt's ``convert_hf_checkpoint.py``: each
Hugging Face GPT-2 name (``h.{i}.`` for block ``i``, no ``transformer.`` prefix) with its OpenAI TensorFlow
name, the book's parameter name(s), its shape in the file and the transform. GPT-2's ``Conv1D`` weights are
stored ``(in, out)``, so ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` weights are
transposed into ``nn.Linear`` layout; ``c_attn`` is split into ``W_query``/``W_key``/``W_value``; ``ln_*``
weight/bias become ``scale``/``shift``; ``wte`` is the token embedding and (tied) the output head; ``wpe``
the position embedding; the ``attn.bias`` / ``attn.masked_bias`` buffers are dropped. Every name and shape
is checked from the file headers before any tensor is read; anything missing, unexpected or mis-shaped is
reported at once and nothing is built.

Untrusted input: the config must not describe more weights than the files hold, and every tensor passes
:func:`interop.check_untrusted_tensors` (no expanded or overlapping tensors in a ``pytorch_model.bin``, no
NaN/inf unless ``allow_nonfinite``) before it is copied.

Memory: safetensors files are memory-mapped and opened once per tensor, so each source tensor's pages are
released as soon as it is converted; converted tensors are written straight into their final place and
the model is built on the meta device (no random initialisation). The peak is about one copy of the
weights (plus one tensor) instead of the two or three of a naive load.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from gpttui.core import interop
from gpttui.core.config import GPT2_SHAPES, GPTConfig
from gpttui.core.errors import CheckpointError, ConfigError
from gpttui.core.gpt2_sources import HF_CONFIG, TF_HPARAMS, ProgressFn, ResolvedSource, raise_if_cancelled
from gpttui.core.model import GPTModel

GPT2_VOCAB_SIZE = 50257
GPT2_CONTEXT = 1024
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "float16", "bfloat16", "float32", "float64"}


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
# The weight map
# ---------------------------------------------------------------------------------------------


def _own(view: torch.Tensor) -> torch.Tensor:
    """A fresh, contiguous float32 tensor holding ``view`` (one copy: layout and dtype at once)."""
    return torch.empty(tuple(view.shape), dtype=torch.float32).copy_(view)


def _copy(t: torch.Tensor) -> list[torch.Tensor]:
    return [_own(t)]


def _transpose(t: torch.Tensor) -> list[torch.Tensor]:  # Conv1D (in, out) -> nn.Linear (out, in)
    return [_own(t.T)]


def _split(t: torch.Tensor) -> list[torch.Tensor]:  # c_attn bias: [q | k | v]
    return [_own(part) for part in t.chunk(3, dim=-1)]


def _split_transpose(t: torch.Tensor) -> list[torch.Tensor]:  # c_attn weight: columns [q | k | v], each transposed
    return [_own(part.T) for part in t.chunk(3, dim=-1)]


@dataclass(frozen=True)
class Weight:
    """One GPT-2 tensor: its TensorFlow name, our parameter name(s), its shape in the file (``V``
    vocabulary, ``C`` context, ``E`` width, ``3E`` three widths...) and the transform into our layout.
    No ``ours``: the tensor is dropped unread."""

    tf: str | None
    ours: tuple[str, ...]
    shape: tuple[str, ...] = ()
    transform: Callable[[torch.Tensor], list[torch.Tensor]] = _copy
    optional: bool = False  # only lm_head: read when present (an untied head), else wte serves


def _qkv(param: str) -> tuple[str, ...]:
    return tuple(f"trf_blocks.{{i}}.att.{n}.{param}" for n in ("W_query", "W_key", "W_value"))


_B = "trf_blocks.{i}."
# Hugging Face name -> Weight(TensorFlow name, our name(s), shape in the file, transform); {i}: the block.
WEIGHT_MAP: dict[str, Weight] = {
    "wte.weight": Weight("model/wte", ("tok_emb.weight",), ("V", "E")),  # tied: also out_head.weight
    "wpe.weight": Weight("model/wpe", ("pos_emb.weight",), ("C", "E")),
    "h.{i}.ln_1.weight": Weight("model/h{i}/ln_1/g", (_B + "norm1.scale",), ("E",)),
    "h.{i}.ln_1.bias": Weight("model/h{i}/ln_1/b", (_B + "norm1.shift",), ("E",)),
    "h.{i}.attn.c_attn.weight": Weight("model/h{i}/attn/c_attn/w", _qkv("weight"), ("E", "3E"), _split_transpose),
    "h.{i}.attn.c_attn.bias": Weight("model/h{i}/attn/c_attn/b", _qkv("bias"), ("3E",), _split),
    "h.{i}.attn.c_proj.weight": Weight("model/h{i}/attn/c_proj/w", (_B + "att.out_proj.weight",), ("E", "E"),
                                       _transpose),
    "h.{i}.attn.c_proj.bias": Weight("model/h{i}/attn/c_proj/b", (_B + "att.out_proj.bias",), ("E",)),
    "h.{i}.ln_2.weight": Weight("model/h{i}/ln_2/g", (_B + "norm2.scale",), ("E",)),
    "h.{i}.ln_2.bias": Weight("model/h{i}/ln_2/b", (_B + "norm2.shift",), ("E",)),
    "h.{i}.mlp.c_fc.weight": Weight("model/h{i}/mlp/c_fc/w", (_B + "ff.layers.0.weight",), ("E", "4E"), _transpose),
    "h.{i}.mlp.c_fc.bias": Weight("model/h{i}/mlp/c_fc/b", (_B + "ff.layers.0.bias",), ("4E",)),
    "h.{i}.mlp.c_proj.weight": Weight("model/h{i}/mlp/c_proj/w", (_B + "ff.layers.2.weight",), ("4E", "E"),
                                      _transpose),
    "h.{i}.mlp.c_proj.bias": Weight("model/h{i}/mlp/c_proj/b", (_B + "ff.layers.2.bias",), ("E",)),
    "h.{i}.attn.bias": Weight(None, ()),  # causal-mask buffers, not weights
    "h.{i}.attn.masked_bias": Weight(None, ()),
    "ln_f.weight": Weight("model/ln_f/g", ("final_norm.scale",), ("E",)),
    "ln_f.bias": Weight("model/ln_f/b", ("final_norm.shift",), ("E",)),
    "lm_head.weight": Weight(None, ("out_head.weight",), ("V", "E"), optional=True),
}
_FROM_TF = {w.tf: name for name, w in WEIGHT_MAP.items() if w.tf}
_BLOCK = re.compile(r"(h\.|model/h)(\d+)(?=[./])")  # h.3.ln_1.weight, model/h3/ln_1/g


def _lookup(name: str, table: Mapping[str, Any]) -> tuple[str, int | None] | None:
    """The entry of ``table`` that ``name`` is (``h.3.x`` is ``h.{i}.x`` with i = 3), or ``None``."""
    m = _BLOCK.match(name)
    key, i = (m.group(1) + "{i}" + name[m.end():], int(m.group(2))) if m else (name, None)
    return (key, i) if key in table and ("{i}" in key) == (i is not None) else None


def _dropped(name: str) -> bool:
    found = _lookup(name, WEIGHT_MAP)
    return found is not None and not WEIGHT_MAP[found[0]].ours


def tf_name_to_hf(name: str) -> str | None:
    """The Hugging Face name of an OpenAI TensorFlow variable, ``None`` for names GPT-2 does not have.

    ``model/wte`` -> ``wte.weight``, ``model/h3/attn/c_attn/w`` -> ``h.3.attn.c_attn.weight``,
    ``model/h0/ln_1/g`` -> ``h.0.ln_1.weight``, ``model/ln_f/b`` -> ``ln_f.bias`` (the book's
    ``load_gpt2_params_from_tf_ckpt`` walks the same ``model/h{i}/...`` tree)."""
    found = _lookup(name, _FROM_TF)
    return None if found is None else _FROM_TF[found[0]].format(i=found[1])


def _shape(spec: tuple[str, ...], cfg: GPTConfig) -> tuple[int, ...]:
    unit = {"V": cfg.vocab_size, "C": cfg.context_length, "E": cfg.emb_dim}
    return tuple(int(d[:-1] or 1) * unit[d[-1]] for d in spec)


def _expected(cfg: GPTConfig, *, optional: bool = False) -> dict[str, tuple[int, ...]]:
    """Hugging Face names and shapes of every tensor a GPT-2 of shape ``cfg`` has (``lm_head`` aside; only
    it with ``optional``), in the order of the map with the blocks expanded in place."""
    rows = [(name, w) for name, w in WEIGHT_MAP.items() if w.ours and w.optional == optional]
    block = [(name, w) for name, w in rows if "{i}" in name]
    out: dict[str, tuple[int, ...]] = {}
    for name, w in rows:
        if "{i}" not in name:
            out[name] = _shape(w.shape, cfg)
        elif name == block[0][0]:
            out.update({n.format(i=i): _shape(b.shape, cfg) for i in range(cfg.n_layers) for n, b in block})
    return out


def _convert_one(key: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our parameter(s) made from the Hugging Face tensor ``key``, as the map says."""
    found = _lookup(key, WEIGHT_MAP)
    assert found is not None, key  # _check has refused every name the map does not know
    w = WEIGHT_MAP[found[0]]
    return dict(zip((ours.format(i=found[1]) for ours in w.ours), w.transform(t), strict=True))


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
            interop.check_untrusted_tensors({k: v for k, v in mine.items() if not _dropped(k)},
                                            file_size=file.stat().st_size, where=str(file), check_values=False)

    def entries(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in self._tensors.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._tensors.pop(key)  # dropped once converted: memory stays at about one copy

    def close(self) -> None:
        self._tensors.clear()


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
# Checks and conversion
# ---------------------------------------------------------------------------------------------


def _check(entries: Mapping[str, tuple[tuple[int, ...], str]], expected: Mapping[str, tuple[int, ...]],
           cfg: GPTConfig, where: str) -> bool:
    """Raise listing every missing, unexpected, mis-shaped or non-float tensor. True if lm_head is present."""
    optional = _expected(cfg, optional=True)
    missing = [k for k in expected if k not in entries]
    if not cfg.tie_weights and "lm_head.weight" not in entries:
        missing.append("lm_head.weight (the config unties it from wte)")
    unexpected = [k for k in entries if k not in expected and k not in optional and not _dropped(k)]
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
    problems = [f"{what}: {interop._few(items, 6)}" for what, items in (
        ("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", wrong),
        ("not floating point", not_float)) if items]
    if problems:
        shape = (f"{cfg.n_layers} layers, {cfg.n_heads} heads, width {cfg.emb_dim}, vocabulary "
                 f"{cfg.vocab_size}, context {cfg.context_length}")
        raise CheckpointError(f"{where} does not hold the GPT-2 weights its config describes ({shape}): "
                              f"{'; '.join(problems)}. Nothing was imported.")
    return "lm_head.weight" in entries


def _build_model(cfg: GPTConfig, tensors: dict[str, torch.Tensor]) -> GPTModel:
    """A GPTModel holding ``tensors`` themselves: built on the meta device, so no random weights exist."""
    if cfg.tie_weights:
        tensors["out_head.weight"] = tensors["tok_emb.weight"]
    # A mismatch here is a bug in the weight map, not in the file: _check has seen every tensor.
    return interop.model_from_state_dict(cfg, tensors, "The output of the GPT-2 weight map").eval()


def _config_numel(cfg: GPTConfig) -> int:
    """How many values the GPT-2 tensors of ``cfg`` hold (without ``lm_head``): the map's shapes, a block's
    times the layer count, without listing the tensors (a crafted config may claim a billion layers)."""
    return sum(math.prod(_shape(w.shape, cfg)) * (cfg.n_layers if "{i}" in name else 1)
               for name, w in WEIGHT_MAP.items() if w.ours and not w.optional)


def check_config_fits_files(cfg: GPTConfig, files: list[Path], where: str) -> None:
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
    shapes = {**expected, **(_expected(cfg, optional=True) if has_head else {})}
    # File order (sequential reads); the head last, to be compared with the converted wte.
    order = [k for k in entries if k in expected] + (["lm_head.weight"] if has_head else [])
    total = sum(math.prod(shape) * 4 for shape in shapes.values())
    done = 0
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for key in order:
        raise_if_cancelled(cancel)
        t = reader.get(key)
        notes += interop.check_untrusted_tensors({key: t}, {key: shapes[key]}, allow_nonfinite=allow_nonfinite,
                                                 where=reader.where)
        if key == "lm_head.weight":
            cfg = cfg.replace(tie_weights=torch.equal(t, out["tok_emb.weight"].to(t.dtype)))
            if not cfg.tie_weights:
                out.update(_convert_one(key, t))
                notes.append("lm_head.weight differs from wte.weight, so the output head is not tied.")
        else:
            out.update(_convert_one(key, t))
        del t
        done += math.prod(shapes[key]) * 4
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


def read_model(resolved: ResolvedSource, *, progress: ProgressFn | None = None,
               cancel: threading.Event | None = None, tokenizer: str | None = None,
               allow_nonfinite: bool = False) -> tuple[GPTModel, list[str]]:
    """The model in the files of ``resolved`` and notes, as :func:`gpttui.core.gpt2_import.load_resolved` says."""
    where = str(resolved.config_file)
    from_json = config_from_tf_hparams if resolved.format == "tf" else config_from_hf
    cfg = from_json(_read_json(resolved.config_file), where)
    if tokenizer is not None:
        interop.check_tokenizer(cfg.vocab_size, tokenizer, where)
    reader: _Reader
    if resolved.format == "tf":
        reader = _tf_reader(resolved)
    elif resolved.format == "safetensors":
        reader = _SafetensorsReader(resolved.weight_files)
    else:
        reader = _TorchBinReader(resolved.weight_files)
    try:
        check_config_fits_files(cfg, resolved.data_files(), where)
        return convert(reader, cfg, progress=progress, cancel=cancel, allow_nonfinite=allow_nonfinite)
    finally:
        reader.close()
