"""The book's files (``model.pth`` / ``model_and_optimizer.pth``) in and out, and the checks every file
from elsewhere goes through before its tensors are used.

Reading is separate from saving: :func:`read_book` returns an :class:`ImportedModel` (model, meta,
optimizer state) and decides no name; :func:`import_book` is the convenience wrapper that reads and then
calls :func:`gpttui.core.checkpoints.save_checkpoint`, which owns the name/overwrite decision.

Files from others are untrusted. They are read with ``torch.load(weights_only=True)`` (no code runs), and
before any tensor is copied, converted or saved :func:`check_untrusted_tensors` refuses:

- expanded tensors (a stride of 0 in a dimension longer than 1: ``torch.zeros(1, 1).expand(N, 768)``
  is 4 bytes on disk and ``N * 3 KB`` once copied), tensors overlapping themselves or reaching past their
  storage, and tensors overlapping each other (except the tied pair ``tok_emb.weight`` /
  ``out_head.weight``, or ``wte.weight`` / ``lm_head.weight``, which ``torch.save`` of a tied model
  writes as one storage viewed twice, identically);
- more tensor bytes than the file holds (after the rules above every tensor byte is a distinct byte of
  the file, so a file much smaller than what it claims is crafted or broken); the config inferred from
  the shapes is bounded by this too;
- NaN/inf values (unless ``allow_nonfinite``), naming the tensor.

``torch.load`` itself would inflate a compressed (deflated) record of a ``.pth`` zip archive without
limit, so such archives are refused before ``torch.load`` sees them (:func:`load_untrusted_torch_file`;
``torch.save`` never compresses).

A model's vocabulary must suit its tokenizer (:func:`check_tokenizer`): at least the tokenizer's size
(gpt2: 50257, or padded such as 50304; bytes: 257). Without a tokenizer given, it is inferred from the
vocabulary.

Export (:func:`export_book`) never overwrites a file unless asked (``force``), never writes inside the
checkpoints folder, never creates folders, and writes atomically.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from gpttui.core import checkpoints, paths
from gpttui.core.checkpoints import model_from_state_dict
from gpttui.core.config import GPT2_SHAPES, GPTConfig
from gpttui.core.errors import CheckpointError, ConfigError
from gpttui.core.fileio import atomic_write
from gpttui.core.model import GPTModel, book_state_dict
from gpttui.core.tokenizer import TOKENIZER_VOCAB, infer_tokenizer  # noqa: F401  (re-exported)

BOOK_MODEL_FILE = "model.pth"
BOOK_MODEL_AND_OPTIMIZER_FILE = "model_and_optimizer.pth"
BOOK_SOURCE = "imported-book"

# Pairs of names that may legitimately be one tensor saved twice (a tied output head).
TIED_PAIRS: frozenset[frozenset[str]] = frozenset({
    frozenset({"tok_emb.weight", "out_head.weight"}),  # the book's / gpttui's names
    frozenset({"wte.weight", "lm_head.weight"}),  # Hugging Face GPT-2 names (no "transformer.")
})

_FINITE_CHUNK = 1 << 22  # elements per isfinite pass: bounded extra memory for big tensors


# ---------------------------------------------------------------------------------------------
# Untrusted tensors
# ---------------------------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # unreachable


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _nonfinite_count(t: torch.Tensor) -> int:
    """How many NaN/inf values ``t`` holds (0 for integer and bool tensors)."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0
    flat = t.reshape(-1)  # a view when contiguous; otherwise a copy bounded by the file size (checked)
    bad = 0
    for chunk in flat.split(_FINITE_CHUNK):
        finite = torch.isfinite(chunk)
        if not bool(finite.all()):
            bad += int(finite.numel() - finite.sum())
    return bad


