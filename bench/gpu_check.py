"""GPU check: does gpttui use a GPU well? One table, under 5 minutes on one GPU.

Parts (all on the same card, named in the header through gpttui.core.flops.device_label):

  a  training: gpt2-small (124M shape), bf16 + --compile, batch 16, context 1024, --steps steps on the
     built-in corpus (builtin:pydoc, stride 256), run through the CLI exactly as a user would
     (``python -m gpttui train --json ...`` with GPTTUI_HOME in a temp dir). Tokens/s is measured from
     the step events between step --warmup and the last step (tokens_seen / elapsed), so the compile
     warm-up and the first evaluation stay out; MFU = flops_per_token x that / the card's bf16 peak
     (gpttui.core.flops). The trainer's own tokens_per_sec, mfu, peak_memory and compile_seconds are
     shown as they come in the events ("-" when the trainer does not fill them in yet).
  b  decoding: tokens/s of gpttui's generate (KV cache, fast path) vs transformers'
     GPT2LMHeadModel.generate on the same random weights (GPT-2 124M shape with qkv bias, untied head),
     greedy, batch 1, 256 new tokens, fp32 and bf16 weights; and how many greedy tokens agree.
  c  data parallel: the part-a run with --nproc 2 against one process (tokens/s ratio); only when
     torch.cuda.device_count() >= 2 (in --cpu-smoke: 2 CPU processes over gloo).
  d  precision: fp32 (TF32 matmuls) vs fp16 (loss scaling) vs bf16 tokens/s, eager (no compile), the
     part-a shape, --dtype-steps steps each.

--cpu-smoke runs every part on the CPU with tiny shapes (about a minute on 2 cores, most of it process
start-up), to check the script itself where there is no GPU: its figures mean nothing.

    python bench/gpu_check.py [--parts a b c d] [--steps 100] [--out results.json]
    python bench/gpu_check.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpttui.core.config import GPTConfig  # noqa: E402
from gpttui.core.flops import device_label, flops_per_token, mfu, peak_flops  # noqa: E402


@dataclass
class Row:
    part: str
    setting: str
    tokens_per_sec: float | None = None
    mfu: float | None = None
    peak_memory: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Shape:
    """What the training parts run: CLI model/data flags, dtype, steps."""

    model_flags: list[str]
    batch: int
    context: int
    steps: int
    warmup: int
    device: str


def gpt2_bpe_dir() -> str | None:
    """Where the GPT-2 tokenizer files are (the machine has no network, maybe): $GPTTUI_GPT2_BPE_DIR,
    or ../shared/data/gpt2 or shared/data/gpt2 beside the repository."""
    if os.environ.get("GPTTUI_GPT2_BPE_DIR"):
        return os.environ["GPTTUI_GPT2_BPE_DIR"]
    for d in (REPO.parent / "shared" / "data" / "gpt2", REPO / "shared" / "data" / "gpt2"):
        if (d / "encoder.json").is_file() and (d / "vocab.bpe").is_file():
            return str(d)
    return None


def train_events(shape: Shape, dtype: str, *, compile_: bool, nproc: int = 1, peak_tflops: float | None = None,
                 timeout: float = 600) -> tuple[list[dict], str]:
    """Run ``gpttui train --json`` in a fresh GPTTUI_HOME; the events it printed and its stderr tail."""
    argv = [sys.executable, "-m", "gpttui", "train", "--json", *shape.model_flags,
            "--batch-size", str(shape.batch), "--context-length", str(shape.context),
            "--max-steps", str(shape.steps), "--epochs", "1000", "--eval-freq", "1000000", "--eval-iter", "1",
            "--sample-tokens", "0", "--dtype", dtype, "--device", shape.device, "--save", "gpu-check"]
    if compile_:
        argv.append("--compile")
    if nproc > 1:
        argv += ["--nproc", str(nproc)]
    if peak_tflops is not None:
        argv += ["--peak-tflops", str(peak_tflops)]
    with tempfile.TemporaryDirectory(prefix="gpttui-gpu-check-") as home:
        env = dict(os.environ, GPTTUI_HOME=home, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        bpe = gpt2_bpe_dir()
        if bpe:
            env["GPTTUI_GPT2_BPE_DIR"] = bpe
        try:
            proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return _parse(out), f"timed out after {timeout:.0f} s"
    err = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
    return _parse(proc.stdout), err


def _parse(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict) and "event" in ev:
            events.append(ev)
    return events


def summarise(part: str, setting: str, events: list[dict], err: str, shape: Shape, dtype: str,
              peak_tflops: float | None = None) -> Row:
    """A row from a run's events: measured tokens/s after the warm-up steps, MFU from it, and the trainer's
    own figures (peak memory, MFU, compile warm-up) where it reports them."""
    row = Row(part, setting)
    steps = [e for e in events if e["event"] == "step"]
    started = next((e for e in events if e["event"] == "started"), None)
    if err:
        row.notes.append(f"failed: {err[:100]}")
    timed = [e for e in steps if e["step"] >= shape.warmup]  # the trainer may log every step or every few
    if len(timed) >= 2 and timed[-1]["elapsed"] > timed[0]["elapsed"]:
        first, last = timed[0], timed[-1]
        row.tokens_per_sec = (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed"] - first["elapsed"])
        row.notes.append(f"steps {first['step'] + 1}-{last['step']}")
    elif not err:
        row.notes.append(f"only {len(steps)} steps reported")
    if started is not None and row.tokens_per_sec is not None:
        cfg = GPTConfig.from_dict(started["model_config"])
        device = torch.device(started["device"])
        peak = peak_flops(device, started.get("dtype", dtype), peak_tflops)
        row.mfu = mfu(flops_per_token(cfg, shape.context), row.tokens_per_sec, peak)
        if started.get("dtype") and started["dtype"] != dtype:
            row.notes.append(f"ran as {started['dtype']}")
    if steps:
        last = steps[-1]
        row.peak_memory = last.get("peak_memory")
        if last.get("mfu") is not None:
            row.notes.append(f"trainer MFU {last['mfu']:.1%}")
        if last.get("tokens_per_sec") is not None:
            row.notes.append(f"trainer {last['tokens_per_sec']:,.0f} tok/s")
    compiled = [e["compile_seconds"] for e in steps if e.get("compile_seconds") is not None]
    if compiled:
        row.notes.append(f"compile {compiled[0]:.0f} s")
    return row


# --- part b: decoding ------------------------------------------------------------------------------------


def hf_twin(model, cfg: GPTConfig):
    """transformers' GPT2LMHeadModel holding ``model``'s exact weights (bench_generate's mapping)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_generate import hf_model

    return hf_model(model, cfg)


def _timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def decode_rows(cfg: GPTConfig, device: torch.device, new_tokens: int, reps: int) -> list[Row]:
    """Part b: ours vs transformers, fp32 and bf16 weights, best of ``reps`` after one warm-up each."""
    from gpttui.core.generate import SamplingConfig, cast_for_inference, generate_ids
    from gpttui.core.model import GPTModel

    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    try:
        hf = hf_twin(model, cfg)
    except ImportError:
        hf = None
    prompt = torch.randint(0, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1)).to(device)
    rows = []
    for dtype in ("fp32", "bf16"):
        ours = cast_for_inference(model, dtype, copy_model=True).to(device) if dtype == "bf16" else model.to(device)
        runs = {"gpttui": lambda m=ours: generate_ids(m, prompt, SamplingConfig(max_new_tokens=new_tokens, eos_id=None))}
        if hf is not None:
            twin = hf.to(device=device, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
            runs["transformers"] = lambda m=twin: m.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, use_cache=True, num_beams=1, pad_token_id=0, eos_token_id=None)
        tokens: dict[str, list[int]] = {}
        best: dict[str, float] = {}
        with torch.inference_mode():
            for name, fn in runs.items():
                fn()  # warm-up: kernels, caches, lazy weights
                for _ in range(reps):
                    dt, out = _timed(fn, device)
                    best[name] = max(best.get(name, 0.0), new_tokens / dt)
                    tokens[name] = out[0, prompt.shape[1]:].tolist()
        for name, rate in best.items():
            row = Row("b", f"decode {name} {dtype}", rate)
            if name == "gpttui" and "transformers" in best:
                same = sum(x == y for x, y in zip(tokens["gpttui"], tokens["transformers"]))
                row.notes.append(f"x{rate / best['transformers']:.2f} vs transformers; {same}/{new_tokens} tokens agree")
            rows.append(row)
        if hf is None:
            rows.append(Row("b", f"decode transformers {dtype}", notes=["transformers not installed"]))
    return rows


