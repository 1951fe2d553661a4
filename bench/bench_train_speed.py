"""Training speed: gpttui's GPTModel vs the book's reference model (tests/book_reference.py).

Same run, same shape (GPTConfig defaults = the book's GPT_CONFIG_124M: vocab 50257, context 256,
768 wide, 12 layers, 12 heads, dropout 0.1), same initial weights, same batches (builtin:pydoc
through gpttui's loader, batch 2; random tokens when the GPT-2 tokenizer files are not available),
AdamW lr 4e-4 weight decay 0.1 as in the book's chapter 5. For each mode: --warmup steps, then
--steps timed steps (zero_grad, forward, loss, backward, optimizer step).

Modes: book fp32; ours fp32; ours fp32 + AdamW(fused=True); ours bf16 autocast
(torch.autocast(device, dtype=torch.bfloat16)); ours bf16 autocast + fused AdamW.

--loss-curve: fp32 vs bf16 autocast over the first --loss-steps steps from the same init on the same
batches; prints both curves and their largest relative difference. Dropout is off there by default
(--loss-dropout to keep it) so that the two runs differ only in precision, not in dropout masks.

    python bench/bench_train_speed.py [--steps 3] [--warmup 1] [--modes ...] [--loss-curve]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import book_reference as book  # noqa: E402

from gpttui.core import data as D  # noqa: E402
from gpttui.core.config import GPTConfig, preset  # noqa: E402
from gpttui.core.model import GPTModel, calc_loss_batch, parameter_count  # noqa: E402

MODES = ["book-fp32", "ours-fp32", "ours-fp32-fused", "ours-bf16", "ours-bf16-fused"]


def batches(cfg: GPTConfig, batch_size: int, n: int, seed: int = 123) -> tuple[list, str]:
    """n (input, target) batches: pydoc tokenized with GPT-2 when possible, else random tokens."""
    shared = REPO.parent / "shared" / "data" / "gpt2"
    if "GPTTUI_GPT2_BPE_DIR" not in os.environ and shared.is_dir():
        os.environ["GPTTUI_GPT2_BPE_DIR"] = str(shared)
    try:
        from gpttui.core.tokenizer import load_gpt2

        if cfg.vocab_size < 50257:
            raise RuntimeError("vocabulary smaller than GPT-2's")
        tok = load_gpt2(download=False)
        corpus = D.read_corpus("builtin:pydoc")
        tokens = D.tokenize_corpus(corpus, tok, use_cache=False).tokens
        label = f"builtin:pydoc, {len(tokens):,} GPT-2 tokens"
    except Exception as exc:  # noqa: BLE001 - a benchmark falls back to random data
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, cfg.vocab_size, (200_000,), generator=g).numpy().astype("uint16")
        label = f"random tokens ({type(exc).__name__}: {exc})"[:120]
    loader = D.BatchLoader(D.TokenWindows(tokens, cfg.context_length, cfg.context_length), batch_size,
                           shuffle=True, drop_last=True, seed=seed)
    out = []
    epoch = 0
    while len(out) < n:
        out.extend(loader.epoch(epoch))
        epoch += 1
    return out[:n], label


def make(mode: str, cfg: GPTConfig, init: dict[str, torch.Tensor]):
    model = (book.GPTModel(cfg.to_book_dict()) if mode.startswith("book") else GPTModel(cfg))
    model.load_state_dict(init, strict=True)
    model.train()
    kwargs = {"lr": 4e-4, "weight_decay": 0.1}
    if mode.endswith("fused"):
        kwargs["fused"] = True
    opt = torch.optim.AdamW(model.parameters(), **kwargs)
    return model, opt


def autocast_for(mode: str):
    if "bf16" in mode:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step(model, opt, x, y, mode: str) -> float:
    opt.zero_grad(set_to_none=True)
    with autocast_for(mode):
        if mode.startswith("book"):
            loss = book.calc_loss_batch(x, y, model, "cpu")
        else:
            loss = calc_loss_batch(x, y, model, "cpu")
    loss.backward()
    opt.step()
    return loss.item()


def fused_supported() -> str | None:
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, fused=True).step()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def run_speed(args, cfg: GPTConfig, init, data) -> dict[str, float]:
    tokens_per_step = args.batch_size * cfg.context_length
    results: dict[str, float] = {}
    fused_problem = fused_supported()
    for mode in args.modes:
        if mode.endswith("fused") and fused_problem:
            print(f"{mode:<18} skipped: fused AdamW not supported here ({fused_problem})")
            continue
        torch.manual_seed(args.seed)
        model, opt = make(mode, cfg, init)
        i = 0
        for _ in range(args.warmup):
            step(model, opt, *data[i % len(data)], mode)
            i += 1
        times, losses = [], []
        for _ in range(args.steps):
            t = time.perf_counter()
            losses.append(step(model, opt, *data[i % len(data)], mode))
            times.append(time.perf_counter() - t)
            i += 1
        total = sum(times)
        results[mode] = tokens_per_step * args.steps / total
        print(f"{mode:<18} {results[mode]:8.1f} tokens/s   {total / args.steps:6.2f} s/step "
              f"(min {min(times):.2f}, max {max(times):.2f})   last loss {losses[-1]:.3f}", flush=True)
        del model, opt
        gc.collect()
    if "book-fp32" in results:
        base = results["book-fp32"]
        print("ratios vs book fp32: " + ", ".join(f"{m} x{v / base:.2f}" for m, v in results.items()))
    return results


def run_loss_curve(args, cfg: GPTConfig, init, data) -> None:
    if not args.loss_dropout:
        cfg = cfg.replace(drop_rate=0.0)
    curves = {}
    for mode in ("ours-fp32", "ours-bf16"):
        torch.manual_seed(args.seed)
        model, opt = make(mode, cfg, init)
        t = time.perf_counter()
        curves[mode] = [step(model, opt, *data[i % len(data)], mode) for i in range(args.loss_steps)]
        print(f"{mode}: {args.loss_steps} steps in {time.perf_counter() - t:.0f} s", flush=True)
        del model, opt
        gc.collect()
    a, b = curves["ours-fp32"], curves["ours-bf16"]
    rel = [abs(q - p) / abs(p) for p, q in zip(a, b)]
    print(f"loss curve, dropout {cfg.drop_rate}: step  fp32     bf16     rel.diff")
    for i in sorted(set(list(range(0, args.loss_steps, max(1, args.loss_steps // 10))) + [args.loss_steps - 1])):
        print(f"  {i:>4}  {a[i]:7.4f}  {b[i]:7.4f}  {rel[i]:.4f}")
    worst = max(range(len(rel)), key=rel.__getitem__)
    print(f"max relative difference {rel[worst]:.4f} at step {worst}; mean {sum(rel) / len(rel):.4f}; "
          f"final fp32 {a[-1]:.4f} vs bf16 {b[-1]:.4f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per mode first (default 1)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--shape", default="gpt2-small", help="a preset name (default gpt2-small = the book's)")
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    ap.add_argument("--loss-curve", action="store_true", help="also compare fp32 vs bf16 loss curves")
    ap.add_argument("--loss-steps", type=int, default=50)
    ap.add_argument("--loss-dropout", action="store_true", help="keep dropout on in the loss-curve runs")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    # Untied, as the book: the same architecture in every mode.
    cfg = preset(args.shape, tie_weights=False) if args.shape != "gpt2-small" else GPTConfig()
    n_batches = max(args.warmup + args.steps, args.loss_steps if args.loss_curve else 0)
    data, label = batches(cfg, args.batch_size, n_batches, args.seed)
    torch.manual_seed(args.seed)
    init = {k: v.clone() for k, v in book.GPTModel(cfg.to_book_dict()).state_dict().items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; shape {args.shape} "
          f"({parameter_count(cfg) / 1e6:.1f}M parameters), context {cfg.context_length}, batch "
          f"{args.batch_size}, dropout {cfg.drop_rate}; data: {label}")
    print(f"{args.warmup} warmup + {args.steps} timed steps per mode; AdamW lr 4e-4 wd 0.1; "
          f"expected first loss ~ln({cfg.vocab_size}) = {math.log(cfg.vocab_size):.2f}+", flush=True)
    if not args.no_speed:
        run_speed(args, cfg, init, data)
    if args.loss_curve:
        run_loss_curve(args, cfg, init, data)


if __name__ == "__main__":
    main()