def check_untrusted_tensors(tensors: Mapping[str, torch.Tensor],
                            expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
                            file_size: int | None = None, allow_nonfinite: bool = False, *,
                            where: str = "The file", check_values: bool = True) -> list[str]:
    """Refuse tensors read from someone else's file that would inflate or poison what is built from them.

    Checks, in this order (metadata first, so nothing large is read or allocated before it passes):

    1. shapes: a tensor whose name is in ``expected_shapes`` must have that shape;
    2. layout: no stride 0 in a dimension longer than 1 (an expanded tensor), no tensor overlapping
       itself, none reaching past its storage's bytes;
    3. sharing: no two tensors overlap in storage, except an identical view shared by a pair in
       :data:`TIED_PAIRS` (what ``torch.save`` writes for a tied head);
    4. size: with ``file_size``, the tensors' bytes (a tied pair counted once) must fit in the file;
    5. values (``check_values``): no NaN/inf, unless ``allow_nonfinite``.

    Raises :class:`CheckpointError` (one line, starting with ``where``) on the first rule broken.
    Returns notes: the tensors with non-finite values when those were allowed.
    """
    _check_shapes(tensors, expected_shapes or {}, where)
    total = _stored_bytes(_storage_regions(tensors, where), where)
    if file_size is not None and total > file_size:
        raise CheckpointError(
            f"{where} is {_fmt_bytes(file_size)} but its tensors claim {_fmt_bytes(total)}; a crafted or broken "
            "file (the tensors cannot all be stored in it). Nothing was imported.")
    return _check_values(tensors, allow_nonfinite, where) if check_values else []


def _check_shapes(tensors: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, tuple[int, ...]],
                  where: str) -> None:
    wrong = []
    for key, t in tensors.items():
        want = expected_shapes.get(key)
        if want is not None and tuple(t.shape) != tuple(want):
            wrong.append(f"{key} is {tuple(t.shape)}, expected {tuple(want)}")
    if wrong:
        raise CheckpointError(f"{where} does not match the model config (wrong shapes: {_few(wrong)}). "
                              "Nothing was imported.")


def _storage_regions(tensors: Mapping[str, torch.Tensor], where: str) -> dict[Any, list[tuple[int, int, str, tuple]]]:
    """Each tensor's byte span in its storage, by storage; refuses meta, expanded, self-overlapping and
    out-of-storage tensors."""
    regions: dict[Any, list[tuple[int, int, str, tuple]]] = {}
    for key, t in tensors.items():
        if t.device.type == "meta":
            raise CheckpointError(f"{where}: {key} is a meta tensor (it holds no values).")
        if t.numel() == 0:
            continue
        size, stride, elem = tuple(t.shape), tuple(t.stride()), t.element_size()
        claimed = t.numel() * elem
        if any(st == 0 and n > 1 for n, st in zip(size, stride)):
            stored = t.untyped_storage().nbytes()
            raise CheckpointError(
                f"{where}: {key} {size} is an expanded tensor (stride 0), {_fmt_bytes(stored)} stored but "
                f"{_fmt_bytes(claimed)} once copied; a crafted or broken file. Nothing was imported.")
        if any(st < 0 for st in stride):
            raise CheckpointError(f"{where}: {key} has a negative stride; a crafted or broken file.")
        reach = 0  # in elements, beyond the first one
        for st, n in sorted((st, n) for n, st in zip(size, stride) if n > 1):
            if st <= reach:
                raise CheckpointError(
                    f"{where}: {key} {size} overlaps itself (strides {stride}): {_fmt_bytes(claimed)} of values "
                    "from fewer bytes; a crafted or broken file. Nothing was imported.")
            reach += st * (n - 1)
        start = t.storage_offset() * elem
        end = start + (reach + 1) * elem
        storage_bytes = t.untyped_storage().nbytes()
        if end > storage_bytes:
            raise CheckpointError(f"{where}: {key} {size} reaches past the end of its storage "
                                  f"({_fmt_bytes(end)} needed, {_fmt_bytes(storage_bytes)} stored); a crafted or "
                                  "broken file.")
        ident = (size, stride, t.dtype)
        regions.setdefault(t.untyped_storage().data_ptr(), []).append((start, end, key, ident))
    return regions


