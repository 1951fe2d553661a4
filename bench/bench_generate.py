"""Generation speed: new tokens per second, batch 1, greedy, GPT-2 small shape, random weights, CPU.

Same run, same weights, same prompt:

- book: the book's ``generate_text_simple`` (tests/book_reference.py; no KV cache: the whole sequence
  again at every step), on our weights loaded into the book's GPTModel;
- hf: transformers' ``GPT2LMHeadModel.generate`` (use_cache=True, do_sample=False, no EOS,
  min_new_tokens = max_new_tokens), default GPT2Config of the same shape: its output layer is tied to
  the token embedding (124M parameters);
- hf-same: the same, holding our exact weights (``tie_word_embeddings=False``, 163M parameters like
  ours): the same work as ours, and its tokens must equal ours;
- ours-fp32: ``gpttui.core.generate.generate_ids`` (KV cache, decode fast path of ``gpttui.core.fastdecode``);
- ours-bf16: the same on bf16 weights (``cast_for_inference(model, "bf16")``);
- ours-autocast: fp32 weights under ``torch.autocast("cpu", torch.bfloat16)`` (the other way to get
  bf16, for comparison).

Model: GPTConfig(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12,
qkv_bias=True, drop_rate=0.0). Speed = new tokens / wall time of the whole call (an 8-token prompt,
so prompt processing is negligible). Modes run interleaved, --reps times (book once, it is slow);
the best run of each is reported.

    python bench/bench_generate.py [--tokens 200] [--reps 3] [--modes book hf hf-same ours-fp32 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import book_reference as book  # noqa: E402

from gpttui.core.config import GPTConfig  # noqa: E402
from gpttui.core.generate import SamplingConfig, cast_for_inference, generate_ids  # noqa: E402
from gpttui.core.model import GPTModel, book_state_dict  # noqa: E402

MODES = ["book", "hf", "hf-same", "ours-fp32", "ours-bf16", "ours-autocast"]
CFG = GPTConfig(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True,
                drop_rate=0.0)


def hf_model(model: GPTModel | None, cfg: GPTConfig = CFG):
    """transformers' GPT-2 of shape ``cfg``; with ``model``, holding its exact weights (untied head, qkv
    bias). bench/gpu_check.py uses it too."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
                    n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    bos_token_id=None, eos_token_id=None, tie_word_embeddings=model is None)
    hf = GPT2LMHeadModel(hc).eval()
    if model is None:
        return hf
    sd = {"transformer.wte.weight": model.tok_emb.weight, "transformer.wpe.weight": model.pos_emb.weight,
          "transformer.ln_f.weight": model.final_norm.scale, "transformer.ln_f.bias": model.final_norm.shift,
          "lm_head.weight": model.out_head.weight}
    for i, b in enumerate(model.trf_blocks):
        p = f"transformer.h.{i}."
        a = b.att
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = b.norm1.scale, b.norm1.shift
        sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = b.norm2.scale, b.norm2.shift
        sd[p + "attn.c_attn.weight"] = torch.cat([a.W_query.weight.T, a.W_key.weight.T, a.W_value.weight.T], dim=1)
        sd[p + "attn.c_attn.bias"] = torch.cat([a.W_query.bias, a.W_key.bias, a.W_value.bias])
        sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"] = a.out_proj.weight.T, a.out_proj.bias
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = b.ff.layers[0].weight.T, b.ff.layers[0].bias
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = b.ff.layers[2].weight.T, b.ff.layers[2].bias
    missing, unexpected = hf.load_state_dict({k: v.detach().contiguous() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") or k.endswith("masked_bias") for k in missing), missing
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
        args.modes = [m for m in args.modes if not m.startswith("hf")]

    torch.manual_seed(0)
    model = GPTModel(CFG).eval()
    prompt = torch.randint(0, CFG.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    n = args.tokens
    sc = SamplingConfig(max_new_tokens=n, eos_id=None)
    runners = {}
    outputs: dict[str, list[int]] = {}
    if "book" in args.modes:
        ref = book.GPTModel(CFG.to_book_dict()).eval()
        ref.load_state_dict(book_state_dict(model))
        runners["book"] = lambda: book.generate_text_simple(ref, prompt, n, CFG.context_length)
    for name, same in (("hf", False), ("hf-same", True)):
        if name in args.modes:
            torch.manual_seed(0)
            hf = hf_model(model if same else None)
            runners[name] = (lambda hf=hf: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                                       min_new_tokens=n, do_sample=False, use_cache=True,
                                                       num_beams=1, pad_token_id=0, eos_token_id=None))
    if "ours-fp32" in args.modes:
        runners["ours-fp32"] = lambda: generate_ids(model, prompt, sc)
    if "ours-bf16" in args.modes:
        half = cast_for_inference(model, "bf16", copy_model=True)
        runners["ours-bf16"] = lambda: generate_ids(half, prompt, sc)
    if "ours-autocast" in args.modes:
        def autocast_run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return generate_ids(model, prompt, sc)
        runners["ours-autocast"] = autocast_run

    print(f"torch {torch.__version__}, transformers {hf_version}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; GPT-2 small shape (163M params untied), prompt {args.prompt_tokens} tokens, "
          f"{n} new tokens, batch 1, greedy", flush=True)
    best: dict[str, float] = {}
    for rep in range(args.reps):
        for name in args.modes:
            if name == "book" and rep > 0:
                continue
            gc.collect()
            t0 = time.perf_counter()
            out = runners[name]()
            dt = time.perf_counter() - t0
            new = out[0, args.prompt_tokens:].tolist()
            assert len(new) == n, (name, len(new))
            outputs.setdefault(name, new)
            rate = n / dt
            best[name] = max(best.get(name, 0.0), rate)
            print(f"  rep {rep + 1} {name:14} {rate:7.1f} tok/s  ({dt:.2f} s)", flush=True)

    print("\nbest of each (new tokens / s):")
    for name in args.modes:
        line = f"  {name:14} {best[name]:7.1f} tok/s"
        for ref_name in ("hf", "hf-same"):
            if ref_name in best and name != ref_name:
                line += f"   x{best[name] / best[ref_name]:.2f} vs {ref_name}"
        print(line)
    if "ours-fp32" in outputs:
        mine = outputs["ours-fp32"]
        for other in ("book", "hf-same", "ours-bf16", "ours-autocast"):
            if other in outputs:
                same = sum(a == b for a, b in zip(mine, outputs[other]))
                print(f"  tokens equal to ours-fp32: {other}: {same}/{n}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
