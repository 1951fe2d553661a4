"""Command line: ``gpttui`` opens the app; subcommands run the same engine headless."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any, Sequence

from gpttui import __version__
from gpttui.cli_output import EXIT_ERROR, EventPrinter, Out, ProgressBar
from gpttui.core.errors import GPTTUIError
from gpttui.core.launch import OFF
from gpttui.core.units import format_bytes as _fmt_size, format_count



# --- data / tokenizer / model info -------------------------------------------------------------------

def _data_settings(args: argparse.Namespace, defaults: dict[str, Any] | None = None):
    """The data settings the arguments give, over ``defaults`` (a plan's); ``--seed`` seeds the split's
    shuffle too, unless ``--data-seed``; ``--stride off``: the context length, whatever ``defaults`` say."""
    from dataclasses import replace

    from gpttui.core.runplan import data_settings_for

    stride = getattr(args, "stride", None)
    given = {"source": getattr(args, "data", None), "tokenizer": getattr(args, "tokenizer", None),
             "context_length": getattr(args, "context_length", None), "stride": None if stride == OFF else stride,
             "batch_size": getattr(args, "batch_size", None), "train_ratio": getattr(args, "train_ratio", None),
             "seed": _first(getattr(args, "data_seed", None), getattr(args, "seed", None)),
             "text_field": getattr(args, "text_field", None), "split": getattr(args, "split", None)}
    settings = data_settings_for(given, defaults)
    return replace(settings, stride=None) if stride == OFF else settings


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from gpttui.cli_progress import data_stats

    return data_stats(args, _data_settings(args), Out())


def cmd_tokenizer_import(args: argparse.Namespace) -> int:
    from gpttui.core.tokenizer import import_gpt2_files

    dest = import_gpt2_files(args.directory)
    Out()(f"GPT-2 tokenizer files verified and copied to {dest}")
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from gpttui.core.tokenizer import get_tokenizer

    tok = get_tokenizer(args.tokenizer)
    ids = tok.encode(args.text)
    if args.json:
        Out()(json.dumps({"tokenizer": tok.name, "ids": ids, "pieces": [tok.token_bytes(i).decode("utf-8", "replace") for i in ids]}))
    else:
        Out()(" ".join(str(i) for i in ids))
    return 0


def cmd_tokenizer_info(args: argparse.Namespace) -> int:
    from gpttui.core.tokenizer import TOKENIZERS, get_tokenizer

    out = Out()
    for name, desc in TOKENIZERS.items():
        try:
            tok = get_tokenizer(name, download=not args.offline)
            out(f"{name:6} ok       {desc}  [from {getattr(tok, 'source', '')}]")
        except GPTTUIError as exc:
            out(f"{name:6} missing  {desc}\n{exc}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from gpttui.core.config import PRESETS, preset
    from gpttui.core.model import parameter_count

    out = Out()
    for name, desc in PRESETS.items():
        cfg = preset(name)
        out(f"{name:12} {parameter_count(cfg) / 1e6:8.1f}M params  {desc}")
    return 0


# --- train -----------------------------------------------------------------------------------------

def _run_shape(args: argparse.Namespace):
    """The new model's shape and the data's context length (the model's, unless --context-length)."""
    from gpttui.core.runplan import plan_model
    from gpttui.core.tokenizer import TOKENIZER_VOCAB

    return plan_model(args.preset, vocab_size=TOKENIZER_VOCAB[args.tokenizer or "gpt2"],
                      context_length=_first(args.model_context_length, args.context_length), n_layers=args.n_layers, n_heads=args.n_heads,
                      emb_dim=args.emb_dim, drop_rate=args.drop_rate, qkv_bias=args.qkv_bias,
                      tie_weights=args.tie_weights)


def _train_config(args: argparse.Namespace, meta: Any = None):
    """The training config the arguments give, over the resumed checkpoint's (``meta``), over the defaults."""
    from gpttui.core.runplan import RESUMED_TRAIN_FIELDS, train_config_for

    given = {name: getattr(args, name) for name in RESUMED_TRAIN_FIELDS if getattr(args, name, None) is not None}
    given.update({name: None for name, value in given.items() if value == OFF})  # `--max-steps off`
    if args.sample_at_eval is not None:
        given["sample_at_eval"] = args.sample_at_eval
    if args.grad_clip == 0:
        given["grad_clip"] = None  # 0 = off
    given["compile"] = bool(args.compile)
    given["peak_tflops"] = args.peak_tflops
    given["save_name"] = args.save
    return train_config_for(given, meta)


def _detach_train(args: argparse.Namespace) -> int:
    """`gpttui train --detach`: the same command, without --detach, in its own session; output to
    runs/<id>/train.log. Returns at once, printing the run id and how to follow it."""
    from gpttui.core.launch import launch_detached

    argv = [a for a in (args.argv or []) if a != "--detach"]
    run_id, run_dir, pid = launch_detached(argv, args.run_id)
    out = Out()
    if args.json:
        out(json.dumps({"run_id": run_id, "run_dir": str(run_dir), "pid": pid}))
    else:
        out(f"Started run {run_id} in the background (pid {pid}); output: {run_dir / 'train.log'}")
        out(f"Follow it with `gpttui runs logs {run_id} -f`; steer it with "
            f"`gpttui runs pause|resume|save|stop {run_id}`.")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "detach", False):
        return _detach_train(args)
    from gpttui.cli_ddp import run_torchrun, under_torchrun

    if args.nproc is not None and args.nproc < 1:
        raise GPTTUIError(f"--nproc must be 1 or more (got {args.nproc}).")
    if (args.nproc or 1) > 1 and not under_torchrun():
        return run_torchrun(args, Out())
    from gpttui.core import distributed

    dist = distributed.from_env()
    try:
        return _train(args, dist)
    finally:
        distributed.finish()


def _train(args: argparse.Namespace, dist) -> int:
    """`gpttui train` in this process: alone, or as one of torchrun's (``dist``); rank 0 prints."""
    from gpttui.cli_progress import cancelled_exit, prepare_with_progress
    from gpttui.core import distributed
    from gpttui.core.control import TrainControl
    from gpttui.core.corpus_types import Cancelled
    from gpttui.core.events import FailedEvent
    from gpttui.core.resources import preflight_training
    from gpttui.core.tokenizer import get_tokenizer
    from gpttui.core.train import Trainer

    out = Out()
    out.alive = dist.main  # rank 0 prints for the run
    meta = shape = None
    if args.resume:
        from gpttui.core.runplan import resume_data_defaults
        from gpttui.core.store import default_store

        meta = default_store().read_meta(args.resume)  # a clear error for a broken checkpoint
        settings = _data_settings(args, resume_data_defaults(meta))
    else:
        shape = _run_shape(args)
        settings = _data_settings(args, {"context_length": shape.context_length})
    config = _train_config(args, meta)
    config.validate()  # a typo in --lr is refused at once, not after minutes of tokenizing
    plan = None
    if shape is not None:  # refused with the numbers before anything is built
        plan = preflight_training(shape.model_config, settings.batch_size, config.device, settings.context_length,
                                  dtype=config.dtype, book_math=config.book)
    tokenizer = get_tokenizer(settings.tokenizer)
    # Before the process group starts, so a long tokenizing cannot time it out: each machine's first rank
    # tokenizes (rank 0 with progress on stderr; Ctrl+C cancels, keeping the shards done), the others wait
    # for its shards (torchrun ends them if it fails).
    if dist.active and dist.local_rank != 0:
        from gpttui.core.data import prepare_data
        from gpttui.core.shards import wait_for_shards
        from gpttui.core.sources import plan_source

        wait_for_shards(plan_source(settings.source, settings.text_field, settings.split), tokenizer.name)
        prepared = prepare_data(settings, tokenizer)
    else:
        try:
            prepared = prepare_with_progress(settings, tokenizer, out, report=dist.main)
        except Cancelled as exc:
            return cancelled_exit(exc, out)
    distributed.start(dist, config.device)
    for w in prepared.stats.warnings:
        out(f"warning: {w}", err=True)

    control = TrainControl()
    caught: list[int] = []

    def on_signal(signum, frame):  # finish the step, save, exit non-zero
        if caught and dist.active:  # torchrun passes the terminal's Ctrl+C on: the same request, again
            return
        if caught:  # a second Ctrl+C: stop now
            raise KeyboardInterrupt
        caught.append(signum)
        control.stop(save=True, reason="interrupted")
        out(f"\n{signal.Signals(signum).name}: finishing the current step and saving...", err=True)

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        if sig != signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # `nohup gpttui train ... &`: an ignored SIGHUP stays ignored
        signal.signal(sig, on_signal)

    on_event = EventPrinter(out, as_json=args.json, memory_plan=plan) if dist.main else None
    trainer = Trainer(prepared, tokenizer, config, shape.model_config if shape else None, callback=on_event,
                      control=control, resume=args.resume, overwrite=args.overwrite,
                      fresh_optimizer=args.fresh_optimizer, run_id=args.run_id, dist=dist)
    final = trainer.run()
    if dist.active and not isinstance(final, FailedEvent):
        # Every rank ends at the same agreed step; wait for rank 0's last sample and save, so that no rank
        # tears the process group down under the others (gloo aborted the early one: "terminate called").
        distributed.barrier(dist)
    if isinstance(final, FailedEvent):
        return 1
    if caught:
        return 128 + caught[0]
    return 0


# --- generate --------------------------------------------------------------------------------------

def cmd_generate(args: argparse.Namespace) -> int:
    import threading

    from gpttui.core import checkpoints
    from gpttui.core.generate import SamplingConfig, cast_for_inference, stop_phrase, stream
    from gpttui.core.printable import StreamEscaper, blank_reply_note
    from gpttui.core.resources import pick_device
    from gpttui.core.tokenizer import get_tokenizer, tokenizer_for

    cfg = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, num_beams=args.num_beams, length_penalty=args.length_penalty,
        seed=args.seed, stop=tuple(args.stop or ()), eos_id=None if args.ignore_eos else "eot",
    ).validate()
    device = pick_device(args.device or "auto")
    loaded = checkpoints.load_checkpoint(args.checkpoint, device=device)
    tokenizer = get_tokenizer(tokenizer_for(loaded.typed or loaded.meta))
    model = loaded.model
    if args.dtype == "bf16":
        cast_for_inference(model, "bf16")

    cancel = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_signal(signum, frame):  # first Ctrl+C: stop generating and report; second: stop now
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    signal.signal(signal.SIGINT, on_signal)
    out = Out()

    def write(text: str) -> None:
        if out.alive and text:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except (OSError, ValueError):
                out.alive = False

    # Control characters (an ESC a model sampled, say) would be obeyed by the terminal: shown as
    # symbols unless --raw; --json escapes them as JSON does.
    escaper = None if args.raw else StreamEscaper()
    shown = escaper.feed if escaper is not None else (lambda text: text)
    try:
        events = stream(model, tokenizer, args.prompt, cfg, cancel=cancel)
        if not args.json:
            write(shown(args.prompt))
        for event in events:
            if not args.json:
                write(shown(event.text))
    finally:
        signal.signal(signal.SIGINT, previous)
    result = events.result
    if escaper is not None and not args.json:
        write(escaper.flush())
    if args.json:
        out(json.dumps({**result.to_dict(), "checkpoint": args.checkpoint, "device": str(device),
                        "dtype": args.dtype}))
    else:
        out()
        note = blank_reply_note(result.text)
        if note:
            out(note, err=True)
        out(f"[{result.new_tokens} tokens, {result.tokens_per_sec:.1f} tok/s, {stop_phrase(result.stopped_by)}"
            + (f", seed {result.seed}" if result.seed is not None else "") + "]", err=True)
    return 0


