"""Record inputs of a corpus: .jsonl lines, .parquet rows and Hugging Face dataset rows, one document
each (the ``text_field``). Split from ``sources`` to keep it short; pyarrow and ``datasets`` are
imported only here, and only when such an input is read (importing ``datasets`` takes seconds)."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from gpttui.core.corpus_types import SourceStats
from gpttui.core.errors import DataError
from gpttui.core.sources import (WHITESPACE, EmptyInput, InputError, InputFile, Meter, SourcePlan, decode,
                                 module_missing, not_regular, open_regular, sniff, SNIFF_BYTES)

try:  # about 2x faster than json on .jsonl lines; json stays the fallback (and reads what orjson refuses)
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _fast_loads = json.loads

_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone "\\ud800" in JSON: not text any encoder takes
_BOM = b"\xef\xbb\xbf"
_HF_INSTALL = "pip install 'gpttui[hf]'"
MAX_BATCH_ROWS = 65536

Pieces = Iterator[tuple[str, bool, None]]


def _excerpt(text: str, n: int = 60) -> str:
    text = text.strip()
    return repr(text[:n] + ("..." if len(text) > n else ""))


def _document(value: Any, st: SourceStats) -> str | None:
    """``value`` as a document, counted in ``st``; None for no string (missing) or only whitespace (empty)."""
    if not isinstance(value, str):
        st.missing_field += 1
        return None
    if not value.strip(WHITESPACE):
        st.empty += 1
        return None
    st.documents += 1
    st.characters += len(value)
    return value


# --- .jsonl -----------------------------------------------------------------------------------------

def jsonl_documents(path: Path, text_field: str, st: SourceStats, warnings: list[str], meter: Meter) -> Pieces:
    """One document per line's ``text_field``. A line that is not a JSON object counts in ``bad_lines``,
    a record without a string field in ``missing_field``; blank lines are ignored. A file without any
    good record raises (with the counts and the first bad line); otherwise the problems are a warning."""
    first_bad: tuple[int, str] | None = None
    first_missing: tuple[int, list[str]] | None = None
    with open_regular(path) as f:
        head = f.read(SNIFF_BYTES)
        if not head:
            raise EmptyInput(f"{path} is empty.")
        sniff(path, head, whole=len(head) >= os.fstat(f.fileno()).st_size)
        f.seek(0)
        for lineno, line in enumerate(f, 1):
            meter.read += len(line)
            if lineno == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]
            if not line.strip():
                continue
            record = _parse(line, st)
            if not isinstance(record, dict):
                st.bad_lines += 1
                first_bad = first_bad or (lineno, _excerpt(line.decode("utf-8", errors="replace")))
                continue
            value = record.get(text_field)
            if isinstance(value, str) and b"\\u" in line and _SURROGATE.search(value):
                value = _SURROGATE.sub("\ufffd", value)
            missing = st.missing_field
            if (document := _document(value, st)) is not None:
                yield document, True, None
            elif st.missing_field > missing and first_missing is None:
                first_missing = (lineno, sorted(record)[:8])
    problems = _jsonl_problems(st, text_field, first_bad, first_missing)
    if not st.documents:
        if problems:
            raise InputError(f"{path} has no usable record: {problems}.", "no usable record")
        raise EmptyInput(f"{path} holds no text: {st.empty:,} record(s) with empty text.")
    if problems:
        warnings.append(f"{st.name}: {problems}.")


def _parse(line: bytes, st: SourceStats) -> Any:
    """A line's JSON value (None when it is not JSON). Bytes that are not UTF-8 are replaced (and
    counted), as in text files; a lone surrogate escape is read too (replaced by the caller)."""
    try:
        return _fast_loads(line)
    except ValueError:  # not JSON, or what only json reads: bad UTF-8, lone surrogates, NaN
        pass
    text, replaced = decode(line)
    try:
        record = json.loads(text)
    except ValueError:
        return None
    st.replaced_bytes += replaced
    return record


def _jsonl_problems(st: SourceStats, text_field: str, first_bad: tuple[int, str] | None,
                    first_missing: tuple[int, list[str]] | None) -> str:
    out = []
    if first_bad:
        out.append(f"{st.bad_lines:,} line(s) not a JSON object (the first, line {first_bad[0]}: {first_bad[1]})")
    if first_missing:
        fields = ", ".join(first_missing[1]) or "none"
        out.append(f"{st.missing_field:,} record(s) without a string {text_field!r} field (the first, line "
                   f"{first_missing[0]}, has: {fields}; choose the field with --text-field)")
    return "; ".join(out)


# --- .parquet ---------------------------------------------------------------------------------------

def _pyarrow_parquet(path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"Reading {path} needs pyarrow: pip install pyarrow (or {_HF_INSTALL}).",
                         "needs pyarrow") from None
    return pa, pq


def _batch_rows(total_bytes: int, rows: int, block: int) -> int:
    """Rows per batch so that a batch holds about ``block`` bytes."""
    per_row = max(1, total_bytes // max(1, rows))
    return max(1, min(MAX_BATCH_ROWS, block // per_row))


def _rows_to_pieces(batches: Iterable[list], rows: int, size: int, st: SourceStats, meter: Meter) -> Pieces:
    """Documents of batches of values; the input's ``size`` is told to the meter in proportion to rows."""
    done = 0
    for values in batches:
        done += len(values)
        meter.read = size * done // rows if rows else size
        for value in values:
            if (document := _document(value, st)) is not None:
                yield document, True, None


