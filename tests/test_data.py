"""Data pipeline: corpora, cached tokenization, the book's windows and loaders, checks with numbers."""

from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from book_reference import GPTDatasetV1, create_dataloader_v1
from gpttui.core import data as D
from gpttui.core.errors import DataError
from gpttui.core.tokenizer import ENDOFTEXT, ByteTokenizer


def _ramp(n: int) -> np.ndarray:
    """Token i is i (mod 2**16): a window's first token tells where it starts."""
    return (np.arange(n) % 65536).astype(np.uint16)


def _book(tokens: np.ndarray, max_length: int, stride: int) -> GPTDatasetV1:
    return GPTDatasetV1(None, None, max_length, stride, token_ids=[int(t) for t in tokens])


@pytest.fixture(scope="module")
def pydoc():
    return D.read_corpus("builtin:pydoc")


# --- windows -----------------------------------------------------------------------------------------

WINDOW_CASES = [
    (100, 10, 10),
    (100, 10, 1),
    (101, 10, 10),
    (100, 7, 3),
    (50, 4, 9),  # stride > max_length: tokens skipped between windows, as in the book
    (50, 4, 46),
    (50, 4, 47),
    (10, 10, 1),  # n == max_length: no window (a target needs one more token)
    (11, 10, 1),  # n == max_length + 1: exactly one
    (11, 10, 5),
    (3, 5, 1),  # shorter than one window
    (0, 4, 2),
]


@pytest.mark.parametrize("n, max_length, stride", WINDOW_CASES)
def test_windows_equal_the_books(n, max_length, stride):
    rng = np.random.default_rng(n * 1000 + max_length * 10 + stride)
    tokens = rng.integers(0, 50257, size=n).astype(np.uint16)
    ours = D.TokenWindows(tokens, max_length, stride)
    book = _book(tokens, max_length, stride)
    starts = list(range(0, n - max_length, stride))
    assert len(ours) == len(book) == len(starts)
    for i, s in enumerate(starts):
        x, y = ours[i]
        bx, by = book[i]
        assert ours.start(i) == s
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x, bx) and torch.equal(y, by)
        assert torch.equal(x, torch.from_numpy(tokens[s:s + max_length].astype(np.int64)))
    if starts:
        assert torch.equal(ours[-1][0], book[len(book) - 1][0])
    with pytest.raises(IndexError):
        ours[len(ours)]


@pytest.mark.parametrize("n, max_length, stride", [(100, 10, 1), (100, 7, 3), (50, 4, 9)])
def test_batch_equals_stacked_items(n, max_length, stride):
    w = D.TokenWindows(_ramp(n), max_length, stride)
    idx = [len(w) - 1, 0, 3, 3, 1]
    x, y = w.batch(np.asarray(idx))
    assert x.shape == y.shape == (len(idx), max_length) and x.dtype == torch.int64
    assert torch.equal(x, torch.stack([w[i][0] for i in idx]))
    assert torch.equal(y, torch.stack([w[i][1] for i in idx]))
    x2, _ = w.batch(torch.tensor(idx))
    assert torch.equal(x, x2)


def test_windows_reject_bad_sizes():
    with pytest.raises(DataError):
        D.TokenWindows(_ramp(10), 0, 1)
    with pytest.raises(DataError):
        D.TokenWindows(_ramp(10), 4, 0)


