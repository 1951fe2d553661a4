"""The trainer's hot path on the CPU: one host read per optimizer step, fp16 with loss scaling, and what an
out-of-memory error leaves (the last step's weights, saved, and what to lower)."""

import resource
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ddp_setup import settings
from gpttui.core.config import GPTConfig, TrainConfig
from gpttui.core.data import prepare_data
from gpttui.core.store import default_store
from gpttui.core.tokenizer import ByteTokenizer
from gpttui.core.train import StepEvent, Trainer
from test_faults import cli, corpus  # noqa: F401,F811  (corpus is a fixture)


class HostReads(TorchFunctionMode):
    """Counts the calls that make the host wait for a tensor's value (a device sync on a GPU)."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _tiny_run(corpus, **changes) -> tuple[Trainer, list[StepEvent]]:
    data = prepare_data(settings(corpus, batch_size=4), ByteTokenizer())
    config = TrainConfig(**{"epochs": 50, "max_steps": 8, "lr": 3e-3, "eval_freq": 1000, "eval_iter": 1,
                            "sample_tokens": 0, "device": "cpu", **changes})
    model = GPTConfig(vocab_size=257, context_length=16, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)
    steps: list[StepEvent] = []
    trainer = Trainer(data, ByteTokenizer(), config, model,
                      callback=lambda e: steps.append(e) if isinstance(e, StepEvent) else None)
    return trainer, steps


def test_one_host_read_per_optimizer_step_whatever_the_accumulation(corpus):
    trainer, steps = _tiny_run(corpus, grad_accum=3, grad_clip=1.0, save_name="reads")
    reads_at_step: list[int] = []
    counter = HostReads()
    trainer.callback = lambda e: reads_at_step.append(counter.count) if isinstance(e, StepEvent) else None
    with counter:
        trainer.run()
    assert len(reads_at_step) == 8
    # Between two step reports (no evaluation, sample or save there): the one read of the step.
    assert [b - a for a, b in zip(reads_at_step[1:], reads_at_step[2:])] == [1] * 6


def test_fp16_with_loss_scaling_trains_on_the_cpu(corpus):
    trainer, steps = _tiny_run(corpus, dtype="fp16", max_steps=12, save_name="fp16")
    final = trainer.run()
    assert final.event == "finished", final
    assert trainer.scaler is not None and trainer.scaler.is_enabled()
    losses = [s.loss for s in steps]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert default_store().exists("fp16")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA caps allocations on Linux only")
def test_out_of_memory_saves_the_last_steps_weights_and_says_what_to_lower(tmp_path):
    from gpttui.core.data import _builtin_pydoc

    text = tmp_path / "text.txt"
    text.write_text(_builtin_pydoc()[:120_000], encoding="utf-8")
    shape = ["--tokenizer", "bytes", "--preset", "tiny", "--emb-dim", "256", "--n-heads", "4", "--context-length",
             "128", "--device", "cpu", "--sample-tokens", "0", "--eval-iter", "1"]
    made = cli("train", "--data", str(text), *shape, "--batch-size", "2", "--max-steps", "2", "--save", "big")
    assert made.returncode == 0, made.stderr[-2000:]
    before = default_store().load("big").model.state_dict()

    def cap_memory():  # 1.2 GB of data: step 3's batch of 256 x 128 needs more (a real allocation failure)
        resource.setrlimit(resource.RLIMIT_DATA, (1200 << 20, 1200 << 20))

    failed = cli("train", "--resume", "big", "--batch-size", "256", "--max-steps", "4", preexec_fn=cap_memory)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert "Out of memory on cpu at step 3 (batch 256 x context 128, fp32)" in failed.stderr
    assert "The weights of step 2 were saved as 'big'." in failed.stderr
    assert "Lower the batch size to " in failed.stderr and "--grad-accum" in failed.stderr
    after = default_store().load("big")
    assert after.typed.step == 2
    for key, value in after.model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the failed step changed nothing