# --- the table -------------------------------------------------------------------------------------------


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def print_table(rows: list[Row], header: str) -> None:
    print(header)
    print(f"{'part':4} {'setting':34} {'tokens/s':>12} {'MFU':>6} {'peak mem':>10}  notes")
    for r in rows:
        tps = "-" if r.tokens_per_sec is None else f"{r.tokens_per_sec:,.0f}"
        m = "-" if r.mfu is None else f"{r.mfu:.1%}"
        print(f"{r.part:4} {r.setting:34} {tps:>12} {m:>6} {_fmt_bytes(r.peak_memory):>10}  {'; '.join(r.notes)}")


def shapes(args: argparse.Namespace) -> tuple[Shape, GPTConfig, str]:
    """The training shape, the decode model's config and the device, full-size or --cpu-smoke."""
    if args.cpu_smoke:
        flags = ["--tokenizer", "bytes", "--preset", "tiny", "--emb-dim", "64", "--n-layers", "2", "--n-heads", "4",
                 "--stride", "32"]
        shape = Shape(flags, batch=4, context=32, steps=args.steps or 8, warmup=2, device="cpu")
        decode_cfg = GPTConfig(vocab_size=257, context_length=128, emb_dim=64, n_heads=4, n_layers=2,
                               qkv_bias=True, drop_rate=0.0)
        return shape, decode_cfg, "cpu"
    flags = ["--preset", "gpt2-small", "--stride", "256"]
    if not gpt2_bpe_dir():
        print("note: GPT-2 tokenizer files not found ($GPTTUI_GPT2_BPE_DIR, ../shared/data/gpt2): gpttui will try to "
              "download them", flush=True)
    shape = Shape(flags, batch=args.batch, context=args.context, steps=args.steps or 100, warmup=args.warmup,
                  device="cuda")
    decode_cfg = GPTConfig(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12,
                           qkv_bias=True, drop_rate=0.0)
    return shape, decode_cfg, "cuda"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the script (about a minute)")
    ap.add_argument("--steps", type=int, default=None, help="training steps in parts a and c (default 100; smoke 8)")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of tokens/s (compile warm-up; default 10)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--dtype-steps", type=int, default=40, help="steps per dtype in part d (default 40)")
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2, help="timed decode runs per setting; the best counts")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the card's peak TFLOP/s for MFU (default: gpttui.core.flops' table; smoke: 1)")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    shape, decode_cfg, kind = shapes(args)
    peak = args.peak_tflops if args.peak_tflops is not None or not args.cpu_smoke else 1.0
    if kind == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU here: run with --cpu-smoke to check the script on the CPU.", file=sys.stderr)
        return 2
    device = torch.device("cuda:0" if kind == "cuda" else "cpu")
    n_gpus = torch.cuda.device_count() if kind == "cuda" else 0
    header = (f"gpttui GPU check on {device_label(device)}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"{n_gpus} GPU(s){' [CPU SMOKE: figures mean nothing]' if args.cpu_smoke else ''}")
    print(header, flush=True)
    t_start = time.perf_counter()
    rows: list[Row] = []
    compile_ = not args.cpu_smoke  # compiling on the CPU needs a C++ toolchain and minutes
    one_proc: Row | None = None
    if "a" in args.parts:
        ev, err = train_events(shape, "bf16", compile_=compile_, peak_tflops=peak)
        one_proc = summarise("a", f"train bf16{' compile' if compile_ else ''} B{shape.batch} T{shape.context}",
                             ev, err, shape, "bf16", peak)
        rows.append(one_proc)
        print(f"  a done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    if "b" in args.parts:
        rows += decode_rows(decode_cfg, device, args.decode_tokens if not args.cpu_smoke else 32, args.reps)
        print(f"  b done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    if "c" in args.parts:
        if n_gpus >= 2 or args.cpu_smoke:
            ev, err = train_events(shape, "bf16", compile_=compile_, nproc=2, peak_tflops=peak)
            two = summarise("c", "train bf16, --nproc 2", ev, err, shape, "bf16", peak)
            if one_proc is not None and one_proc.tokens_per_sec and two.tokens_per_sec:
                two.notes.insert(0, f"x{two.tokens_per_sec / one_proc.tokens_per_sec:.2f} vs 1 process")
            rows.append(two)
        else:
            rows.append(Row("c", "train --nproc 2", notes=[f"skipped: {n_gpus} GPU(s)"]))
        print(f"  c done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    if "d" in args.parts:
        eager = Shape(shape.model_flags, shape.batch, shape.context, min(args.dtype_steps, shape.steps),
                      min(shape.warmup, 5), shape.device)
        for dtype in ("fp32", "fp16", "bf16"):
            ev, err = train_events(eager, dtype, compile_=False, peak_tflops=peak)
            rows.append(summarise("d", f"train {dtype} eager", ev, err, eager, dtype, peak))
        print(f"  d done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    print()
    print_table(rows, header)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"header": header, "rows": [r.__dict__ for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
