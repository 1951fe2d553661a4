"""Tokenizing large corpora (issue 16): gpttui's prepare_data against tiktoken's own batch encoder, in one run.

For each size it generates a corpus (a folder of ~64 MB .txt files plus one .jsonl, words drawn from a
Zipf-like vocabulary of a few thousand made-up words and some real ones, a few non-ASCII), then runs, each in its
own fresh subprocess:

- tiktoken: the files read into memory first (not timed), cut at paragraph breaks into ~256 KB pieces, then
  ``encode_ordinary_batch(pieces, num_threads=N)`` timed, in groups so the token lists never fill the memory;
- gpttui, cold: ``prepare_data(DataSettings(source=<folder>, tokenizer="gpt2", context_length=1024, batch_size=8))``
  with a fresh GPTTUI_HOME (empty token cache), wall time of that call;
- gpttui, reopened: the same call on the same GPTTUI_HOME, then the first training batch
  (``next(iter(prepared.train_loader.epoch(0)))``), both timed from the start of prepare_data.

Throughput is the corpus's bytes on disk over the time, for both (so the ratio is a ratio of times). Peak memory
is the resident memory of the child's whole process tree (it and its worker processes, VmRSS summed, sampled
every 50 ms from /proc by a thread here), over that of a baseline child that only imports torch,
gpttui.core.data and the GPT-2 tokenizer. Token counts are compared: tiktoken's pieces plus one <|endoftext|>
between documents must equal gpttui's tokens, else gpttui tokenized a different text (flagged).

    PYTHONPATH=$PWD python bench/bench_tokenize.py --sizes 5M,10M        # a quick check, under a minute
    PYTHONPATH=$PWD python bench/bench_tokenize.py                        # 100M,500M,2G: the README's table

Needs the GPT-2 BPE files (--bpe-dir, $GPTTUI_GPT2_BPE_DIR, ../shared/data/gpt2, or gpttui's data dir) and
about 1.7x the largest size (plus 0.5 GiB) free on disk (one corpus at a time is kept unless --keep).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FILE_BYTES = 64_000_000  # the most bytes of one .txt file of a corpus, and of its .jsonl
GEN_VERSION = 1  # bump when the generated text changes, so kept corpora are made again
MB = 1_000_000
MIB = 1 << 20
SAMPLE_S = 0.05

# --- generating corpora -----------------------------------------------------------------------------------

COMMON = ("the of and to a in is was that for it with as his on be at by had not are but from or have an they "
          "which one you were her all she there would their we him been has when who will more no if out so said "
          "what up its about into than them can only other new some could time these two may then do first any "
          "my now such like our over man me even most made after also did many before must through back years "
          "where much your way well down should because each just those people how too little state good very "
          "make world still own see men work long get here between both life being under never day same another "
          "know while last might us great old year off come since against go came right used take three").split()
FOREIGN = ["café", "naïve", "résumé", "façade", "señor", "straße", "über", "zürich", "déjà", "fiancée", "crème",
           "—", "東京", "λόγος", "москва", "ação", "smörgåsbord", "piñata", "coöperate", "jalapeño"]
ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "th", "ch",
          "sh", "br", "tr", "pl", "gr", "cl", "fr", "sp", "qu"]
VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "y", "ee", "io"]
CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "m", "rd", "x"]
VARIANTS = 7  # "w ", "W ", "w, ", "w. ", "w? ", "w! ", "w.\n\n"


def make_vocabulary(seed: int, size: int = 4000) -> list[str]:
    """Real common words first (the most frequent), then made-up words of one to four syllables, shorter ones
    more frequent, with a few non-ASCII words at middling ranks."""
    rng = np.random.default_rng([seed, 0])
    made: set[str] = set(COMMON)
    words = list(COMMON)
    extra = []
    while len(words) + len(extra) < size - len(FOREIGN):
        n = 1 + min(3, int(rng.geometric(0.45)) - 1)
        w = "".join(ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))]
                    + CODAS[rng.integers(len(CODAS))] for _ in range(n))
        if w not in made:
            made.add(w)
            extra.append(w)
    extra.sort(key=len)
    words += extra
    for i, w in enumerate(FOREIGN):  # ranks ~300..2300
        words.insert(300 + 100 * i, w)
    return words


class TextGenerator:
    """Sentences of 3-25 words, paragraphs of 2-8 sentences, as UTF-8 bytes built with numpy gathers (fast
    enough for gigabytes: every word form is a slice of one byte blob)."""

    def __init__(self, seed: int) -> None:
        words = make_vocabulary(seed)
        forms = []
        for w in words:
            cap = w[:1].upper() + w[1:]
            forms += [w + " ", cap + " ", w + ", ", w + ". ", w + "? ", w + "! ", w + ".\n\n"]
        data = [f.encode() for f in forms]
        self.lengths = np.array([len(d) for d in data], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.blob = np.frombuffer(b"".join(data), dtype=np.uint8)
        ranks = np.arange(len(words), dtype=np.float64)
        weights = 1.0 / (ranks + 2.7) ** 1.07
        self.cdf = np.cumsum(weights / weights.sum())
        self.mean_len = float((self.cdf - np.concatenate([[0], self.cdf[:-1]])) @ self.lengths[::VARIANTS])

    def paragraphs(self, rng: np.random.Generator, approx_bytes: int) -> bytes:
        """Whole paragraphs, about ``approx_bytes`` long (ending with a blank line)."""
        n_sent = max(2, int(approx_bytes / (self.mean_len * 14)))
        sent_len = rng.integers(3, 26, n_sent)
        per_par = rng.integers(2, 9, n_sent)  # more than needed; cut below
        par_ends = np.cumsum(per_par)
        par_ends = par_ends[par_ends <= n_sent]
        if len(par_ends) == 0 or par_ends[-1] != n_sent:
            par_ends = np.append(par_ends, n_sent)
        n_words = int(sent_len.sum())
        word = np.minimum(np.searchsorted(self.cdf, rng.random(n_words)), len(self.cdf) - 1)
        variant = np.where(rng.random(n_words) < 0.07, 2, 0)
        last = np.cumsum(sent_len) - 1
        variant[last - sent_len + 1] = 1
        variant[last] = rng.choice([3, 4, 5], n_sent, p=[0.86, 0.08, 0.06])
        variant[last[par_ends - 1]] = 6
        code = word * VARIANTS + variant
        lens = self.lengths[code]
        out_starts = np.cumsum(lens) - lens
        pos = np.repeat(self.starts[code] - out_starts, lens) + np.arange(int(lens.sum()))
        return self.blob[pos].tobytes()

    def text(self, rng: np.random.Generator, size: int, block: int = 8 * MIB) -> bytes:
        """About ``size`` bytes (never more) of whole paragraphs."""
        parts, have = [], 0
        while have < size:
            part = self.paragraphs(rng, min(block, size - have + 4096))
            if have + len(part) > size:
                cut = part.rfind(b"\n\n", 0, size - have)
                if cut <= 0:
                    break
                part = part[:cut + 2]
            parts.append(part)
            have += len(part)
        return b"".join(parts)


def corpus_plan(size: int, jsonl: bool) -> list[tuple[str, int]]:
    """(file name, bytes) of a corpus: .txt files of FILE_BYTES, and a .jsonl of a tenth (at most FILE_BYTES)."""
    json_bytes = min(FILE_BYTES, size // 10) if jsonl else 0
    rest = size - json_bytes
    n = max(1, math.ceil(rest / FILE_BYTES))
    plan = [(f"part-{i:03d}.txt", rest // n + (1 if i < rest % n else 0)) for i in range(n)]
    return plan + ([("records.jsonl", json_bytes)] if json_bytes else [])


def write_corpus(folder: Path, size: int, seed: int, jsonl: bool) -> int:
    """Generate a corpus into the new folder ``folder``; returns its bytes on disk."""
    gen = TextGenerator(seed)
    folder.mkdir(parents=True)
    total = 0
    for i, (name, nbytes) in enumerate(corpus_plan(size, jsonl)):
        rng = np.random.default_rng([seed, 1 + i])
        if name.endswith(".jsonl"):
            lines, have = [], 0
            while have < nbytes:
                doc = gen.paragraphs(rng, int(rng.integers(500, 8000))).decode().rstrip()
                line = json.dumps({"id": len(lines), "text": doc}, ensure_ascii=False) + "\n"
                have += len(line.encode())
                lines.append(line)
            data = "".join(lines).encode()
        else:
            data = gen.text(rng, nbytes).rstrip() + b"\n"
        (folder / name).write_bytes(data)
        total += len(data)
    return total


def ensure_corpus(workdir: Path, label: str, size: int, seed: int, jsonl: bool) -> tuple[Path, int, bool]:
    """The corpus folder (reused when a kept one matches), its bytes, and whether it was made now."""
    folder, marker = workdir / f"corpus-{label}", workdir / f"corpus-{label}.json"
    want = {"size": size, "seed": seed, "jsonl": jsonl, "version": GEN_VERSION}
    if folder.exists():
        try:
            meta = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise SystemExit(f"{folder} exists and was not made by this bench: move it away or pick another "
                             "--workdir (it is not overwritten).") from None
        if {k: meta.get(k) for k in want} == want and meta.get("bytes") == folder_bytes(folder):
            return folder, meta["bytes"], False
        shutil.rmtree(folder)  # an older or partial corpus of this bench's own
    marker.write_text(json.dumps({**want, "bytes": None}))  # ours even if generating is cut short
    nbytes = write_corpus(folder, size, seed, jsonl)
    marker.write_text(json.dumps({**want, "bytes": nbytes}))
    return folder, nbytes, True


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- measuring a child's process tree ---------------------------------------------------------------------

def _ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    out[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _kib_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """The ``Name:  123 kB`` lines of a /proc file that start with ``names``, in bytes."""
    with open(path) as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f if line.startswith(names))}


def tree_memory(root: int, pss: bool = False) -> dict[str, int]:
    """Resident memory summed over ``root`` and its descendants, in bytes: ``rss`` (VmRSS), ``anon`` (RssAnon)
    and, with ``pss``, ``pss`` (shared pages divided among the processes that share them); ``procs``."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    todo, total = [root], {"rss": 0, "anon": 0, "pss": 0, "procs": 0}
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            status = _kib_fields(f"/proc/{pid}/status", ("VmRSS", "RssAnon"))
            rollup = _kib_fields(f"/proc/{pid}/smaps_rollup", ("Pss:",)) if pss else {}
        except (OSError, ValueError):
            continue  # it ended meanwhile
        total["procs"] += 1
        total["rss"] += status.get("VmRSS", 0)
        total["anon"] += status.get("RssAnon", 0)
        total["pss"] += rollup.get("Pss", 0)
    return total