def _parquet_batch_rows(pf, text_field: str, block: int) -> int:
    """Rows per batch for about ``block`` bytes of text: from the uncompressed size the metadata tells,
    or from the first rows when they are bigger (dictionary-encoded columns look small)."""
    meta = pf.metadata
    rows = max(1, meta.num_rows)
    per_row = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / rows
    probe = next(pf.iter_batches(batch_size=64, columns=[text_field]), None)
    if probe is not None and probe.num_rows:
        per_row = max(per_row, probe.column(0).nbytes / probe.num_rows)
    return _batch_rows(int(per_row * rows), rows, block)


def parquet_documents(path: Path, text_field: str, st: SourceStats, meter: Meter, block: int) -> Pieces:
    """One document per row's ``text_field`` column, read in batches of about ``block`` bytes; null and
    non-string values count in ``missing_field``. A file without the column raises, naming the columns."""
    pa, pq = _pyarrow_parquet(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if not size:
            raise EmptyInput(f"{path} is empty.")
        try:  # read in small buffers: a row group's column is not loaded whole
            pf = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path} is not a readable Parquet file ({exc}).", "not Parquet") from None
        names = pf.schema_arrow.names
        if text_field not in names:
            raise InputError(f"{path} has no column {text_field!r} (its columns: {', '.join(names) or 'none'}); "
                             "name the text column with --text-field.", f"no column {text_field!r}")
        rows = pf.metadata.num_rows
        try:
            batches = pf.iter_batches(batch_size=_parquet_batch_rows(pf, text_field, block), columns=[text_field])
            yield from _rows_to_pieces((b.column(0).to_pylist() for b in batches), rows, size, st, meter)
        except pa.ArrowException as exc:
            raise InputError(f"{path} could not be read ({exc}).", "unreadable") from None
    if not st.documents:
        if st.missing_field:
            raise InputError(f"{path} has no text in column {text_field!r}: {st.missing_field:,} of its {rows:,} "
                             "values are null or not strings.", "no usable record")
        raise EmptyInput(f"{path} holds no text: {st.empty:,} row(s) with empty text.")


# --- Hugging Face datasets ---------------------------------------------------------------------------

def _need_datasets(what: str) -> None:
    if module_missing("datasets"):
        raise DataError(f"Reading {what} needs the `datasets` library: {_HF_INSTALL}.")


def parse_hub(spec: str) -> tuple[str, str | None, str | None]:
    """``hf:NAME[:CONFIG][@REVISION]`` as (name, config, revision)."""
    rest = spec[len("hf:"):].strip()
    rest, _, revision = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name.strip():
        raise DataError(f"{spec!r} names no dataset: write hf:NAME (e.g. hf:roneneldan/TinyStories), "
                        "optionally hf:NAME:CONFIG@REVISION.")
    return name.strip(), config.strip() or None, revision.strip() or None


def plan_hub(spec: str, text_field: str, split: str) -> SourcePlan:
    """A Hub dataset: nothing is fetched yet (its size becomes known once it is loaded), so a corpus
    tokenized before reopens offline."""
    name, config, revision = parse_hub(spec)
    _need_datasets(f"the Hugging Face dataset {name}")
    shown = name + (f":{config}" if config else "")
    return SourcePlan(spec, f"{shown} (Hugging Face, split {split})", "hf", [InputFile("", shown, "hf", 0, 0)],
                      text_field, split, revision=revision or "")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as a saved dataset's metadata: {exc}.") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a saved dataset's metadata (not a JSON object).")
    return data


