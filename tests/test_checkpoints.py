"""Checkpoints: round trips, management, atomic saves under kill -9, the book's files, refusing pickles
that carry code, and corrupt files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import book_reference
import gpttui
from gpttui.core import checkpoints as ck
from gpttui.core import interop
from gpttui.core import paths
from gpttui.core.config import GPTConfig
from gpttui.core.errors import CheckpointError
from gpttui.core.model import GPTModel, book_state_dict

TINY = dict(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
META_FIELDS = ("format_version", "gpttui_version", "created", "source", "model_config", "parameter_count",
               "tokenizer", "train_config", "step", "epoch", "tokens_seen", "last_train_loss",
               "last_val_loss", "best_val_loss", "dataset")


def tiny_config(**changes) -> GPTConfig:
    return GPTConfig(**{**TINY, **changes})


def make_model(seed: int = 0, **changes) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(tiny_config(**changes))


def batch(seed: int = 1, vocab: int = 97, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (2, length + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    model.train()
    for i in range(steps):
        x, y = batch(seed + i)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def logits(model: nn.Module, seed: int = 7, vocab: int = 97, length: int = 12) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch(seed, vocab, length)[0])


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa = {k: v for k, v in a.state_dict().items() if not k.endswith("att.mask")}
    sb = {k: v for k, v in b.state_dict().items() if not k.endswith("att.mask")}
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def hidden_entries() -> list[str]:
    return sorted(p.name for p in paths.checkpoints_dir().iterdir() if p.name.startswith("."))


def book_cfg(cfg: GPTConfig) -> dict:
    return cfg.to_book_dict()


class Payload:
    """Pickles to a call of os.system: loading it with plain torch.load would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > '{self.marker}'",))


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run1", "gpt2-small_ft", "a.b", "my+model", "_x", "A" * 100])
def test_valid_names(name):
    assert ck.validate_name(name) == name