class TreeSampler(threading.Thread):
    """Samples a process tree's summed resident memory every SAMPLE_S until stopped; keeps the peak of each
    figure (``peak["rss"]`` ...). Sums are taken at one instant, so they never add peaks of different times."""

    def __init__(self, pid: int, pss: bool = False) -> None:
        super().__init__(daemon=True)
        self.pid, self.pss, self.samples = pid, pss, 0
        self.peak = {"rss": 0, "anon": 0, "pss": 0, "procs": 0}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for key, value in tree_memory(self.pid, self.pss).items():
                self.peak[key] = max(self.peak[key], value)
            self.samples += 1
            self._halt.wait(SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join()


CHILD = r"""
import dataclasses, inspect, json, os, resource, sys, time
mode, source, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode != "tiktoken":  # tiktoken's baseline needs neither
    import torch
    import gpttui.core.data as D
from gpttui.core.tokenizer import get_tokenizer
tok = get_tokenizer("gpt2")
out = {}

def cpu():
    # CPU seconds of this process and of its children that ended (a pool's workers, once joined)
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

def workers_knob():
    # prepare_data has no setting for its processes today; use one as soon as it has
    for name in ("workers", "num_workers", "processes"):
        if name in {f.name for f in dataclasses.fields(D.DataSettings)}:
            return "settings", name
        if name in inspect.signature(D.prepare_data).parameters:
            return "call", name
    return None, None

if mode == "base":
    import tiktoken
    out.update(torch=torch.__version__, tiktoken=tiktoken.__version__)
elif mode == "tiktoken":
    enc = tok._enc
    texts, docs = [], 0
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if name.endswith(".jsonl"):
            with open(path, encoding="utf-8", newline="") as f:
                batch = [json.loads(line)["text"] for line in f if line.strip()]
        else:
            with open(path, encoding="utf-8", newline="") as f:
                batch = [f.read()]
        for text in batch:
            docs += 1
            pos = 0
            while pos < len(text):  # ~256 KB pieces, cut just before a paragraph break (tokens unchanged)
                cut = text.find("\n\n", pos + (1 << 18))
                cut = len(text) if cut == -1 else cut
                texts.append(text[pos:cut])
                pos = cut
    tokens, seconds, cpu_s, start, chars = 0, 0.0, 0.0, 0, 0
    for i, t in enumerate(texts):  # groups of ~64 MB, so the lists of ints (~36 bytes a token) stay small
        chars += len(t)
        if chars >= (64 << 20) or i == len(texts) - 1:
            c0, t0 = cpu(), time.perf_counter()
            ids = enc.encode_ordinary_batch(texts[start:i + 1], num_threads=workers)
            seconds += time.perf_counter() - t0
            cpu_s += cpu() - c0
            tokens += sum(map(len, ids))
            del ids
            start, chars = i + 1, 0
    out.update(seconds=seconds, cpu=cpu_s, tokens=tokens + docs - 1, documents=docs, pieces=len(texts))
else:
    where, knob = workers_knob()
    kwargs = {knob: workers} if where == "settings" else {}
    settings = D.DataSettings(source=source, tokenizer="gpt2", context_length=1024, batch_size=8, **kwargs)
    call = {knob: workers} if where == "call" else {}
    c0, t0 = cpu(), time.perf_counter()
    prepared = D.prepare_data(settings, tok, **call)
    t1 = time.perf_counter()
    out.update(seconds=t1 - t0, cpu=cpu() - c0, tokens=int(prepared.stats.tokens), workers_knob=knob,
               from_cache=getattr(prepared.tokenized, "from_cache", None))
    if mode == "reopen":
        x, y = next(iter(prepared.train_loader.epoch(0)))
        out.update(first_batch=time.perf_counter() - t0, batch_shape=list(x.shape))
out["ru_maxrss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out["ru_maxrss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps(out))
"""


def stop_group(proc: subprocess.Popen, mode: str) -> None:
    """End what is left of a child's session (its own process group): the child when it was stopped early,
    and any worker it left running, which is reported (a leak the tokenizer should not have)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return
    log(f"warning: the {mode} child left processes running after it ended; they were stopped")
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_child(mode: str, source: str, home: str, env: dict, args: argparse.Namespace) -> dict:
    """One fresh child, its process tree sampled; its JSON record plus peak_rss, peak_anon, procs, wall."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, source, str(args.workers)], cwd=REPO,
                            env={**env, "GPTTUI_HOME": home},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    sampler = TreeSampler(proc.pid, args.pss)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the {mode} child ran past --timeout {args.timeout:.0f} s") from None
    finally:
        sampler.stop()
        stop_group(proc, mode)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} child failed (exit {proc.returncode}):\n{err[-3000:]}")
    record = json.loads(out.strip().splitlines()[-1])
    record.update(peak_rss=max(sampler.peak["rss"], record["ru_maxrss_self"]), peak_anon=sampler.peak["anon"],
                  peak_pss=sampler.peak["pss"] if args.pss else None, procs=sampler.peak["procs"],
                  samples=sampler.samples, wall=wall)
    return record


