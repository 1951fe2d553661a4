"""Tokenizers: GPT-2 ids as the book prints them, where the BPE files are looked for, the bytes
tokenizer, and streaming decode that never shows half a character."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from gpttui.core import tokenizer as T
from gpttui.core.errors import TokenizerError

UNICODE_TEXTS = [
    "naïve café, Grüße aus Köln",
    "日本語のテキストと中文",
    "emoji 😀👍🏽🇩🇪 and a family 👨‍👩‍👧",
    "math ∑∫√ and quotes “curly” ‘single’ — dash… ellipsis",
    "mixed\ttabs\r\nCRLF\u00a0nbsp\u2028line sep",
    "before<|endoftext|>after",
]


@pytest.fixture
def fresh(monkeypatch):
    """No in-process tokenizer, before and after: each lookup-order test starts from scratch."""
    T.forget_cached()
    yield monkeypatch
    T.forget_cached()


def _tamper(src_dir, dest_dir, name):
    """Copy the two BPE files to dest_dir and change one byte of ``name``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(src_dir / f, dest_dir / f)
        (dest_dir / f).chmod(0o644)
    data = bytearray((dest_dir / name).read_bytes())
    i = len(data) // 2
    data[i] = ord("x") if data[i] != ord("x") else ord("y")
    (dest_dir / name).write_bytes(bytes(data))
    return dest_dir


def _fill_tiktoken_cache(cache_dir, src_dir, tamper: str | None = None):
    """Put the files where tiktoken itself caches them: ``sha1(url)`` under TIKTOKEN_CACHE_DIR."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, (url, _) in T.GPT2_FILES.items():
        dest = cache_dir / hashlib.sha1(url.encode()).hexdigest()
        data = bytearray((src_dir / name).read_bytes())
        if name == tamper:
            data[100] ^= 0x01
        dest.write_bytes(bytes(data))
    return cache_dir


# --- GPT-2 ids -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, ids",
    [
        ("Every effort moves you", [6109, 3626, 6100, 345]),  # the book's chapter 5 prompt
        ("Hello, world", [15496, 11, 995]),
        ("<|endoftext|>", [50256]),
        ("Hello<|endoftext|>world", [15496, 50256, 6894]),
        ("\n\n", [628]),
    ],
)
def test_gpt2_known_ids(gpt2_tokenizer, text, ids):
    assert gpt2_tokenizer.encode(text) == ids
    assert gpt2_tokenizer.decode(ids) == text


def test_gpt2_shape(gpt2_tokenizer):
    assert gpt2_tokenizer.name == "gpt2"
    assert gpt2_tokenizer.vocab_size == 50257
    assert gpt2_tokenizer.eot_id == 50256
    assert gpt2_tokenizer.token_bytes(50256) == b"<|endoftext|>"


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_gpt2_round_trip(gpt2_tokenizer, text):
    ids = gpt2_tokenizer.encode(text)
    assert gpt2_tokenizer.decode(ids) == text
    assert gpt2_tokenizer.decode_bytes(ids) == text.encode("utf-8")
    assert b"".join(gpt2_tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_gpt2_encode_batch_matches_encode(gpt2_tokenizer):
    assert gpt2_tokenizer.encode_batch(UNICODE_TEXTS, num_threads=2) == [
        gpt2_tokenizer.encode(t) for t in UNICODE_TEXTS
    ]


def test_get_tokenizer_names(gpt2_tokenizer):
    assert T.get_tokenizer("gpt2", download=False) is gpt2_tokenizer  # cached in-process
    assert isinstance(T.get_tokenizer("bytes"), T.ByteTokenizer)
    with pytest.raises(TokenizerError, match="Unknown tokenizer"):
        T.get_tokenizer("sentencepiece")


# --- where the GPT-2 files come from ----------------------------------------------------------------

def test_loads_from_env_dir(fresh, bpe_dir):
    fresh.setenv(T.BPE_DIR_ENV, str(bpe_dir))
    tok = T.load_gpt2(download=False)
    assert tok.source.startswith(T.BPE_DIR_ENV)
    assert str(bpe_dir) in tok.source
    assert tok.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert T.load_gpt2(download=False) is tok  # the in-process cache


def test_import_then_load_from_data_dir(fresh, bpe_dir, gpttui_home):
    dest = T.import_gpt2_files(bpe_dir)
    assert dest == T.gpt2_data_dir()
    assert gpttui_home in dest.parents  # under GPTTUI_HOME, not in the repo
    for name in ("encoder.json", "vocab.bpe"):
        assert (dest / name).read_bytes() == (bpe_dir / name).read_bytes()
    assert not list(dest.glob("*.tmp"))
    fresh.delenv(T.BPE_DIR_ENV, raising=False)
    tok = T.load_gpt2(download=False)
    assert tok.source.startswith("gpttui data dir")
    assert tok.encode("Hello, world") == [15496, 11, 995]


def test_data_dir_is_tried_before_env_dir(fresh, bpe_dir, tmp_path):
    T.import_gpt2_files(bpe_dir)
    fresh.setenv(T.BPE_DIR_ENV, str(_tamper(bpe_dir, tmp_path / "bad", "vocab.bpe")))
    tok = T.load_gpt2(download=False)
    assert tok.source.startswith("gpttui data dir")


def test_nothing_available_offline(fresh):
    fresh.delenv(T.BPE_DIR_ENV, raising=False)
    with pytest.raises(TokenizerError) as err:
        T.load_gpt2(download=False)
    msg = str(err.value)
    for needle in ("encoder.json", "vocab.bpe", "gpttui tokenizer import", T.BPE_DIR_ENV, "bytes"):
        assert needle in msg
    with pytest.raises(TokenizerError):
        T.get_tokenizer("gpt2", download=False)


def test_env_dir_without_files_is_reported(fresh, tmp_path):
    fresh.setenv(T.BPE_DIR_ENV, str(tmp_path))
    with pytest.raises(TokenizerError, match="no encoder.json / vocab.bpe there"):
        T.load_gpt2(download=False)


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_tampered_file_is_refused(fresh, bpe_dir, tmp_path, name):
    bad = _tamper(bpe_dir, tmp_path / "bad", name)
    fresh.setenv(T.BPE_DIR_ENV, str(bad))
    with pytest.raises(TokenizerError) as err:
        T.load_gpt2(download=False)
    assert "sha256" in str(err.value) and name in str(err.value)
    with pytest.raises(TokenizerError, match="sha256"):
        T.import_gpt2_files(bad)
    assert not (T.gpt2_data_dir() / name).exists()  # nothing half-imported


def test_import_errors(fresh, tmp_path, bpe_dir):
    with pytest.raises(TokenizerError, match="not a directory"):
        T.import_gpt2_files(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    shutil.copyfile(bpe_dir / "vocab.bpe", tmp_path / "half" / "vocab.bpe")
    with pytest.raises(TokenizerError, match="encoder.json is missing"):
        T.import_gpt2_files(tmp_path / "half")


def test_tiktoken_cache_is_used_first(fresh, bpe_dir, tmp_path):

    _fill_tiktoken_cache(Path(os.environ["TIKTOKEN_CACHE_DIR"]), bpe_dir)
    # Even a broken env dir does not matter: tiktoken's cache comes first.
    fresh.setenv(T.BPE_DIR_ENV, str(_tamper(bpe_dir, tmp_path / "bad", "encoder.json")))
    tok = T.load_gpt2(download=False)
    assert tok.source == "tiktoken cache"
    assert tok.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert tok.decode(tok.encode(UNICODE_TEXTS[2])) == UNICODE_TEXTS[2]


def test_damaged_tiktoken_cache_is_skipped_not_deleted(fresh, bpe_dir, tmp_path):
    """tiktoken itself deletes a cache entry that fails its hash and downloads again; offline
    (download=False) gpttui must neither touch the network nor delete the user's file."""

    cache = _fill_tiktoken_cache(Path(os.environ["TIKTOKEN_CACHE_DIR"]), bpe_dir, tamper="vocab.bpe")
    files = sorted(cache.iterdir())
    fresh.delenv(T.BPE_DIR_ENV, raising=False)
    with pytest.raises(TokenizerError) as err:
        T.load_gpt2(download=False)
    assert "tiktoken cache" in str(err.value) and "sha256" in str(err.value)
    assert sorted(cache.iterdir()) == files
    # With a good directory next to it, that directory is used.
    fresh.setenv(T.BPE_DIR_ENV, str(bpe_dir))
    assert T.load_gpt2(download=False).source.startswith(T.BPE_DIR_ENV)


