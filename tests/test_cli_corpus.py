"""Corpora at scale on the command line (issue 16, items 3-5): the per-source table of `gpttui data stats`,
tokenizing progress (plain lines in a log, a rich bar on a terminal) with one summary line, `--text-field` and
`--split`, and Ctrl+C while tokenizing: exit 130, the Cancelled message, no traceback."""

from __future__ import annotations

import io
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from rich.console import Console

from gpttui.cli import _data_settings, build_parser, main
from gpttui.cli_output import Out
from gpttui.cli_progress import TokenizeReporter, plain_line, source_table_lines, wants_source_table
from gpttui.core.corpus_types import SourceStats, TokenizeProgress
from gpttui.core.data import DataSettings, prepare_data
from gpttui.core.tokenizer import ByteTokenizer

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there can all model token window story learned").split()
PROGRESS = re.compile(r"^Tokenizing: (\d+)% \((\d+\.\d)/(\d+\.\d) MB\), \d+\.\d [KMG]B/s, [\d.]+[KMB]? tokens"
                      r"(, ETA \d+:\d\d)?$")
SUMMARY = re.compile(r"^Tokenized (\d+\.\d) MB into ([\d,]+) tokens in \d+\.\d s \(\d+\.\d [KMG]B/s\)$")


def write_corpus(path, megabytes: float, seed: int = 0) -> None:
    """A text of ``megabytes`` MB: a 1 MB block of random words and numbers, repeated with a numbered heading
    (quick to write; tokenizing it costs as much as any text of its size)."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < 1_000_000:
        line = " ".join(rng.choice(WORDS) + (str(rng.randint(0, 9999)) if rng.random() < 0.2 else "")
                        for _ in range(14)) + ".\n"
        lines.append(line)
        size += len(line)
    block = "".join(lines)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(max(1, round(megabytes))):
            f.write(f"Part {i}.\n{block}")


def make_folder(root):
    """Three text inputs (one in a subfolder) and one that is not UTF-8 (skipped)."""
    folder = root / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Alpha document. " * 200, encoding="utf-8")
    (folder / "b.md").write_text("# Beta\n\nA markdown document. " * 100, encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("Gamma, in a subfolder.\n" * 150, encoding="utf-8")
    (folder / "latin1.txt").write_bytes("caf\xe9 na\xefve \xe0 la cr\xe8me\n".encode("latin-1") * 50)
    return folder


# --- the per-source table ------------------------------------------------------------------------------

def test_the_source_table_lists_skipped_inputs_first_and_at_most_twenty_rows():
    sources = [SourceStats(f"doc{i:02}.txt", "text", 100, 1, 90 + i, 20 + i) for i in range(30)]
    sources.insert(25, SourceStats("broken.txt", "text", skipped="not UTF-8 text"))
    sources.append(SourceStats("records.jsonl", "jsonl", 500, 7, 400, 99, bad_lines=2, missing_field=1))
    lines = source_table_lines(sources)
    assert lines[0] == "Inputs: 32 (1 skipped)"
    assert lines[1].split() == ["INPUT", "KIND", "DOCUMENTS", "CHARACTERS", "TOKENS", "NOTES"]
    assert lines[2].split()[:5] == ["broken.txt", "text", "-", "-", "-"]  # first, though read 26th
    assert lines[2].endswith("skipped: not UTF-8 text")
    assert lines[3].split() == ["doc00.txt", "text", "1", "90", "20"]
    assert len(lines) == 2 + 20 + 1
    assert lines[-1] == "  … and 12 more inputs (--json lists them all)"  # records.jsonl among them
    # many skipped: the tail says how many of the hidden ones were skipped
    many = [SourceStats(f"bad{i}.bin", "text", skipped="binary") for i in range(25)] + sources[:3]
    assert source_table_lines(many)[-1] == "  … and 8 more inputs (5 skipped) (--json lists them all)"
    notes = source_table_lines([sources[-1]])[-1]
    assert notes.endswith("2 line(s) not JSON; 1 record(s) without the text field")
    empty = source_table_lines([SourceStats("empty.txt", "text", 0, empty=1), sources[0]])
    assert empty[2].split() == ["empty.txt", "text", "0", "0", "0", "no", "text"]  # left out, and said so


def test_a_single_clean_input_gets_no_table_but_one_with_notes_does():
    clean = SourceStats("story.txt", "text", 100, 1, 100, 25)
    assert not wants_source_table([clean]) and not wants_source_table([])
    assert wants_source_table([SourceStats("story.txt", "text", replaced_bytes=3)])
    assert wants_source_table([clean, clean])


def test_data_stats_prints_the_inputs_of_a_folder_and_json_lists_them_all(tmp_path, capsys):
    folder = make_folder(tmp_path)
    argv = ["data", "stats", "--data", str(folder), "--tokenizer", "bytes", "--context-length", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("Inputs: "))
    assert out[start] == "Inputs: 4 (1 skipped)"
    rows = [line.split() for line in out[start + 2:start + 6]]
    assert rows[0][:2] == ["latin1.txt", "text"] and "skipped:" in out[start + 2]  # skipped first
    assert [r[0] for r in rows[1:]] == ["a.txt", "b.md", "sub/c.txt"]
    assert rows[1][2:5] == ["1", "3,200", "3,200"]  # one document, bytes tokenizer: a token per character
    assert main(argv + ["--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert sorted(s["name"] for s in record["sources"]) == ["a.txt", "b.md", "latin1.txt", "sub/c.txt"]
    assert sum(s["tokens"] for s in record["sources"]) == record["tokens"]  # each with the <|endoftext|> before it


# --- --text-field and --split -------------------------------------------------------------------------

def test_text_field_and_split_reach_the_data_settings(tmp_path, capsys):
    args = build_parser().parse_args(["data", "stats", "--text-field", "content", "--split", "validation"])
    settings = _data_settings(args)
    assert (settings.text_field, settings.split) == ("content", "validation")
    plain = _data_settings(build_parser().parse_args(["data", "stats"]))
    assert (plain.text_field, plain.split) == ("text", "train")
    args = build_parser().parse_args(["train", "--text-field", "body"])
    assert _data_settings(args).text_field == "body"
    # and through a whole command: the settings it reports
    story = tmp_path / "story.txt"
    story.write_text("A short story, told once. " * 200, encoding="utf-8")
    assert main(["data", "stats", "--data", str(story), "--tokenizer", "bytes", "--context-length", "16",
                 "--text-field", "content", "--split", "validation", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["settings"]["text_field"] == "content" and record["settings"]["split"] == "validation"


# --- progress -----------------------------------------------------------------------------------------

def test_progress_in_a_log_is_a_line_per_tenth_then_the_summary(tmp_path, capsys, bpe_dir):
    """stderr is not a terminal here: plain lines, each 10 % further, then the summary with the token count
    that the statistics print; stdout keeps only the statistics. A second run reads the cache."""
    corpus = tmp_path / "big.txt"
    write_corpus(corpus, 12)  # above 8 MB: the worker pool; about a second and a half on two cores
    argv = ["data", "stats", "--data", str(corpus), "--context-length", "64"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line]
    progress = [PROGRESS.match(line) for line in err[:-1]]
    assert progress and all(progress), err
    percents = [int(m.group(1)) for m in progress]
    assert percents == sorted(percents) and len(set(p // 10 for p in percents)) == len(percents)  # one a tenth
    assert {m.group(3) for m in progress} == {"12.0"}
    summary = SUMMARY.match(err[-1])
    assert summary and summary.group(1) == "12.0", err[-1]
    tokens = next(line for line in captured.out.splitlines() if line.startswith("Tokens "))
    assert tokens.split()[1] == summary.group(2)
    assert "Tokenizing" not in captured.out
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"Tokens from the cache \(\d+\.\d\d s\)", err[-1]), err


def test_a_plain_line_drops_percent_and_eta_when_the_total_is_unknown():
    known = TokenizeProgress("tokenizing", 230_100_000, 512_000_000, 118_234_567, 18.56)
    assert plain_line(known) == "Tokenizing: 45% (230.1/512.0 MB), 12.4 MB/s, 118.2M tokens, ETA 0:22"
    hub = TokenizeProgress("tokenizing", 230_100_000, 0, 118_234_567, 18.56)
    assert plain_line(hub) == "Tokenizing: 230.1 MB, 12.4 MB/s, 118.2M tokens"
    big = TokenizeProgress("reading", 12_300_000_000, 51_200_000_000, 0, 100.0)
    assert plain_line(big).startswith("Reading: 24% (12.3/51.2 GB), 123.0 MB/s")


def test_the_plain_reporter_prints_once_per_tenth_whatever_the_reports(capsys):
    reporter = TokenizeReporter(Out(), tty=False)
    for done in range(0, 1001):  # a report per thousandth
        reporter(TokenizeProgress("tokenizing", done * 1000, 1_000_000, done * 250, 1.0 + done / 100))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == [f"{p}%" for p in range(10, 100, 10)]  # 100%: the summary


def test_on_a_terminal_a_bar_with_the_rate_and_eta_then_the_summary(capsys):
    """A real rich console that believes it is a terminal, writing to a buffer."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    settings = DataSettings(source="builtin:pydoc-20k", tokenizer="bytes", context_length=32)
    with TokenizeReporter(Out(), label="pydoc", tty=True, console=console) as reporter:
        reporter(TokenizeProgress("tokenizing", 230_100_000, 512_000_000, 118_234_567, 18.56))
        prepared = prepare_data(settings, ByteTokenizer())
        reporter.finish(prepared)
    drawn = buffer.getvalue()
    assert "Tokenizing pydoc" in drawn and "45%" in drawn
    assert "230.1/512.0 MB · 12.4 MB/s · 118.2M tokens · ETA 0:22" in drawn
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"Tokenized 512.0 MB into {prepared.stats.tokens:,} tokens in ")
    assert err[-1].endswith("B/s)")