def test_windows_memory_is_o_tokens():
    """2M tokens at stride 1 are ~2M windows of 256: the book's lists would hold ~4 GB of tensors."""
    tokens = np.random.default_rng(0).integers(0, 50257, size=2_000_000).astype(np.uint16)
    tracemalloc.start()
    try:
        w = D.TokenWindows(tokens, 256, 1)
        x, y = w.batch(np.arange(len(w) - 8, len(w)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
    assert len(w) == 2_000_000 - 256
    assert torch.equal(y[-1], torch.from_numpy(tokens[-256:].astype(np.int64)))


# --- loaders --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_windows", [0, 1, 7, 8, 9, 25])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
@pytest.mark.parametrize("drop_last", [True, False])
def test_loader_len_matches_torch(n_windows, batch_size, drop_last):
    tokens = _ramp(n_windows * 4 + 4)
    book = _book(tokens, 4, 4)
    ours = D.TokenWindows(tokens, 4, 4)
    assert len(book) == len(ours) == n_windows
    loader = D.BatchLoader(ours, batch_size, shuffle=not drop_last, drop_last=drop_last)
    ref = DataLoader(book, batch_size=batch_size, shuffle=False, drop_last=drop_last)
    assert len(loader) == len(ref) == len(list(loader))


def _starts(loader, epoch, stride):
    return [int(s) // stride for x, _ in loader.epoch(epoch) for s in x[:, 0]]


@pytest.mark.parametrize("n_windows, batch_size", [(40, 4), (43, 4)])
def test_train_loader_shuffles_reproducibly(n_windows, batch_size):
    stride, L = 3, 5
    w = D.TokenWindows(_ramp(n_windows * stride + L), L, stride)
    assert len(w) == n_windows
    a = D.BatchLoader(w, batch_size, shuffle=True, drop_last=True, seed=7)
    b = D.BatchLoader(w, batch_size, shuffle=True, drop_last=True, seed=7)
    e0, e1 = _starts(a, 0, stride), _starts(a, 1, stride)
    assert e0 == _starts(b, 0, stride)  # same seed, same order
    assert e0 != e1  # a new order each epoch
    assert e0 != list(range(len(e0)))  # shuffled at all
    assert _starts(D.BatchLoader(w, batch_size, True, True, seed=8), 0, stride) != e0
    for order in (e0, e1):  # every window at most once, all of them when batches divide evenly
        assert len(order) == len(set(order)) == (n_windows // batch_size) * batch_size
        if n_windows % batch_size == 0:
            assert sorted(order) == list(range(n_windows))
    assert all(x.shape == (batch_size, L) for x, _ in a)
    # Resuming mid-epoch gives the rest of the same epoch.
    full = list(a.epoch(1))
    rest = list(a.epoch(1, start_batch=3))
    assert len(rest) == len(full) - 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(full[3:], rest))


def test_val_loader_in_order_with_partial_batch():
    stride, L, n_windows, bs = 2, 6, 11, 4
    tokens = _ramp(n_windows * stride + L)
    w = D.TokenWindows(tokens, L, stride)
    loader = D.BatchLoader(w, bs, shuffle=False, drop_last=False)
    ref = DataLoader(_book(tokens, L, stride), batch_size=bs, shuffle=False, drop_last=False)
    ours, theirs = list(loader), list(ref)
    assert [x.shape[0] for x, _ in ours] == [4, 4, 3]
    assert len(ours) == len(theirs)
    for (x, y), (bx, by) in zip(ours, theirs):
        assert torch.equal(x, bx) and torch.equal(y, by)
    assert torch.equal(next(loader.epoch(5))[0], ours[0][0])  # no shuffle: every epoch the same
    assert loader.tokens_per_epoch == 3 * bs * L


def test_loader_rejects_bad_batch_size():
    with pytest.raises(DataError):
        D.BatchLoader(D.TokenWindows(_ramp(20), 4, 4), 0, True, True)


# --- tokenizing ------------------------------------------------------------------------------------------

def _long(unit: str, chars: int = 3 * D.CHUNK_CHARS + 1000) -> str:
    """Long enough that tokenize_corpus cuts it into several chunks."""
    return unit * (chars // len(unit) + 1)


PARAGRAPH = "The quick brown fox jumps over the lazy dog; it's 42 times faster than you'd think"
TRICKY_TEXTS = {
    "blank lines": _long(PARAGRAPH + ".\n\n"),
    "trailing spaces": _long(PARAGRAPH + " \n"),
    "crlf": _long(PARAGRAPH + ".\r\n"),
    "indented": _long(PARAGRAPH + ":\n    indented line\n\tTabbed\n"),
    "unicode spaces": _long(PARAGRAPH + "\u00a0\n\u2003em space\u3000\n\u2028sep\n\x85next\n"),
    "no newlines": _long(PARAGRAPH + " "),
    "documents": _long(PARAGRAPH + "\n\n" + ENDOFTEXT),  # the folder join after blank lines
    "documents 2": _long("Doc " + PARAGRAPH + " \n" + ENDOFTEXT + "\n"),
    "emoji": _long("😀 Grüße 日本語\n👍🏽\n"),
}


def test_tokenize_pydoc_equals_whole_encode(pydoc, gpt2_tokenizer):
    tc = D.tokenize_corpus(pydoc, gpt2_tokenizer)
    assert len(tc.char_offsets) > 3  # really cut into chunks
    assert tc.tokens.dtype == np.uint16
    assert tc.tokens.tolist() == gpt2_tokenizer.encode(pydoc.text)
    assert tc.token_offsets[-1] == tc.n_tokens and tc.char_offsets[-1] == len(pydoc.text)


@pytest.mark.parametrize("name", sorted(TRICKY_TEXTS))
def test_tokenize_equals_whole_encode(name, gpt2_tokenizer):
    text = TRICKY_TEXTS[name]
    tc = D.tokenize_corpus(D.Corpus("test", name, text), gpt2_tokenizer, use_cache=False)
    assert tc.tokens.tolist() == gpt2_tokenizer.encode(text)
    btc = D.tokenize_corpus(D.Corpus("test", name, text), ByteTokenizer(), use_cache=False)
    assert btc.tokens.tolist() == ByteTokenizer().encode(text)


def test_tokenize_reports_progress(pydoc):
    seen = []
    D.tokenize_corpus(pydoc, ByteTokenizer(), progress=seen.append)
    size = len(pydoc.text.encode())
    assert (seen[0].phase, seen[0].done_bytes, seen[0].total_bytes) == ("reading", 0, size)
    assert (seen[-1].phase, seen[-1].done_bytes, seen[-1].tokens) == ("done", size, len(ByteTokenizer().encode(pydoc.text)))
    assert [p.done_bytes for p in seen] == sorted(p.done_bytes for p in seen)
    assert seen[-1].fraction == 1.0 and seen[-1].eta == 0.0


SMALL_TEXT = (
    "a\n\nb \nc\r\nd\n e\n\tf\n\u00a0g\nh" + ENDOFTEXT + "i\n\n" + ENDOFTEXT + "\nj \n" + ENDOFTEXT
    + "k's\n'll\n  \n\n1\n23\n😀\n日本\n\x1c\n\u2028\nz"
)


CUT_TEXTS = {
    "small": SMALL_TEXT,
    "indented": TRICKY_TEXTS["indented"][:3000],
    "documents 2": TRICKY_TEXTS["documents 2"][:3000],
    "documents": TRICKY_TEXTS["documents"][:3000],  # no safe cut at all: "\n" only before "\n" or EOT
}


@pytest.mark.parametrize("name", sorted(CUT_TEXTS))
@pytest.mark.parametrize("target", [1, 2, 3, 7, 50])
def test_chunk_boundaries_keep_tokens(name, target, gpt2_tokenizer):
    text = CUT_TEXTS[name]
    bounds = D.chunk_boundaries(text, target)
    assert bounds[0] == 0 and bounds[-1] == len(text) and bounds == sorted(set(bounds))
    if target <= 7 and name != "documents":
        assert len(bounds) > 5  # the test cuts for real
    pieces = [t for a, b in zip(bounds, bounds[1:]) for t in gpt2_tokenizer.encode(text[a:b])]
    assert pieces == gpt2_tokenizer.encode(text)


def _chunked(text: str, tok, target: int) -> D.TokenizedCorpus:
    """A TokenizedCorpus as tokenize_corpus builds it, with small chunks."""
    bounds = D.chunk_boundaries(text, target)
    parts = [tok.encode(text[a:b]) for a, b in zip(bounds, bounds[1:])]
    tokens = np.asarray([t for p in parts for t in p], dtype=np.uint16)
    counts = np.cumsum([0] + [len(p) for p in parts])
    return D.TokenizedCorpus(D.Corpus("test", "test", text), tok, tokens, np.asarray(bounds), counts)


def _ratio_for(split: int, n: int) -> float:
    r = 1.0 if split == n else (split + 0.5) / n
    assert int(r * n) == split
    return r


def _assert_split_is_books(tc, ratio, tok):
    text = tc.corpus.text
    split = int(ratio * len(text))
    train, val = tc.split(ratio)
    assert train.dtype == val.dtype == tc.tokens.dtype
    assert train.tolist() == tok.encode(text[:split])
    assert val.tolist() == tok.encode(text[split:])


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.9, 0.97, 1.0])
def test_split_equals_books_separate_encodes(pydoc, gpt2_tokenizer, ratio):
    tc = D.tokenize_corpus(pydoc, gpt2_tokenizer)
    _assert_split_is_books(tc, ratio, gpt2_tokenizer)


def test_split_next_to_every_chunk_boundary(gpt2_tokenizer):
    """Split points just around each cut, where re-encoding only part of the text could go wrong,
    e.g. text[:split] ending in "\\n\\n" (one token, 628) right after a cut."""
    tc = _chunked(SMALL_TEXT, gpt2_tokenizer, 2)
    n = len(SMALL_TEXT)
    for c in tc.char_offsets[1:-1]:
        for split in range(max(1, c - 2), min(n, c + 3) + 1):
            _assert_split_is_books(tc, _ratio_for(split, n), gpt2_tokenizer)


def test_split_next_to_pydoc_chunk_boundaries(pydoc, gpt2_tokenizer):
    tc = D.tokenize_corpus(pydoc, gpt2_tokenizer)
    n = len(pydoc.text)
    for c in tc.char_offsets[1:3]:
        for split in (c - 1, c, c + 1, c + 2):
            _assert_split_is_books(tc, _ratio_for(int(split), n), gpt2_tokenizer)


def test_split_rejects_bad_ratio(pydoc):
    tc = D.tokenize_corpus(pydoc, ByteTokenizer())
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(DataError, match="train ratio"):
            tc.split(bad)


def test_cache_is_used_and_damage_is_rebuilt(pydoc, gpt2_tokenizer, gpttui_home):
    first = D.tokenize_corpus(pydoc, gpt2_tokenizer)
    assert not first.from_cache
    (entry,) = [p for p in (gpttui_home / "cache" / "tokens").iterdir() if p.is_dir()]
    assert sorted(p.name for p in entry.iterdir()) == ["index.npy", "manifest.json", "shard-00000.bin"]
    second = D.tokenize_corpus(pydoc, gpt2_tokenizer)
    assert second.from_cache
    assert np.array_equal(second.tokens, first.tokens)
    assert np.array_equal(second.char_offsets, first.char_offsets)
    assert np.array_equal(second.token_offsets, first.token_offsets)
    # The bytes tokenizer has its own entry.
    assert not D.tokenize_corpus(pydoc, ByteTokenizer()).from_cache
    expected = np.array(first.tokens)  # off the shard: damaging a mapped file in place would pull it away
    del first, second
    shard, index, manifest = entry / "shard-00000.bin", entry / "index.npy", entry / "manifest.json"
    for damage in (
        lambda: shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2]),  # truncated
        lambda: shard.unlink(),
        lambda: index.write_bytes(b"\x93NUMPY nonsense"),
        lambda: np.save(index, np.array([[0, 0], [len(pydoc.text), 5]])),  # counts disagree
        lambda: manifest.write_text("{not json"),
        lambda: manifest.unlink(),
    ):
        damage()
        rebuilt = D.tokenize_corpus(pydoc, gpt2_tokenizer)
        assert not rebuilt.from_cache
        assert np.array_equal(rebuilt.tokens, expected)
        del rebuilt
        assert D.tokenize_corpus(pydoc, gpt2_tokenizer).from_cache
    assert not list((gpttui_home / "cache").rglob("*.tmp*"))