# --- bytes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", UNICODE_TEXTS + ["", "a", "<|endoftext|><|endoftext|>"])
def test_byte_tokenizer_round_trip(text):
    tok = T.ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, text]) == [ids, ids]


def test_byte_tokenizer_ids_and_eot():
    tok = T.ByteTokenizer()
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("a<|endoftext|>b") == [97, 256, 98]
    assert tok.encode("<|endoftext|>") == [256]
    assert tok.decode([97, 256, 98]) == "a<|endoftext|>b"
    assert tok.token_bytes(256) == b"<|endoftext|>"
    assert tok.token_bytes(0xC3) == b"\xc3"
    assert tok.decode([0xC3]) == "\ufffd"  # half a character decodes with a replacement


# --- streaming ---------------------------------------------------------------------------------------

STREAM_TEXT = "Grüße, 日本語 😀👍🏽 naïve — “ok” 🇩🇪!\nend"


@pytest.mark.parametrize("which", ["gpt2", "bytes"])
def test_stream_decoder_never_shows_half_characters(which, request):
    tok = request.getfixturevalue("gpt2_tokenizer") if which == "gpt2" else T.ByteTokenizer()
    ids = tok.encode(STREAM_TEXT)
    # The test means something only if some token ends inside a character.
    partial = 0
    for i in ids:
        try:
            tok.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
    assert partial > 0
    dec = T.StreamDecoder(tok)
    deltas = [dec.push(i) for i in ids]
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) + dec.flush() == STREAM_TEXT
    assert dec.flush() == ""


def test_stream_decoder_flush_and_invalid_bytes():
    tok = T.ByteTokenizer()
    dec = T.StreamDecoder(tok)
    assert dec.push(0xE6) == ""  # first byte of a 3-byte character: held back
    assert dec.push(0x97) == ""
    assert dec.flush() == "\ufffd"  # the stream ended mid-character
    # A stray continuation byte cannot become valid later: shown at once, not held forever.
    assert dec.push(0x80) == "\ufffd"
    assert dec.push(ord("a")) == "a"
    assert dec.push(256) == "<|endoftext|>"