# --- the run ---------------------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100M, 2G)")
    return int(float(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[m.group(2).upper()])


def find_bpe_dir(given: str | None) -> Path:
    """Where the children find encoder.json and vocab.bpe (they run with an empty GPTTUI_HOME)."""
    candidates = [given, os.environ.get("GPTTUI_GPT2_BPE_DIR"), REPO.parent / "shared" / "data" / "gpt2"]
    if not os.environ.get("GPTTUI_HOME"):
        import platformdirs
        candidates.append(Path(platformdirs.user_data_dir("gpttui", appauthor=False)) / "tokenizers" / "gpt2")
    for c in candidates:
        if c and (Path(c) / "encoder.json").is_file() and (Path(c) / "vocab.bpe").is_file():
            return Path(c).resolve()
    raise SystemExit("The GPT-2 BPE files (encoder.json, vocab.bpe) were not found: give --bpe-dir DIR or set "
                     "GPTTUI_GPT2_BPE_DIR.")


def machine(base: dict) -> str:
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        ram = int(f.readline().split()[1]) * 1024
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return (f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}, {ram / 2**30:.0f} GiB RAM; "
            f"torch {base['torch']}, tiktoken {base['tiktoken']}, Python {sys.version.split()[0]}; commit {commit}")


def human(n: int) -> str:
    """100 MB, 2 GB (powers of ten, as --sizes reads them)."""
    return f"{n / 10**9:g} GB" if n >= 10**9 else f"{n / MB:g} MB"