def _stored_bytes(regions: dict[Any, list[tuple[int, int, str, tuple]]], where: str) -> int:
    """The bytes the tensors need, a tied pair counted once; refuses any other sharing of storage."""
    total = 0
    for spans in regions.values():
        spans.sort(key=lambda span: span[0])  # stable: file order among equal starts
        widest: tuple[int, int, str, tuple] | None = None  # of the spans so far, the one reaching furthest
        for span in spans:
            start, end, key, ident = span
            if widest is not None and start < widest[1]:
                same_view = (start, end, ident) == (widest[0], widest[1], widest[3])
                if not (same_view and frozenset({key, widest[2]}) in TIED_PAIRS):
                    raise CheckpointError(
                        f"{where}: {widest[2]} and {key} share the same stored values; only a tied output head "
                        "may (tok_emb.weight / out_head.weight). A crafted or broken file; nothing was imported.")
                continue  # the tied pair: one tensor, counted once
            total += math.prod(ident[0]) * ident[2].itemsize
            widest = span
    return total


def _check_values(tensors: Mapping[str, torch.Tensor], allow_nonfinite: bool, where: str) -> list[str]:
    """Refuses NaN/inf values unless allowed (then a note names them)."""
    bad = []
    for key, t in tensors.items():
        n = _nonfinite_count(t)
        if n:
            bad.append(f"{key} ({n:,} of {t.numel():,} values)")
    if bad and not allow_nonfinite:
        raise CheckpointError(
            f"{where} has NaN/inf weights in {_few(bad)}; a model with them produces NaN. Not imported; "
            "to import it anyway use --allow-nonfinite (allow_nonfinite=True).")
    return [f"Imported with NaN/inf values (allowed): {_few(bad)}."] if bad else []


def load_untrusted_torch_file(path: str | os.PathLike[str]) -> Any:
    """A ``.pth`` / ``.bin`` file from elsewhere, read with ``torch.load(weights_only=True)``.

    A zip archive (what ``torch.save`` writes) is first checked with :mod:`zipfile`: every record must be
    stored uncompressed (``torch.save`` never compresses; ``torch.load`` would inflate a deflated record
    of any size) and the records cannot add up to more than the file. The older non-zip format is read
    as is; its tensors are bounded by :func:`check_untrusted_tensors` afterwards.
    """
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is corrupt, truncated or not a PyTorch file ({e}).") from e
        size = path.stat().st_size
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise CheckpointError(f"{path} has compressed records ({_few(packed, 2)}), which torch.save never "
                                  "writes and which could unpack to any size; it was not loaded.")
        claimed = sum(i.file_size for i in infos)
        if claimed > size:
            raise CheckpointError(f"{path} is {_fmt_bytes(size)} but its records claim {_fmt_bytes(claimed)}; "
                                  "a crafted or broken file. It was not loaded.")
    return checkpoints.safe_torch_load(path)