# --- checkpoints -----------------------------------------------------------------------------------

def cmd_ckpt_list(args: argparse.Namespace) -> int:
    from gpttui.core import checkpoints

    out = Out()
    items = checkpoints.list_checkpoints()
    if args.json:
        out(json.dumps([{"name": c.name, "path": str(c.path), "size_bytes": c.size_bytes, "error": c.error,
                         **(c.meta or {})} for c in items], default=str))
        return 0
    if not items:
        out("No checkpoints yet. Train one with `gpttui train --save NAME`.")
        return 0
    out(f"{'NAME':24} {'SOURCE':14} {'PARAMS':>9} {'STEP':>7} {'VAL LOSS':>8} {'SIZE':>9}  CREATED")
    for c in items:
        if c.error:
            out(f"{c.name:24} (unreadable: {c.error})")
            continue
        m = c.meta
        params = m.get("parameter_count")
        val = m.get("best_val_loss")
        out(f"{c.name:24} {m.get('source', '?'):14} "
            f"{format_count(params):>9} {m.get('step', 0):>7} "
            f"{(f'{val:.3f}' if isinstance(val, (int, float)) else '-'):>8} {_fmt_size(c.size_bytes):>9}  "
            f"{str(m.get('created', ''))[:19]}")
    return 0


def cmd_ckpt_show(args: argparse.Namespace) -> int:
    from gpttui.core import checkpoints

    from gpttui.cli_show import checkpoint_lines

    info = checkpoints.show(args.name)
    out = Out()
    if args.json:
        out(json.dumps(info, default=str))
    else:
        for line in checkpoint_lines(info):
            out(line)
    return 0


