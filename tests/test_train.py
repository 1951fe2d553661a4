"""The training engine: exact resume, control from another thread, failures, the run log, the CLI."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import threading

import pytest
import torch

from gpttui.core import checkpoints
from gpttui.core.config import GPTConfig
from gpttui.core.data import DataSettings, prepare_data
from gpttui.core.tokenizer import ByteTokenizer
from gpttui.core.train import (CheckpointEvent, EvalEvent, FailedEvent, FinishedEvent, SampleEvent, Started,
                               StateEvent, StepEvent, TrainConfig, TrainControl, Trainer, lr_at, read_run_events)

TINY = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.1)


@pytest.fixture
def corpus(tmp_path):
    from gpttui.core.data import _builtin_pydoc

    path = tmp_path / "corpus.txt"
    path.write_text(_builtin_pydoc()[:60_000], encoding="utf-8")
    return path


def _data(corpus, **kw):
    settings = DataSettings(source=str(corpus), tokenizer="bytes", context_length=32, batch_size=4, **kw)
    return prepare_data(settings, ByteTokenizer())


def _config(**kw):
    base = dict(epochs=1, max_steps=12, lr=3e-3, min_lr=3e-4, warmup_steps=3, grad_clip=1.0, eval_freq=5,
                eval_iter=2, start_context="def ", sample_tokens=8, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _run(data, config, model_config=TINY, resume=None, on_event=None, control=None):
    events = []
    control = control or TrainControl()

    def callback(event):
        events.append(event)
        if on_event:
            on_event(event, control)

    trainer = Trainer(data, ByteTokenizer(), config, model_config, callback=callback, control=control, resume=resume)
    final = trainer.run()
    return trainer, events, final


def _losses(events):
    return {e.step: e.loss for e in events if isinstance(e, StepEvent)}


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4)
    assert [lr_at(s, cfg, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg, 14) == pytest.approx(1.0)
    assert lr_at(13, cfg, 14) == pytest.approx(0.1)
    mid = lr_at(4 + 9 // 2, cfg, 14)
    assert 0.1 < mid < 1.0
    assert lr_at(100, TrainConfig(lr=0.5), 10) == 0.5  # the book's constant lr


def test_events_run_log_and_book_semantics(corpus):
    data = _data(corpus)
    trainer, events, final = _run(data, _config(max_steps=11))
    assert isinstance(final, FinishedEvent) and final.reason == "completed"
    assert isinstance(events[0], Started) and events[0].total_steps == 11
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == list(range(1, 12))  # optimizer steps done
    # tokens seen as the book counts them: input_batch.numel() per batch
    assert steps[-1].tokens_seen == 11 * 4 * 32
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert [e.step for e in evals] == [1, 6, 11]  # the book's global_step % eval_freq == 0
    assert all(math.isfinite(e.val_loss) and e.val_ppl == pytest.approx(math.exp(e.val_loss)) for e in evals)
    assert evals[-1].train_loss < evals[0].train_loss
    assert any(isinstance(e, SampleEvent) and e.text.startswith("def ") for e in events)
    assert any(isinstance(e, CheckpointEvent) for e in events)
    assert checkpoints.checkpoint_exists(final.checkpoint)
    # the run directory: config plus every event, in order, as JSON lines
    logged = read_run_events(events[0].run_dir)
    assert [e["event"] for e in logged] == [e.event for e in events]
    assert json.loads((trainer._log.dir / "config.json").read_text())["train_config"]["max_steps"] == 11


def test_resume_is_exact_across_processes(corpus):
    """2N steps in one process == N steps, save, load in a new process, N more: same losses, same weights."""
    data = _data(corpus)
    _, full_events, final = _run(data, _config(save_name="full"))
    assert isinstance(final, FinishedEvent)

    def stop_after_six(event, control):
        if isinstance(event, StepEvent) and event.step == 6:
            control.stop(save=True)

    _, half_events, half_final = _run(data, _config(save_name="half"), on_event=stop_after_six)
    assert half_final.reason == "stopped" and half_final.checkpoint == "half"
    assert checkpoints.show("half")["step"] == 6

    proc = subprocess.run([sys.executable, "-m", "gpttui", "train", "--resume", "half", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    resumed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert resumed[0]["event"] == "started" and resumed[0]["start_step"] == 6
    resumed_losses = {e["step"]: e["loss"] for e in resumed if e["event"] == "step"}
    full_losses = _losses(full_events)
    assert sorted(resumed_losses) == list(range(7, 13))
    assert {s: full_losses[s] for s in range(1, 7)} == _losses(half_events)
    assert resumed_losses == {s: full_losses[s] for s in range(7, 13)}

    a = checkpoints.load_checkpoint("full").model.state_dict()
    b = checkpoints.load_checkpoint("half").model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_grad_accumulation_equals_the_larger_batch(corpus):
    big = _data(corpus)  # batch 4
    small = prepare_data(DataSettings(source=str(corpus), tokenizer="bytes", context_length=32, batch_size=2),
                         ByteTokenizer())
    cfg = dict(max_steps=1, warmup_steps=0, min_lr=None, grad_clip=None, sample_tokens=0)
    model_cfg = TINY.replace(drop_rate=0.0)
    t1, _, _ = _run(big, _config(**cfg), model_cfg)
    # batch 2 x 2 accumulated: the same four windows as the first batch of 4 (same shuffle)
    assert torch.equal(big.train_loader.order(0)[:4], small.train_loader.order(0)[:4])
    t2, ev2, _ = _run(small, _config(grad_accum=2, **cfg), model_cfg)
    assert [e.tokens_seen for e in ev2 if isinstance(e, StepEvent)] == [4 * 32]
    for (k, p1), p2 in zip(t1.model.state_dict().items(), t2.model.state_dict().values()):
        assert torch.allclose(p1, p2, atol=1e-6), k


def test_pause_resume_stop_from_another_thread(corpus):
    data = _data(corpus)
    paused, resumed = threading.Event(), threading.Event()
    steps_at_pause: list[int] = []

    def on_event(event, control):
        if isinstance(event, StepEvent) and event.step == 2:
            control.pause()
        if isinstance(event, StateEvent):
            (paused if event.paused else resumed).set()

    result = {}
    control = TrainControl()
    thread = threading.Thread(target=lambda: result.update(
        zip(("trainer", "events", "final"), _run(data, _config(max_steps=1000), on_event=on_event, control=control))))
    thread.start()
    assert paused.wait(120)
    assert control.paused
    # while paused the trainer is parked between steps
    steps_at_pause.append(2)
    control.resume()
    assert resumed.wait(60)
    control.stop(save=True)
    thread.join(120)
    assert not thread.is_alive()
    final = result["final"]
    assert isinstance(final, FinishedEvent) and final.reason == "stopped"
    events = result["events"]
    i_pause = next(i for i, e in enumerate(events) if isinstance(e, StateEvent) and e.paused)
    assert [e.step for e in events[:i_pause] if isinstance(e, StepEvent)][-1] == 2
    assert final.step < 999
    assert checkpoints.show(final.checkpoint)["step"] == final.step


def test_stop_while_paused_does_not_hang(corpus):
    data = _data(corpus)
    paused = threading.Event()

    def on_event(event, control):
        if isinstance(event, StepEvent) and event.step == 1:
            control.pause()
        if isinstance(event, StateEvent) and event.paused:
            paused.set()

    control = TrainControl()
    out = {}
    thread = threading.Thread(target=lambda: out.update(final=_run(data, _config(max_steps=1000), on_event=on_event,
                                                                   control=control)[2]))
    thread.start()
    assert paused.wait(120)
    control.stop(save=False)
    thread.join(60)
    assert not thread.is_alive()
    assert out["final"].reason == "stopped" and out["final"].checkpoint is None


@pytest.mark.parametrize("poison_at, message", [
    (5, "loss became nan at step 6"),  # caught at the next forward pass
    (4, "weights became non-finite by step 4"),  # caught before the step-4 checkpoint is written
])
def test_non_finite_values_fail_with_a_clear_event(corpus, poison_at, message):
    data = _data(corpus)
    events = []

    def callback(event):
        events.append(event)
        if isinstance(event, StepEvent) and event.step == poison_at:
            with torch.no_grad():
                trainer.model.tok_emb.weight.fill_(float("nan"))

    trainer = Trainer(data, ByteTokenizer(), _config(max_steps=50, checkpoint_every=2), TINY, callback=callback)
    final = trainer.run()
    assert isinstance(final, FailedEvent)
    assert message in final.message.lower()
    assert final.last_checkpoint == trainer.save_name and "last good checkpoint" in final.message
    assert not any(isinstance(e, StepEvent) and e.step > poison_at for e in events)
    # the last good checkpoint (step 2 or 4) is intact
    loaded = checkpoints.load_checkpoint(final.last_checkpoint)
    assert loaded.meta["step"] == (4 if poison_at == 5 else 2)
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
    assert read_run_events(trainer._log.dir)[-1]["event"] == "failed"


def test_bf16_autocast_trains(corpus):
    _, events, final = _run(_data(corpus), _config(max_steps=4, dtype="bf16"))
    assert isinstance(final, FinishedEvent)
    assert all(math.isfinite(e.loss) for e in events if isinstance(e, StepEvent))


def test_invalid_training_config_is_refused():
    from gpttui.core.errors import ConfigError

    with pytest.raises(ConfigError, match="learning rate"):
        TrainConfig(lr=-1).validate()
    with pytest.raises(ConfigError, match="dtype"):
        TrainConfig(dtype="fp8").validate()


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gpttui", *args], capture_output=True, text=True, timeout=300, **kw)


TINY_FLAGS = ["--tokenizer", "bytes", "--preset", "tiny", "--emb-dim", "32", "--n-heads", "4", "--context-length",
              "32", "--batch-size", "4", "--device", "cpu"]


def test_cli_train_prints_the_books_lines(corpus):
    proc = _cli("train", "--data", str(corpus), *TINY_FLAGS, "--max-steps", "6", "--save", "cli",
                "--start-context", "The ")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^Ep 1 \(Step 000000\): Train loss \d+\.\d{3}, Val loss \d+\.\d{3}, .* tok/s, peak [\d.]+ [KMG]?i?B, ETA ", proc.stdout, re.M)
    assert re.search(r"^Ep 1 \(Step 000005\)", proc.stdout, re.M)
    assert "Saved checkpoint 'cli'" in proc.stdout
    listing = _cli("checkpoints", "list")
    assert "cli" in listing.stdout and "trained" in listing.stdout
    shown = json.loads(_cli("checkpoints", "show", "cli", "--json").stdout)
    assert shown["step"] == 6 and shown["tokenizer"] == "bytes"


def test_cli_sigint_saves_and_exits_non_zero(corpus):
    proc = subprocess.Popen([sys.executable, "-m", "gpttui", "train", "--data", str(corpus), *TINY_FLAGS,
                             "--max-steps", "100000", "--save", "interrupted", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if json.loads(line)["event"] == "step":
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT
    events = [json.loads(line) for line in rest.splitlines()]
    assert events[-1]["event"] == "finished" and events[-1]["reason"] == "interrupted"
    assert any(e["event"] == "checkpoint" and e["name"] == "interrupted" for e in events)
    assert checkpoints.load_checkpoint("interrupted").meta["step"] >= 1


def test_cli_bad_input_is_a_message_not_a_traceback(tmp_path):
    proc = _cli("train", "--data", str(tmp_path / "nope.txt"), *TINY_FLAGS)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    small = tmp_path / "small.txt"
    small.write_text("just a few words\n")
    proc = _cli("train", "--data", str(small), *TINY_FLAGS)
    assert proc.returncode == 2 and "Not enough tokens for the training loader" in proc.stderr
    proc = _cli("train", "--resume", "missing-checkpoint")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