def _tensors_in(obj: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists/tuples, with a readable path."""
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors_in(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors_in(v, f"{where}[{i}]")


# ---------------------------------------------------------------------------------------------
# Tokenizer and vocabulary
# ---------------------------------------------------------------------------------------------


def check_tokenizer(vocab_size: int, tokenizer: str | None, where: str = "The model") -> str:
    """The tokenizer to record for a model with ``vocab_size`` tokens: ``tokenizer`` if the model can
    generate with it (its vocabulary is at least the tokenizer's), inferred when ``None``. Else raises."""
    sizes = ", ".join(f"{k} {v}" for k, v in TOKENIZER_VOCAB.items())
    if tokenizer is None:
        tokenizer = infer_tokenizer(vocab_size)
        if tokenizer is None:
            raise CheckpointError(f"{where} has a vocabulary of {vocab_size} tokens, smaller than any gpttui "
                                  f"tokenizer ({sizes}), so it cannot generate text here; not imported.")
        return tokenizer
    need = TOKENIZER_VOCAB.get(tokenizer)
    if need is None:
        raise CheckpointError(f"Unknown tokenizer {tokenizer!r}; expected one of {', '.join(TOKENIZER_VOCAB)}.")
    if vocab_size < need:
        fits = infer_tokenizer(vocab_size)
        hint = (f"it fits the {fits} tokenizer ({TOKENIZER_VOCAB[fits]} tokens): use --tokenizer {fits}"
                if fits else f"no gpttui tokenizer fits ({sizes})")
        raise CheckpointError(f"{where} has a vocabulary of {vocab_size} tokens, fewer than the {tokenizer} "
                              f"tokenizer's {need}, so it could not generate with it; {hint}. Not imported.")
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Building a model from checked tensors
# ---------------------------------------------------------------------------------------------


def model_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for ``cfg`` (no ``att.mask``), from a model on the meta device."""
    with torch.device("meta"):
        model = GPTModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Import of the book's files
# ---------------------------------------------------------------------------------------------


@dataclass
class ImportedModel:
    """A model read from a file, not saved yet: save it with ``checkpoints.save_checkpoint(name,
    imported.model, optimizer=imported.optimizer_state, meta=imported.meta)``."""

    model: GPTModel
    meta: dict[str, Any]  # source, tokenizer, imported_from, notes ...
    optimizer_state: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> GPTConfig:
        return self.model.cfg


def _split_book_object(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """The model state dict (clean keys, no ``att.mask``) and optimizer state (or ``None``)."""
    opt_state = None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        state, opt_state = obj["model_state_dict"], obj.get("optimizer_state_dict")
    else:
        state = obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a model state_dict (a dict of tensors), nor a "
                              "{'model_state_dict': ..., 'optimizer_state_dict': ...} dict.")
    state = {k: v for k, v in checkpoints.clean_state_dict(state).items() if not k.endswith(".att.mask")}
    return state, opt_state


def _read_checked_book_file(path: Path, allow_nonfinite: bool,
                            shapes: Mapping[str, tuple[int, ...]] | None = None, check_values: bool = True,
                            ) -> tuple[dict[str, torch.Tensor], Any, list[str]]:
    obj = load_untrusted_torch_file(path)
    state, opt_state = _split_book_object(obj, path)
    everything = dict(state)
    everything.update(_tensors_in(opt_state, "optimizer_state_dict"))
    notes = check_untrusted_tensors(everything, shapes, file_size=path.stat().st_size,
                                    allow_nonfinite=allow_nonfinite, where=str(path), check_values=check_values)
    return state, opt_state, notes


def _gpt2_heads(emb_dim: int) -> int | None:
    return next((s["n_heads"] for s in GPT2_SHAPES.values() if s["emb_dim"] == emb_dim), None)


def infer_book_config(source: str | os.PathLike[str] | Mapping[str, torch.Tensor], *,
                      n_heads: int | None = None) -> GPTConfig:
    """A config from the tensor shapes of a book file (path, checked as :func:`read_book` does) or of an
    already checked state dict (clean keys).

    ``n_heads`` cannot be seen in the shapes: given, it is used; otherwise it comes from the GPT-2
    table by ``emb_dim`` (768, 1024, 1280, 1600), and any other width is an error. ``drop_rate`` is
    the default (it changes no weights)."""
    if isinstance(source, (str, os.PathLike)):
        state = _read_checked_book_file(Path(source).expanduser(), allow_nonfinite=True, check_values=False)[0]
    else:
        state = source
    if "tok_emb.weight" not in state or "pos_emb.weight" not in state:
        raise CheckpointError("Not a GPT model state_dict from the book: tok_emb.weight / pos_emb.weight "
                              "are missing.")
    if state["tok_emb.weight"].dim() != 2 or state["pos_emb.weight"].dim() != 2:
        raise CheckpointError("Not a GPT model state_dict from the book: tok_emb.weight / pos_emb.weight "
                              "are not 2-D.")
    vocab_size, emb_dim = state["tok_emb.weight"].shape
    context_length = state["pos_emb.weight"].shape[0]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"trf_blocks\.(\d+)\.", k))}
    n_layers = len(blocks)
    if blocks != set(range(n_layers)):  # a stray trf_blocks.999999.* must not build a million blocks
        gaps = sorted(set(range(max(blocks) + 1)) - blocks)
        raise CheckpointError(f"The transformer blocks are not numbered 0..{n_layers - 1}: blocks "
                              f"{_few([str(g) for g in gaps])} are missing.")
    n_heads = n_heads or _gpt2_heads(int(emb_dim))
    if n_heads is None:
        raise CheckpointError(
            f"Cannot infer the number of attention heads from the weights (emb_dim {emb_dim} is not a "
            "GPT-2 size: 768, 1024, 1280, 1600); give n_heads (or the whole model config) to import it.")
    qkv_bias = "trf_blocks.0.att.W_query.bias" in state
    head = state.get("out_head.weight")
    tie = head is None or (tuple(head.shape) == tuple(state["tok_emb.weight"].shape)
                           and torch.equal(head, state["tok_emb.weight"]))
    try:
        return GPTConfig(vocab_size=int(vocab_size), context_length=int(context_length),
                         emb_dim=int(emb_dim), n_heads=n_heads, n_layers=n_layers, qkv_bias=qkv_bias,
                         tie_weights=tie)
    except ConfigError as e:
        raise CheckpointError(f"The weights do not describe a usable model: {e}") from e


def _import_optimizer_state(opt: Any, model: GPTModel, notes: list[str]) -> dict[str, Any] | None:
    """The book's optimizer state, if it fits ``model``'s parameters (else ``None`` and a note)."""
    if not isinstance(opt, dict) or "state" not in opt or not isinstance(opt.get("param_groups"), list):
        notes.append("optimizer_state_dict was not an optimizer state and was not imported.")
        return None
    n_ours = len(list(model.parameters()))
    ids = [i for g in opt["param_groups"] for i in g.get("params", [])]
    if len(ids) == n_ours:
        return opt
    if model.cfg.tie_weights and len(ids) == n_ours + 1 and len(opt["param_groups"]) == 1:
        # The book's separate out_head.weight (last parameter) is now tied to tok_emb: drop its state.
        opt = copy.deepcopy(opt)
        dropped = opt["param_groups"][0]["params"].pop()
        opt["state"].pop(dropped, None)
        notes.append("out_head.weight equals tok_emb.weight, so they were tied; the optimizer state of "
                     "the separate out_head.weight was dropped.")
        return opt
    notes.append(f"The optimizer state has {len(ids)} parameters, the model {n_ours}; it was not imported.")
    return None


def read_book(path: str | os.PathLike[str], config: GPTConfig | None = None, *, n_heads: int | None = None,
              tokenizer: str | None = None, allow_nonfinite: bool = False) -> ImportedModel:
    """Read the book's ``model.pth`` or ``model_and_optimizer.pth`` into a model; nothing is saved.

    Read with ``torch.load(weights_only=True)`` and checked (:func:`check_untrusted_tensors`: no expanded
    or overlapping tensors, no more tensor bytes than the file has, no NaN/inf unless
    ``allow_nonfinite``) before any tensor is used; wrapper prefixes and ``att.mask`` buffers dropped;
    the config inferred from the shapes unless given (``n_heads`` helps the inference for widths that
    are not GPT-2's); ``tokenizer`` checked against the vocabulary, or inferred from it when ``None``.
    The meta has source ``"imported-book"``; the optimizer state is kept when it fits the model.
    """
    path = Path(path).expanduser()
    shapes = model_shapes(config) if config is not None else None
    state, opt_state, notes = _read_checked_book_file(path, allow_nonfinite, shapes)
    cfg = config if config is not None else infer_book_config(state, n_heads=n_heads)
    tokenizer = check_tokenizer(cfg.vocab_size, tokenizer, str(path))
    if tokenizer == "bytes" and cfg.vocab_size > TOKENIZER_VOCAB["bytes"]:
        notes.append(f"The vocabulary has {cfg.vocab_size} tokens; the bytes tokenizer uses the first 257.")
    if cfg.tie_weights:
        head = state.get("out_head.weight")
        if head is not None and not (head.shape == state["tok_emb.weight"].shape
                                     and torch.equal(head, state["tok_emb.weight"])):
            raise CheckpointError(f"{path}: the config ties out_head to tok_emb, but out_head.weight "
                                  "differs from tok_emb.weight.")
        state["out_head.weight"] = state["tok_emb.weight"]
    model = model_from_state_dict(cfg, state, str(path))
    opt = _import_optimizer_state(opt_state, model, notes) if opt_state is not None else None
    meta: dict[str, Any] = {"source": BOOK_SOURCE, "imported_from": str(path.resolve()), "tokenizer": tokenizer}
    if notes:
        meta["notes"] = list(notes)
    return ImportedModel(model=model, meta=meta, optimizer_state=opt, notes=list(notes))


def import_book(path: str | os.PathLike[str], name: str, config: GPTConfig | None = None, *,
                n_heads: int | None = None, tokenizer: str | None = None, overwrite: bool = False,
                allow_nonfinite: bool = False) -> Path:
    """:func:`read_book`, then save as checkpoint ``name`` (``save_checkpoint`` refuses an existing
    name unless ``overwrite``). Returns the checkpoint folder."""
    checkpoints.validate_name(name)
    if not overwrite and checkpoints.checkpoint_exists(name):  # early, before reading a big file
        raise CheckpointError(f"Checkpoint {name!r} already exists; choose another name.")
    imported = read_book(path, config, n_heads=n_heads, tokenizer=tokenizer, allow_nonfinite=allow_nonfinite)
    return checkpoints.save_checkpoint(name, imported.model, optimizer=imported.optimizer_state,
                                       meta=imported.meta, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# Export to the book's files
# ---------------------------------------------------------------------------------------------


def _book_optimizer_state(state: dict[str, Any], model: GPTModel) -> dict[str, Any]:
    """Our optimizer state for the book's model, whose ``out_head`` is never tied to ``tok_emb``.

    Untied: unchanged. Tied: the book's optimizer has one more parameter (``out_head.weight``, last
    in ``model.parameters()`` order); it gets a copy of the shared weight's state.
    """
    if not model.cfg.tie_weights:
        return state
    groups = state["param_groups"]
    n_ours = len(list(model.parameters()))
    ids = [i for g in groups for i in g["params"]]
    if len(groups) != 1 or len(ids) != n_ours:
        raise CheckpointError(
            "This checkpoint ties out_head to tok_emb and its optimizer was not built as "
            "AdamW(model.parameters()), so its state cannot be mapped onto the book's untied model; "
            "export without the optimizer.")
    state = copy.deepcopy(state)
    tok_emb_id = groups[0]["params"][0]  # tok_emb.weight is the first parameter
    new_id = max(ids) + 1
    state["param_groups"][0]["params"] = list(groups[0]["params"]) + [new_id]
    if tok_emb_id in state["state"]:
        state["state"][new_id] = copy.deepcopy(state["state"][tok_emb_id])
    return state


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def export_target(path: str | os.PathLike[str], with_optimizer: bool = False, *, force: bool = False) -> Path:
    """The file :func:`export_book` would write for ``path``, or :class:`CheckpointError` saying why not.

    ``path`` is a file, or an existing folder (the book's file name goes inside). Refused: an existing
    file (unless ``force``), a folder that does not exist (it is not created), and anything inside the
    checkpoints folder, symbolic links followed (even with ``force``: it could overwrite a checkpoint's
    own ``model.safetensors`` or ``meta.json``)."""
    raw = os.fspath(path)
    out = Path(raw).expanduser()
    if out.is_dir():
        out = out / (BOOK_MODEL_AND_OPTIMIZER_FILE if with_optimizer else BOOK_MODEL_FILE)
    elif raw.endswith(("/", os.sep)) or (os.altsep and raw.endswith(os.altsep)):
        raise CheckpointError(f"Folder {out} does not exist; create it first (export does not create folders).")
    parent = out.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise CheckpointError(f"Cannot export to {out}: folder {parent} {what} (export does not create "
                              "folders; create it first).")
    store = paths.checkpoints_dir().resolve()
    targets = [parent.resolve() / out.name]
    with contextlib.suppress(OSError, RuntimeError):
        targets.append(out.resolve())  # a symbolic link at the target itself, followed
    if any(_inside(t, store) for t in targets):
        raise CheckpointError(f"Cannot export to {out}: it is inside gpttui's checkpoints folder ({store}), "
                              "where it could overwrite a checkpoint's own files. Choose a path outside it.")
    if os.path.lexists(out):
        if out.is_dir():
            raise CheckpointError(f"Cannot export to {out}: it is a folder.")
        if not force:
            raise CheckpointError(f"{out} already exists and was not overwritten; choose another path, or "
                                  "replace it with --force.")
    return out


def _write_book_file(obj: Any, out: Path, *, force: bool) -> None:
    """``torch.save(obj)`` to ``out`` atomically (:func:`gpttui.core.fileio.atomic_write`). With ``force``
    an existing file (or a symbolic link itself) is replaced as a whole; without, ``out`` is never
    clobbered, even by a file created since the checks (O_EXCL semantics)."""
    try:
        atomic_write(out, lambda f: torch.save(obj, f), replace=force)
    except FileExistsError:
        raise CheckpointError(f"{out} already exists and was not overwritten; choose another path, or "
                              "replace it with --force.") from None
    except OSError as e:
        raise CheckpointError(f"Could not write {out}: {e}") from e


def export_book(name: str, path: str | os.PathLike[str], with_optimizer: bool = False, *,
                force: bool = False) -> Path:
    """Write checkpoint ``name`` as the book saves it: ``model.pth`` (``model.state_dict()``) or, with
    the optimizer, ``model_and_optimizer.pth`` (``{"model_state_dict", "optimizer_state_dict"}``).

    ``path`` is the file to write, or an existing folder to write the book's file name into; see
    :func:`export_target` for what is refused (an existing file without ``force``, a missing folder,
    the checkpoints folder). The state dict has the book's exact keys (``att.mask`` buffers included)
    and loads strictly into the book's ``GPTModel``. Returns the file written.
    """
    out = export_target(path, with_optimizer, force=force)  # before the (possibly slow) load
    loaded = checkpoints.load_checkpoint(name, load_optimizer=with_optimizer)
    state = book_state_dict(loaded.model)
    if with_optimizer:
        if loaded.optimizer_state is None:
            raise CheckpointError(f"Checkpoint {name!r} has no optimizer state; export it without the "
                                  "optimizer.")
        obj: Any = {"model_state_dict": state,
                    "optimizer_state_dict": _book_optimizer_state(loaded.optimizer_state, loaded.model)}
    else:
        obj = state
    _write_book_file(obj, out, force=force)
    return out


__all__ = [
    "BOOK_MODEL_FILE", "BOOK_MODEL_AND_OPTIMIZER_FILE", "BOOK_SOURCE", "TOKENIZER_VOCAB", "TIED_PAIRS",
    "ImportedModel", "check_untrusted_tensors", "load_untrusted_torch_file", "infer_tokenizer",
    "check_tokenizer", "model_shapes", "model_from_state_dict", "infer_book_config", "read_book",
    "import_book", "export_target", "export_book",
]