@pytest.mark.parametrize("name, words", [
    ("", "empty"),
    ("a/b", "separator"),
    ("a\\b", "separator"),
    ("../x", "separator"),
    (".hidden", "dot"),
    ("..", "dot"),
    ("a..b", ".."),
    ("has space", "letters, digits"),
    ("ümlaut", "letters, digits"),
    ("x" * 101, "too long"),
    ("name.", "end with a dot"),
    ("con", "reserved"),
    (5, "text"),
])
def test_bad_names(name, words):
    with pytest.raises(CheckpointError, match="name") as err:
        ck.validate_name(name)
    assert words in str(err.value)
    with pytest.raises(CheckpointError):
        ck.save_checkpoint(name, make_model())
    assert list(paths.checkpoints_dir().iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_weights_logits_and_meta(tied, gpttui_home):
    model = make_model(tie_weights=tied, qkv_bias=tied)
    meta = {"tokenizer": "gpt2", "train_config": {"lr": 4e-4, "batch_size": 2}, "step": 5, "epoch": 1,
            "tokens_seen": 120, "last_train_loss": 3.5, "last_val_loss": float("nan"),
            "best_val_loss": np.float32(3.25),
            "dataset": {"corpus": "builtin:pydoc", "sha256": "abc"}, "custom": (1, 2)}
    path = ck.save_checkpoint("rt", model, meta=meta)

    assert path == gpttui_home / "checkpoints" / "rt"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors"]
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("out_head.weight" in keys) is not tied  # a tied weight is stored once
    assert not any(k.endswith("att.mask") for k in keys)

    loaded = ck.load_checkpoint("rt")
    assert loaded.config == model.cfg
    assert loaded.path == path and loaded.name == "rt"
    assert loaded.optimizer_state is None and loaded.trainer_state is None
    assert_same_weights(model, loaded.model)
    assert torch.equal(logits(model), logits(loaded.model))
    assert (loaded.model.out_head.weight is loaded.model.tok_emb.weight) is tied
    assert sum(p.numel() for p in loaded.model.parameters()) == sum(p.numel() for p in model.parameters())
    assert not loaded.model.training

    m = loaded.meta
    for key in META_FIELDS:
        assert key in m, key
    assert m["format_version"] == ck.FORMAT_VERSION
    assert m["gpttui_version"] == gpttui.__version__
    assert m["source"] == "trained"
    assert m["model_config"] == model.cfg.to_dict()
    assert m["parameter_count"] == sum(p.numel() for p in model.parameters())
    assert m["step"] == 5 and m["epoch"] == 1 and m["tokens_seen"] == 120 and m["tokenizer"] == "gpt2"
    assert m["last_val_loss"] is None  # NaN is not JSON
    assert m["train_config"] == {"lr": 4e-4, "batch_size": 2} and m["last_train_loss"] == 3.5
    assert m["best_val_loss"] == 3.25 and m["custom"] == [1, 2]
    assert m["dataset"] == {"corpus": "builtin:pydoc", "sha256": "abc"}
    assert m["has_optimizer"] is False and m["dtype"] == "float32"
    # meta.json is strict JSON
    json.loads((path / "meta.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


def test_optimizer_round_trip_resumes_identically():
    model = make_model(tie_weights=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    train_steps(model, opt, 2)
    ck.save_checkpoint("opt", model, optimizer=opt)

    raw = torch.load(ck.checkpoint_path("opt") / "optimizer.pt", weights_only=True)
    assert set(raw) == {"state", "param_groups"}

    loaded = ck.load_checkpoint("opt", load_optimizer=True)
    fresh = torch.optim.AdamW(loaded.model.parameters(), lr=5.0)
    fresh.load_state_dict(loaded.optimizer_state)
    assert fresh.param_groups[0]["lr"] == 1e-3
    ours, theirs = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert ours.keys() == theirs.keys() and len(ours) == len(list(model.parameters()))
    for i in ours:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(ours[i][k], theirs[i][k]), (i, k)

    # Continuing from the checkpoint is the same as never having stopped.
    train_steps(model, opt, 2, seed=10)
    train_steps(loaded.model, fresh, 2, seed=10)
    assert_same_weights(model, loaded.model)
    assert ck.load_checkpoint("opt").optimizer_state is None  # only read when asked for


def test_trainer_state_and_rng_round_trip():
    import random

    model = make_model()
    state = {"epoch": 2, "batch": 17, "order": np.arange(5), "seen": np.int64(1024), "nested": {"a": [1, 2.5]}}
    ck.save_checkpoint("ts", model, trainer_state=state)
    expected = (torch.rand(3), random.random(), np.random.rand(2))

    raw = torch.load(ck.checkpoint_path("ts") / "trainer_state.pt", weights_only=True)
    assert raw["batch"] == 17 and raw["seen"] == 1024 and raw["nested"] == {"a": [1, 2.5]}
    assert torch.equal(raw["order"], torch.arange(5))

    loaded = ck.load_checkpoint("ts")
    assert loaded.meta["has_trainer_state"] is True
    torch.rand(10), random.random(), np.random.rand(4)  # move every generator on
    ck.restore_rng_state(loaded.trainer_state["rng"])
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1]
    assert np.array_equal(expected[2], again[2])


def test_trainer_state_refuses_objects_before_writing():
    with pytest.raises(CheckpointError, match="trainer_state.*object"):
        ck.save_checkpoint("bad", make_model(), trainer_state={"obj": object()})
    with pytest.raises(CheckpointError, match="meta.json"):
        ck.save_checkpoint("bad", make_model(), meta={"x": object()})
    assert not ck.checkpoint_exists("bad") and hidden_entries() == []


class CompiledStandIn(nn.Module):
    """What torch.compile returns: the model under ``_orig_mod``, so its state_dict keys carry that
    prefix (the real thing costs seconds to import)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._orig_mod = model


@pytest.mark.parametrize("wrap", [nn.DataParallel, CompiledStandIn,
                                  lambda m: nn.DataParallel(CompiledStandIn(m))])
def test_wrapped_models_saved_without_prefixes(wrap):
    model = make_model()
    wrapped = wrap(model)
    assert any(k.startswith(("module.", "_orig_mod.")) for k in wrapped.state_dict())
    path = ck.save_checkpoint("wrapped", wrapped)
    assert set(load_file(str(path / "model.safetensors"))) == set(model.state_dict())
    assert_same_weights(model, ck.load_checkpoint("wrapped").model)


def test_clean_state_dict():
    sd = {"_orig_mod.module.tok_emb.weight": 1, "module._orig_mod.pos_emb.weight": 2, "out_head.weight": 3}
    assert ck.clean_state_dict(sd) == {"tok_emb.weight": 1, "pos_emb.weight": 2, "out_head.weight": 3}


def test_overwrite():
    first, second = make_model(1), make_model(2)
    ck.save_checkpoint("same", first)
    with pytest.raises(CheckpointError, match="already exists"):
        ck.save_checkpoint("same", second, overwrite=False)
    with pytest.raises(CheckpointError, match="already exists"):
        ck.save_checkpoint("same", second)  # the default keeps what exists
    assert_same_weights(first, ck.load_checkpoint("same").model)
    ck.save_checkpoint("same", second, overwrite=True)
    assert_same_weights(second, ck.load_checkpoint("same").model)
    assert hidden_entries() == []


def test_failed_write_keeps_previous_checkpoint(monkeypatch):
    """A write error (disk full) part-way through a save: the old checkpoint is untouched."""
    first = make_model(1)
    ck.save_checkpoint("keep", first)
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    model = make_model(2)
    with monkeypatch.context() as patch:  # (monkeypatch.undo() would also undo GPTTUI_HOME)
        patch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(CheckpointError, match="is full") as err:
            ck.save_checkpoint("keep", model, optimizer=torch.optim.AdamW(model.parameters()), overwrite=True)
    assert str(paths.checkpoints_dir()) in str(err.value) and "free" in str(err.value)
    assert len(calls) == 2
    assert hidden_entries() == []
    assert [i.name for i in ck.list_checkpoints()] == ["keep"]
    assert_same_weights(first, ck.load_checkpoint("keep").model)


# ---------------------------------------------------------------------------------------------
# kill -9 during a save
# ---------------------------------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent("""
    import json, os, shutil, signal, sys
    import torch
    from gpttui.core import checkpoints as ck
    from gpttui.core.model import GPTModel
    from gpttui.core.config import GPTConfig

    point, cfg = sys.argv[1], GPTConfig(**json.loads(sys.argv[2]))
    torch.manual_seed(2)
    model = GPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters())

    def kill_on_call(n, real):
        calls = []
        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGKILL)  # no except/finally/atexit runs
            return real(*args, **kwargs)
        return wrapper

    if point == "while-writing":  # model.safetensors written, nothing else yet
        os.fsync = kill_on_call(1, os.fsync)
    elif point == "before-rename":  # temp folder complete and fsynced
        os.rename = kill_on_call(1, os.rename)
    elif point == "between-renames":  # old checkpoint moved aside, new one not yet in place
        os.rename = kill_on_call(2, os.rename)
    elif point == "before-cleanup":  # new checkpoint in place, old one not yet deleted
        shutil.rmtree = kill_on_call(1, shutil.rmtree)
    ck.save_checkpoint("run", model, optimizer=optimizer, trainer_state={"pos": 1}, meta={"step": 2},
                       overwrite=True)
    sys.exit(3)
""")

# point -> (hidden folders left behind by the killed save, which version the name must then hold)
KILL_POINTS = {
    "while-writing": ([".tmp-"], 1),
    "before-rename": ([".tmp-"], 1),
    "between-renames": ([".old-", ".tmp-"], 1),
    "before-cleanup": ([".old-"], 2),
}


def test_kill_9_during_save_leaves_a_complete_checkpoint(tmp_path, monkeypatch):
    """Save version 1, then a second process saving version 2 is killed with SIGKILL at each stage
    (all four run at once, each in its own GPTTUI_HOME). Afterwards the name holds a complete
    checkpoint, version 1 or 2, and list_checkpoints() shows nothing half-written."""
    script = tmp_path / "kill_save.py"
    script.write_text(KILL_SCRIPT)
    v1 = make_model(1)
    torch.manual_seed(2)
    v2 = GPTModel(tiny_config())
    homes, procs = {}, {}
    for point in KILL_POINTS:
        homes[point] = tmp_path / point
        monkeypatch.setenv("GPTTUI_HOME", str(homes[point]))
        ck.save_checkpoint("run", v1, meta={"step": 1})
        env = dict(os.environ, GPTTUI_HOME=str(homes[point]), OMP_NUM_THREADS="1")
        procs[point] = subprocess.Popen([sys.executable, str(script), point, json.dumps(TINY)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    outputs = {point: proc.communicate(timeout=120)[0].decode() for point, proc in procs.items()}

    for point, (left_behind, version) in KILL_POINTS.items():
        monkeypatch.setenv("GPTTUI_HOME", str(homes[point]))
        assert procs[point].returncode == -signal.SIGKILL, (point, outputs[point])
        ckdir = homes[point] / "checkpoints"
        hidden = sorted(p.name for p in ckdir.iterdir() if p.name.startswith("."))
        assert [h[:5] for h in hidden] == left_behind, (point, hidden)

        infos = ck.list_checkpoints()
        assert [(i.name, i.error) for i in infos] == [("run", None)], point
        assert hidden_entries() == [], point  # the dead process's leftovers are cleaned up
        loaded = ck.load_checkpoint("run", load_optimizer=True)
        assert_same_weights(v1 if version == 1 else v2, loaded.model)
        assert loaded.meta["step"] == version, point
        assert (loaded.optimizer_state is not None) is (version == 2), point


def test_hidden_folders_of_live_processes_are_left_alone():
    ck.save_checkpoint("live", make_model())
    ckdir = paths.checkpoints_dir()
    mine = ckdir / f".tmp-live-{os.getpid()}-abcd1234"  # e.g. a save running in another thread
    mine.mkdir()
    other = ckdir / ".tmp-whatever"  # not ours: never touched
    other.mkdir()
    assert [i.name for i in ck.list_checkpoints()] == ["live"]
    assert mine.is_dir() and other.is_dir()


# ---------------------------------------------------------------------------------------------
# list / show / rename / delete
# ---------------------------------------------------------------------------------------------


def test_list_show_rename_delete():
    assert ck.list_checkpoints() == []
    for i, name in enumerate(["first", "second", "third"]):
        ck.save_checkpoint(name, make_model(i), meta={"step": i})
    infos = ck.list_checkpoints()
    assert [i.name for i in infos] == ["third", "second", "first"]  # newest first
    info = infos[0]
    assert info.ok and info.error is None and info.meta["step"] == 2 and info.step == 2
    assert info.path == paths.checkpoints_dir() / "third"
    assert info.size_bytes == sum(f.stat().st_size for f in info.path.iterdir())
    assert info.created == info.meta["created"] and info.source == "trained"

    shown = ck.show("second")
    assert shown["name"] == "second" and shown["step"] == 1 and shown["error"] is None
    assert shown["model_config"] == tiny_config().to_dict() and shown["source"] == "trained"
    assert set(shown["files"]) == {"meta.json", "model.safetensors"} and shown["size_bytes"] > 0
    assert shown["tensors"] == len(make_model().state_dict()) and shown["tied"] == {}
    json.dumps(shown)

    assert ck.checkpoint_exists("first")
    ck.rename_checkpoint("first", "renamed")
    assert not ck.checkpoint_exists("first") and ck.checkpoint_exists("renamed")
    assert_same_weights(make_model(0), ck.load_checkpoint("renamed").model)
    with pytest.raises(CheckpointError, match="already exists"):
        ck.rename_checkpoint("renamed", "second")
    with pytest.raises(CheckpointError, match="No checkpoint named 'first'"):
        ck.rename_checkpoint("first", "other")
    with pytest.raises(CheckpointError, match="dot"):
        ck.rename_checkpoint("renamed", ".sneaky")

    ck.delete_checkpoint("second")
    assert [i.name for i in ck.list_checkpoints()] == ["third", "renamed"]
    with pytest.raises(CheckpointError, match="No checkpoint named 'second'"):
        ck.delete_checkpoint("second")
    with pytest.raises(CheckpointError, match="No checkpoint named 'nope'"):
        ck.load_checkpoint("nope")
    with pytest.raises(CheckpointError, match="No checkpoint named"):
        ck.show("nope")
    assert hidden_entries() == []


def test_list_reports_broken_folders_instead_of_crashing():
    ck.save_checkpoint("good", make_model())
    ckdir = paths.checkpoints_dir()
    (ckdir / "empty").mkdir()
    (ckdir / "garbage").mkdir()
    (ckdir / "garbage" / "meta.json").write_text("{not json")
    (ckdir / "no-weights").mkdir()
    (ckdir / "no-weights" / "meta.json").write_text((ckdir / "good" / "meta.json").read_text())
    (ckdir / ".tmp-half-1-0").mkdir()
    (ckdir / "stray-file.txt").write_text("hello")

    infos = {i.name: i for i in ck.list_checkpoints()}
    assert set(infos) == {"good", "empty", "garbage", "no-weights"}
    assert infos["good"].error is None
    assert "meta.json is missing" in infos["empty"].error
    assert "not valid JSON" in infos["garbage"].error
    assert "model.safetensors is missing" in infos["no-weights"].error
    assert ck.show("garbage")["error"] == infos["garbage"].error
    ck.delete_checkpoint("garbage")  # broken checkpoints can still be removed
    assert not ck.checkpoint_exists("garbage")


# ---------------------------------------------------------------------------------------------
# Corrupt files
# ---------------------------------------------------------------------------------------------


def test_truncated_weights():
    path = ck.save_checkpoint("c", make_model())
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt or truncated"):
        ck.load_checkpoint("c")
    (path / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt or truncated"):
        ck.load_checkpoint("c")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        ck.load_checkpoint("c")


@pytest.mark.parametrize("content, words", [
    ("{garbage", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"model_config": {}}', "format_version"),
    ('{"format_version": 99, "model_config": {}}', "upgrade gpttui"),
    ('{"format_version": 1}', "model_config must be an object"),
    ('{"format_version": 1, "model_config": {"emb_dim": 30, "n_heads": 4}}', "unusable model_config"),
])
def test_bad_meta(content, words):
    path = ck.save_checkpoint("m", make_model())
    (path / "meta.json").write_text(content)
    with pytest.raises(CheckpointError, match="meta.json") as err:
        ck.load_checkpoint("m")
    assert words in str(err.value)


def test_bad_meta_bytes():
    path = ck.save_checkpoint("m", make_model())
    (path / "meta.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="meta.json is not valid JSON"):
        ck.load_checkpoint("m")
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json is missing"):
        ck.load_checkpoint("m")


def test_wrong_and_missing_tensors():
    path = ck.save_checkpoint("w", make_model())
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    tensors["trf_blocks.0.att.W_query.weight"] = torch.zeros(16, 32)
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match="wrong shapes") as err:
        ck.load_checkpoint("w")
    assert "trf_blocks.0.att.W_query.weight is (16, 32), expected (32, 32)" in str(err.value)
    assert "model.safetensors" in str(err.value)

    del tensors["trf_blocks.0.att.W_query.weight"]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match="missing tensors: trf_blocks.0.att.W_query.weight") as err:
        ck.load_checkpoint("w")
    assert "unexpected tensors: extra.weight" in str(err.value)


def test_corrupt_optimizer_and_trainer_state():
    model = make_model()
    path = ck.save_checkpoint("o", model, optimizer=torch.optim.AdamW(model.parameters()),
                              trainer_state={"pos": 1})
    (path / "optimizer.pt").write_bytes((path / "optimizer.pt").read_bytes()[:100])
    ck.load_checkpoint("o")  # not read unless asked for
    with pytest.raises(CheckpointError, match=r"optimizer\.pt is corrupt, truncated"):
        ck.load_checkpoint("o", load_optimizer=True)
    (path / "trainer_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt is corrupt, truncated"):
        ck.load_checkpoint("o")


# ---------------------------------------------------------------------------------------------
# Pickles that carry code
# ---------------------------------------------------------------------------------------------


def test_code_payloads_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pth"
    book_model = book_reference.GPTModel(book_cfg(tiny_config()))
    torch.save({"model_state_dict": book_model.state_dict(), "optimizer_state_dict": Payload(marker)}, evil)
    bare = tmp_path / "bare.pth"
    torch.save(Payload(marker), bare)

    for file in (evil, bare):
        with pytest.raises(CheckpointError, match="contains code or Python objects") as err:
            interop.import_book(file, "evil", tiny_config())
        assert "not loaded" in str(err.value) and str(file) in str(err.value)
        with pytest.raises(CheckpointError, match="contains code or Python objects"):
            ck.safe_torch_load(file)
    assert not marker.exists()
    assert not ck.checkpoint_exists("evil")

    # ... also when planted inside a checkpoint
    path = ck.save_checkpoint("planted", make_model(), trainer_state={"pos": 1})
    torch.save(Payload(marker), path / "optimizer.pt")
    torch.save({"pos": Payload(marker)}, path / "trainer_state.pt")
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt contains code"):
        ck.load_checkpoint("planted")
    (path / "trainer_state.pt").unlink()
    ck.load_checkpoint("planted")  # optimizer.pt is only read when asked for
    with pytest.raises(CheckpointError, match=r"optimizer\.pt contains code"):
        ck.load_checkpoint("planted", load_optimizer=True)
    assert not marker.exists()


def test_safe_torch_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.safe_torch_load(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        ck.safe_torch_load(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a PyTorch file"):
        ck.safe_torch_load(tmp_path / "empty.pt")
    torch.save({"w": torch.ones(2), "n": [1, "a"]}, tmp_path / "ok.pt")
    assert ck.safe_torch_load(tmp_path / "ok.pt")["n"] == [1, "a"]


# ---------------------------------------------------------------------------------------------
# The book's files
# ---------------------------------------------------------------------------------------------


def book_model_from(cfg: GPTConfig, state: dict) -> book_reference.GPTModel:
    model = book_reference.GPTModel(book_cfg(cfg))
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_export_book_model_pth(tied, tmp_path):
    model = make_model(tie_weights=tied)
    ck.save_checkpoint("exp", model)
    out = interop.export_book("exp", tmp_path)  # a folder: the book's file name
    assert out == tmp_path / "model.pth"
    state = torch.load(out, weights_only=True)
    assert set(state) == set(book_reference.GPTModel(book_cfg(model.cfg)).state_dict())
    book_model = book_model_from(model.cfg, state)
    torch.testing.assert_close(logits(book_model), logits(model), rtol=1e-5, atol=1e-5)

    with pytest.raises(CheckpointError, match="no optimizer state"):
        interop.export_book("exp", tmp_path / "x.pth", with_optimizer=True)


@pytest.mark.parametrize("tied", [False, True])
def test_export_book_model_and_optimizer(tied, tmp_path):
    model = make_model(tie_weights=tied)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)  # the book's optimizer
    train_steps(model, opt, 2)
    ck.save_checkpoint("exp", model, optimizer=opt)
    (tmp_path / "sub").mkdir()
    out = interop.export_book("exp", tmp_path / "sub" / "mine.pth", with_optimizer=True)
    assert out == tmp_path / "sub" / "mine.pth"

    checkpoint = torch.load(out, weights_only=True)  # the book's loading code
    assert set(checkpoint) == {"model_state_dict", "optimizer_state_dict"}
    book_model = book_model_from(model.cfg, checkpoint["model_state_dict"])
    book_opt = torch.optim.AdamW(book_model.parameters(), lr=0.1, weight_decay=0.1)
    book_opt.load_state_dict(checkpoint["optimizer_state_dict"])
    assert book_opt.param_groups[0]["lr"] == 4e-4
    torch.testing.assert_close(logits(book_model), logits(model), rtol=1e-5, atol=1e-5)
    if not tied:  # the book's untied model trains on exactly as ours does
        train_steps(model, opt, 1, seed=20)
        train_steps(book_model, book_opt, 1, seed=20)
        for (k, a), b in zip(model.state_dict().items(), book_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("variant", ["plain", "orig_mod", "module", "with_optimizer"])
def test_import_book(variant, tmp_path):
    cfg = tiny_config(qkv_bias=True, vocab_size=257)  # the bytes tokenizer's vocabulary
    torch.manual_seed(3)
    book_model = book_reference.GPTModel(book_cfg(cfg))
    state = book_model.state_dict()
    assert any(k.endswith("att.mask") for k in state)
    file = tmp_path / "model.pth"
    if variant == "orig_mod":
        state = {"_orig_mod." + k: v for k, v in state.items()}
    elif variant == "module":
        state = {"module." + k: v for k, v in state.items()}
    if variant == "with_optimizer":
        opt = torch.optim.AdamW(book_model.parameters(), lr=4e-4, weight_decay=0.1)
        train_steps(book_model, opt, 1)
        file = tmp_path / "model_and_optimizer.pth"
        torch.save({"model_state_dict": book_model.state_dict(), "optimizer_state_dict": opt.state_dict()},
                   file)
    else:
        torch.save(state, file)

    path = interop.import_book(file, "imported", cfg)
    assert path == ck.checkpoint_path("imported")
    loaded = ck.load_checkpoint("imported", load_optimizer=True)
    assert loaded.meta["source"] == "imported-book" and loaded.meta["tokenizer"] == "bytes"  # from the vocabulary
    assert loaded.config == cfg
    torch.testing.assert_close(logits(loaded.model), logits(book_model), rtol=1e-5, atol=1e-5)
    if variant == "with_optimizer":
        fresh = torch.optim.AdamW(loaded.model.parameters())
        fresh.load_state_dict(loaded.optimizer_state)
        for i, s in opt.state_dict()["state"].items():
            assert torch.equal(fresh.state_dict()["state"][i]["exp_avg"], s["exp_avg"])
    else:
        assert loaded.optimizer_state is None
    with pytest.raises(CheckpointError, match="already exists"):
        interop.import_book(file, "imported", cfg)


@pytest.mark.parametrize("tied, qkv_bias", [(False, False), (True, True)])
def test_import_book_infers_config(tied, qkv_bias, tmp_path):
    """GPT-2 widths give n_heads; everything else comes from the shapes."""
    cfg = GPTConfig(vocab_size=257, context_length=5, emb_dim=768, n_heads=12, n_layers=1, drop_rate=0.0,
                    qkv_bias=qkv_bias)
    torch.manual_seed(4)
    book_model = book_reference.GPTModel(book_cfg(cfg))
    if tied:  # as the book's load_weights_into_gpt does for GPT-2: equal values, separate tensors
        with torch.no_grad():
            book_model.out_head.weight.copy_(book_model.tok_emb.weight)
    torch.save(book_model.state_dict(), tmp_path / "model.pth")
    interop.import_book(tmp_path / "model.pth", "inferred")
    loaded = ck.load_checkpoint("inferred")
    assert loaded.config == cfg.replace(tie_weights=tied, drop_rate=GPTConfig().drop_rate)
    assert (loaded.model.out_head.weight is loaded.model.tok_emb.weight) is tied
    torch.testing.assert_close(logits(loaded.model, 0, 11, 5), logits(book_model, 0, 11, 5),
                               rtol=1e-5, atol=1e-5)


def test_import_book_needs_heads_for_unknown_width(tmp_path):
    book_model = book_reference.GPTModel(book_cfg(tiny_config(vocab_size=257)))
    torch.save(book_model.state_dict(), tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="n_heads") as err:
        interop.import_book(tmp_path / "model.pth", "x")
    assert "emb_dim 32" in str(err.value)
    assert interop.infer_book_config(tmp_path / "model.pth", n_heads=4) == tiny_config(vocab_size=257, drop_rate=0.1)
    interop.import_book(tmp_path / "model.pth", "with-heads", n_heads=4)
    torch.testing.assert_close(logits(ck.load_checkpoint("with-heads").model), logits(book_model),
                               rtol=1e-5, atol=1e-5)
    ck.delete_checkpoint("with-heads")
    with pytest.raises(CheckpointError, match="wrong shapes"):
        interop.import_book(tmp_path / "model.pth", "x", tiny_config(emb_dim=64, vocab_size=257))
    with pytest.raises(CheckpointError, match="does not hold a model state_dict"):
        torch.save([1, 2, 3], tmp_path / "list.pth")
        interop.import_book(tmp_path / "list.pth", "x")
    assert ck.list_checkpoints() == []


def test_export_then_import_round_trip(tmp_path):
    model = make_model(tie_weights=True, vocab_size=257)
    opt = torch.optim.AdamW(model.parameters())
    train_steps(model, opt, 1)
    ck.save_checkpoint("orig", model, optimizer=opt)
    file = interop.export_book("orig", tmp_path, with_optimizer=True)
    interop.import_book(file, "back", tiny_config(tie_weights=True, vocab_size=257))
    loaded = ck.load_checkpoint("back", load_optimizer=True)
    assert_same_weights(model, loaded.model)
    fresh = torch.optim.AdamW(loaded.model.parameters())
    fresh.load_state_dict(loaded.optimizer_state)
    assert book_state_dict(loaded.model).keys() == book_state_dict(model).keys()
