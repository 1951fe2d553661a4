"""The sharded tokenizer: a pool of worker processes, shard files, resume after a cancel, a full disk, reopening
without reading text, and the TokenStream the windows read through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gpttui.core import data as D
from gpttui.core import shards as S
from gpttui.core.corpus_types import Cancelled
from gpttui.core.errors import DataError
from gpttui.core.sources import plan_memory, plan_source
from gpttui.core.tokenizer import ENDOFTEXT, ByteTokenizer
from gpttui.core.tokenstream import TokenStream

REPO = Path(__file__).resolve().parent.parent
WORDS = ("the", "model", "learns", "tokens", "from", "text", "Grüße", "日本", "it's", "42", "—", "data")


def _text(n_docs: int, seed: int = 0) -> str:
    """Documents of varied shape: paragraphs, indented lines, blank runs, trailing spaces, joined by <|endoftext|>."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        lines = []
        for _ in range(int(rng.integers(5, 60))):
            words = rng.choice(WORDS, size=int(rng.integers(0, 14)))
            lead = ("    ", "\t", "", "", "")[int(rng.integers(0, 5))]
            tail = (" ", "", "", ".")[int(rng.integers(0, 4))]
            lines.append(lead + " ".join(words) + tail)
        docs.append("\n".join(lines) + "\n" * int(rng.integers(0, 3)))
    return ENDOFTEXT.join(docs)


def _shard_files(root: Path) -> list[Path]:
    return sorted(root.rglob("shard-*.bin"))


# --- the pool and the shards ---------------------------------------------------------------------------------

def test_pool_of_workers_gives_one_encodes_tokens_across_shards(gpt2_tokenizer, gpttui_home, monkeypatch):
    monkeypatch.setattr(S, "TASK_CHARS", 40_000)  # many tasks for the two workers
    text = _text(400)
    assert len(text) > 300_000
    corpus = D.Corpus("test", "generated", text)
    tc = D.tokenize_corpus(corpus, gpt2_tokenizer, workers=2)
    assert tc.sharded.manifest["workers"] == 2
    expected = gpt2_tokenizer.encode(text)
    assert tc.tokens.tolist() == expected
    assert tc.sharded.sha256 == corpus.sha256 and tc.characters == len(text)
    assert np.all(np.diff(tc.char_offsets) > 0) and tc.token_offsets[-1] == len(expected)
    for ratio in (0.1, 0.5, 0.9, 0.97):  # the book's split, from the shards' own tokens
        split = int(ratio * len(text))
        train, val = tc.split(ratio)
        assert train.tolist() == gpt2_tokenizer.encode(text[:split])
        assert val.tolist() == gpt2_tokenizer.encode(text[split:])


def test_small_shards_read_as_one_stream_and_the_split_views_them(gpttui_home, monkeypatch):
    monkeypatch.setattr(S, "TASK_CHARS", 10_000)
    text = _text(120, seed=1)
    tok = ByteTokenizer()
    sharded = S.build_shards(plan_memory(text), tok, workers=0, shard_tokens=15_000)
    assert len(sharded.manifest["shards"]) >= 5 and len(sharded.tokens.parts) == len(sharded.manifest["shards"])
    assert all(isinstance(p, np.memmap) for p in sharded.tokens.parts)
    assert sharded.tokens.tolist() == tok.encode(text)
    tc = D.TokenizedCorpus(D.Corpus("t", "t", text), tok, sharded.tokens, sharded.char_offsets,
                           sharded.token_offsets, True, sharded)
    train, val = tc.split(0.6)
    assert isinstance(train, TokenStream) and len(train.parts) >= 3  # views of the shards, not a copy
    assert train.tolist() == tok.encode(text[:int(0.6 * len(text))])
    windows = D.TokenWindows(train, 256, 200)
    x, y = windows.batch(np.arange(len(windows)))  # windows crossing shard boundaries
    whole = np.asarray(tok.encode(text[:int(0.6 * len(text))]))
    assert np.array_equal(x.numpy()[7], whole[1400:1656]) and np.array_equal(y.numpy()[7], whole[1401:1657])


