"""Faults a user can walk into, each reproduced with real processes and real files: the checkpoint
store never loses or silently replaces what the user made, and bad input gets one clear line.

(Hostile tensor files and export refusals: tests/test_faults_interop.py; bad data and sizes:
tests/test_faults_inputs.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from gpttui.core import checkpoints, paths
from gpttui.core.errors import CheckpointError
from gpttui.core.history import RunHistory
from gpttui.core.store import CheckpointStore, default_store
from gpttui.core.train import read_run_events

TINY_FLAGS = ["--tokenizer", "bytes", "--preset", "tiny", "--emb-dim", "32", "--n-heads", "4", "--context-length",
              "32", "--batch-size", "4", "--device", "cpu", "--eval-iter", "1", "--sample-tokens", "4"]


@pytest.fixture
def corpus(tmp_path):
    from gpttui.core.data import _builtin_pydoc

    path = tmp_path / "corpus.txt"
    path.write_text(_builtin_pydoc()[:30_000], encoding="utf-8")
    return path


@pytest.fixture
def other_corpus(tmp_path):
    from gpttui.core.data import _builtin_pydoc

    path = tmp_path / "other.txt"
    path.write_text(_builtin_pydoc()[40_000:70_000], encoding="utf-8")
    return path


def cli(*args, timeout=300, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "gpttui", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


def train(corpus, *args):
    return cli("train", "--data", str(corpus), *TINY_FLAGS, *args)


def make_checkpoint(corpus, name, steps):
    """A checkpoint trained here as `gpttui train --data CORPUS <TINY_FLAGS> --max-steps N --save NAME`
    would, in-process (the behaviour under test then runs the real CLI in its own process)."""
    from gpttui.core.data import DataSettings, prepare_data
    from gpttui.core.runplan import plan_model
    from gpttui.core.tokenizer import ByteTokenizer
    from gpttui.core.train import FinishedEvent, TrainConfig, Trainer

    data = prepare_data(DataSettings(source=str(corpus), tokenizer="bytes", context_length=32, batch_size=4),
                        ByteTokenizer())
    shape = plan_model("tiny", vocab_size=257, context_length=32, emb_dim=32, n_heads=4)
    config = TrainConfig(max_steps=steps, eval_iter=1, sample_tokens=4, device="cpu", save_name=name)
    assert isinstance(Trainer(data, ByteTokenizer(), config, shape.model_config).run(), FinishedEvent)


def weights(name):
    return {k: v.clone() for k, v in checkpoints.load_checkpoint(name).model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def files_of(name):
    """Every file of a checkpoint with its bytes: proof that nothing was rewritten."""
    path = paths.checkpoints_dir() / name
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


# ---------------------------------------------------------------------------------------------
# 1. --save with an existing name
# ---------------------------------------------------------------------------------------------


def test_train_save_refuses_an_existing_name_unless_overwrite(corpus):
    make_checkpoint(corpus, "mine", 3)
    before = files_of("mine")
    proc = train(corpus, "--max-steps", "1", "--save", "mine", "--context-length", "16")
    assert proc.returncode == 1, proc.stderr
    assert "'mine' already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert files_of("mine") == before  # byte for byte
    proc = train(corpus, "--max-steps", "1", "--save", "mine", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert default_store().read_meta("mine").step == 1


# ---------------------------------------------------------------------------------------------
# 4. two runs on one name; a run killed with -9 leaves a stale lock that the next run reports
# ---------------------------------------------------------------------------------------------


def _start_long_run(corpus, name, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "gpttui", "train", "--data", str(corpus), *TINY_FLAGS,
                             "--max-steps", "100000", "--save", name, "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in proc.stdout:  # the name is held before the first step is taken
        if json.loads(line)["event"] == "step":
            return proc
    raise AssertionError(proc.stderr.read())


def test_two_runs_on_one_name_the_second_fails_before_training(corpus):
    first = _start_long_run(corpus, "shared")
    try:
        second = train(corpus, "--max-steps", "2", "--save", "shared", "--overwrite")
        assert second.returncode == 1
        assert "'shared' is in use by a training run" in second.stderr and f"pid {first.pid}" in second.stderr
        # (the second run is the one that failed: the first one's folder changes all the time, its status.json)
        failed = [p for p in paths.runs_dir().iterdir() if any(e["event"] == "failed" for e in read_run_events(p))]
        assert len(failed) == 1
        assert not any(e["event"] == "step" for e in read_run_events(failed[0]))  # it never trained
        # the name is also guarded against rename and delete while the run lives
        with pytest.raises(CheckpointError, match="in use"):
            default_store().reserve("shared", overwrite=True)
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "finished"
    saved = [e for e in events if e["event"] == "checkpoint"][-1]
    meta = default_store().read_meta("shared")
    assert meta.step == saved["step"] == events[-1]["step"]
    assert default_store().lock_holder("shared") is None  # released at the end


def test_a_killed_run_leaves_a_stale_lock_that_is_reported_and_taken_over(corpus):
    first = _start_long_run(corpus, "orphan")
    first.send_signal(signal.SIGKILL)
    first.wait(60)
    lock = paths.checkpoints_dir() / ".locks" / "orphan.lock"
    assert lock.exists() and json.loads(lock.read_text())["pid"] == first.pid
    assert default_store().lock_holder("orphan") is None  # stale: its holder is gone
    proc = train(corpus, "--max-steps", "2", "--save", "orphan-2")
    assert proc.returncode == 0
    proc = train(corpus, "--max-steps", "2", "--save", "orphan")
    assert proc.returncode == 0, proc.stderr
    assert f"locked by a training run (pid {first.pid}" in proc.stderr and "is gone" in proc.stderr
    assert "taken over" in proc.stderr
    assert not lock.exists()


def test_rename_and_delete_refuse_a_name_in_use(corpus):
    store = default_store()
    make_checkpoint(corpus, "busy", 1)
    with store.reserve("busy", continuing=True):
        holder = subprocess.run([sys.executable, "-m", "gpttui", "checkpoints", "delete", "busy", "--yes"],
                                capture_output=True, text=True, timeout=120)
        one_line_error(holder, "Cannot delete checkpoint 'busy'", "in use")
        holder = cli("checkpoints", "rename", "busy", "other")
        one_line_error(holder, "Cannot rename checkpoint 'busy'", "in use")
    assert cli("checkpoints", "rename", "busy", "other").returncode == 0


# ---------------------------------------------------------------------------------------------
# 3 (engine side). Continue on other data saves under a new name; the original stays
# ---------------------------------------------------------------------------------------------


def test_resume_on_other_data_saves_under_a_new_name(corpus, other_corpus):
    make_checkpoint(corpus, "base", 3)
    before = files_of("base")
    proc = cli("train", "--resume", "base", "--data", str(other_corpus), "--max-steps", "5", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "'base' was trained on other data, so this run saves as 'base-on-other'" in proc.stderr
    assert files_of("base") == before
    new = default_store().read_meta("base-on-other")
    assert new.step == 5 and new.dataset["label"].endswith("other.txt")
    # the loss curve of the original is carried into the new checkpoint, the original keeps its own
    old_hist = torch.load(paths.checkpoints_dir() / "base" / "trainer_state.pt", weights_only=True)["history"]
    new_hist = torch.load(paths.checkpoints_dir() / "base-on-other" / "trainer_state.pt", weights_only=True)["history"]
    assert new_hist["steps"][:len(old_hist["steps"])] == old_hist["steps"]
    # replacing the original on other data needs the user's word
    proc = cli("train", "--resume", "base", "--data", str(other_corpus), "--max-steps", "5", "--save", "base",
               "--device", "cpu")
    assert proc.returncode == 1 and "--overwrite" in proc.stderr
    assert files_of("base") == before
    # on its own data, continuing goes on in place
    proc = cli("train", "--resume", "base", "--max-steps", "4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert default_store().read_meta("base").step == 4


# ---------------------------------------------------------------------------------------------
# 5. resume without optimizer or trainer state; nothing left to train
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["trainer_state.pt", "optimizer.pt"])
def test_resume_with_missing_state_is_an_error_unless_fresh_optimizer(corpus, missing):
    make_checkpoint(corpus, "half", 3)
    (paths.checkpoints_dir() / "half" / missing).unlink()
    before = files_of("half")
    proc = cli("train", "--resume", "half", "--max-steps", "5", "--device", "cpu")
    assert proc.returncode == 1
    assert f"{missing}" in proc.stderr and "is missing" in proc.stderr and "--fresh-optimizer" in proc.stderr
    assert files_of("half") == before
    proc = cli("train", "--resume", "half", "--max-steps", "5", "--device", "cpu", "--fresh-optimizer")
    assert proc.returncode == 0, proc.stderr
    assert "AdamW starts fresh" in proc.stderr
    meta = default_store().read_meta("half")
    assert meta.step == 5 and meta.has_optimizer and meta.has_trainer_state


def test_resume_with_nothing_left_to_train_leaves_the_checkpoint(corpus):
    make_checkpoint(corpus, "done", 6)
    before = files_of("done")
    proc = cli("train", "--resume", "done", "--max-steps", "3", "--device", "cpu")
    assert proc.returncode == 1
    assert "is at step 6: --max-steps 3 is already reached" in proc.stderr and "left as it is" in proc.stderr
    assert files_of("done") == before


# ---------------------------------------------------------------------------------------------
# Broken meta.json: listed as unreadable, never breaks a listing; resume says what is wrong
# ---------------------------------------------------------------------------------------------

BAD_META = {
    "step-null": ("step", None),
    "source-null": ("source", None),
    "params-string": ("parameter_count", "124M"),
    "step-lots": ("step", "lots"),
    "dataset-wrong": ("dataset", {"source": 3, "context_length": "x"}),
}


def _break_meta(name, key, value):
    file = paths.checkpoints_dir() / name / "meta.json"
    meta = json.loads(file.read_text())
    meta[key] = value
    file.write_text(json.dumps(meta))


def test_broken_meta_is_listed_as_unreadable_and_the_rest_still_shows(corpus):
    make_checkpoint(corpus, "good", 1)
    for name, (key, value) in BAD_META.items():
        shutil.copytree(paths.checkpoints_dir() / "good", paths.checkpoints_dir() / name)
        _break_meta(name, key, value)
    infos = {i.name: i for i in default_store().list()}
    assert infos["good"].ok
    for name, (key, _) in BAD_META.items():
        assert not infos[name].ok and key in infos[name].error, (name, infos[name].error)
    proc = cli("checkpoints", "list")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("good") and "trained" in line for line in lines)
    for name in BAD_META:
        assert any(line.startswith(name) and "unreadable" in line for line in lines), name
    listed = json.loads(cli("checkpoints", "list", "--json").stdout)
    assert {c["name"] for c in listed} == {"good", *BAD_META}


@pytest.mark.parametrize("damage, words", [
    ("bad-json", "not valid JSON"),
    ("no-meta", "meta.json is missing"),
    ("future", "newer than this gpttui"),
    ("train-config", "training config has lr"),
    ("dataset", "dataset.batch_size"),
])
def test_resume_of_a_broken_checkpoint_is_one_clear_line(corpus, damage, words):
    make_checkpoint(corpus, "b", 1)
    file = paths.checkpoints_dir() / "b" / "meta.json"
    meta = json.loads(file.read_text())
    if damage == "bad-json":
        file.write_text("{oops")
    elif damage == "no-meta":
        file.unlink()
    elif damage == "future":
        meta["format_version"] = 99
        file.write_text(json.dumps(meta))
    elif damage == "train-config":
        meta["train_config"]["lr"] = "fast"
        file.write_text(json.dumps(meta))
    elif damage == "dataset":
        meta["dataset"]["batch_size"] = [4]
        file.write_text(json.dumps(meta))
    proc = cli("train", "--resume", "b", "--max-steps", "3", "--device", "cpu")
    one_line_error(proc, words)


def test_crafted_events_are_skipped_not_drawn(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = {"event": "step", "step": 1, "epoch": 1, "tokens_seen": 8, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0,
            "tokens_per_sec": 10.0, "elapsed": 0.1, "total_steps": 3, "eta": 0.2}
    lines = [good, {**good, "step": "x"}, {**good, "loss": [1]}, {**good, "step": True},
             {**good, "step": 2, "tokens_seen": 16}, {"event": "eval", "step": {"a": 1}}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    history = RunHistory.from_run_dir(run)
    snap = history.snapshot()
    assert snap.steps.step == [1, 2] and snap.steps.values["loss"] == [5.0, 5.0]
    assert snap.evals.step == []


# ---------------------------------------------------------------------------------------------
# Step and epoch numbers agree on every surface
# ---------------------------------------------------------------------------------------------


def test_step_and_epoch_numbers_agree_everywhere(corpus):
    proc = train(corpus, "--max-steps", "12", "--save", "count", "--eval-freq", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["step"] == 1 and steps[-1]["step"] == 12 and steps[0]["epoch"] == 1
    saved = next(e for e in events if e["event"] == "checkpoint")
    finished = events[-1]
    meta = default_store().read_meta("count")
    assert saved["step"] == finished["step"] == meta.step == 12
    assert meta.epoch == steps[-1]["epoch"] >= 1
    listing = cli("checkpoints", "list").stdout
    assert any(line.startswith("count") and " 12 " in line for line in listing.splitlines())
    text = train(corpus, "--max-steps", "6", "--save", "count-text")
    assert "Saved checkpoint 'count-text' at step 6" in text.stdout and "after step 6" in text.stdout


# ---------------------------------------------------------------------------------------------
# A second Ctrl+C: no save, but the run log says how it ended
# ---------------------------------------------------------------------------------------------


def test_second_ctrl_c_leaves_a_final_event_in_the_log(corpus):
    proc = _start_long_run(corpus, "twice")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run = max(paths.runs_dir().iterdir(), key=lambda p: p.stat().st_mtime)
    events = read_run_events(run)
    assert events[-1]["event"] in ("failed", "finished"), events[-1]
    assert default_store().lock_holder("twice") is None


# ---------------------------------------------------------------------------------------------
# Deleting a symlinked checkpoint removes the link only, and leaves nothing hidden behind
# ---------------------------------------------------------------------------------------------


def test_delete_a_symlinked_checkpoint(corpus, tmp_path):
    make_checkpoint(corpus, "real", 1)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(paths.checkpoints_dir() / "real"), elsewhere)
    os.symlink(elsewhere, paths.checkpoints_dir() / "linked")
    assert [i.name for i in default_store().list()] == ["linked"]
    assert cli("checkpoints", "delete", "linked", "--yes").returncode == 0
    assert os.listdir(paths.checkpoints_dir()) in ([], [".locks"])
    assert (elsewhere / "meta.json").is_file()  # the folder the link pointed to is the user's: kept


# ---------------------------------------------------------------------------------------------
# Disk full: a real full filesystem (a small tmpfs in a private mount namespace)
# ---------------------------------------------------------------------------------------------

FULL_DISK_SCRIPT = textwrap.dedent("""
    set -u
    mount -t tmpfs -o size=2m tmpfs "$GPTTUI_HOME" || exit 77
    train() { python -m gpttui train --data "$CORPUS" $FLAGS "$@"; }
    train --max-steps 2 --save keep > /dev/null 2>&1 || { echo "first run failed"; exit 1; }
    # fill the filesystem, then give back 32 KiB: room for the run log, not for a checkpoint
    dd if=/dev/zero of="$GPTTUI_HOME/filler" bs=4096 2>/dev/null
    truncate -s -32768 "$GPTTUI_HOME/filler"
    train --resume keep --max-steps 4 --device cpu > "$OUT/stdout" 2> "$OUT/stderr"
    echo $? > "$OUT/rc"
    python -m gpttui checkpoints show keep --json > "$OUT/show" 2>&1
    ls -a "$GPTTUI_HOME/checkpoints" > "$OUT/ls"
