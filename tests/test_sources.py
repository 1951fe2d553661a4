"""Corpus readers (gpttui.core.sources): plans that read nothing, streamed fragments whose joined text is
the text older versions read (byte for byte: cached sha256s stay valid), .jsonl/.parquet/Hugging Face
records with their counts, and a folder of mixed inputs skipped one by one with the reason."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpttui.core import data as D
from gpttui.core import sources as S
from gpttui.core.errors import DataError

EOT = "<|endoftext|>"
REPO = Path(__file__).resolve().parent.parent


# --- the reader as it was (data.py before issue 16), the reference for joined texts -----------------------

def _old_decode(path: Path, data: bytes) -> tuple[str, int]:
    if b"\x00" in data[:65536]:
        raise DataError(f"{path} looks like a binary file (it contains NUL bytes), not text.")
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    if replaced and replaced > 0.01 * len(data):
        raise DataError(f"{path} is not UTF-8 text")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text, replaced


def _old_read(spec) -> tuple[str, int, list[str]]:
    """(text, replaced bytes, joined files) as the old ``read_corpus`` gave them for files and folders."""
    path = Path(spec)
    if path.is_file():
        text, replaced = _old_decode(path, path.read_bytes())
        return text, replaced, []
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in {".txt", ".md"} and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    docs, names, replaced = [], [], 0
    for p in files:
        data = p.read_bytes()
        if not data.strip():
            continue
        try:
            text, r = _old_decode(p, data)
        except DataError:
            continue
        docs.append(text)
        names.append(p.relative_to(path).as_posix())
        replaced += r
    return EOT.join(docs), replaced, names


def _fragments(plan, block_bytes=4 << 20):
    stats, warnings = [], []
    frags = list(S.iter_fragments(plan, stats, warnings, block_bytes=block_bytes))
    return frags, stats, warnings


def _joined(frags) -> str:
    parts = []
    for f in frags:
        if f.doc_start and parts:
            parts.append(EOT)
        parts.append(f.text)
    return "".join(parts)


def _check_fragments(frags, total: int | None = None) -> None:
    """What the tokenizer counts on: no empty fragment, raw exactly the text's bytes, bytes all told."""
    assert all(f.text for f in frags)
    assert all(f.raw is None or f.raw == f.text.encode("utf-8") for f in frags)
    if total is not None:
        assert sum(f.consumed for f in frags) == total


# --- text files and folders: the old texts -----------------------------------------------------------------

