"""The memory plan (issue 15, item 2): what it counts, which batch fits, the preflight's refusal with its numbers,
the advice after an out-of-memory error, and the CLI's one line on stderr. How close the estimate is to a real
peak is measured by ``bench/bench_memory.py`` (too slow for the suite); here only relations that must hold."""

from __future__ import annotations

import json
import re

import pytest
import torch

from gpttui import cli
from gpttui.core import resources
from gpttui.core.config import preset
from gpttui.core.errors import ConfigError
from gpttui.core.memory import _smaller_batch, activation_bytes, attention_materialised, oom_advice, plan_memory
from gpttui.core.model import parameter_count, training_memory_estimate

GPT2 = preset("gpt2-small", context_length=1024)  # dropout 0.1, as the book trains it
GIB = 1 << 30
from test_faults_inputs import TINY_TRAIN, one_thread  # noqa: F401,E402  (one_thread: an autouse fixture)


def cuda_plan(cfg=GPT2, batch=8, dtype="fp32", free=80 * GIB, **kw):
    """A plan for a CUDA card of ``free`` bytes, made without one (nothing is looked up)."""
    return plan_memory(cfg, batch, dtype=dtype, device="cuda:0", device_type="cuda", free=free, **kw)


# --- what is counted -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device_type", ["cuda", "cpu", "mps"])
@pytest.mark.parametrize("drop", [0.0, 0.1])
def test_half_precision_keeps_fewer_activation_bytes(device_type, drop):
    cfg = GPT2.replace(drop_rate=drop)
    fp32 = activation_bytes(cfg, 4, 512, "fp32", device_type)
    for half in ("bf16", "fp16"):
        assert activation_bytes(cfg, 4, 512, half, device_type) < fp32
    # the optimizer side does not shrink: fp32 master weights, gradients and moments whatever the dtype
    a, b = cuda_plan(dtype="fp32"), cuda_plan(dtype="bf16")
    params = parameter_count(GPT2)
    assert (a.grads, a.optimizer, a.weights) == (4 * params, 8 * params, 4 * params)
    assert (b.grads, b.optimizer) == (a.grads, a.optimizer) and b.weights > a.weights  # + the half copies
    assert b.activations < a.activations and b.logits < a.logits and b.total < a.total


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("drop", [0.0, 0.1])
def test_no_attention_matrix_on_cuda(dtype, drop):
    """SDPA on CUDA keeps no T x T matrix: doubling the context at most doubles the activations. The CPU's math
    path with dropout and book mode's written-out attention do keep it: more than double."""
    cfg = GPT2.replace(drop_rate=drop)
    assert not attention_materialised(cfg, "cuda")
    short, long = (activation_bytes(cfg, 8, t, dtype, "cuda") for t in (512, 1024))
    assert long <= 2 * short
    book = [activation_bytes(cfg, 8, t, dtype, "cuda", book_math=True) for t in (512, 1024)]
    assert book[1] > 2.2 * book[0]
    cpu = [activation_bytes(cfg, 8, t, dtype, "cpu") for t in (512, 1024)]
    assert (cpu[1] > 2.2 * cpu[0]) == (drop > 0)  # the CPU's fused kernel has no dropout


def test_the_issues_figure_loses_its_attention_term():
    """gpt2-small, T 1024, B 8: the old estimate said 23.1 GiB, 11.2 of it a T x T matrix SDPA never makes."""
    assert training_memory_estimate(GPT2, 8, device_type="cuda") == cuda_plan().total
    plan = cuda_plan()
    assert plan.total < 18 * GIB and plan.activations < 8 * GIB
    per_layer = (plan.activations - activation_bytes(GPT2.replace(n_layers=1), 8, 1024, "fp32", "cuda")) / 11
    # about 82 bytes per token and channel (with dropout); a kept T x T matrix would add 4 * 12 * 1024 / 768 = 64
    assert per_layer < 8 * 1024 * 768 * 100


# --- which batch fits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("free", [6 * GIB, 16 * GIB, 80 * GIB])
def test_batch_up_to_max_batch_fits_and_one_more_does_not(dtype, free):
    plan = cuda_plan(dtype=dtype, free=free)
    best = plan.max_batch
    assert best >= 1
    assert cuda_plan(batch=best, dtype=dtype, free=free).fits is True
    assert cuda_plan(batch=best + 1, dtype=dtype, free=free).fits is False
    assert plan.fits is (8 <= best)


def test_nothing_fits_and_unknown_free():
    plan = cuda_plan(free=1 * GIB)  # under the weights, moments and CUDA's own share
    assert plan.max_batch == 0 and plan.fits is False
    assert plan.describe().endswith("; does not fit: even batch 1 does not fit.")
    unknown = cuda_plan(free=None)
    assert unknown.free is None and unknown.max_batch is None and unknown.fits is None
    assert unknown.describe().endswith("; free memory unknown.")


def test_max_memory_caps_free(monkeypatch):
    cfg = preset("tiny", vocab_size=257)
    real = plan_memory(cfg, 4, device="cpu")
    monkeypatch.setenv(resources.MEMORY_ENV, "64M")
    capped = plan_memory(cfg, 4, device="cpu")
    assert capped.free == min(real.free or 64 << 20, 64 << 20)
    assert capped.max_batch < real.max_batch or real.free <= 64 << 20
    assert plan_memory(cfg, capped.max_batch, device="cpu").fits
    assert not plan_memory(cfg, capped.max_batch + 1, device="cpu").fits