def test_cancel_keeps_finished_shards_and_the_next_build_resumes_after_them(gpttui_home, monkeypatch):
    monkeypatch.setattr(S, "TASK_CHARS", 20_000)
    text = _text(300, seed=2)
    tok = ByteTokenizer()
    plan = plan_memory(text)
    cancel = threading.Event()

    def stop_after_three_shards(p):
        if p.tokens >= 60_000:
            cancel.set()

    with pytest.raises(Cancelled, match=r"shard\(s\) done .* are kept and the next try resumes"):
        S.build_shards(plan, tok, workers=0, shard_tokens=20_000, progress=stop_after_three_shards, cancel=cancel)
    entry = S._directory(S.cache_key(plan.fingerprint(), tok.name), None)
    partial = json.loads((entry / "partial.json").read_text())
    kept = _shard_files(entry)
    assert len(kept) == len(partial["shards"]) >= 3 and not list(entry.glob("*.tmp"))
    assert not (entry / "manifest.json").exists()
    before = {p.name: p.stat().st_ino for p in kept}

    seen = []
    again = S.build_shards(plan, tok, workers=0, shard_tokens=20_000, progress=seen.append)
    assert not again.from_cache and again.tokens.tolist() == tok.encode(text)
    assert {p.name: p.stat().st_ino for p in _shard_files(entry) if p.name in before} == before  # not rewritten
    skipped = [p for p in seen if p.phase == "reading" and p.tokens == partial["tokens"]]
    assert skipped and skipped[-1].done_bytes > 0  # the finished part was read again, not encoded
    assert not (entry / "partial.json").exists()
    assert S.build_shards(plan, tok, workers=0).from_cache


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux's RLIMIT_FSIZE to make a write fail like a full disk")
def test_a_failed_shard_write_removes_the_partial_shard_and_says_so(tmp_path):
    """A file-size limit makes the second shard's write fail (EFBIG, as ENOSPC would): the message says what
    happened and what is kept; no temporary file is left; the first shard stays for the next try."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(REPO)!r})
from gpttui.core import shards as S
from gpttui.core.sources import plan_memory
from gpttui.core.tokenizer import ByteTokenizer
from gpttui.core.errors import DataError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))
S.TASK_CHARS = 1_000_000
text = "first line\\n" * 100_000 + "<|endoftext|>" + "x" * 2_000_000
try:
    S.build_shards(plan_memory(text), ByteTokenizer(), workers=0, shard_tokens=1)
except DataError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GPTTUI_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "Could not write the token shards" in out.stdout and "File too large" in out.stdout
    assert "unfinished shard was removed" in out.stdout and "finished shard(s)" in out.stdout
    (entry,) = [p for p in (tmp_path / "cache" / "tokens").iterdir() if p.is_dir()]
    partial = json.loads((entry / "partial.json").read_text())
    assert [p.name for p in _shard_files(entry)] == [s["file"] for s in partial["shards"]]
    assert all(p.stat().st_size < 3_000_000 for p in _shard_files(entry)) and not list(entry.glob("*.tmp"))


def test_documents_without_newlines_are_cut_at_spaces_and_keep_their_tokens(gpt2_tokenizer, gpttui_home,
                                                                             monkeypatch):
    monkeypatch.setattr(S, "TASK_CHARS", 5_000)
    text = " ".join(np.random.default_rng(3).choice(WORDS, size=8_000)) + "  double  spaces  too"
    sharded = S.build_shards(plan_memory(text), gpt2_tokenizer, workers=0)
    assert len(sharded.char_offsets) > 5  # cut inside the one long line
    assert sharded.tokens.tolist() == gpt2_tokenizer.encode(text)


def test_a_document_with_nowhere_to_cut_is_cut_anyway_with_a_note(gpttui_home, monkeypatch):
    monkeypatch.setattr(S, "TASK_CHARS", 1_000)
    monkeypatch.setattr(S, "FORCED_CUT_CHARS", 3_000)
    text = "x" * 10_000
    sharded = S.build_shards(plan_memory(text), ByteTokenizer(), workers=0)
    assert sharded.tokens.tolist() == ByteTokenizer().encode(text)
    assert any("cut anyway" in w for w in sharded.warnings)


def test_two_builders_of_one_corpus_build_it_once(gpttui_home):
    text = _text(60, seed=4)
    results, errors = [], []

    def build():
        try:
            results.append(S.build_shards(plan_memory(text), ByteTokenizer(), workers=0))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.from_cache for r in results) == [False, True]
    assert results[0].tokens.tolist() == results[1].tokens.tolist()


# --- reopening ------------------------------------------------------------------------------------------------

def test_reopening_stats_the_files_and_reads_no_text(tmp_path, gpttui_home):
    """The fingerprint is paths, sizes and modification times: text replaced behind the same size and time is
    not even read (the cached tokens come back); a touched file is tokenized again."""
    path = tmp_path / "story.txt"
    path.write_text("An old story.\n" * 500)
    tok = ByteTokenizer()
    first = S.build_shards(plan_source(str(path)), tok)
    stamp = path.stat()
    path.write_text("A new story!!\n" * 500)  # same size
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    reopened = S.build_shards(plan_source(str(path)), tok)
    assert reopened.from_cache and reopened.tokens.tolist() == first.tokens.tolist()
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    rebuilt = S.build_shards(plan_source(str(path)), tok)
    assert not rebuilt.from_cache and rebuilt.tokens.tolist() == tok.encode("A new story!!\n" * 500)
    entries = [p for p in (gpttui_home / "cache" / "tokens").iterdir() if p.is_dir()]
    assert entries == [rebuilt.directory]  # the old build of this file is gone: it could never open again


def test_empty_text_is_refused_and_leaves_nothing(gpttui_home):
    with pytest.raises(DataError, match="no text"):
        S.build_shards(plan_memory(""), ByteTokenizer(), workers=0)
    assert not _shard_files(gpttui_home / "cache")


# --- TokenStream ----------------------------------------------------------------------------------------------

def test_token_stream_indexes_its_parts_as_one_array():
    parts = [np.arange(0, 5, dtype=np.uint16), np.arange(5, 6, dtype=np.uint16), np.arange(6, 20, dtype=np.uint16)]
    s = TokenStream(parts)
    whole = np.arange(20)
    assert len(s) == 20 and s.shape == (20,) and s.dtype == np.uint16
    assert s[3:17].tolist() == whole[3:17].tolist() and s[-1] == 19 and s[5] == 5
    idx = np.array([[0, 4, 5, 6], [19, 18, 5, 1]])
    assert s[idx].tolist() == whole[idx].tolist()
    assert s.view(4, 7).tolist() == [4, 5, 6] and len(s.view(4, 7).parts) == 3
    assert TokenStream.concat([s.view(0, 2), np.array([9], np.uint16)]).tolist() == [0, 1, 9]
    assert np.asarray(s, dtype=np.int64).tolist() == whole.tolist()
    for bad in (20, -21):
        with pytest.raises(IndexError):
            s[bad]
    with pytest.raises(IndexError):
        s[np.array([3, 20])]
    with pytest.raises(ValueError):
        TokenStream([np.zeros(2, np.uint16), np.zeros(2, np.uint32)])


def test_the_pool_starts_where_stderr_has_no_file_descriptor(tmp_path):
    """Inside the app, stderr is Textual's print capture (fileno -1); multiprocessing's resource tracker, which
    the pool starts, wants a real one ('bad value(s) in fds_to_keep'). A fresh process, as the app is."""
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
class Capture:
    def write(self, text): return len(text)
    def flush(self): pass
    def fileno(self): return -1
sys.stderr = Capture()
from gpttui.core import shards as S
from gpttui.core.sources import plan_memory
from gpttui.core.tokenizer import ByteTokenizer
built = S.build_shards(plan_memory("a line of text\\n" * 5000), ByteTokenizer(), workers=2)
print("tokens", built.n_tokens, "workers", built.manifest["workers"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GPTTUI_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "tokens 75000 workers 2" in out.stdout
