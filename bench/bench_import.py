"""Memory and time of `gpttui import-gpt2` on a gpt2-large-shaped checkpoint (774M parameters, 3.1 GB).

Creates a random GPT-2 large in Hugging Face layout once (``config.json`` + ``model.safetensors``,
keys named as in ``openai-community/gpt2-large``: no ``transformer.`` prefix, the ``attn.bias`` mask
buffers included), then runs each mode in a fresh Python process and reads that process's RSS
high-water mark (``VmHWM`` in /proc/self/status; ``ru_maxrss`` elsewhere):

- ``baseline``: only ``import torch, gpttui.core.gpt2_import`` (the interpreter's own floor);
- ``safetensors``: ``import_gpt2(DIR, NAME)``: header checks, per-tensor memory-mapped reads,
  one copy into the final layout, model on the meta device, checkpoint written without copies;
- ``bin`` (with ``--bin``): the same from ``pytorch_model.bin`` (``torch.load(weights_only=True)``
  must read the whole file: one copy, converted and released tensor by tensor);
- ``naive``: what a straightforward loader does: ``safetensors.torch.load_file`` (all tensors),
  ``GPTModel(cfg)`` (random init), ``load_state_dict`` (copy), ``save_checkpoint``.

Each import writes a real checkpoint into a temporary GPTTUI_HOME (deleted afterwards). Needs
~3.3 GB of disk for the source (+3.1 GB with --bin) and 3.1 GB per import, and a few minutes.

    python bench/bench_import.py [--workdir DIR] [--keep] [--bin] [--no-naive]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1e9
LARGE = {"n_embd": 1280, "n_layer": 36, "n_head": 20, "vocab_size": 50257, "n_positions": 1024}


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def create_source(folder: Path, with_bin: bool) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    e, n_layer, v, c = LARGE["n_embd"], LARGE["n_layer"], LARGE["vocab_size"], LARGE["n_positions"]
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
              "layer_norm_epsilon": 1e-5, "n_ctx": c, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
              **LARGE}
    if not (folder / "model.safetensors").is_file():
        t = time.perf_counter()
        g = torch.Generator().manual_seed(0)

        def rnd(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g) * 0.02

        tensors = {"wte.weight": rnd(v, e), "wpe.weight": rnd(c, e)}
        mask = torch.tril(torch.ones(c, c)).view(1, 1, c, c)
        for i in range(n_layer):
            h = f"h.{i}."
            tensors.update({
                h + "ln_1.weight": torch.ones(e), h + "ln_1.bias": torch.zeros(e),
                h + "attn.bias": mask.clone(),
                h + "attn.c_attn.weight": rnd(e, 3 * e), h + "attn.c_attn.bias": rnd(3 * e),
                h + "attn.c_proj.weight": rnd(e, e), h + "attn.c_proj.bias": rnd(e),
                h + "ln_2.weight": torch.ones(e), h + "ln_2.bias": torch.zeros(e),
                h + "mlp.c_fc.weight": rnd(e, 4 * e), h + "mlp.c_fc.bias": rnd(4 * e),
                h + "mlp.c_proj.weight": rnd(4 * e, e), h + "mlp.c_proj.bias": rnd(e),
            })
        tensors.update({"ln_f.weight": torch.ones(e), "ln_f.bias": torch.zeros(e)})
        save_file(tensors, str(folder / "model.safetensors.tmp"), metadata={"format": "pt"})
        os.replace(folder / "model.safetensors.tmp", folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        print(f"created {folder / 'model.safetensors'} in {time.perf_counter() - t:.0f} s", flush=True)
        del tensors
    if with_bin and not (folder / "bin" / "pytorch_model.bin").is_file():
        from safetensors.torch import load_file

        (folder / "bin").mkdir(exist_ok=True)
        torch.save(load_file(str(folder / "model.safetensors")), folder / "bin" / "pytorch_model.bin.tmp")
        os.replace(folder / "bin" / "pytorch_model.bin.tmp", folder / "bin" / "pytorch_model.bin")
        (folder / "bin" / "config.json").write_text(json.dumps(config, indent=2))


def child(mode: str, folder: Path) -> None:
    """One measurement, in its own process: prints a JSON line."""
    import torch  # noqa: F401

    from gpttui.core import checkpoints, gpt2_import
    from gpttui.core.config import GPTConfig

    t = time.perf_counter()
    if mode == "safetensors":
        gpt2_import.import_gpt2(folder, "large")
    elif mode == "bin":
        gpt2_import.import_gpt2(folder / "bin", "large")
    elif mode == "naive":
        from safetensors.torch import load_file

        from gpttui.core.model import GPTModel

        state = load_file(str(folder / "model.safetensors"))  # every tensor at once
        cfg_json = json.loads((folder / "config.json").read_text())
        cfg = gpt2_import.config_from_hf(cfg_json)
        model = GPTModel(cfg)  # random initialisation
        e = cfg.emb_dim
        ours = {"tok_emb.weight": state["wte.weight"], "pos_emb.weight": state["wpe.weight"],
                "out_head.weight": state["wte.weight"], "final_norm.scale": state["ln_f.weight"],
                "final_norm.shift": state["ln_f.bias"]}
        for i in range(cfg.n_layers):
            h, b = f"h.{i}.", f"trf_blocks.{i}."
            w, bias = state[h + "attn.c_attn.weight"], state[h + "attn.c_attn.bias"]
            for j, n in enumerate(("W_query", "W_key", "W_value")):
                ours[f"{b}att.{n}.weight"] = w[:, j * e:(j + 1) * e].T
                ours[f"{b}att.{n}.bias"] = bias[j * e:(j + 1) * e]
            ours.update({
                b + "att.out_proj.weight": state[h + "attn.c_proj.weight"].T,
                b + "att.out_proj.bias": state[h + "attn.c_proj.bias"],
                b + "ff.layers.0.weight": state[h + "mlp.c_fc.weight"].T, b + "ff.layers.0.bias": state[h + "mlp.c_fc.bias"],
                b + "ff.layers.2.weight": state[h + "mlp.c_proj.weight"].T, b + "ff.layers.2.bias": state[h + "mlp.c_proj.bias"],
                b + "norm1.scale": state[h + "ln_1.weight"], b + "norm1.shift": state[h + "ln_1.bias"],
                b + "norm2.scale": state[h + "ln_2.weight"], b + "norm2.shift": state[h + "ln_2.bias"],
            })
        model.load_state_dict(ours)  # copies into the random weights
        checkpoints.save_checkpoint("large", model, meta={"source": "imported-gpt2", "tokenizer": "gpt2"})
    elif mode != "baseline":
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t
    result = {"mode": mode, "seconds": seconds, "peak_rss": peak_rss_bytes()}
    if mode != "baseline":
        info = checkpoints.show("large")
        cfg = GPTConfig.from_dict(info["model_config"])
        result.update(parameters=info["parameter_count"], checkpoint_bytes=info["size_bytes"],
                      shape=[cfg.n_layers, cfg.n_heads, cfg.emb_dim])
    print("RESULT " + json.dumps(result), flush=True)


def measure(mode: str, folder: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpttui-bench-home-", dir=folder.parent) as home:
        env = dict(os.environ, GPTTUI_HOME=home)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--workdir", str(folder.parent)],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stdout}\n{proc.stderr}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]), wall=wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where to create the random gpt2-large (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the created checkpoint for the next run")
    ap.add_argument("--bin", action="store_true", help="also measure the pytorch_model.bin path")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loader")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.workdir) / "gpt2-large-random")
        return

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpttui-bench-import-"))
    folder = work / "gpt2-large-random"
    try:
        create_source(folder, args.bin)
        file_bytes = (folder / "model.safetensors").stat().st_size
        modes = ["baseline", "safetensors"] + (["bin"] if args.bin else []) + ([] if args.no_naive else ["naive"])
        results = [measure(m, folder) for m in modes]
        base = results[0]["peak_rss"]
        weights = next(r["parameters"] for r in results if "parameters" in r) * 4
        print(f"\ngpt2-large shape {LARGE}")
        print(f"weights (float32, tied head stored once): {weights / GB:.3f} GB; source file "
              f"{file_bytes / GB:.3f} GB (with the attn.bias mask buffers, which are not imported)")
        print(f"interpreter floor (import torch + gpttui): peak RSS {base / GB:.3f} GB\n")
        print(f"{'mode':12} {'peak RSS':>10} {'peak/weights':>13} {'(peak-floor)/weights':>21} "
              f"{'import s':>9} {'process s':>10}")
        for r in results[1:]:
            print(f"{r['mode']:12} {r['peak_rss'] / GB:8.3f} GB {r['peak_rss'] / weights:13.2f} "
                  f"{(r['peak_rss'] - base) / weights:21.2f} {r['seconds']:9.1f} {r['wall']:10.1f}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