# --- Ctrl+C -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.txt"
    write_corpus(path, 40)
    return path


def _interrupt_when_tokenizing(argv: list[str], timeout: float = 120.0) -> tuple[int, str, str]:
    """Run ``gpttui ARGV`` in a session of its own, and at its first progress line send SIGINT to the
    whole process group, as a terminal's Ctrl+C does (worker processes included). Exit status, stdout,
    stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "gpttui", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    seen = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no progress line within {timeout} s: {seen}"
            ready, _, _ = select.select([proc.stderr], [], [], left)
            if not ready:
                continue
            line = proc.stderr.readline()
            assert line, f"ended before any progress line (exit {proc.wait()}): {seen}"
            seen.append(line)
            if line.startswith("Tokenizing: "):
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, "".join(seen) + err


@pytest.mark.parametrize("command", [["data", "stats"],
                                     ["train", "--preset", "tiny", "--n-layers", "1", "--emb-dim", "32",
                                      "--n-heads", "2", "--context-length", "32", "--device", "cpu",
                                      "--max-steps", "1"]], ids=["data-stats", "train"])
def test_ctrl_c_while_tokenizing_cancels_cleanly_and_exits_130(big_corpus, bpe_dir, command):
    code, out, err = _interrupt_when_tokenizing([*command, "--data", str(big_corpus)])
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.lower().startswith("tokenizing") and "cancel" in last.lower(), err
    assert not re.search(r"^Tokenized ", err, re.M)  # no summary: it did not finish
    assert out == ""  # no statistics, no training