def test_describe_is_one_line_with_the_parts():
    line = cuda_plan(dtype="bf16").describe()
    assert "\n" not in line
    assert re.fullmatch(r"Memory: about [\d.]+ GB of 80\.0 GB free on cuda:0 \(weights [\d.]+ MB, gradients [\d.]+ "
                        r"MB, AdamW [\d.]+ GB, activations [\d.]+ GB, logits [\d.]+ GB, CUDA overhead [\d.]+ GB\); "
                        r"batch up to \d+ fits\.", line), line
    assert "CUDA overhead" not in plan_memory(GPT2, 1, device="cpu").describe()  # only CUDA has one


def test_bad_dtype_and_unavailable_device_are_clear():
    with pytest.raises(ConfigError, match="dtype must be one of fp32, bf16, fp16"):
        plan_memory(GPT2, 1, dtype="fp8", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is available"):
            plan_memory(GPT2, 1, device="cuda:0")


# --- the preflight ---------------------------------------------------------------------------------------

def test_preflight_returns_the_plan_and_refuses_with_the_batch_that_fits(monkeypatch):
    cfg = preset("tiny", vocab_size=257)
    monkeypatch.setenv(resources.MEMORY_ENV, "64M")
    fits = plan_memory(cfg, 1, device="cpu").max_batch
    assert 2 < fits < 64
    plan = resources.preflight_training(cfg, fits, "cpu")
    assert plan.fits and plan.batch_size == fits and plan.dtype == "fp32"
    with pytest.raises(ConfigError) as err:
        resources.preflight_training(cfg, 64, "cpu")
    msg = str(err.value)
    assert msg.startswith("Training 445.3K parameters with batch 64 x context 128 in fp32 needs about ")
    assert "(weights " in msg and "activations " in msg and "64.0 MB is free (GPTTUI_MAX_MEMORY is set)" in msg
    assert msg.endswith(f": batch up to {fits} fits; lower --batch-size or --context-length, use --dtype bf16, or "
                        "pick a smaller preset.")
    with pytest.raises(ConfigError) as err:  # already in bf16: that advice is left out
        resources.preflight_training(cfg, 64, "cpu", dtype="bf16")
    assert "use --dtype" not in str(err.value) and " in bf16 needs about " in str(err.value)


# --- after an out-of-memory error --------------------------------------------------------------------------

def test_smaller_batch_keeps_the_sequences_per_step():
    assert _smaller_batch(12, 1, 6) == (6, 2)
    assert _smaller_batch(8, 1, 5) == (4, 2)  # a divisor close below the target: exact
    assert _smaller_batch(7, 2, 5) == (2, 7)  # 14 sequences: 2 x 7 is exact, and not under half of 5
    assert _smaller_batch(7, 1, 5) == (5, 2)  # 7 is prime: about 7 (10) sequences per step
    assert _smaller_batch(2, 1, 1) == (1, 2)


def test_oom_advice_names_the_batch_that_fits(monkeypatch):
    cfg = preset("tiny", vocab_size=257)
    monkeypatch.setenv(resources.MEMORY_ENV, "64M")
    fits = plan_memory(cfg, 1, device="cpu").max_batch
    advice = oom_advice(cfg, 64, 128, dtype="fp32", device="cpu", grad_accum=2)
    b, accum = _smaller_batch(64, 2, fits)
    keep = "to keep" if b * accum == 128 else "for about"
    assert advice == (f"Lower the batch size to {b} (with --grad-accum {accum} {keep} 128 sequences per step), use "
                      "--dtype bf16, use a shorter context (--context-length 64), or pick a smaller preset.")
    assert b <= fits
    half = oom_advice(cfg, 1, 128, dtype="bf16", device="cpu")  # nothing to lower but the context and shape
    assert half == "Use a shorter context (--context-length 64), or pick a smaller preset."
    per_sequence = plan_memory(cfg, 2, device="cpu").total - plan_memory(cfg, 1, device="cpu").total
    b, accum = _smaller_batch(64, 1, fits + 6)  # what the run still holds counts as free again
    assert oom_advice(cfg, 64, 128, dtype="fp32", device="cpu", in_use=6 * per_sequence).startswith(
        f"Lower the batch size to {b} (with --grad-accum {accum} ")
    assert b > _smaller_batch(64, 1, fits)[0]
    gpu = oom_advice(GPT2, 8, 1024, dtype="fp32", device="cuda:7")  # no such device here: half the batch
    assert gpu.startswith("Lower the batch size to 4 (with --grad-accum 2 to keep 8 sequences per step), use --dtype "
                          "bf16 (or fp16 on GPUs without bf16)")


# --- the CLI ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["--json"], ["--book", "--no-tie-weights"]])
def test_cli_train_prints_the_plan_on_stderr_only(capsys, mode):
    assert cli.main([*TINY_TRAIN, *mode]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("Memory: ")]
    assert len(lines) == 1 and re.search(r" free on cpu \(weights .*\); batch up to [\d,]+ fits\.$", lines[0]), err
    assert "Memory" not in out
    if "--json" in mode:
        assert all(json.loads(line)["event"] for line in out.splitlines())
