"""Core decisions every front end shares: a run's shape and context, what a resume reuses, which
tokenizer a checkpoint needs, and the one atomic-write / JSON helper."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gpttui.core.config import GPTConfig, TrainConfig
from gpttui.core.errors import TokenizerError
from gpttui.core.fileio import atomic_write, jsonable
from gpttui.core.runplan import (checkpoint_data_settings, data_settings_for, plan_model, resume_data_defaults,
                                 train_config_for)
from gpttui.core.tokenizer import tokenizer_for

REPO = Path(__file__).resolve().parent.parent


def test_the_data_context_follows_the_model_unless_the_user_sets_one():
    shape = plan_model("tiny", vocab_size=257)
    assert shape.model_config.context_length == shape.context_length == 128
    shape = plan_model("tiny", vocab_size=257, context_length=64, n_layers=1)
    assert (shape.model_config.context_length, shape.context_length, shape.model_config.n_layers) == (64, 64, 1)
    assert data_settings_for({"batch_size": None}, {"context_length": 128}).context_length == 128
    assert data_settings_for({"context_length": 32}, {"context_length": 128}).context_length == 32


def test_cli_trains_a_tiny_preset_on_a_text_file(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("Every effort moves you forward, one small step at a time. " * 200, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "gpttui", "train", "--data", str(book), "--preset", "tiny",
                           "--tokenizer", "bytes", "--max-steps", "1", "--eval-iter", "1", "--sample-tokens", "0",
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = events[0]
    assert started["event"] == "started"
    assert started["model_config"]["context_length"] == started["dataset"]["context_length"] == 128
    assert events[-1]["event"] == "finished"


def test_resume_defaults_and_train_config_come_from_the_checkpoint():
    meta = SimpleNamespace(
        tokenizer="bytes", model_config=GPTConfig(vocab_size=257, context_length=64, emb_dim=32, n_heads=4),
        dataset={"source": "/x/book.txt", "sha256": "ab", "context_length": 32, "stride": None, "batch_size": 4,
                 "train_ratio": 0.8},
        train_config={"lr": 1e-3, "epochs": 3, "save_name": "old", "compile": True})
    defaults = resume_data_defaults(meta)
    assert defaults == {"source": "/x/book.txt", "context_length": 32, "stride": None, "batch_size": 4,
                        "train_ratio": 0.8, "tokenizer": "bytes"}
    settings = checkpoint_data_settings(meta)
    assert (settings.source, settings.context_length, settings.batch_size, settings.tokenizer) == (
        "/x/book.txt", 32, 4, "bytes")
    config = train_config_for({"epochs": 5, "grad_clip": None}, meta)
    assert isinstance(config, TrainConfig)
    assert (config.lr, config.epochs, config.save_name, config.compile) == (1e-3, 5, None, False)
    imported = SimpleNamespace(tokenizer=None, model_config=GPTConfig(vocab_size=257, context_length=64,
                                                                      emb_dim=32, n_heads=4),
                               dataset=None, train_config={})
    assert resume_data_defaults(imported) == {"context_length": 64, "tokenizer": "bytes"}
    assert checkpoint_data_settings(imported) is None


def test_tokenizer_for_reads_the_record_else_the_vocabulary():
    cfg = GPTConfig(vocab_size=257, context_length=8, emb_dim=8, n_heads=2)
    assert tokenizer_for(cfg) == "bytes"
    assert tokenizer_for(50304) == "gpt2"
    assert tokenizer_for({"tokenizer": "gpt2", "model_config": {"vocab_size": 50257}}) == "gpt2"
    assert tokenizer_for({"tokenizer": None, "model_config": {"vocab_size": 300}}) == "bytes"
    assert tokenizer_for(SimpleNamespace(tokenizer=None, model_config=cfg)) == "bytes"
    with pytest.raises(TokenizerError, match="100 tokens"):
        tokenizer_for(100)


def test_atomic_write_replaces_or_never_clobbers(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, b"one")
    atomic_write(target, "two")
    assert target.read_text() == "two"
    with pytest.raises(FileExistsError):
        atomic_write(target, lambda f: f.write(b"three"), replace=False)
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_jsonable_keeps_both_ways_of_writing_infinity():
    data = {"a": float("nan"), "b": [float("inf"), np.float32(1.5), np.int64(3)], "c": Path("/p")}
    assert jsonable(data) == {"a": None, "b": [None, 1.5, 3], "c": "/p"}
    assert jsonable(data, inf_as_text=True)["b"][0] == "inf"
    assert jsonable(-math.inf, inf_as_text=True) == "-inf"
    with pytest.raises(TypeError, match="cannot be written as JSON"):
        jsonable({"x": object()})


def test_an_unnamed_new_model_is_named_by_its_text_and_shape_and_never_takes_a_used_name():
    """Default names tell runs apart (issue 13): the text and the shape, then -2, -3 for the next runs."""
    from gpttui.core.config import GPTConfig
    from gpttui.core.data import DataSettings, prepare_data
    from gpttui.core.runplan import plan_save
    from gpttui.core.store import default_store
    from gpttui.core.tokenizer import ByteTokenizer
    from gpttui.core.train import TrainConfig as RunConfig, Trainer

    store = default_store()
    shape = GPTConfig(vocab_size=257, context_length=16, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
    plan = plan_save(store, resume=None, requested=None, same_data=False, data_source="~/books/The Verdict.txt",
                     run_id="x", model_config=shape)
    assert (plan.name, plan.replaces, plan.continuing) == ("The-Verdict-1L16d", None, False)
    data = prepare_data(DataSettings(source="builtin:pydoc-20k", tokenizer="bytes", context_length=16,
                                     batch_size=4), ByteTokenizer())
    names = []
    for _ in range(2):
        final = Trainer(data, ByteTokenizer(), RunConfig(max_steps=1, eval_freq=1, eval_iter=1, sample_tokens=0,
                                                         device="cpu"), shape).run()
        names.append(final.checkpoint)
    assert names == ["pydoc-20k-1L16d", "pydoc-20k-1L16d-2"]
    assert store.exists("pydoc-20k-1L16d") and store.exists("pydoc-20k-1L16d-2")
