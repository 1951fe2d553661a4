"""Runs that outlive the terminal (issue 12, core + CLI): the run directory's status.json and commands/,
the incremental event follower, `gpttui train --detach` and `gpttui runs ...`, with real processes.

Every wait is a deadline loop polling a file or an event, never a bare sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gpttui.core import checkpoints, paths
from gpttui.core.history import RunHistory
from gpttui.core.runs import EventFollower, list_runs, run_status, send_command
from gpttui.core.train import read_run_events

from test_faults import TINY_FLAGS, cli, corpus  # noqa: F401,F811  (corpus is a fixture)

DEADLINE_S = 120


def wait_for(condition, what: str, timeout: float = DEADLINE_S):
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def events_of(run_dir, kind):
    return [e for e in read_run_events(run_dir) if e.get("event") == kind]


def last_step(run_dir) -> int:
    steps = events_of(run_dir, "step")
    return steps[-1]["step"] if steps else 0


def gpttui_cmd(*args):
    return [sys.executable, "-m", "gpttui", *args]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture
def pids():
    """Processes a test started, killed (by pid) if the test leaves them running."""
    started: list[int] = []
    yield started
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --- the follower ------------------------------------------------------------------------------------


def _step_line(i: int) -> str:
    return json.dumps({"event": "step", "step": i, "epoch": 1, "tokens_seen": i * 128, "loss": 3.0, "lr": 4e-4,
                       "grad_norm": 1.0, "tokens_per_sec": 1000.0, "elapsed": i * 0.01, "total_steps": 200_000,
                       "eta": 1.0}) + "\n"


def test_follower_attaches_to_a_long_log_and_then_reads_only_new_lines(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = run_dir / "events.jsonl"
    log.write_text("".join(_step_line(i) for i in range(1, 200_001)), encoding="utf-8")

    follower = EventFollower(run_dir)
    first = follower.read_new()
    assert len(first) == 200_000
    assert first[0]["step"] == 1 and first[-1]["step"] == 200_000
    assert follower.read_new() == []

    line = _step_line(200_001)
    with open(log, "a", encoding="utf-8") as f:  # a writer caught half-way through a line
        f.write(line[:25])
    assert follower.read_new() == []  # the partial line is kept, not parsed
    with open(log, "a", encoding="utf-8") as f:
        f.write(line[25:] + _step_line(200_002))
    new = follower.read_new()
    assert [e["step"] for e in new] == [200_001, 200_002]

    history = RunHistory()  # the history can be fed from the follower
    history.feed_records(new)
    assert history.snapshot().last_step.step == 200_002


def test_follower_skips_damaged_lines_and_waits_for_the_file(tmp_path):
    follower = EventFollower(tmp_path)
    assert follower.read_new() == []  # no events.jsonl yet
    (tmp_path / "events.jsonl").write_bytes(b'{"event": "state", "paused": true, "step": 3}\n{broken\n[1]\n')
    assert follower.read_new() == [{"event": "state", "paused": True, "step": 3}]


# --- status and commands, in real processes -------------------------------------------------------------


def test_detached_run_survives_sighup_pauses_resumes_and_stops_through_the_run_directory(corpus, pids):
    # The "shell" that launches the run: its own process group, kept alive by `cat` until we hang it up.
    shell = subprocess.Popen(["bash", "-c", '"$@"; exec cat', "sh",
                              *gpttui_cmd("train", "--data", str(corpus), *TINY_FLAGS, "--detach", "--json")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env(),
                             start_new_session=True)
    pids.append(shell.pid)
    launched = json.loads(shell.stdout.readline())  # --detach printed its line and returned
    run_id, pid = launched["run_id"], launched["pid"]
    pids.append(pid)
    run_dir = paths.runs_dir() / run_id
    assert launched["run_dir"] == str(run_dir)
    assert os.getsid(pid) == pid != os.getsid(shell.pid)  # the trainer leads its own session

    wait_for(lambda: run_status(run_dir).state == "running" and last_step(run_dir) > 0, "the run to train")
    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert [r["state"] for r in listed if r["run_id"] == run_id] == ["running"]
    assert listed[0]["run_id"] == run_id  # live first

    os.killpg(shell.pid, signal.SIGHUP)  # the terminal goes away
    shell.wait(timeout=30)
    at_hangup = last_step(run_dir)
    wait_for(lambda: last_step(run_dir) > at_hangup + 10, "steps after SIGHUP")
    assert run_status(run_dir).state == "running"

    assert cli("runs", "pause", run_id).returncode == 0
    wait_for(lambda: [e for e in events_of(run_dir, "state") if e["paused"]], "a paused state event")
    wait_for(lambda: run_status(run_dir).state == "paused", "status paused")
    assert cli("runs", "resume", run_id).returncode == 0
    wait_for(lambda: [e for e in events_of(run_dir, "state") if not e["paused"]], "a resumed state event")
    wait_for(lambda: run_status(run_dir).state == "running", "status running")

    stop = cli("runs", "stop", run_id)
    assert stop.returncode == 0, stop.stderr
    finished = wait_for(lambda: events_of(run_dir, "finished"), "the finished event")[0]
    assert finished["reason"] == "stopped"
    assert finished["checkpoint"] and checkpoints.load_checkpoint(finished["checkpoint"]).meta["step"] == finished["step"]
    status = wait_for(lambda: (s := run_status(run_dir)).state == "stopped" and s, "status stopped")
    assert status.last_checkpoint == finished["checkpoint"]
    assert (run_dir / "train.log").read_text(encoding="utf-8").count('"event": "finished"') == 1
    assert cli("runs", "stop", run_id).returncode != 0  # nothing left to stop

    logs = cli("runs", "logs", run_id, "-f")  # returns: the run has ended
    assert logs.returncode == 0 and "Finished (stopped)" in logs.stdout


def test_a_killed_trainer_reads_as_crashed_with_its_last_checkpoint(corpus, pids):
    trainer = subprocess.Popen(gpttui_cmd("train", "--data", str(corpus), *TINY_FLAGS, "--checkpoint-every", "20",
                                          "--save", "crashy", "--run-id", "crash-run"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    pids.append(trainer.pid)
    run_dir = paths.runs_dir() / "crash-run"
    saved = wait_for(lambda: events_of(run_dir, "checkpoint"), "a checkpoint")
    assert run_status(run_dir).live
    trainer.kill()
    trainer.wait(timeout=30)

    status = run_status(run_dir)
    assert status.state == "crashed" and not status.live
    assert status.last_checkpoint == "crashy" == saved[0]["name"]
    shown = json.loads(cli("runs", "show", "crash", "--json").stdout)  # a prefix names the run
    assert shown["state"] == "crashed" and shown["last_checkpoint"] == "crashy"
    assert [r.state for r in list_runs()] == ["crashed"]


def _ignore_sighup():
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_nohup_train_keeps_training_after_sighup(corpus, pids):
    trainer = subprocess.Popen(gpttui_cmd("train", "--data", str(corpus), *TINY_FLAGS, "--run-id", "nohup-run"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                               preexec_fn=_ignore_sighup)
    pids.append(trainer.pid)
    run_dir = paths.runs_dir() / "nohup-run"
    wait_for(lambda: last_step(run_dir) > 0, "the run to train")
    trainer.send_signal(signal.SIGHUP)
    at_hangup = last_step(run_dir)
    wait_for(lambda: last_step(run_dir) > at_hangup + 20, "steps after SIGHUP")
    assert trainer.poll() is None and not events_of(run_dir, "finished")

    send_command(run_dir, "save")  # commands also reach a run started in the foreground
    wait_for(lambda: events_of(run_dir, "checkpoint"), "a checkpoint on request")
    send_command(run_dir, "stop")
    assert trainer.wait(timeout=DEADLINE_S) == 0
    assert events_of(run_dir, "finished")[0]["reason"] == "stopped"


def _write_status(run_dir, **fields):
    run_dir.mkdir(parents=True, exist_ok=True)
    base = {"run_id": run_dir.name, "run_dir": str(run_dir), "state": "running", "pid": os.getpid(),
            "host": "vm", "started": "2026-01-01T00:00:00+00:00", "heartbeat": time.time(), "step": 5}
    (run_dir / "status.json").write_text(json.dumps({**base, **fields}), encoding="utf-8")


def test_run_status_judges_other_hosts_by_heartbeat_and_old_runs_by_their_events(tmp_path):
    import socket

    here = socket.gethostname()
    _write_status(tmp_path / "a-live", host=here)  # this very process: alive
    _write_status(tmp_path / "b-remote-fresh", host="elsewhere", pid=1)
    _write_status(tmp_path / "c-remote-stale", host="elsewhere", pid=1, heartbeat=time.time() - 3600,
                  started="2026-01-02T00:00:00+00:00")
    (tmp_path / "c-remote-stale" / "events.jsonl").write_text(
        json.dumps({"event": "checkpoint", "step": 4, "name": "ck", "path": "/x"}) + "\n", encoding="utf-8")
    old = tmp_path / "d-old-finished"  # no status.json (a run from before it existed)
    old.mkdir()
    (old / "events.jsonl").write_text(json.dumps({"event": "finished", "reason": "completed", "step": 9,
                                                  "tokens_seen": 1, "elapsed": 1.0, "checkpoint": "old"}) + "\n",
                                      encoding="utf-8")
    _write_status(tmp_path / "e-ended", host="elsewhere", pid=1, heartbeat=time.time() - 3600)
    (tmp_path / "e-ended" / "events.jsonl").write_text(  # its last status write was lost, its final event not
        json.dumps({"event": "failed", "message": "boom", "step": 7, "last_checkpoint": "e"}) + "\n", encoding="utf-8")

    states = {r.run_id: (r.state, r.last_checkpoint) for r in list_runs(tmp_path)}
    assert states == {"a-live": ("running", None), "b-remote-fresh": ("running", None),
                      "c-remote-stale": ("crashed", "ck"), "d-old-finished": ("finished", "old"),
                      "e-ended": ("failed", "e")}
    assert [r.live for r in list_runs(tmp_path)][:2] == [True, True]  # live first
    assert "no heartbeat" in run_status(tmp_path / "c-remote-stale").message