def cmd_ckpt_rename(args: argparse.Namespace) -> int:
    from gpttui.core import checkpoints

    checkpoints.rename_checkpoint(args.old, args.new)
    Out()(f"Renamed {args.old!r} to {args.new!r}.")
    return 0


def cmd_ckpt_delete(args: argparse.Namespace) -> int:
    from gpttui.core import checkpoints

    if not args.yes and sys.stdin.isatty():
        answer = input(f"Delete checkpoint {args.name!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            Out()("Not deleted.")
            return 1
    checkpoints.delete_checkpoint(args.name)
    Out()(f"Deleted {args.name!r}.")
    return 0


def cmd_ckpt_export(args: argparse.Namespace) -> int:
    from gpttui.core import interop

    path = interop.export_book(args.name, args.path, with_optimizer=args.with_optimizer, force=args.force)
    Out()(f"Exported {args.name!r} to {path or args.path} (the book's "
          f"{'model_and_optimizer.pth dict' if args.with_optimizer else 'model.pth state_dict'}).")
    return 0


def cmd_ckpt_import(args: argparse.Namespace) -> int:
    from gpttui.core import checkpoints, interop

    path = interop.import_book(args.path, args.name, n_heads=args.n_heads, tokenizer=args.tokenizer,
                               allow_nonfinite=args.allow_nonfinite)
    meta = checkpoints.read_meta(path)
    out = Out()
    out(f"Imported {args.path} as checkpoint {args.name!r} ({path}; {meta.get('tokenizer')} tokenizer).")
    for note in meta.get("notes") or []:
        out(f"note: {note}")
    return 0


def cmd_import_gpt2(args: argparse.Namespace) -> int:
    from gpttui.core.gpt2_import import import_gpt2, size_name

    out = Out()
    name = args.name or size_name(args.source)
    if not name:
        out("error: give the checkpoint a name: gpttui import-gpt2 SOURCE --name NAME", err=True)
        return EXIT_ERROR
    bar = ProgressBar(out)

    def on_stage(text: str) -> None:
        bar.end()
        out(f"{text}...")

    try:
        result = import_gpt2(args.source, name, overwrite=args.overwrite, progress=bar, on_stage=on_stage,
                             local_files_only=args.offline, tokenizer=args.tokenizer,
                             allow_nonfinite=args.allow_nonfinite)
    finally:
        bar.end()
    cfg = result.config
    what = result.size or "GPT-2 weights"
    origin = result.origin.get("repo_id") or result.origin.get("path")
    out(f"Imported {what} from {origin} as checkpoint {result.name!r}: {result.parameter_count / 1e6:.1f}M "
        f"parameters, {cfg.n_layers} layers, {cfg.n_heads} heads, width {cfg.emb_dim}, context "
        f"{cfg.context_length}, in {result.seconds:.1f} s -> {result.path}")
    for note in result.notes:
        out(f"note: {note}")
    out(f"Generate text with `gpttui generate --checkpoint {result.name} --prompt TEXT`, or continue "
        f"pre-training on your own text with `gpttui train --resume {result.name} --data FILE`.")
    return 0


# --- parser ----------------------------------------------------------------------------------------

def _or_off(kind):
    """An argument type: a number, or ``off`` (no value, over a resumed checkpoint's)."""
    def parse(text: str):
        return OFF if text.strip().lower() == OFF else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="a text, .jsonl or .parquet file, a folder of them, a Hugging Face dataset, "
                                  "or builtin:pydoc (default)")
    p.add_argument("--text-field", metavar="NAME",
                   help=".jsonl field / .parquet or dataset column holding the text (default text)")
    p.add_argument("--split", metavar="NAME", help="a Hugging Face dataset's split (default train)")
    p.add_argument("--tokenizer", choices=["gpt2", "bytes"], help="default gpt2")
    p.add_argument("--context-length", type=int,
                   help="tokens per window (default: the model's context; 256 for data stats)")
    p.add_argument("--stride", type=_or_off(int), help="window stride (default, or off: the context length)")
    p.add_argument("--batch-size", type=int, help="default 2")
    p.add_argument("--train-ratio", type=float, help="share of characters for training (default 0.9)")
    p.add_argument("--data-seed", type=int, help="seed of the train/val split's shuffle (default: --seed)")