def test_cache_key_follows_the_text():
    tok = ByteTokenizer()
    a = D.tokenize_corpus(D.Corpus("x", "x", "hello world\n"), tok)
    b = D.tokenize_corpus(D.Corpus("x", "x", "hello there\n"), tok)
    assert not a.from_cache and not b.from_cache
    assert b.tokens.tolist() == tok.encode("hello there\n")


# --- reading ---------------------------------------------------------------------------------------------

def test_read_text_file(tmp_path):
    p = tmp_path / "book.txt"
    p.write_bytes("\ufeffHello, world\n".encode("utf-8"))
    c = D.read_corpus(p)
    assert c.text == "Hello, world\n"  # BOM dropped
    assert (c.n_files, c.replaced_bytes, c.warnings) == (1, 0, [])
    # A real U+FFFD in the file is text, not a decoding problem.
    p.write_text("keep \ufffd this\n", encoding="utf-8")
    assert D.read_corpus(p).warnings == []


def test_builtin_pydoc(pydoc):
    assert pydoc.source == "builtin:pydoc"
    assert len(pydoc.text) > 100_000
    with pytest.raises(DataError, match="Unknown built-in"):
        D.read_corpus("builtin:nope")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty"),
        (b"  \n\t\r\n  ", "only whitespace"),
        (b"text\x00\x01\x02more", "binary"),
        ("café résumé naïve déjà vu\n".encode("latin-1") * 50, "iconv"),
    ],
)
def test_bad_files_are_refused(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        D.read_corpus(p)
    assert str(p) in str(err.value) or p.name in str(err.value)


def test_missing_path_and_empty_spec(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        D.read_corpus(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="No data source"):
        D.read_corpus("  ")


def test_a_few_bad_bytes_warn_with_the_count(tmp_path):
    p = tmp_path / "mostly.txt"
    p.write_bytes(b"hello world\n" * 1000 + b"caf\xe9 \xff\xfe end\n")
    c = D.read_corpus(p)
    assert c.replaced_bytes == 3
    assert len(c.warnings) == 1 and re.search(r"\b3 bytes\b", c.warnings[0])
    assert c.text.count("\ufffd") == 3


def _folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "sub" / ".hidden").mkdir()
    (root / "a.txt").write_text("First document.\n", encoding="utf-8")
    (root / "sub" / "b.md").write_text("# Second\n\nIt has a blank line.\n\n", encoding="utf-8")
    (root / "sub" / "c.TXT").write_text("Third.", encoding="utf-8")
    (root / ".git" / "x.txt").write_text("hidden dir", encoding="utf-8")
    (root / "sub" / ".hidden" / "y.md").write_text("hidden nested dir", encoding="utf-8")
    (root / ".notes.txt").write_text("hidden file", encoding="utf-8")
    (root / "code.py").write_text("print('not text')", encoding="utf-8")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    return root


def test_folder_joins_documents_with_endoftext(tmp_path, gpt2_tokenizer):
    c = D.read_corpus(_folder(tmp_path))
    docs = ["First document.\n", "# Second\n\nIt has a blank line.\n\n", "Third."]
    assert c.n_files == 3
    assert c.text == ENDOFTEXT.join(docs)
    assert "hidden" not in c.text and "print" not in c.text
    ids = gpt2_tokenizer.encode(c.text)
    eot = [i for i, t in enumerate(ids) if t == 50256]
    assert len(eot) == 2
    first = gpt2_tokenizer.encode(docs[0])
    assert ids[: len(first)] == first and eot[0] == len(first)
    assert D.tokenize_corpus(c, gpt2_tokenizer).tokens.tolist() == ids


def test_folder_skips_bad_files_with_a_warning(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "good.txt").write_text("good text\n", encoding="utf-8")
    (root / "bin.txt").write_bytes(b"\x00\x01binary")
    c = D.read_corpus(root)
    assert c.text == "good text\n" and c.n_files == 1
    assert any("bin.txt" in w and "binary" in w for w in c.warnings)
    (root / "good.txt").unlink()
    with pytest.raises(DataError, match="none holds usable text"):
        D.read_corpus(root)


def test_folder_without_text_files(tmp_path):
    root = tmp_path / "nothing"
    (root / ".hidden").mkdir(parents=True)
    (root / "x.py").write_text("pass", encoding="utf-8")
    (root / ".hidden" / "y.txt").write_text("hidden", encoding="utf-8")
    with pytest.raises(DataError, match=r"no \.txt or \.md"):
        D.read_corpus(root)


# --- prepare_data ----------------------------------------------------------------------------------------

def test_book_defaults_on_pydoc(pydoc, gpt2_tokenizer):
    s = D.DataSettings()
    assert (s.context_length, s.effective_stride, s.batch_size, s.train_ratio) == (256, 256, 2, 0.9)
    p = D.prepare_data(s, gpt2_tokenizer)
    st = p.stats
    assert st.ok and st.problems == []
    assert st.characters == len(pydoc.text) == st.train_characters + st.val_characters
    assert st.train_batches == st.train_windows // s.batch_size
    assert st.val_batches == math.ceil(st.val_windows / s.batch_size)
    assert st.tokens_per_epoch == st.train_batches * s.batch_size * s.context_length
    assert st.train_windows == math.ceil((st.train_tokens - 256) / 256)
    assert abs(st.train_tokens + st.val_tokens - st.tokens) <= 2  # the split may cut one token in two
    # The book's loaders over the book's separate encodes.
    split = int(0.9 * len(pydoc.text))
    enc = gpt2_tokenizer._enc
    book_train = create_dataloader_v1(pydoc.text[:split], enc, batch_size=2, max_length=256, stride=256,
                                      shuffle=True, drop_last=True)
    book_val = create_dataloader_v1(pydoc.text[split:], enc, batch_size=2, max_length=256, stride=256,
                                    shuffle=False, drop_last=False)
    assert (len(p.train_loader), len(p.val_loader)) == (len(book_train), len(book_val))
    assert (st.train_windows, st.val_windows) == (len(book_train.dataset), len(book_val.dataset))
    for (x, y), (bx, by) in zip(p.val_loader, book_val):
        assert torch.equal(x, bx) and torch.equal(y, by)
    ident = p.identity()
    assert ident["sha256"] == pydoc.sha256 and ident["tokens"] == st.tokens and ident["stride"] == 256


def _numbers(msg: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", msg)]


def test_too_large_context_for_validation(pydoc, gpt2_tokenizer):
    with pytest.raises(DataError) as err:
        D.prepare_data(D.DataSettings(context_length=20_000), gpt2_tokenizer)
    msg = str(err.value)
    assert "Not enough tokens for the validation loader" in msg
    assert "training loader" not in msg
    best = int(re.search(r"at most ([\d,]+) fits", msg).group(1).replace(",", ""))
    ok = D.prepare_data(D.DataSettings(context_length=best, stride=best), gpt2_tokenizer, strict=False)
    assert not any("validation loader" in p for p in ok.stats.problems)
    assert len(ok.val_loader) == 1
    too_big = D.prepare_data(D.DataSettings(context_length=best + 1), gpt2_tokenizer, strict=False)
    assert any("validation loader" in p for p in too_big.stats.problems)


@pytest.mark.parametrize("stride, context", [(None, 200), (16, 350)])
def test_too_large_context_for_training(gpt2_tokenizer, stride, context):
    corpus = D.Corpus("small", "small", "The quick brown fox jumps over the lazy dog. " * 40)
    s = D.DataSettings(context_length=context, stride=stride, batch_size=2)
    with pytest.raises(DataError) as err:
        D.prepare_data(s, gpt2_tokenizer, corpus=corpus)
    msg = str(err.value)
    assert "Not enough tokens for the training loader" in msg
    assert "validation loader" in msg  # 10% of ~400 tokens cannot hold 201 either
    p = D.prepare_data(s, gpt2_tokenizer, corpus=corpus, strict=False)
    assert p.stats.train_tokens in _numbers(msg)
    # The suggested context length really fits the training loader (the stride follows it when unset).
    best = int(re.search(r"at most ([\d,]+) fits", msg).group(1).replace(",", ""))
    fits = D.prepare_data(D.DataSettings(context_length=best, stride=stride, batch_size=2), gpt2_tokenizer,
                          corpus=corpus, strict=False)
    assert not any("training loader" in q for q in fits.stats.problems)
    assert len(fits.train_loader) >= 1
    over = D.prepare_data(D.DataSettings(context_length=best + 1, stride=stride, batch_size=2), gpt2_tokenizer,
                          corpus=corpus, strict=False)
    assert any("training loader" in q for q in over.stats.problems)


def test_prepare_rejects_bad_settings():
    with pytest.raises(DataError):
        D.prepare_data(D.DataSettings(tokenizer="bytes", batch_size=0), ByteTokenizer())