def _text_folder(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub" / ".hidden").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_bytes("\ufeffFirst document, with a BOM.\n".encode())
    (root / "sub" / "b.md").write_text("# Second\n\nIt has a blank line.\n\n", encoding="utf-8")
    (root / "sub" / "c.TXT").write_text("Third: caf\u00e9 \u20ac \U0001f600.", encoding="utf-8")
    (root / "d.txt").write_bytes(b"mostly fine\n" * 200 + b"caf\xe9\n")  # 1 bad byte in 2,405: kept
    (root / "latin.txt").write_bytes("caf\u00e9 r\u00e9sum\u00e9\n".encode("latin-1") * 20)
    (root / "bin.txt").write_bytes(b"\x00\x01binary")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    (root / "zero.md").write_bytes(b"")
    (root / ".git" / "x.txt").write_text("hidden dir", encoding="utf-8")
    (root / "sub" / ".hidden" / "y.md").write_text("hidden nested dir", encoding="utf-8")
    (root / "code.py").write_text("print('not text')", encoding="utf-8")
    return root


@pytest.mark.parametrize("case", ["folder", "bom_file", "bad_bytes_file", "plain_file"])
def test_joined_text_is_the_old_readers_byte_for_byte(tmp_path, case):
    root = _text_folder(tmp_path)
    spec = {"folder": root, "bom_file": root / "a.txt", "bad_bytes_file": root / "d.txt",
            "plain_file": root / "sub" / "c.TXT"}[case]
    text, replaced, files = _old_read(spec)
    corpus = D.read_corpus(spec)  # the name older code imports
    assert corpus.text == text and corpus.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert (corpus.replaced_bytes, corpus.files) == (replaced, files)
    if case == "folder":
        assert corpus.n_files == 4 and corpus.label == "corpus/ (4 files)"
        assert files == ["a.txt", "d.txt", "sub/b.md", "sub/c.TXT"]
        assert [w.split(":")[0] for w in corpus.warnings] == ["skipped bin.txt", "skipped latin.txt",
                                                              "1 bytes that are not valid UTF-8 were replaced with U+FFFD."]
    for block in (1, 5, 64):  # any block size gives the same text
        frags, _, _ = _fragments(S.plan_source(spec), block)
        assert _joined(frags) == text
        _check_fragments(frags)


def test_a_folder_is_read_in_sorted_paths_order(tmp_path):
    """Part by part, as sorted Path objects (the old order): "a/b.txt" before "a-b.txt" though "-" < "/"."""
    root = tmp_path / "order"
    names = ["a-b.txt", "a/b.txt", "a.txt", "A.txt", "a b.md", "a/B/c.jsonl", "a0.txt", "b.parquet.txt", "\u00e9.md"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f'{{"text": "{name}"}}\n' if name.endswith(".jsonl") else name, encoding="utf-8")
    old = sorted(root / n for n in names)
    assert [i.name for i in S.plan_source(root).inputs] == [p.relative_to(root).as_posix() for p in old]
    assert S.read_corpus(root).text == EOT.join(p.relative_to(root).as_posix() for p in old)


def test_builtin_and_memory_sources():
    corpus = S.read_corpus("builtin:pydoc-20k")
    assert corpus.label == "Python reference topics, first 20k characters (built in)"
    assert 20_000 < len(corpus.text) < 21_000 and corpus.text.endswith("\n")
    plan = S.plan_source("builtin:pydoc-20k")
    assert plan.total_bytes == len(corpus.text.encode())
    frags, stats, _ = _fragments(plan, block_bytes=4096)
    assert _joined(frags) == corpus.text and sum(f.doc_start for f in frags) == 1
    assert len(frags) == -(-len(corpus.text) // 4096)
    _check_fragments(frags, plan.total_bytes)
    assert (stats[0].documents, stats[0].characters, stats[0].kind) == (1, len(corpus.text), "builtin")
    assert plan.fingerprint()["python"] == sys.version
    memory = S.plan_memory("h\u00e9llo " * 10, label="notes")
    frags, stats, _ = _fragments(memory, block_bytes=7)
    assert _joined(frags) == "h\u00e9llo " * 10 and memory.total_bytes == 70
    _check_fragments(frags, 70)
    assert memory.fingerprint() != S.plan_memory("other").fingerprint()
    assert memory.fingerprint() == S.plan_memory("h\u00e9llo " * 10, label="renamed").fingerprint()


def test_a_big_file_is_streamed_in_blocks_and_decodes_as_a_whole(tmp_path):
    """Multi-byte characters cut at every kind of block edge, a BOM, a few bad bytes, a literal U+FFFD."""
    unit = "a\u00e9\u20ac\U0001f600\ufffd z\n".encode()  # 1-, 2-, 3- and 4-byte characters
    data = b"\xef\xbb\xbf" + unit * 15_000 + b"tail \xff end \xe2\x82"  # a bad byte; a character cut by the end
    p = tmp_path / "big.txt"
    p.write_bytes(data)
    assert len(data) > 3 * S.SNIFF_BYTES
    whole = data.decode("utf-8", errors="replace")[1:]
    for block in (1000, 4093, 1 << 16):
        frags, stats, warnings = _fragments(S.plan_source(p), block)
        assert len(frags) > 2 and [f.doc_start for f in frags].count(True) == 1
        assert "".join(f.text for f in frags) == whole
        _check_fragments(frags, len(data))
        assert sum(f.raw is not None for f in frags) >= len(frags) - 2  # clean blocks come with their bytes
        assert stats[0].replaced_bytes == 2 and stats[0].characters == len(whole)
        assert warnings == ["2 bytes that are not valid UTF-8 were replaced with U+FFFD."]
    assert S.read_corpus(p).text == whole


BAD_SEQUENCES = [b"\xe2\x82", b"\xf0\x9f", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
                 b"\xe0\x80", b"\xff"]


@pytest.mark.parametrize("seed", range(12))
def test_any_block_edge_decodes_as_the_whole(tmp_path, seed):
    """Valid text of 1- to 4-byte characters with broken sequences of every kind here and there (at most
    1% of the bytes, so the file is kept): streamed in blocks of 1 to 9 bytes, it decodes as the whole."""
    import random

    rng = random.Random(seed)
    parts = []
    for _ in range(1000):
        parts.append(rng.choice(["a", "\u00e9", "\u20ac", "\U0001f600", "\ufffd", " ", "\n"]).encode())
        if rng.random() < 0.003:
            parts.append(rng.choice(BAD_SEQUENCES))
    parts.insert(rng.randrange(len(parts)), rng.choice(BAD_SEQUENCES))
    data = (b"\xef\xbb\xbf" if seed % 2 else b"") + b"".join(parts) + rng.choice([b"", b"\xf0\x9f\x98"])
    p = tmp_path / "r.txt"
    p.write_bytes(data)
    whole = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    replaced = whole.count("\ufffd") - data.count("\ufffd".encode())
    assert 0 < replaced <= 0.01 * len(data)  # so with these seeds
    for block in range(1, 10):
        frags, stats, _ = _fragments(S.plan_source(p), block)
        assert "".join(f.text for f in frags) == whole and stats[0].replaced_bytes == replaced
        _check_fragments(frags, len(data))


def test_a_small_file_is_judged_as_a_whole_as_before(tmp_path):
    p = tmp_path / "edge.txt"
    p.write_bytes(b"a" * 99 + b"\xff")  # 1 bad byte in 100: kept, as before
    assert S.read_corpus(p).replaced_bytes == 1
    p.write_bytes(b"a" * 98 + b"\xff\xff")  # 2 in 100: refused, as before
    with pytest.raises(DataError, match="2 of its 100 bytes are not valid UTF-8"):
        S.read_corpus(p)


def test_whitespace_before_the_text_is_kept_and_whitespace_only_is_refused(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\n \n" * 3000 + b"words\n")
    frags, _, _ = _fragments(S.plan_source(p), block_bytes=100)
    assert _joined(frags) == "\n \n" * 3000 + "words\n" and frags[0].doc_start
    p.write_bytes(b" \n\t" * 30_000)
    with pytest.raises(DataError, match="holds only whitespace"):
        _fragments(S.plan_source(p), block_bytes=100)


@pytest.mark.parametrize("bom, name", [(b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"), (b"\xff\xfe\x00\x00", "UTF-32")])
def test_utf16_and_utf32_files_are_named_with_the_iconv_advice(tmp_path, bom, name):
    p = tmp_path / "wide.txt"
    p.write_bytes(bom + "hello".encode("utf-16-le"))
    with pytest.raises(DataError, match=f"is {name} text") as err:
        S.read_corpus(p)
    assert f"iconv -f {name.lower()} -t utf-8 wide.txt > wide.utf8.txt" in str(err.value)


def test_a_big_file_is_judged_on_its_first_block(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("r\u00e9sum\u00e9 ".encode("latin-1") * 40_000)
    with pytest.raises(DataError, match=r"is not UTF-8 text: .* of the first 65,53\d bytes .*iconv -f latin1"):
        _fragments(S.plan_source(p), block_bytes=1000)
    p.write_bytes(b"fine text " * 10_000 + "r\u00e9sum\u00e9 ".encode("latin-1") * 10_000)  # bad after the head
    frags, stats, _ = _fragments(S.plan_source(p), block_bytes=1000)
    assert stats[0].replaced_bytes == 20_000 and "".join(f.text for f in frags).endswith("r\ufffdsum\ufffd ")


# --- .jsonl ----------------------------------------------------------------------------------------------

JSONL = b"\n".join([
    b'\xef\xbb\xbf{"text": "first doc", "id": 1}',
    b"",
    b"   ",
    b'{"text": "second \\u00e9 \\ud83d\\ude00 and a lone \\ud800"}\r',
    b"not json at all",
    b"[1, 2, 3]",
    b'{"body": "no text field", "id": 7}',
    b'{"text": null}',
    b'{"text": 42}',
    b'{"text": "  \\n "}',
    b'{"text": "caf\xe9 bad byte"}',
    b'{"text": "last\\n"}',
]) + b"\n\n"


def test_jsonl_records_are_documents_and_problems_are_counted(tmp_path):
    p = tmp_path / "records.jsonl"
    p.write_bytes(JSONL)
    plan = S.plan_source(p)
    frags, stats, warnings = _fragments(plan)
    docs = ["first doc", "second \u00e9 \U0001f600 and a lone \ufffd", "caf\ufffd bad byte", "last\n"]
    assert [f.text for f in frags] == docs and all(f.doc_start for f in frags)
    _check_fragments(frags, len(JSONL))
    st = stats[0]
    assert (st.kind, st.documents, st.bad_lines, st.missing_field, st.empty, st.replaced_bytes) == \
        ("jsonl", 4, 2, 3, 1, 1)
    assert st.characters == sum(map(len, docs)) and st.skipped is None
    assert len(warnings) == 2 and warnings[1].startswith("1 bytes")
    assert "2 line(s) not a JSON object (the first, line 5: 'not json at all')" in warnings[0]
    assert "3 record(s) without a string 'text' field (the first, line 7, has: body, id" in warnings[0]
    corpus = S.read_corpus(p)
    assert corpus.text == EOT.join(docs) and corpus.sources[0].documents == 4
    body = S.read_corpus(p, text_field="body")
    assert body.text == "no text field" and body.sources[0].missing_field == 7


def test_a_jsonl_file_without_a_good_record_is_an_error_with_the_counts(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"content": "x"}\n\n{oops\n{"content": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        S.read_corpus(p)
    message = str(err.value)
    assert message.startswith(f"{p} has no usable record: 1 line(s) not a JSON object (the first, line 3: '{{oops')")
    assert "2 record(s) without a string 'text' field (the first, line 1, has: content" in message
    assert "--text-field" in message
    assert S.read_corpus(p, text_field="content").text == f"x{EOT}y"
    p.write_text('{"text": ""}\n\n', encoding="utf-8")
    with pytest.raises(DataError, match="holds no text: 1 record"):
        S.read_corpus(p)


def test_a_jsonl_line_of_megabytes(tmp_path):
    p = tmp_path / "long.jsonl"
    long = "w\u00e9rd " * 400_000  # 2.4 MB of JSON on one line
    p.write_text('{"text": "%s"}\n{"text": "short"}\n' % long, encoding="utf-8")
    frags, stats, _ = _fragments(S.plan_source(p), block_bytes=1 << 16)
    assert [f.text for f in frags] == [long, "short"] and stats[0].documents == 2


# --- .parquet ----------------------------------------------------------------------------------------------

def _parquet(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    pa = pytest.importorskip("pyarrow", reason="needs pyarrow (pip install pyarrow)")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_rows_are_documents_nulls_are_counted(tmp_path):
    texts = [f"row {i} \u00e9" if i % 7 else None for i in range(1000)]
    texts[3] = "   "
    p = _parquet(tmp_path / "t.parquet", {"text": texts, "n": list(range(1000))}, row_group_size=128)
    plan = S.plan_source(p)
    frags, stats, warnings = _fragments(plan, block_bytes=512)  # many small batches
    good = [t for t in texts if t and t.strip()]
    assert [f.text for f in frags] == good and all(f.doc_start and f.raw is None for f in frags)
    _check_fragments(frags, plan.total_bytes)
    st = stats[0]
    assert (st.kind, st.documents, st.missing_field, st.empty, st.characters) == \
        ("parquet", len(good), 143, 1, sum(map(len, good)))
    assert warnings == []
    assert S.read_corpus(p).text == EOT.join(good)


def test_parquet_without_the_column_names_its_columns(tmp_path):
    p = _parquet(tmp_path / "t.parquet", {"content": ["a", "b"], "id": [1, 2]})
    with pytest.raises(DataError) as err:
        S.read_corpus(p)
    assert str(err.value) == (f"{p} has no column 'text' (its columns: content, id); "
                              "name the text column with --text-field.")
    assert S.read_corpus(p, text_field="content").text == f"a{EOT}b"
    with pytest.raises(DataError, match="no text in column 'id': 2 of its 2 values are null or not strings"):
        S.read_corpus(p, text_field="id")
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match="is not a readable Parquet file"):
        S.read_corpus(tmp_path / "fake.parquet")


# --- a folder of everything ------------------------------------------------------------------------------

def test_a_mixed_folder_gives_per_input_stats_and_skips_with_reasons(tmp_path):
    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    (root / "a_latin.txt").write_bytes("caf\u00e9 r\u00e9sum\u00e9\n".encode("latin-1") * 10)
    (root / "b_utf16.txt").write_bytes("\ufeffhello".encode("utf-16-le"))
    (root / "c_binary.txt").write_bytes(b"\x7fELF\x00\x00\x01")
    (root / "d_good.txt").write_text("Good text.\n", encoding="utf-8")
    (root / "e_notes.md").write_text("# Notes\n", encoding="utf-8")
    (root / "sub" / "f.jsonl").write_text('{"text": "rec 1"}\nnope\n{"text": "rec 2"}\n', encoding="utf-8")
    (root / "sub" / "g_bad.jsonl").write_text("nope\n", encoding="utf-8")
    _parquet(root / "sub" / "h.parquet", {"text": ["pq 1", None, "pq 2"]})
    _parquet(root / "sub" / "i.parquet", {"body": ["no column"]})
    (root / "sub" / "j_blank.md").write_text("\n\n", encoding="utf-8")
    plan = S.plan_source(root)
    assert (plan.kind, plan.label) == ("folder", "mixed/ (10 files)")
    assert [i.kind for i in plan.inputs] == ["text"] * 5 + ["jsonl", "jsonl", "parquet", "parquet", "text"]
    frags, stats, warnings = _fragments(plan)
    assert _joined(frags) == EOT.join(["Good text.\n", "# Notes\n", "rec 1", "rec 2", "pq 1", "pq 2"])
    assert [f.source for f in frags] == [3, 4, 5, 5, 7, 7]
    assert [s.name for s in stats] == [i.name for i in plan.inputs]
    assert [s.skipped for s in stats] == ["not UTF-8", "UTF-16 text, not UTF-8", "binary (NUL bytes)", None, None,
                                          None, "no usable record", None, "no column 'text'", None]
    assert [s.documents for s in stats] == [0, 0, 0, 1, 1, 2, 0, 2, 0, 0]
    assert (stats[5].bad_lines, stats[6].bad_lines, stats[7].missing_field, stats[9].empty) == (1, 1, 1, 1)
    assert stats[0].notes() == ["skipped: not UTF-8"]
    skipped = [w.split(":")[0] for w in warnings if w.startswith("skipped")]
    assert skipped == ["skipped a_latin.txt", "skipped b_utf16.txt", "skipped c_binary.txt",
                       "skipped sub/g_bad.jsonl", "skipped sub/i.parquet"]
    assert any(w.startswith("sub/f.jsonl: 1 line(s) not a JSON object") for w in warnings)
    # Skipped inputs' bytes are told on the next fragment; those after the last fragment, on the last.
    assert frags[0].consumed == sum(i.size for i in plan.inputs[:4])
    assert frags[-1].consumed == plan.inputs[8].size + plan.inputs[9].size
    _check_fragments(frags, plan.total_bytes)
    corpus = S.read_corpus(root)
    assert corpus.files == ["d_good.txt", "e_notes.md", "sub/f.jsonl", "sub/h.parquet"] and corpus.n_files == 4


def test_a_folder_where_nothing_is_usable(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.jsonl").write_text("{broken\n", encoding="utf-8")
    (root / "b.txt").write_bytes(b"\x00\x00")
    with pytest.raises(DataError) as err:
        S.read_corpus(root)
    assert str(err.value).startswith(f"{root} has 2 .txt/.md/.jsonl files but none holds usable text. "
                                     f"a.jsonl: {root / 'a.jsonl'} has no usable record: 1 line(s) not a JSON object")
    (root / "b.txt").unlink()
    (root / "a.jsonl").unlink()
    (root / "notes.rst").write_text("not searched", encoding="utf-8")
    with pytest.raises(DataError, match=r"holds no \.txt or \.md files \(nor \.jsonl or \.parquet"):
        S.plan_source(root)


# --- plans and fingerprints --------------------------------------------------------------------------------

def test_planning_reads_no_content_and_the_fingerprint_follows_the_files(tmp_path):
    root = tmp_path / "fp"
    root.mkdir()
    a, b = root / "a.txt", root / "b.jsonl"
    a.write_bytes(b"\x00binary: reading it would fail")
    b.write_text("not json\n", encoding="utf-8")
    plan = S.plan_source(root)  # nothing read: nothing refused
    assert [i.name for i in plan.inputs] == ["a.txt", "b.jsonl"] and plan.total_bytes == a.stat().st_size + 9
    single = S.plan_source(a)
    assert single.kind == "file" and single.inputs[0].path == str(a)
    fp = plan.fingerprint()
    assert fp["spec"] == str(root.resolve()) and fp["text_field"] == "text"
    assert S.plan_source(root).fingerprint() == fp  # nothing changed
    assert S.plan_source(root, text_field="body").fingerprint() != fp
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched
    touched = S.plan_source(root).fingerprint()
    assert touched != fp and touched["inputs"][0][:2] == fp["inputs"][0][:2]
    with open(b, "ab") as f:
        f.write(b"x")
    os.utime(b, ns=(b.stat().st_atime_ns, touched["inputs"][1][2]))  # grown, same mtime
    assert S.plan_source(root).fingerprint()["inputs"][1][1] == 10
    assert S.plan_source(root).fingerprint() != touched
    (root / "c.md").write_text("new", encoding="utf-8")  # a new file
    assert len(S.plan_source(root).fingerprint()["inputs"]) == 3


def test_plan_refuses_what_the_old_reader_refused_before_opening(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"is a named pipe \(FIFO\), not a text file"):
        S.plan_source(fifo)
    with pytest.raises(DataError, match="does not exist"):
        S.plan_source(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="No data source"):
        S.plan_source("  ")
    with pytest.raises(DataError, match="Unknown built-in"):
        S.plan_source("builtin:nope")
    with pytest.raises(DataError, match="text field is empty"):
        S.plan_source("builtin:pydoc-20k", text_field=" ")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="needs a non-root POSIX user (root reads files without permission)")
def test_an_unreadable_file_is_planned_but_not_read(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("text", encoding="utf-8")
    p.chmod(0)
    try:
        plan = S.plan_source(p)
        assert plan.inputs[0].size == 4
        with pytest.raises(DataError, match=r"cannot be read \(permission denied\)"):
            S.read_corpus(p)
    finally:
        p.chmod(stat.S_IRUSR | stat.S_IWUSR)


# --- Hugging Face datasets ---------------------------------------------------------------------------------

@pytest.fixture
def hf_datasets():
    return pytest.importorskip("datasets", reason="needs the datasets library (pip install 'gpttui[hf]')")


def test_a_saved_dataset_and_a_dataset_dict_with_a_split(tmp_path, hf_datasets):
    texts = ["one \u00e9", None, "two", " ", "three\n"]
    ds = hf_datasets.Dataset.from_dict({"text": texts, "label": [0, 1, 2, 3, 4]})
    ds.save_to_disk(str(tmp_path / "ds"))
    plan = S.plan_source(tmp_path / "ds")
    assert (plan.kind, plan.inputs[0].kind, plan.label) == ("hf", "hf", "ds (Hugging Face dataset, 1 file(s))")
    assert plan.total_bytes > 0 and plan.revision
    frags, stats, _ = _fragments(plan, block_bytes=64)
    assert [f.text for f in frags] == ["one \u00e9", "two", "three\n"]
    _check_fragments(frags, plan.total_bytes)
    assert (stats[0].documents, stats[0].missing_field, stats[0].empty) == (3, 1, 1)
    with pytest.raises(DataError, match=r"has no column 'body' \(its columns: text, label\).*--text-field"):
        S.read_corpus(tmp_path / "ds", text_field="body")

    dd = hf_datasets.DatasetDict({"train": ds, "test": hf_datasets.Dataset.from_dict({"text": ["held out"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert S.read_corpus(tmp_path / "dd").text == EOT.join(["one \u00e9", "two", "three\n"])
    test = S.read_corpus(tmp_path / "dd", split="test")
    assert test.text == "held out" and test.label == "dd[test] (Hugging Face dataset, 1 file(s))"
    fp = S.plan_source(tmp_path / "dd", split="test").fingerprint()
    assert fp["split"] == "test" and fp != S.plan_source(tmp_path / "dd").fingerprint()
    with pytest.raises(DataError, match=r"with the split\(s\) train, test, not 'validation': choose one with --split"):
        S.plan_source(tmp_path / "dd", split="validation")


def test_a_hub_name_offline_says_what_it_needs(tmp_path, hf_datasets):
    """In a fresh process: ``datasets`` reads the offline switches when it is imported."""
    script = textwrap.dedent("""
        from gpttui.core import sources as S
        from gpttui.core.errors import DataError
        plan = S.plan_source("hf:someone/no-such-dataset:cfg@v1", split="train")
        print(plan.label, plan.fingerprint()["revision"], plan.total_bytes)
        try:
            S.read_corpus("hf:someone/no-such-dataset")
        except DataError as exc:
            print("DataError:", exc)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "someone/no-such-dataset:cfg (Hugging Face, split train) v1 0"
    assert lines[1].startswith("DataError: The Hugging Face dataset someone/no-such-dataset could not be loaded: "
                               "it needs the network, or a copy already in the Hugging Face cache")
    assert "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set" in lines[1]
    with pytest.raises(DataError, match="names no dataset"):
        S.plan_source("hf:")