def _add_train_parser(sub) -> None:
    """`gpttui train`."""
    p = sub.add_parser("train", help="train (or continue training) a model, headless")
    _add_data_args(p)
    p.add_argument("--preset", default="gpt2-small",
                   help="tiny, mini, gpt2-small (default), gpt2-medium, gpt2-large, gpt2-xl")
    p.add_argument("--n-layers", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--emb-dim", type=int)
    p.add_argument("--drop-rate", type=float)
    p.add_argument("--model-context-length", type=int,
                   help="the new model's context, when the data's windows (--context-length) are shorter")
    p.add_argument("--qkv-bias", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tie-weights", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--epochs", type=int, help="default 10")
    p.add_argument("--max-steps", type=_or_off(int), help="stop after this many optimizer steps (off: no limit)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 4e-4)")
    p.add_argument("--min-lr", type=_or_off(float),
                   help="cosine-decay the lr to this after warmup (default, or off: constant)")
    p.add_argument("--weight-decay", type=float, help="default 0.1")
    p.add_argument("--warmup-steps", type=int, help="linear warmup steps (default 0)")
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm (default off; 0 = off)")
    p.add_argument("--grad-accum", type=int, help="batches per optimizer step (default 1)")
    p.add_argument("--eval-freq", type=int, help="evaluate every N steps (default 5)")
    p.add_argument("--eval-iter", type=int, help="batches per evaluation (default 5)")
    p.add_argument("--start-context", help='prompt for samples (default "Every effort moves you")')
    p.add_argument("--sample-tokens", type=int, help="tokens per sample (default 50)")
    p.add_argument("--sample-at-eval", action=argparse.BooleanOptionalAction, default=None,
                   help="also sample text at each evaluation (default: at the end only)")
    p.add_argument("--seed", type=int, help="default 123")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="fp32 (default); bf16 autocast; fp16 autocast with loss scaling (GPUs without bf16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="deterministic kernels, so a resumed CUDA run repeats bit for bit (slower; CPU runs "
                        "always do)")
    p.add_argument("--peak-tflops", type=float, metavar="X",
                   help="the device's peak TFLOP/s at this dtype, for MFU (default: a table of common GPUs)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine (torchrun DDP: one per GPU, or CPU with gloo)")
    p.add_argument("--book", action=argparse.BooleanOptionalAction, default=None,
                   help="book mode: the book's chapter-5 loop exactly (its data order, dropout, math, AdamW and "
                        "printout); with the book's text and settings it prints the book's table")
    p.add_argument("--save", metavar="NAME", help="checkpoint name (default: the text and shape, e.g. pydoc-2L128d; "
                                                  "with --resume, the resumed name when training on its own data, "
                                                  "else NAME-on-<data>)")
    p.add_argument("--overwrite", action="store_true", help="allow --save to replace an existing checkpoint")
    p.add_argument("--resume", metavar="NAME", help="continue training a checkpoint (on its own data by default)")
    p.add_argument("--fresh-optimizer", action="store_true",
                   help="resume although the checkpoint's optimizer or trainer state is missing (fresh AdamW)")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="also save every N steps")
    p.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("--detach", action="store_true",
                   help="run in the background, in its own session (output to runs/<id>/train.log); "
                        "prints the run id and returns at once")
    p.add_argument("--run-id", help=argparse.SUPPRESS)  # decided by `--detach` for its child
    p.set_defaults(func=cmd_train)


