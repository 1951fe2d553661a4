"""Precision (dtype resolution, autocast, fp16 loss scaling), determinism switches, FLOPs/MFU/peak tables,
peak memory, and RNG state per device type (gpttui.core.precision, gpttui.core.flops, checkpoints)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gpttui.core import checkpoints as ck
from gpttui.core.config import GPTConfig, preset
from gpttui.core.errors import ConfigError
from gpttui.core.flops import (PEAK_TFLOPS, device_label, flops_per_token, matmul_params, mfu, peak_flops,
                               peak_flops_for_name, peak_memory, reset_peak_memory)
from gpttui.core.model import GPTModel, parameter_count
from gpttui.core.precision import (CUBLAS_ENV, apply_determinism, autocast, exactness_note, grad_scaler,
                                   resolve_dtype, sdpa_context)

CPU = torch.device("cpu")
TINY = GPTConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


# --- dtype, autocast, scaler ----------------------------------------------------------------------


def test_resolve_dtype_on_cpu():
    assert resolve_dtype("fp32", CPU) == ("fp32", None)
    assert resolve_dtype("bf16", CPU) == ("bf16", None)
    dtype, note = resolve_dtype("fp16", CPU)
    assert dtype == "fp16" and "slow" in note and "learning only" in note
    with pytest.raises(ConfigError, match="fp32, bf16, fp16"):
        resolve_dtype("fp8", CPU)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_resolve_dtype_for_mps_without_mps_backend_falls_back_to_fp32():
    mps = torch.device("mps")
    assert resolve_dtype("fp32", mps) == ("fp32", None)
    for dtype in ("bf16", "fp16"):
        got, note = resolve_dtype(dtype, mps)
        assert got == "fp32" and "macOS 14" in note


def test_resolve_dtype_bf16_on_a_gpu_without_bf16(monkeypatch):
    """The CUDA branch, with the card's answers stood in for (there is no GPU here to ask)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated: not enough
    cuda = torch.device("cuda:0")
    assert resolve_dtype("bf16", cuda) == (
        "fp16", "Tesla V100-SXM2-16GB has no bf16: training in fp16 with loss scaling instead.")
    assert resolve_dtype("fp16", cuda) == ("fp16", None) and resolve_dtype("fp32", cuda) == ("fp32", None)
    assert peak_flops(cuda, "fp16") == pytest.approx(125e12)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_dtype("bf16", cuda) == ("bf16", None)


