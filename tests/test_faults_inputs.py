"""Hostile input: data paths that are not regular files, sizes that cannot fit, settings that are not
finite numbers. Each gives one line a user can act on (``error: ...``, exit 2), before anything big is
allocated or anything blocks."""

from __future__ import annotations

import math
import os
import re
import stat
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gpttui import cli
from gpttui.core import checkpoints, resources
from gpttui.core import data as D
from gpttui.core.config import GPTConfig, preset
from gpttui.core.errors import ConfigError, DataError
from gpttui.core.generate import SamplingConfig, generate, generate_ids, stream
from gpttui.core.model import GPTModel, generation_memory_estimate, training_memory_estimate
from gpttui.core.tokenizer import get_tokenizer
from gpttui.core.train import TrainConfig

BYTES = get_tokenizer("bytes")
TINY = GPTConfig(vocab_size=257, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
TINY_DATA = ["--data", "builtin:pydoc-20k", "--tokenizer", "bytes"]
TINY_TRAIN = ["train", *TINY_DATA, "--preset", "tiny", "--n-layers", "1", "--emb-dim", "32",
              "--context-length", "32", "--max-steps", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    """Models here are tiny: one thread is fastest, and does not fight other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cli_error(capsys, argv: list[str], code: int = 2) -> str:
    """Run the real CLI in-process; the one-line error it printed (no traceback)."""
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


@contextmanager
def _never_blocks(fifo: Path):
    """A safety net, not synchronisation: should reading ``fifo`` ever block (the check before
    ``open`` gone), a writer comes after 10 s so the test fails instead of hanging."""
    fired = threading.Event()

    def unblock() -> None:
        fired.set()
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # never blocks on Linux; wakes a blocked reader
        os.close(fd)  # the last writer gone: the reader sees end-of-file

    timer = threading.Timer(10.0, unblock)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    assert not fired.is_set(), f"reading {fifo} blocked"


# --- 1. data that is not a regular file -------------------------------------------------------------------

@pytest.mark.parametrize("command", [["data", "stats"], ["train", "--preset", "tiny", "--device", "cpu"]])
def test_cli_refuses_a_fifo_without_opening_it(tmp_path, capsys, command):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    with _never_blocks(fifo):
        err = _cli_error(capsys, [*command, "--data", str(fifo), "--tokenizer", "bytes"])
    assert err == (f"error: {fifo} is a named pipe (FIFO), not a text file: give a regular text file, "
                   "a folder of .txt/.md files, or builtin:pydoc.")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("command", [["data", "stats"], ["train", "--preset", "tiny", "--device", "cpu"]])
def test_cli_refuses_dev_zero(capsys, command):
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    err = _cli_error(capsys, [*command, "--data", "/dev/zero", "--tokenizer", "bytes"])
    assert err.startswith("error: /dev/zero is a character device, not a text file")


def test_a_symlink_to_a_device_is_refused_too(tmp_path):
    link = tmp_path / "notes.txt"
    link.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="is a character device"):
        D.read_corpus(link)


def test_folder_skips_entries_that_are_not_regular_files(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("Some real text.\n", encoding="utf-8")
    fifo = root / "b.txt"
    os.mkfifo(fifo)
    (root / "c.txt").symlink_to("/dev/zero")
    with _never_blocks(fifo):
        corpus = D.read_corpus(root)
    assert corpus.text == "Some real text.\n" and corpus.n_files == 1


def test_missing_path_is_still_one_line(capsys, tmp_path):
    err = _cli_error(capsys, ["data", "stats", "--data", str(tmp_path / "nope.txt"), "--tokenizer", "bytes"])
    assert err == f"error: {tmp_path / 'nope.txt'} does not exist."


# --- 2. generation sizes ----------------------------------------------------------------------------------

def _model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(TINY).eval()


def _save_tiny(name: str = "t") -> None:
    cfg = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    torch.manual_seed(7)
    checkpoints.save_checkpoint(name, GPTModel(cfg), meta={"tokenizer": "bytes"})


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.8, top_k=20, seed=5, repetition_penalty=1.3)])
def test_huge_max_new_tokens_streams_without_sizing_anything_by_it(settings):
    """10**18 new tokens used to size a token buffer of 8 * 10**18 bytes up front. Now nothing is sized
    by it: the text streams, past the context (16) many times over, token for token as a run that asks
    for exactly that many tokens."""
    model = _model()
    n = 40  # the token buffer (prompt + 2 x 17) is compacted once
    events = stream(model, BYTES, "hi", SamplingConfig(max_new_tokens=10**18, eos_id=None, **settings))
    got = [next(events).token_id for _ in range(n)]
    events.close()
    assert events.result.stopped_by == "cancel" and events.result.new_tokens == n
    want = generate(model, BYTES, "hi", SamplingConfig(max_new_tokens=n, eos_id=None, **settings)).token_ids
    assert got == want
    uncached = generate(model, BYTES, "hi", SamplingConfig(max_new_tokens=n, eos_id=None, use_cache=False,
                                                           **settings)).token_ids
    assert got == uncached


def test_beam_search_past_the_context_keeps_only_a_window():
    model = _model(1)
    cfg = SamplingConfig(max_new_tokens=40, num_beams=3, eos_id=None)
    cached = generate(model, BYTES, "abc", cfg)
    assert cached.new_tokens == 40
    assert cached.token_ids == generate(model, BYTES, "abc", cfg.replace(use_cache=False)).token_ids


def test_cli_refuses_beams_beyond_any_use(capsys):
    _save_tiny()
    err = _cli_error(capsys, ["generate", "--checkpoint", "t", "--num-beams", "1000000", "--device", "cpu"])
    assert err == ("error: num_beams (1,000,000) is beyond any use for a vocabulary of 257 tokens (at most "
                   "66,049, its square); use fewer beams (a handful is usual).")


def test_cli_refuses_beams_that_do_not_fit_the_free_memory(capsys, monkeypatch):
    _save_tiny()
    monkeypatch.setenv(resources.MEMORY_ENV, "1M")
    err = _cli_error(capsys, ["generate", "--checkpoint", "t", "--num-beams", "200", "--device", "cpu"])
    cfg = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=4, n_layers=2)
    needed = generation_memory_estimate(cfg, 200)
    assert needed > 1 << 20
    assert err == (f"error: Beam search with 200 beams needs about {resources.format_bytes(needed)} of RAM, but "
                   f"only 1.0 MB is free ({resources.MEMORY_ENV} is set); use fewer beams.")
    # A few beams fit in the same budget.
    assert cli.main(["generate", "--checkpoint", "t", "--num-beams", "3", "--max-new-tokens", "5",
                     "--device", "cpu", "--json"]) == 0


def test_beams_are_counted_as_many_as_can_be_live(monkeypatch):
    """36 beams over a vocabulary of 6 search all 3-token continuations, a real use; for one new token
    at most 6 of them are ever live, and only those are counted against the memory."""
    cfg = GPTConfig(vocab_size=6, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
    torch.manual_seed(4)
    model = GPTModel(cfg).eval()
    six, all36 = generation_memory_estimate(cfg, 6), generation_memory_estimate(cfg, 36)
    monkeypatch.setenv(resources.MEMORY_ENV, str((six + all36) // 2))
    sc = SamplingConfig(max_new_tokens=1, eos_id=None, num_beams=36)
    assert generate_ids(model, torch.tensor([[1, 2]]), sc).shape == (1, 3)
    with pytest.raises(ConfigError, match="Beam search with 36 beams needs about"):
        generate_ids(model, torch.tensor([[1, 2]]), sc.replace(max_new_tokens=2))
    with pytest.raises(ConfigError, match=r"num_beams \(37\) is beyond any use for a vocabulary of 6 tokens"):
        generate_ids(model, torch.tensor([[1, 2]]), sc.replace(num_beams=37))


def test_generation_estimate_grows_with_beams_and_context():
    small = generation_memory_estimate(TINY, 1)
    assert generation_memory_estimate(TINY, 10) == 10 * small
    assert generation_memory_estimate(TINY.replace(context_length=64), 1) > small
    # GPT-2 small, 5 beams: the KV caches (twice while reordering) dominate, under a gigabyte.
    gpt2 = preset("gpt2-small", context_length=1024)
    assert 0.5e9 < generation_memory_estimate(gpt2, 5) < 1e9


# --- the memory helpers -------------------------------------------------------------------------------------

def test_available_memory_and_check_fits(monkeypatch):
    free = resources.available_memory("cpu")
    if os.path.exists("/proc/meminfo"):
        assert isinstance(free, int) and free > 0
    if free is not None:
        resources.check_fits(1, "cpu", "Nothing")  # fits: no error
        with pytest.raises(ConfigError) as err:
            resources.check_fits(1 << 50, "cpu", "A huge job", "use less")
        assert str(err.value).startswith("A huge job needs about 1024.0 TB of RAM, but only ")
        assert str(err.value).endswith(" is free; use less.")
    monkeypatch.setenv(resources.MEMORY_ENV, "512M")
    assert resources.available_memory("cpu") == min(free or 1 << 29, 1 << 29)
    monkeypatch.setenv(resources.MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match="GPTTUI_MAX_MEMORY must be a size such as 8G or 512M"):
        resources.available_memory("cpu")


@pytest.mark.parametrize("text, value", [("1000", 1000), ("512M", 512 << 20), ("8G", 8 << 30), ("1.5GiB", 3 << 29),
                                         ("2tb", 2 << 40), ("64 kB", 64 << 10)])
def test_parse_size(text, value):
    assert resources.parse_size(text) == value


# --- 3. training sizes before anything is built ------------------------------------------------------------

def test_preflight_refuses_a_context_that_cannot_fit_memory():
    cfg = preset("tiny", vocab_size=257, context_length=100_000)
    needed = training_memory_estimate(cfg, 2)
    assert needed > 1e12  # the attention activations of 2 x 100,000 tokens
    with pytest.raises(ConfigError) as err:
        resources.preflight_training(cfg, 2, "cpu")
    msg = str(err.value)
    assert msg.startswith("Training 13.2M parameters with batch 2 x context 100,000 in fp32 needs about ")
    assert "(weights " in msg and "activations " in msg
    assert msg.endswith("is free: even batch 1 does not fit; lower --context-length, use --dtype bf16, or pick a "
                        "smaller preset.")


def test_preflight_checks_the_data_context_against_the_model():
    cfg = preset("tiny", vocab_size=257)  # 128 positions
    with pytest.raises(ConfigError, match=r"data's context length \(256\) exceeds the model's \(128 positions\)"):
        resources.preflight_training(cfg, 2, "cpu", context_length=256)
    assert resources.preflight_training(cfg, 2, "cpu", context_length=64).total < training_memory_estimate(cfg, 2)
    with pytest.raises(ConfigError, match="Batch size must be a whole number >= 1"):
        resources.preflight_training(cfg, 0, "cpu")


def test_cli_train_refuses_what_does_not_fit_before_building(capsys, monkeypatch):
    monkeypatch.setenv(resources.MEMORY_ENV, "100K")
    err = _cli_error(capsys, TINY_TRAIN)
    assert re.match(r"error: Training [\d.]+K parameters with batch 2 x context 32 in fp32 needs about [\d.]+ "
                    r"[KM]B of RAM \(weights ", err)
    assert err.endswith(" but only 100.0 KB is free (GPTTUI_MAX_MEMORY is set): even batch 1 does not fit; lower "
                        "--context-length, use --dtype bf16, or pick a smaller preset.")
    assert not checkpoints.list_checkpoints()


def test_cli_gpt2_presets_keep_gpt2s_context(capsys):
    err = _cli_error(capsys, ["train", *TINY_DATA, "--train-ratio", "0.5", "--preset", "gpt2-small",
                              "--context-length", "2048", "--device", "cpu"])
    assert err == ("error: The gpt2-small preset takes a context length of at most 1024 tokens, as GPT-2 "
                   "(got 2,048); lower the context length.")
    assert preset("gpt2-xl", context_length=1024).context_length == 1024
    assert preset("tiny", context_length=4096).context_length == 4096  # the small shapes: memory decides


# --- 4./5. settings that are out of range or not finite ---------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--stride", "0"], "stride must be a whole number >= 1, or empty for the default, the context length (got 0)"),
    (["--stride", "-3"], "stride must be a whole number >= 1"),
    (["--batch-size", "0"], "batch size must be a whole number >= 1 (got 0)"),
    (["--context-length", "0"], "context length must be a whole number >= 1 (got 0)"),
    (["--context-length", "-5"], "context length must be a whole number >= 1 (got -5)"),
    (["--train-ratio", "nan"], "train ratio must be a number in (0, 1] (got nan)"),
    (["--train-ratio", "inf"], "train ratio must be a number in (0, 1] (got inf)"),
    (["--train-ratio", "0"], "train ratio must be a number in (0, 1] (got 0.0)"),
])
def test_cli_data_settings(capsys, args, words):
    err = _cli_error(capsys, ["data", "stats", *TINY_DATA, *args])
    assert err.startswith("error: Invalid data settings: ") and words in err


def test_stride_none_is_the_context_and_zero_is_refused_in_core():
    assert D.DataSettings(context_length=64).effective_stride == 64
    assert D.DataSettings(context_length=64, stride=5).effective_stride == 5
    with pytest.raises(DataError, match="stride must be a whole number >= 1"):
        D.DataSettings(stride=0).validate()
    with pytest.raises(DataError, match="stride"):
        D.prepare_data(D.DataSettings(source="builtin:pydoc-20k", tokenizer="bytes", stride=0), BYTES)


def test_a_context_far_beyond_the_text_allocates_nothing(capsys):
    """A window offset table used to be sized by the context: 10**12 asked for 8 TB."""
    assert cli.main(["data", "stats", *TINY_DATA, "--context-length", str(10**12)]) == 1
    out = capsys.readouterr().out
    assert "error: Not enough tokens for the training loader" in out


@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "inf", "learning rate must be a finite number > 0 (got inf)"),
    ("--lr", "nan", "learning rate must be a finite number > 0 (got nan)"),
    ("--min-lr", "nan", "min lr must be a finite number >= 0 (got nan)"),
    ("--min-lr", "inf", "min lr must be a finite number >= 0 (got inf)"),
    ("--weight-decay", "nan", "weight decay must be a finite number >= 0 (got nan)"),
    ("--weight-decay", "inf", "weight decay must be a finite number >= 0 (got inf)"),
    ("--grad-clip", "inf", "grad clip must be a finite number > 0, or off (got inf)"),
    ("--grad-clip", "nan", "grad clip must be a finite number > 0, or off (got nan)"),
])
def test_cli_train_refuses_non_finite_numbers(capsys, flag, value, words):
    err = _cli_error(capsys, [*TINY_TRAIN, flag, value])
    assert err == f"error: Invalid training config: {words}."
    assert not checkpoints.list_checkpoints()


def test_train_config_validate_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        TrainConfig(lr=math.inf, min_lr=math.nan, weight_decay=-math.inf, grad_clip=math.nan, epochs=0).validate()
    msg = str(err.value)
    for words in ("epochs must be a whole number >= 1 (got 0)", "learning rate", "min lr", "weight decay",
                  "grad clip"):
        assert words in msg
    with pytest.raises(ConfigError, match=r"min lr \(0\.1\) must not exceed the learning rate \(0\.01\)"):
        TrainConfig(lr=0.01, min_lr=0.1).validate()
    TrainConfig(lr=1e-3, min_lr=0.0, weight_decay=0.0, grad_clip=1.0).validate()


@pytest.mark.parametrize("flag, value, words", [
    ("--temperature", "nan", "temperature must be a number >= 0"),
    ("--temperature", "inf", "temperature must be a number >= 0"),
    ("--top-p", "nan", "top_p must be a number in (0, 1]"),
    ("--repetition-penalty", "inf", "repetition_penalty must be a number > 0"),
    ("--repetition-penalty", "nan", "repetition_penalty must be a number > 0"),
    ("--length-penalty", "nan", "length_penalty must be a finite number"),
    ("--length-penalty=-inf", None, "length_penalty must be a finite number"),
    ("--num-beams", "0", "num_beams must be a whole number >= 1"),
])
def test_cli_generate_refuses_non_finite_numbers(capsys, flag, value, words):
    _save_tiny()
    flags = [flag] if value is None else [flag, value]
    err = _cli_error(capsys, ["generate", "--checkpoint", "t", *flags, "--device", "cpu"])
    assert err.startswith("error: Invalid generation settings: ") and words in err
