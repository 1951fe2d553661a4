"""The memory estimate (gpttui.core.memory) against the real peak of training steps on this CPU.

Each shape runs in a fresh subprocess: it imports torch, warms the kernels up on a throw-away model, notes
its resident memory (the baseline), then builds the model and fused AdamW and runs three training steps as
the trainer does (autocast forward, fp32 cross-entropy, backward, clipping, step). The measured figure is the
process's peak resident memory (``ru_maxrss``) over the baseline; the ratio is estimate / measured.

    PYTHONPATH=$PWD python bench/bench_memory.py          # the table, about a minute on 2 cores
    PYTHONPATH=$PWD python bench/bench_memory.py --quick  # three shapes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# (label, vocab, layers, emb, heads, context, batch, drop_rate, dtype, book math)
SHAPES = [
    ("bytes 4L256d T512 B8 drop0", 257, 4, 256, 8, 512, 8, 0.0, "fp32", False),
    ("bytes 4L256d T512 B8 drop0", 257, 4, 256, 8, 512, 8, 0.0, "bf16", False),
    ("bytes 4L256d T256 B8 drop.1", 257, 4, 256, 8, 256, 8, 0.1, "fp32", False),
    ("bytes 4L256d T256 B8 drop.1", 257, 4, 256, 8, 256, 8, 0.1, "bf16", False),
    ("gpt2 2L128d T128 B8 drop0", 50257, 2, 128, 4, 128, 8, 0.0, "fp32", False),
    ("gpt2 2L128d T128 B8 drop0", 50257, 2, 128, 4, 128, 8, 0.0, "bf16", False),
    ("bytes 6L384d T256 B16 drop0", 257, 6, 384, 6, 256, 16, 0.0, "fp32", False),
    ("bytes 6L384d T256 B16 drop0", 257, 6, 384, 6, 256, 16, 0.0, "bf16", False),
    ("book math 4L256d T256 B8 drop.1", 257, 4, 256, 8, 256, 8, 0.1, "fp32", True),
]
QUICK = [0, 1, 4]  # (--quick)

CHILD = r"""
import json, resource, sys
import torch
from gpttui.core.config import GPTConfig
from gpttui.core.model import GPTModel, use_book_math
from gpttui.core.train import TrainConfig, make_optimizer

vocab, layers, emb, heads, ctx, batch, drop, dtype, book = json.loads(sys.argv[1])

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def train(cfg, batch, steps):
    model = use_book_math(GPTModel(cfg), book)
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length))
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != "fp32"):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        del logits, loss

torch.manual_seed(0)
train(GPTConfig(vocab_size=vocab, context_length=16, emb_dim=emb, n_heads=heads, n_layers=1, drop_rate=drop), 1, 2)
base = rss()
train(GPTConfig(vocab_size=vocab, context_length=ctx, emb_dim=emb, n_heads=heads, n_layers=layers,
                drop_rate=drop), batch, 3)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base, "peak": peak}))
"""


def measure(vocab, layers, emb, heads, ctx, batch, drop, dtype, book) -> int:
    """Peak resident bytes over the baseline of one shape's training steps, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", os.getcwd()))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([vocab, layers, emb, heads, ctx, batch, drop,
                                                                    dtype, book])],
                          capture_output=True, text=True, env=env, check=True)
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    return record["peak"] - record["base"]


def estimate(vocab, layers, emb, heads, ctx, batch, drop, dtype, book) -> int:
    from gpttui.core.config import GPTConfig
    from gpttui.core.memory import plan_memory

    cfg = GPTConfig(vocab_size=vocab, context_length=ctx, emb_dim=emb, n_heads=heads, n_layers=layers,
                    drop_rate=drop)
    return plan_memory(cfg, batch, dtype=dtype, device="cpu", device_type="cpu", book_math=book).total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three shapes only")
    args = parser.parse_args()
    shapes = [SHAPES[i] for i in QUICK] if args.quick else SHAPES
    mib = 1 << 20
    print(f"{'shape':<32} {'dtype':<5} {'estimate':>10} {'measured':>10} {'ratio':>6}")
    worst = 0.0
    for label, *shape in shapes:
        est, got = estimate(*shape), measure(*shape)
        ratio = est / got
        worst = max(worst, abs(ratio - 1))
        print(f"{label:<32} {shape[-2]:<5} {est / mib:>8.0f}Mi {got / mib:>8.0f}Mi {ratio:>6.2f}")
    print(f"largest deviation: {worst:.0%} (goal: within 35%)")
    return 0 if worst <= 0.35 else 1


if __name__ == "__main__":
    sys.exit(main())