def test_autocast_follows_the_dtype():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    for dtype, expected in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(CPU, dtype):
            assert (a @ b).dtype == expected, dtype
    assert grad_scaler("fp32", CPU) is None and grad_scaler("bf16", CPU) is None
    assert isinstance(grad_scaler("fp16", CPU), torch.amp.GradScaler)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, TINY.vocab_size, (4, TINY.context_length + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def _scaled_step(model, optimizer, scaler, x, y, poison: bool = False) -> float:
    """One fp16 step as the trainer takes it: autocast forward, scaled backward, unscale, clip, step."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(CPU, "fp16"):
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    scaler.scale(loss * float("inf") if poison else loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def test_fp16_with_grad_scaler_trains_on_cpu():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = grad_scaler("fp16", CPU)
    x, y = _batch()
    losses = [_scaled_step(model, optimizer, scaler, x, y) for _ in range(6)]
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights stay fp32


def test_grad_scaler_skips_a_step_with_inf_gradients():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = grad_scaler("fp16", CPU)
    x, y = _batch()
    _scaled_step(model, optimizer, scaler, x, y)  # a good step first: optimizer state exists
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale = scaler.get_scale()
    _scaled_step(model, optimizer, scaler, x, y, poison=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the inf step changed the weights"
    assert scaler.get_scale() < scale  # and the scale went down
    _scaled_step(model, optimizer, scaler, x, y)  # the next good step moves them again
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- determinism ----------------------------------------------------------------------------------


@pytest.fixture
def restore_determinism(monkeypatch):
    """Put torch's global switches back as they were (other tests must not run deterministic)."""
    monkeypatch.delenv(CUBLAS_ENV, raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def test_apply_determinism_toggles_torch(restore_determinism):
    import os

    note = apply_determinism(True, CPU)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and os.environ[CUBLAS_ENV] == ":4096:8"
    assert "bit for bit" in note
    model = GPTModel(TINY)  # the model trains under it on the CPU (no op there lacks a deterministic kernel)
    x, y = _batch()
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    assert apply_determinism(False, CPU) is None
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_apply_determinism_keeps_a_valid_cublas_setting(restore_determinism, monkeypatch):
    import os

    monkeypatch.setenv(CUBLAS_ENV, ":16:8")
    apply_determinism(True, CPU)
    assert os.environ[CUBLAS_ENV] == ":16:8"
    monkeypatch.setenv(CUBLAS_ENV, "nonsense")
    apply_determinism(True, CPU)
    assert os.environ[CUBLAS_ENV] == ":4096:8"


def test_exactness_notes_and_sdpa_context():
    assert "bit-exact on the CPU" in exactness_note(CPU, False)
    assert "--deterministic" in exactness_note(torch.device("cuda"), False)
    assert "not bit-exact" in exactness_note(torch.device("cuda"), False)
    assert "bit-exact on this GPU with --deterministic" in exactness_note(torch.device("cuda"), True)
    assert "not guaranteed" in exactness_note(torch.device("mps"), True)
    with sdpa_context(True, CPU):  # a no-op off CUDA
        model = GPTModel(TINY)
        assert model(_batch()[0]).shape == (4, TINY.context_length, TINY.vocab_size)


# --- FLOPs, peaks, MFU ----------------------------------------------------------------------------


def test_flops_per_token_gpt2_small_by_hand():
    cfg = preset("gpt2-small", context_length=1024)  # untied head, no qkv bias (the book's 124M shape)
    e, v, layers, t = 768, 50257, 12, 1024
    # per block: q, k, v (no bias) 3e^2; out_proj e^2 + e; ff up 4e^2 + 4e; down 4e^2 + e; two norms 4e
    block = 3 * e * e + (e * e + e) + (4 * e * e + 4 * e) + (4 * e * e + e) + 4 * e
    n = layers * block + 2 * e + v * e  # + final norm + the head; no position or token table
    assert n == 123_625_728 == matmul_params(cfg)
    assert n == parameter_count(cfg) - t * e - v * e  # the table count minus both embedding tables
    expected = 6 * n + 12 * layers * e * t
    assert flops_per_token(cfg, 1024) == expected == 855_000_576
    # tied: the shared matrix is the head's matmul, counted once; same work, same figure
    assert flops_per_token(cfg.replace(tie_weights=True), 1024) == expected
    assert flops_per_token(cfg, 256) == expected - 12 * layers * e * (1024 - 256)


def test_mfu_arithmetic():
    assert mfu(1e9, 400_000, 1e15) == pytest.approx(0.4)
    assert mfu(1e9, 400_000, None) is None and mfu(1e9, 400_000, 0.0) is None


def test_peak_flops_table_by_name():
    tf = 1e12
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4 * tf)
    assert peak_flops_for_name("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.5 * tf)
    assert peak_flops_for_name("NVIDIA H200", "fp16") == pytest.approx(989.4 * tf)
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(156 * tf)  # TF32
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB", "fp32", tf32=False) == pytest.approx(19.5 * tf)
    assert peak_flops_for_name("NVIDIA A10G", "bf16") == pytest.approx(70 * tf)  # not the A10's 125
    assert peak_flops_for_name("NVIDIA A10", "bf16") == pytest.approx(125 * tf)
    assert peak_flops_for_name("NVIDIA L40S", "bf16") == pytest.approx(362 * tf)
    assert peak_flops_for_name("NVIDIA L4", "bf16") == pytest.approx(121 * tf)
    assert peak_flops_for_name("NVIDIA L40", "bf16") == pytest.approx(181 * tf)
    assert peak_flops_for_name("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16
    assert peak_flops_for_name("Tesla V100-SXM2-16GB", "fp32") == pytest.approx(15.7 * tf)  # no TF32
    assert peak_flops_for_name("Tesla T4", "fp16") == pytest.approx(65 * tf)
    assert peak_flops_for_name("NVIDIA GeForce RTX 4090", "bf16") == pytest.approx(165.2 * tf)
    assert peak_flops_for_name("Some Future GPU", "bf16") is None
    assert all(set(p) == {"fp32", "tf32", "bf16", "fp16"} for p in PEAK_TFLOPS.values())
    assert peak_flops(CPU, "bf16") is None
    assert peak_flops(CPU, "bf16", override_tflops=100) == pytest.approx(100 * tf)
    assert peak_flops(CPU, "bf16", name="NVIDIA H100 PCIe") == pytest.approx(756.5 * tf)


def test_peak_memory_and_label_on_cpu():
    reset_peak_memory(CPU)
    first = peak_memory(CPU)
    assert isinstance(first, int) and first > 0
    block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
    # The peak is never below what is resident now (the allocator may reuse memory already resident, so
    # the block need not raise it).
    from gpttui.core.resources import proc_kib

    now = proc_kib("/proc/self/status", "VmRSS") or 0
    assert peak_memory(CPU) >= max(first, now) and block.numel() == 64 << 20
    del block
    assert device_label(CPU) == f"cpu ({torch.get_num_threads()} threads)"


# --- RNG state per device type ----------------------------------------------------------------------


def test_rng_round_trip_on_cpu():
    state = ck.capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    torch.rand(7), random.random(), np.random.rand(5)
    assert ck.restore_rng_state(state) == []
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.array_equal(np.random.rand(2), expected[2])


def test_rng_state_with_a_cuda_part_restores_the_rest_with_a_note():
    """A state saved with one GPU more than this machine has (none here): the CUDA part is skipped."""
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    state = ck.capture_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * (have + 1)
    expected = torch.rand(3)
    torch.rand(5)
    notes = ck.restore_rng_state(state)
    where = "has none" if have == 0 else f"has {have}"
    assert len(notes) == 1 and f"{have + 1} CUDA device(s)" in notes[0] and where in notes[0]
    assert torch.equal(torch.rand(3), expected)  # the CPU part was restored all the same


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_rng_state_with_an_mps_part_gives_a_note():
    state = ck.capture_rng_state()
    assert "mps" not in state
    state["mps"] = torch.zeros(16, dtype=torch.uint8)
    notes = ck.restore_rng_state(state)
    assert len(notes) == 1 and "MPS" in notes[0]
