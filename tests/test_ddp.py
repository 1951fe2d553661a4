"""Training with several processes (torchrun DDP, gloo on the CPU) and the single-process hot path.

- two ranks end with identical weights, and their loss curve is one process's with the doubled batch;
- `gpttui train --nproc 2` pauses, saves while paused, resumes and stops both ranks on one request each
  (rank 0 writes every checkpoint); a one-process run continues it with a note saying how.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_setup import run_config, settings
from gpttui.core import paths
from gpttui.core.data import prepare_data
from gpttui.core.runs import send_command
from gpttui.core.store import default_store
from gpttui.core.tokenizer import ByteTokenizer
from gpttui.core.train import StepEvent, Trainer, read_run_events
from test_faults import TINY_FLAGS, cli, corpus  # noqa: F401,F811  (corpus is a fixture)
from test_runs import wait_for

TESTS = Path(__file__).parent


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_two_ranks_train_as_one_process_with_the_doubled_batch(tmp_path, corpus):
    done = torchrun(str(TESTS / "ddp_worker.py"), str(tmp_path), str(corpus))
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["step"] == rank1["step"] == 8
    for key, value in rank0["weights"].items():  # DDP keeps the replicas equal, to the bit
        assert torch.equal(value, rank1["weights"][key]), key
    assert rank0["losses"] == rank1["losses"]  # both report the mean over the ranks

    config, model_config = run_config()
    config.save_name = "one-process"
    data = prepare_data(settings(corpus, batch_size=4), ByteTokenizer())
    losses: list[float] = []
    one = Trainer(data, ByteTokenizer(), config, model_config,
                  callback=lambda e: losses.append(e.loss) if isinstance(e, StepEvent) else None)
    one.run()
    assert len(losses) == 8
    assert losses == pytest.approx(rank0["losses"], abs=1e-5)
    assert losses[-1] < losses[0]
    for key, value in one.model.state_dict().items():
        torch.testing.assert_close(rank0["weights"][key], value, atol=1e-4, rtol=1e-4)
    # rank 0 alone wrote: one run directory, one checkpoint
    assert len(list(paths.runs_dir().iterdir())) == 2  # the DDP run's and the one-process run's
    assert default_store().exists("ddp-equal")


def test_nproc_2_pauses_saves_and_stops_together(corpus):
    run_id = "20261128-000000-ddp2"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "gpttui", "train", "--data", str(corpus), *TINY_FLAGS, "--epochs", "100000",
         "--eval-freq", "1000", "--save", "ddp-stop", "--nproc", "2", "--run-id", run_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    run_dir = paths.runs_dir() / run_id
    try:
        wait_for(lambda: (run_dir / "events.jsonl").exists()
                 and any(e.get("event") == "step" for e in read_run_events(run_dir)), "a step of the DDP run", 180)
        # pause (both ranks wait, agreeing every quarter second), save while paused, resume, stop
        send_command(run_dir, "pause")
        wait_for(lambda: any(e.get("event") == "state" and e["paused"] for e in read_run_events(run_dir)), "paused")
        send_command(run_dir, "save")
        wait_for(lambda: any(e.get("event") == "checkpoint" for e in read_run_events(run_dir)), "a save while paused")
        paused_at = [e for e in read_run_events(run_dir) if e.get("event") == "step"][-1]["step"]
        send_command(run_dir, "resume")
        wait_for(lambda: [e for e in read_run_events(run_dir) if e.get("event") == "step"][-1]["step"] > paused_at,
                 "a step after resuming")
        send_command(run_dir, "stop")
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, err[-3000:]
    events = read_run_events(run_dir)
    started = next(e for e in events if e["event"] == "started")
    assert started["processes"] == 2 and started["tokens_per_step"] == 2 * 4 * 32
    finished = [e for e in events if e["event"] == "finished"]
    assert len(finished) == 1 and finished[0]["reason"] == "stopped"
    saves = [e for e in events if e["event"] == "checkpoint"]
    assert [e["name"] for e in saves] == ["ddp-stop", "ddp-stop"]  # while paused, and at the stop
    assert saves[0]["step"] == paused_at < saves[1]["step"] == finished[0]["step"]
    kinds = [e["event"] for e in events]
    assert kinds.index("state") < kinds.index("checkpoint")  # the save came while paused
    assert "2 processes (DDP" in out
    assert [c.name for c in default_store().list()] == ["ddp-stop"]
    step = finished[0]["step"]

    # Two processes continue it where it stopped, with nothing to explain.
    same = cli("train", "--resume", "ddp-stop", "--max-steps", str(step + 2), "--nproc", "2", *TINY_FLAGS[-6:])
    assert same.returncode == 0, same.stderr[-3000:]
    assert f"resumed from ddp-stop at step {step}" in same.stdout and "process(es)" not in same.stderr
    assert default_store().load("ddp-stop").typed.step == step + 2
    step += 2

    # One process continues it: the steps took 4x2 windows and now take 4; it says so.
    again = cli("train", "--resume", "ddp-stop", "--max-steps", str(step + 2), *TINY_FLAGS[-6:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained by 2 process(es) and continues with 1" in again.stderr


def test_ctrl_c_reaches_every_rank_and_the_run_saves_once(corpus):
    """The terminal's Ctrl+C goes to the launcher (torchrun's agent) and both workers at once; torchrun
    passes it on again: the ranks stop together after the step, rank 0 saves, the exit code says SIGINT."""
    run_id = "20261128-000000-ctrl"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "gpttui", "train", "--data", str(corpus), *TINY_FLAGS, "--epochs", "100000",
         "--eval-freq", "1000", "--save", "ddp-ctrl-c", "--nproc", "2", "--run-id", run_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    run_dir = paths.runs_dir() / run_id
    try:
        wait_for(lambda: (run_dir / "events.jsonl").exists()
                 and any(e.get("event") == "step" for e in read_run_events(run_dir)), "a step of the DDP run", 180)
        os.killpg(launcher.pid, signal.SIGINT)  # what the terminal does: the whole foreground group
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err
    events = read_run_events(run_dir)
    assert [e["reason"] for e in events if e["event"] == "finished"] == ["interrupted"]
    assert [e["name"] for e in events if e["event"] == "checkpoint"] == ["ddp-ctrl-c"]
    assert "Finished (interrupted)" in out


def test_a_non_finite_loss_fails_every_rank_at_the_same_step(corpus):
    """The loss each rank reads is the all-reduced one, so both see it non-finite at the same step and
    fail there together (none waits in a collective); the launcher says it once and exits 1."""
    done = cli("train", "--data", str(corpus), *TINY_FLAGS, "--max-steps", "50", "--eval-freq", "1000",
               "--lr", "1e9", "--save", "ddp-nan", "--nproc", "2", timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.count("error: The loss became ") == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
    assert not default_store().exists("ddp-nan")  # nothing non-finite was saved