def _add_generate_parser(sub) -> None:
    """`gpttui generate`."""
    p = sub.add_parser("generate", help="continue a prompt with a checkpoint, streaming the text")
    p.add_argument("--checkpoint", required=True, metavar="NAME",
                   help="checkpoint name (see `gpttui checkpoints list`)")
    p.add_argument("--prompt", default="", help="text to continue (default: empty, start a document)")
    p.add_argument("--max-new-tokens", type=int, default=50, help="default 50")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the most likely tokens adding up to p")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with N beams (default 1: no beams)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score = logprob / length**this (default 1)")
    p.add_argument("--seed", type=int, help="sampling seed (default: random, printed)")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights dtype (default fp32)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--raw", action="store_true",
                   help="print the text as generated; by default control characters (ESC, BEL, a lone CR, "
                        "DEL, C1) are shown as symbols such as ␛, so the terminal does not obey them")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (text, new_tokens, tokens_per_sec, ...) at the end instead")
    p.set_defaults(func=cmd_generate)


def _add_inspect_parser(sub) -> None:
    """`gpttui data`, `gpttui tokenizer` and `gpttui presets`."""
    p = sub.add_parser("data", help="inspect a corpus")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("stats", help="characters, tokens, windows, batches and the sanity checks")
    _add_data_args(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_data_stats)

    p = sub.add_parser("tokenizer", help="GPT-2 tokenizer files")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    q = tsub.add_parser("import", help="copy encoder.json + vocab.bpe from DIR (verified) for offline use")
    q.add_argument("directory")
    q.set_defaults(func=cmd_tokenizer_import)
    q = tsub.add_parser("encode", help="show the token ids of a text")
    q.add_argument("text")
    q.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes"])
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_tokenizer_encode)
    q = tsub.add_parser("info", help="which tokenizers are available, and from where")
    q.add_argument("--offline", action="store_true", help="do not try to download")
    q.set_defaults(func=cmd_tokenizer_info)

    p = sub.add_parser("presets", help="model presets and their sizes")
    p.set_defaults(func=cmd_presets)