def check_disk(workdir: Path, size: int) -> None:
    """Stop with a clear message, before anything is written, when the corpus and its token cache won't fit."""
    need, free = int(size * 1.7) + 512 * MIB, shutil.disk_usage(workdir).free
    if free < need:
        raise SystemExit(f"{human(size)}: {free / 2**30:.1f} GiB free in {workdir}, about {need / 2**30:.1f} GiB "
                         "needed (the corpus and its token cache); free some space, pick another --workdir or "
                         "smaller --sizes.")


def measure_size(label: str, size: int, args: argparse.Namespace, env: dict, base_rss: int) -> dict:
    """Generate (or reuse) one corpus, run tiktoken, gpttui cold and gpttui reopened on it; delete it after."""
    workdir = args.workdir
    if not (workdir / f"corpus-{label}").exists():
        check_disk(workdir, size)
    log(f"{label}: generating the corpus")
    t0 = time.perf_counter()
    folder, nbytes, made = ensure_corpus(workdir, label, size, args.seed, not args.no_jsonl)
    log(f"{label}: {nbytes / MB:.0f} MB in {len(list(folder.iterdir()))} files "
        f"({'made' if made else 'reused'}, {time.perf_counter() - t0:.1f} s)")
    tik, cold, reopen = [], [], None
    try:
        for r in range(args.rounds):  # interleaved; the best time of each counts (the machine may be shared)
            with tempfile.TemporaryDirectory(dir=workdir) as home:  # get_tokenizer makes folders in its home
                log(f"{label}: tiktoken{f' (round {r + 1})' if args.rounds > 1 else ''}")
                tik.append(run_child("tiktoken", str(folder), home, env, args))
            with tempfile.TemporaryDirectory(dir=workdir, prefix=f"home-{label}-") as home:
                log(f"{label}: gpttui, cold cache")
                cold.append(run_child("cold", str(folder), home, env, args))
                if r == args.rounds - 1:
                    log(f"{label}: gpttui, reopened")
                    reopen = run_child("reopen", str(folder), home, env, args)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            (workdir / f"corpus-{label}.json").unlink(missing_ok=True)
    best_tik, best_cold = min(tik, key=lambda t: t["seconds"]), min(cold, key=lambda c: c["seconds"])
    peak = max(c["peak_rss"] for c in cold)
    return {"label": label, "size": size, "bytes": nbytes, "tiktoken": best_tik, "cold": best_cold,
            "reopen": reopen, "gpttui_mbs": nbytes / MB / best_cold["seconds"],
            "tiktoken_mbs": nbytes / MB / best_tik["seconds"], "rss_above": peak - base_rss,
            "reopen_rss_above": reopen["peak_rss"] - base_rss,
            "rounds": {"tiktoken_s": [t["seconds"] for t in tik], "gpttui_s": [c["seconds"] for c in cold]}}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def report(rows: list[dict], base: dict, args: argparse.Namespace) -> bool:
    """Print the README's table, the details and the goals; True when every goal measured here is met."""
    print(f"\nMachine: {machine(base)}")
    print(f"Workers: {args.workers} (tiktoken's threads; gpttui: "
          f"{rows[0]['cold'].get('workers_knob') or 'its own default, prepare_data has no setting for it'}). "
          f"Baseline child (torch, gpttui.core.data and the GPT-2 tokenizer loaded): {base['peak_rss'] / MIB:.0f} MiB."
          f"\nMB = 10^6 bytes of the corpus on disk; memory in MiB.\n")
    print("| corpus | tokens | gpttui MB/s | tiktoken MB/s | ratio | peak RSS above baseline | reopen s | "
          "first batch s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        flag = "" if r["cold"]["tokens"] == r["tiktoken"]["tokens"] else " (!)"
        print(f"| {human(r['size'])} | {r['cold']['tokens']:,}{flag} | {r['gpttui_mbs']:.1f} | "
              f"{r['tiktoken_mbs']:.1f} | {r['gpttui_mbs'] / r['tiktoken_mbs']:.2f} | "
              f"{r['rss_above'] / MIB:,.0f} MiB | {r['reopen']['seconds']:.2f} | {r['reopen']['first_batch']:.2f} |")
    print("\n| corpus | bytes | gpttui s (cores busy) | tiktoken s (cores busy) | tiktoken tokens | gpttui peak RSS "
          "(anon), processes | PSS above baseline's | reopened: from cache, peak RSS above baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c, t, o = r["cold"], r["tiktoken"], r["reopen"]
        pss = f"{(c['peak_pss'] - base['peak_pss']) / MIB:,.0f} MiB" if args.pss else "(--pss)"
        print(f"| {human(r['size'])} | {r['bytes']:,} | {c['seconds']:.2f} ({c['cpu'] / c['seconds']:.1f}) | "
              f"{t['seconds']:.2f} ({t['cpu'] / t['seconds']:.1f}) | {t['tokens']:,} | "
              f"{c['peak_rss'] / MIB:,.0f} ({c['peak_anon'] / MIB:,.0f}) MiB, {c['procs']} | {pss} | "
              f"{o['from_cache']}, {r['reopen_rss_above'] / MIB:,.0f} MiB |")
    if any(r["cold"]["tokens"] != r["tiktoken"]["tokens"] for r in rows):
        print("\n(!) gpttui's token count differs from tiktoken's (its pieces plus one <|endoftext|> between "
              "documents): gpttui tokenized a different text (today's main skips the .jsonl).")
    return goals(rows)


def goals(rows: list[dict]) -> bool:
    """Issue 16's goals, for the sizes measured: met or not, one line each."""
    checks = []
    for r in rows:
        name = human(r["size"])
        checks.append((f"{name}: throughput >= 0.9x tiktoken's", r["gpttui_mbs"] / r["tiktoken_mbs"] >= 0.9))
        if r["size"] >= 500 * MB:
            checks.append((f"{name}: peak RSS above baseline <= 500 MB", r["rss_above"] <= 500 * MB))
        checks.append((f"{name}: reopen < 1 s", r["reopen"]["seconds"] < 1.0))
        checks.append((f"{name}: first batch < 2 s", r["reopen"]["first_batch"] < 2.0))
    if len(rows) > 1:
        small, big = rows[0]["rss_above"], max(r["rss_above"] for r in rows)
        checks.append((f"peak RSS above baseline flat from {human(rows[0]['size'])} to {human(rows[-1]['size'])} "
                       "(at most 25% or 64 MiB above the smallest's)", big <= max(small * 1.25, small + 64 * MIB)))
    print("\nGoals (issue 16):")
    for text, ok in checks:
        print(f"- {'met' if ok else 'NOT met'}: {text}")
    return all(ok for _, ok in checks)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100M,500M,2G", help="corpus sizes, comma-separated (K/M/G: powers of 10)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tiktoken's threads (gpttui's "
                   "processes, where prepare_data can be told)")
    p.add_argument("--workdir", type=Path, help="where corpora and caches go (default: a new folder in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the generated corpora (reused by the next run)")
    p.add_argument("--no-jsonl", action="store_true", help="only .txt files")
    p.add_argument("--rounds", type=int, default=1, help="tiktoken and cold gpttui runs per size, interleaved; "
                   "the fastest of each counts, the highest peak memory")
    p.add_argument("--pss", action="store_true", help="also sample the tree's PSS (shared pages divided among "
                   "the processes that share them; reads smaps_rollup, a little costlier)")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--bpe-dir", help="a directory with encoder.json and vocab.bpe")
    p.add_argument("--timeout", type=float, default=3600, help="seconds each child may run")
    p.add_argument("--json", type=Path, help="also write the measurements here")
    args = p.parse_args()
    if args.rounds < 1 or args.workers < 1:
        p.error("--rounds and --workers must be at least 1")
    try:
        sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    if not sizes or sizes[0] < 100_000:
        p.error("--sizes: give at least one size, each of 100K or more")
    env = dict(os.environ, PYTHONPATH=str(REPO), GPTTUI_GPT2_BPE_DIR=str(find_bpe_dir(args.bpe_dir)))
    made_workdir = args.workdir is None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpttui-bench-tok-", dir="/tmp")).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        check_disk(args.workdir, sizes[-1])  # the largest, before minutes go into the smaller ones
        with tempfile.TemporaryDirectory(dir=args.workdir) as home:
            log("baseline child")
            base = run_child("base", "", home, env, args)
        for size in sizes:
            rows.append(measure_size(human(size).replace(" ", ""), size, args, env, base["peak_rss"]))
    finally:
        if made_workdir and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        elif args.keep:
            log(f"corpora kept in {args.workdir} (reused with --workdir {args.workdir})")
    ok = report(rows, base, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(base), "base": base, "rows": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