def plan_saved_dataset(spec: str, root: Path, text_field: str, split: str) -> SourcePlan:
    """A directory written by ``save_to_disk``: a Dataset (state.json + .arrow files) or a DatasetDict
    (dataset_dict.json + a folder per split, chosen with ``split``). Only its small JSON metadata is read."""
    folder, name = root, root.name
    if (root / "dataset_dict.json").is_file():
        splits = [str(s) for s in _json(root / "dataset_dict.json").get("splits", [])]
        if split not in splits:
            raise DataError(f"{root} is a Hugging Face dataset with the split(s) {', '.join(splits) or 'none'}, "
                            f"not {split!r}: choose one with --split.")
        folder, name = root / split, f"{root.name}[{split}]"
    _need_datasets(f"the Hugging Face dataset in {root}")
    state = _json(folder / "state.json")
    files = [folder / str(d.get("filename", "")) for d in state.get("_data_files", []) if isinstance(d, dict)]
    size, mtime = 0, os.stat(folder / "state.json").st_mtime_ns
    for p in files:
        try:
            st = os.stat(p)
        except OSError:
            raise DataError(f"{root} is a saved dataset whose file {p.name} is missing.") from None
        if not stat.S_ISREG(st.st_mode):  # ``datasets`` would open it: a FIFO would block
            raise not_regular(p, st.st_mode)
        size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
    label = f"{name} (Hugging Face dataset, {len(files)} file(s))"
    return SourcePlan(spec, label, "hf", [InputFile(os.path.abspath(folder), name, "hf", size, mtime)],
                      text_field, split, revision=str(state.get("_fingerprint", "")))


def _load_hub(plan: SourcePlan):
    import datasets

    name, config, revision = parse_hub(plan.spec)
    try:
        return datasets.load_dataset(name, config, split=plan.split, revision=revision)
    except ConnectionError as exc:
        offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                      for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        raise DataError(
            f"The Hugging Face dataset {name} could not be loaded: it needs the network, or a copy already in the "
            f"Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
            + (" (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if offline else "") + f". {exc}") from None
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"The Hugging Face dataset {name} (split {plan.split!r}) could not be loaded: {exc}") \
            from None


def dataset_documents(plan: SourcePlan, index: int, st: SourceStats, meter: Meter, block: int) -> Pieces:
    """One document per row's ``text_field``: a saved dataset (memory-mapped by ``datasets``) or a Hub
    one (downloaded into the Hugging Face cache first; the plan's size is set once it is known)."""
    inp = plan.inputs[index]
    _need_datasets(f"the Hugging Face dataset {inp.name}")
    import datasets

    if inp.path:
        try:
            ds = datasets.load_from_disk(inp.path)
        except (OSError, ValueError) as exc:
            raise DataError(f"The Hugging Face dataset saved in {inp.path} could not be loaded: {exc}") from None
    else:
        ds = _load_hub(plan)
    if isinstance(ds, datasets.DatasetDict):  # a split folder saved on its own: take the asked split
        if plan.split not in ds:
            raise DataError(f"{inp.name} has the split(s) {', '.join(ds)}, not {plan.split!r}: choose one with --split.")
        ds = ds[plan.split]
    if plan.text_field not in ds.column_names:
        raise DataError(f"The Hugging Face dataset {inp.name} has no column {plan.text_field!r} (its columns: "
                        f"{', '.join(ds.column_names)}); name the text column with --text-field.")
    size = inp.size
    if not size:
        size = sum(os.path.getsize(f["filename"]) for f in ds.cache_files if os.path.exists(f["filename"]))
        plan.inputs[index] = replace(inp, size=size)
        st.bytes = size
    rows = len(ds)
    batch = _batch_rows(size, rows, block)
    column = ds.select_columns([plan.text_field])
    yield from _rows_to_pieces((b[plan.text_field] for b in column.iter(batch_size=batch)), rows, size, st, meter)
    if not st.documents:
        raise DataError(f"The Hugging Face dataset {inp.name} has no text in column {plan.text_field!r}: "
                        f"{st.missing_field:,} of its {rows:,} values are null or not strings, "
                        f"{st.empty:,} empty.")