def _add_checkpoints_parser(sub) -> None:
    """`gpttui checkpoints ...`."""
    p = sub.add_parser("checkpoints", help="list, show, rename, delete, export, import checkpoints")
    csub = p.add_subparsers(dest="checkpoints_command", required=True)
    q = csub.add_parser("list")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_ckpt_list)
    q = csub.add_parser("show", help="a checkpoint's model, progress, data, size and path")
    q.add_argument("name")
    q.add_argument("--json", action="store_true", help="the whole record as one JSON object")
    q.set_defaults(func=cmd_ckpt_show)
    q = csub.add_parser("rename")
    q.add_argument("old")
    q.add_argument("new")
    q.set_defaults(func=cmd_ckpt_rename)
    q = csub.add_parser("delete")
    q.add_argument("name")
    q.add_argument("-y", "--yes", action="store_true", help="do not ask")
    q.set_defaults(func=cmd_ckpt_delete)
    q = csub.add_parser("export", help="write the book's model.pth state_dict")
    q.add_argument("name")
    q.add_argument("path")
    q.add_argument("--with-optimizer", action="store_true", help="the book's model_and_optimizer.pth dict")
    q.add_argument("--force", action="store_true",
                   help="replace an existing file (never one inside the checkpoints folder)")
    q.set_defaults(func=cmd_ckpt_export)
    q = csub.add_parser("import", help="import the book's model.pth / model_and_optimizer.pth (safe loading)")
    q.add_argument("path")
    q.add_argument("name")
    q.add_argument("--n-heads", type=int, help="attention heads, when the width is not a GPT-2 size")
    q.add_argument("--tokenizer", choices=["gpt2", "bytes"],
                   help="the tokenizer it was trained with (default: from the vocabulary, 257 bytes, 50257+ gpt2)")
    q.add_argument("--allow-nonfinite", action="store_true", help="import weights holding NaN/inf anyway")
    q.set_defaults(func=cmd_ckpt_import)


