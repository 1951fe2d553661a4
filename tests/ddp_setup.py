"""The run tests/test_ddp.py trains twice: as two gloo processes of batch 2 (tests/ddp_worker.py) and as one
process of batch 4. Dropout is off, so the two differ only in how the sums are grouped."""

from gpttui.core.config import GPTConfig, TrainConfig
from gpttui.core.data import DataSettings


def settings(corpus: str, batch_size: int) -> DataSettings:
    return DataSettings(source=str(corpus), tokenizer="bytes", context_length=16, batch_size=batch_size)


def run_config() -> tuple[TrainConfig, GPTConfig]:
    """8 optimizer steps of 2 accumulated batches each (so DDP's no_sync micro-step is exercised)."""
    config = TrainConfig(epochs=1, max_steps=8, lr=2e-3, grad_accum=2, grad_clip=1.0, eval_freq=1000, eval_iter=1,
                         sample_tokens=0, device="cpu", save_name="ddp-equal")
    model = GPTConfig(vocab_size=257, context_length=16, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)
    return config, model