""")


def test_disk_full_names_the_path_and_keeps_the_previous_checkpoint(corpus, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs in a private namespace")
    home, out = tmp_path / "small-home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    env = dict(os.environ, GPTTUI_HOME=str(home), CORPUS=str(corpus), OUT=str(out), OMP_NUM_THREADS="1",
               FLAGS=" ".join(TINY_FLAGS))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 77 or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:80]})")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stderr = (out / "stderr").read_text()
    assert (out / "rc").read_text().strip() == "1", stderr
    assert "is full" in stderr and str(home / "checkpoints") in stderr and "free" in stderr
    assert "Traceback" not in stderr
    shown = json.loads((out / "show").read_text())
    assert shown["error"] is None and shown["step"] == 2  # the previous checkpoint is whole
    assert (out / "ls").read_text().split() == [".", "..", ".locks", "keep"]


def test_store_recovers_once_when_opened(tmp_path):
    root = tmp_path / "store"
    store = CheckpointStore(root)
    from gpttui.core.config import GPTConfig
    from gpttui.core.model import GPTModel

    model = GPTModel(GPTConfig(vocab_size=257, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    store.save("a", model)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    os.rename(root / "a", root / f".old-a-{pid}-deadbeef")  # a save that died between its two renames
    (root / f".tmp-b-{pid}-deadbeef").mkdir()
    reopened = CheckpointStore(root)
    assert sorted(reopened.recovered) == sorted(["restored checkpoint 'a' from an interrupted save",
                                                 f"removed .tmp-b-{pid}-deadbeef"])
    assert [i.name for i in reopened.list()] == ["a"]