def _add_import_gpt2_parser(sub) -> None:
    """`gpttui import-gpt2`."""
    p = sub.add_parser("import-gpt2", help="load OpenAI's pretrained GPT-2 weights as a checkpoint")
    p.add_argument("source", help="gpt2-small, gpt2-medium, gpt2-large or gpt2-xl (Hugging Face cache, else "
                                  "the Hub; needs gpttui[hub]), or a folder: config.json + model.safetensors "
                                  "or pytorch_model.bin, or OpenAI's TensorFlow checkpoint (needs gpttui[tf])")
    p.add_argument("--name", help="checkpoint name (default: the size name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint of that name")
    p.add_argument("--offline", action="store_true", help="use only the local Hugging Face cache")
    p.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes"],
                   help="the tokenizer the weights go with (default gpt2; bytes for a 257-token vocabulary)")
    p.add_argument("--allow-nonfinite", action="store_true", help="import weights holding NaN/inf anyway")
    p.set_defaults(func=cmd_import_gpt2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpttui", description="Train GPT models from scratch and talk to them.")
    parser.add_argument("--version", action="version", version=f"gpttui {__version__}")
    sub = parser.add_subparsers(dest="command")

    _add_train_parser(sub)
    _add_generate_parser(sub)
    _add_inspect_parser(sub)
    _add_checkpoints_parser(sub)
    _add_import_gpt2_parser(sub)
    from gpttui.cli_runs import add_runs_parser

    add_runs_parser(sub)
    from gpttui.cli_serve import add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --detach` re-runs it
    if args.command is None:
        try:
            from gpttui.tui.app import run_app  # noqa: F401  (the app arrives with the UI issues)
        except ImportError:
            parser.print_help()
            return 0
        return run_app()
    try:
        return int(args.func(args) or 0)
    except GPTTUIError as exc:
        Out()(f"error: {exc}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        Out()("Interrupted.", err=True)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
