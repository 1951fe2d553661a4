"""Control characters in generated text: one rule (gpttui.core.printable) for the app and the CLI;
`gpttui generate` escapes them unless --raw, and --json stays JSON."""

from __future__ import annotations

import json

import torch

from gpttui import cli
from gpttui.core import checkpoints
from gpttui.core.config import GPTConfig
from gpttui.core.generate import SamplingConfig, generate
from gpttui.core.model import GPTModel
from gpttui.core.printable import (CONTROL, StreamEscaper, blank_reply_note, describe_blank, escape_controls,
                                   is_control, split_controls)
from gpttui.core.tokenizer import ByteTokenizer

TINY = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)
NASTY = "red \x1b[31mALERT\x1b[0m bell\x07 del\x7f csi\x9b2J nul\x00 end"


def test_what_is_a_control_character():
    assert [c for c in map(chr, range(0x100)) if is_control(c)] == (
        [chr(c) for c in range(0x20) if c not in (9, 10)] + [chr(c) for c in range(0x7F, 0xA0)])
    for ch in "\n\t a€␛\u00a0":
        assert not is_control(ch)


def test_escape_shows_every_control_and_keeps_text():
    shown = escape_controls(NASTY)
    assert shown == "red ␛[31mALERT␛[0m bell␇ del␡ csi\\x9b2J nul␀ end"
    assert not CONTROL.search(shown)
    assert escape_controls("line 1\n\tline 2") == "line 1\n\tline 2"  # newlines and tabs are text
    assert escape_controls("a\r\nb\rc") == "a\nb␍c"  # CRLF is a line break, a lone CR is shown
    assert split_controls("x\x1by") == [("x", False), ("␛", True), ("y", False)]


def test_stream_escaper_equals_the_whole_text_whatever_the_cut():
    text = NASTY + "\r\nnext\r"
    for cut in range(len(text) + 1):
        escaper = StreamEscaper()
        assert escaper.feed(text[:cut]) + escaper.feed(text[cut:]) + escaper.flush() == escape_controls(text)


def test_blank_replies_are_described():
    assert describe_blank("\n\n\n") == "3 newlines"
    assert describe_blank(" \n\t ") == "1 newline, 2 spaces, 1 tab"
    assert describe_blank("\r\n") == "1 newline"
    assert describe_blank("\u00a0") == "1 other blank character"
    assert describe_blank("") == "nothing"
    assert describe_blank(" x ") is None
    assert describe_blank("\x1c ") is None  # a control character shows (as ␜)
    assert describe_blank("\r") is None
    assert blank_reply_note("\n\n\n") == "(the model replied with whitespace only: 3 newlines)"
    assert blank_reply_note("hi") is None


def control_seed(name: str, prompt: str = "abc") -> tuple[int, str]:
    """Save an untrained tiny byte model as ``name`` (it samples bytes nearly uniformly) and find a
    seed whose 20 tokens sampled after ``prompt`` hold an ESC: (seed, the engine's text for it)."""
    torch.manual_seed(0)
    checkpoints.save_checkpoint(name, GPTModel(TINY), meta={"tokenizer": "bytes", "source": "trained"})
    model = checkpoints.load_checkpoint(name).model
    for seed in range(50):
        text = generate(model, ByteTokenizer(), prompt, SamplingConfig(max_new_tokens=20, temperature=1.0,
                                                                      seed=seed)).text
        if "\x1b" in text:
            return seed, text
    raise AssertionError("no seed in 0..49 sampled an ESC from a near-uniform byte model")


def run_generate(capsys, name: str, seed: int, *extra: str) -> tuple[str, str]:
    argv = ["generate", "--checkpoint", name, "--prompt", "abc", "--max-new-tokens", "20", "--temperature", "1.0",
            "--seed", str(seed), "--device", "cpu", *extra]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_cli_escapes_control_characters_unless_raw(capsys):
    seed, text = control_seed("noisy")
    out, err = run_generate(capsys, "noisy", seed)
    assert out == escape_controls("abc" + text) + "\n"
    assert "␛" in out and not CONTROL.search(out)
    assert f"seed {seed}" in err

    raw, _ = run_generate(capsys, "noisy", seed, "--raw")
    assert raw == "abc" + text + "\n"  # exactly what the model wrote, ESC included

    as_json, _ = run_generate(capsys, "noisy", seed, "--json")
    assert json.loads(as_json)["text"] == text  # JSON escapes them its own way, and reads back exact
    assert "\x1b" not in as_json


def save_newline_model(name: str) -> None:
    """A real tiny model whose weights make it say "\n" after anything: its final norm outputs all
    ones and only the newline byte's output row is non-zero."""
    model = GPTModel(TINY)
    with torch.no_grad():
        model.final_norm.scale.zero_()
        model.final_norm.shift.fill_(1.0)
        model.out_head.weight.zero_()
        model.out_head.weight[ord("\n")] = 1.0
    checkpoints.save_checkpoint(name, model, meta={"tokenizer": "bytes", "source": "trained"})


def test_cli_says_when_the_reply_is_only_whitespace(capsys):
    save_newline_model("newlines")
    argv = ["generate", "--checkpoint", "newlines", "--prompt", "Hi", "--max-new-tokens", "3", "--device", "cpu"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "Hi\n\n\n\n"
    assert "(the model replied with whitespace only: 3 newlines)" in captured.err


def test_training_samples_print_control_characters_as_symbols(capsys):
    from gpttui.cli_output import EventPrinter, Out
    from gpttui.core.events import SampleEvent

    EventPrinter(Out(), as_json=False)(SampleEvent(5, 1, "Every", "Every\x1b[2J effort\nmoves\x07"))
    assert capsys.readouterr().out == "Every\u241b[2J effort moves\u2407\n"
