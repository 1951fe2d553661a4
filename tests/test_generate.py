"""Generation: greedy equals the book's generate_text_simple / generate token for token (past the context
length too, with and without the KV cache), seeded sampling, the logits processors, stop strings, eos,
cancel, UTF-8 streaming, beam search, per-token details, and the ``gpttui generate`` command."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import threading

import pytest
import torch

import book_reference as book
from gpttui import cli
from gpttui.core import checkpoints, decoding, fastdecode
from gpttui.core import generate as G
from gpttui.core.config import GPTConfig
from gpttui.core.errors import ConfigError
from gpttui.core.beam_search import beam_search
from gpttui.core.generate import (
    SamplingConfig,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    generate,
    generate_greedy,
    generate_ids,
    parse_stop_strings,
    sample_text,
    stream,
)
from gpttui.core.model import GPTModel, book_state_dict
from gpttui.core.tokenizer import get_tokenizer

BYTES = get_tokenizer("bytes")
CONFIGS = {
    "ctx16": GPTConfig(vocab_size=257, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0),
    "ctx32-bias-tied": GPTConfig(vocab_size=257, context_length=32, emb_dim=48, n_heads=3, n_layers=2,
                                 drop_rate=0.1, qkv_bias=True, tie_weights=True),
}
INF = float("-inf")


def _model(cfg: GPTConfig, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(cfg).eval()


def _book_twin(model: GPTModel) -> book.GPTModel:
    ref = book.GPTModel(model.cfg.to_book_dict())
    ref.load_state_dict(book_state_dict(model), strict=True)
    return ref.eval()


def _prompt(n: int, seed: int = 1) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# A GPTModel whose weights make the greedy continuation of each token the next one of CYCLE: its blocks add
# nothing (zero output projections), the position embeddings are zero, and the output layer maps each
# token's embedding to its successor's logit. Instant, deterministic text with multi-byte characters.
CYCLE_TEXT = "Hey é😀漢!\n<|endoftext|>"
CYCLE = BYTES.encode(CYCLE_TEXT)
assert len(set(CYCLE)) == len(CYCLE) == 16


def _cycle_model(context_length: int = 16) -> GPTModel:
    cfg = GPTConfig(vocab_size=257, context_length=context_length, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)
    model = _model(cfg)
    with torch.no_grad():
        for block in model.trf_blocks:
            block.att.out_proj.weight.zero_()
            block.att.out_proj.bias.zero_()
            block.ff.layers[2].weight.zero_()
            block.ff.layers[2].bias.zero_()
        model.pos_emb.weight.zero_()
        model.out_head.weight.zero_()
        for j, token in enumerate(CYCLE):
            model.tok_emb.weight[token] = 0.0
            model.tok_emb.weight[token, j] = 10.0
            model.out_head.weight[CYCLE[(j + 1) % len(CYCLE)], j] = 5.0
    return model


def _run(model, prompt, cfg, **kwargs):
    s = stream(model, BYTES, prompt, cfg, **kwargs)
    events = list(s)
    return events, s.result


# --- greedy = the book -----------------------------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("prompt_len", [5, 20])
def test_greedy_equals_the_book_past_the_context(name, use_cache, prompt_len):
    cfg = CONFIGS[name]
    model = _model(cfg)
    ref = _book_twin(model)
    prompt = _prompt(prompt_len)
    idx = torch.tensor([prompt])
    expected = book.generate_text_simple(ref, idx, 100, cfg.context_length)
    assert expected.shape[1] == prompt_len + 100 > 3 * cfg.context_length  # well past the context
    assert torch.equal(expected, book.generate(ref, idx, 100, cfg.context_length, temperature=0.0))
    sc = SamplingConfig(max_new_tokens=100, eos_id=None, use_cache=use_cache)
    assert torch.equal(generate_ids(model, idx, sc), expected)
    result = generate(model, BYTES, prompt, sc)  # the text API, from token ids
    assert result.token_ids == expected[0, prompt_len:].tolist()
    assert result.new_tokens == 100 and result.stopped_by == "max_tokens" and result.prompt_tokens == prompt_len
    # The trainer's helper too, on a batch of two.
    batch = torch.tensor([prompt, _prompt(prompt_len, seed=2)])
    assert torch.equal(generate_greedy(model, batch, 100, cfg.context_length),
                       book.generate_text_simple(ref, batch, 100, cfg.context_length))


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_eos_stops_where_the_book_stops(use_cache):
    cfg = CONFIGS["ctx16"]
    model = _model(cfg)
    ref = _book_twin(model)
    prompt = _prompt(5)
    idx = torch.tensor([prompt])
    free = book.generate_text_simple(ref, idx, 60, 16)[0, 5:].tolist()
    eos = free[40]
    first = free.index(eos)
    expected = book.generate(ref, idx, 60, 16, eos_id=eos)
    assert expected.shape[1] == 5 + first
    sc = SamplingConfig(max_new_tokens=60, eos_id=eos, use_cache=use_cache)
    assert torch.equal(generate_ids(model, idx, sc), expected)
    result = generate(model, BYTES, prompt, sc)
    assert result.token_ids == free[:first] and result.stopped_by == "eos"


def test_sample_text_is_the_books_generate_and_print_sample():
    cfg = CONFIGS["ctx16"]
    model = _model(cfg)
    ref = _book_twin(model)
    ids = BYTES.encode("Every effort moves you")
    out = book.generate_text_simple(ref, torch.tensor([ids]), 30, 16)
    assert sample_text(model, BYTES, "Every effort moves you", 30, 16) == BYTES.decode(out[0].tolist())


def test_book_model_runs_uncached():
    cfg = CONFIGS["ctx16"]
    model = _model(cfg)
    ref = _book_twin(model)
    idx = torch.tensor([_prompt(4)])
    sc = SamplingConfig(max_new_tokens=30, eos_id=None, use_cache=False)
    assert torch.equal(generate_ids(ref, idx, sc), book.generate_text_simple(ref, idx, 30, 16))


# --- sampling ------------------------------------------------------------------------------------------------

SAMPLERS = {
    "temperature": dict(temperature=0.9),
    "top-k": dict(temperature=1.2, top_k=20),
    "top-p": dict(temperature=1.0, top_p=0.8),
    "all + repetition penalty": dict(temperature=0.7, top_k=50, top_p=0.95, repetition_penalty=1.3),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_seeded_sampling_is_reproducible_with_and_without_cache(name):
    cfg = CONFIGS["ctx16"]
    model = _model(cfg)
    prompt = _prompt(6)
    base = SamplingConfig(max_new_tokens=60, eos_id=None, seed=1234, **SAMPLERS[name])
    rng = torch.get_rng_state()
    cached = generate(model, BYTES, prompt, base)
    uncached = generate(model, BYTES, prompt, base.replace(use_cache=False))
    again = generate(model, BYTES, prompt, base)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is neither used nor reseeded
    assert cached.token_ids == uncached.token_ids == again.token_ids
    assert cached.seed == 1234
    other = generate(model, BYTES, prompt, base.replace(seed=99))
    assert other.token_ids != cached.token_ids
    greedy = generate(model, BYTES, prompt, SamplingConfig(max_new_tokens=60, eos_id=None))
    assert cached.token_ids != greedy.token_ids


def test_unseeded_sampling_reports_its_seed():
    model = _model(CONFIGS["ctx16"])
    sc = SamplingConfig(max_new_tokens=20, eos_id=None, temperature=1.0)
    a = generate(model, BYTES, "abc", sc)
    assert isinstance(a.seed, int)
    assert generate(model, BYTES, "abc", sc.replace(seed=a.seed)).token_ids == a.token_ids
    assert generate(model, BYTES, "abc", SamplingConfig(max_new_tokens=5)).seed is None  # greedy


def test_samples_follow_the_distribution():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([G.sample_from(probs, g) for _ in range(8000)]).flatten()
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert freq[1] == 0  # never a zero-probability token
    assert torch.allclose(freq, probs[0].double(), atol=0.02)


def test_top_k_sampling_only_draws_from_the_top_k():
    cfg = CONFIGS["ctx16"]
    model = _model(cfg)
    prompt = _prompt(4)
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]
    top3 = set(torch.topk(logits, 3).indices.tolist())
    firsts = {generate(model, BYTES, prompt, SamplingConfig(max_new_tokens=1, temperature=5.0, top_k=3,
                                                              seed=s, eos_id=None)).token_ids[0] for s in range(40)}
    assert firsts == top3


# --- logits processors ------------------------------------------------------------------------------------

def test_top_k():
    logits = torch.tensor([[1.0, 3.0, 2.0, 5.0, 4.0], [0.0, 0.0, 1.0, -1.0, 2.0]])
    out = apply_top_k(logits, 2)
    assert out.tolist() == [[INF, INF, INF, 5.0, 4.0], [INF, INF, 1.0, INF, 2.0]]
    assert apply_top_k(torch.tensor([3.0, 1.0, 3.0, 2.0]), 1).tolist() == [3.0, INF, 3.0, INF]  # ties kept
    assert torch.equal(apply_top_k(logits, 5), logits) and torch.equal(apply_top_k(logits, None), logits)
    assert torch.equal(apply_top_k(logits, 99), logits)
    assert logits[0, 0] == 1.0  # input untouched
    # The book's own top-k filter agrees.
    book_way = torch.where(logits < torch.topk(logits, 2).values[:, -1:], torch.tensor(INF), logits)
    assert torch.equal(out, book_way)


def test_top_p():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    kept = lambda p: (apply_top_p(logits, p) > INF).tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]
    assert kept(0.79) == [False, True, False, True]
    assert kept(0.81) == [False, True, True, True]
    assert kept(0.96) == [True, True, True, True]
    assert kept(1e-6) == [False, True, False, False]  # always the most likely one
    assert torch.equal(apply_top_p(logits, 1.0), logits)
    out = apply_top_p(logits, 0.81)
    assert torch.allclose(out[1:], logits[1:])  # kept logits unchanged; renormalised by the softmax
    renorm = torch.softmax(out, -1)
    assert torch.allclose(renorm, torch.tensor([0.0, 0.5, 0.15, 0.3]) / 0.95)
    batch = torch.stack([logits, logits.flip(0)])
    assert (apply_top_p(batch, 0.5) > INF).tolist() == [[False, True, False, False], [False, False, True, False]]


def test_repetition_penalty():
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.5])
    assert apply_repetition_penalty(logits, [0, 1, 1], 2.0).tolist() == [1.0, -4.0, 1.0, -1.0, 0.5]
    assert apply_repetition_penalty(logits, [2, 3], 0.5).tolist() == [2.0, -2.0, 2.0, -0.5, 0.5]  # < 1 rewards
    assert torch.equal(apply_repetition_penalty(logits, [0, 1], 1.0), logits)
    assert torch.equal(apply_repetition_penalty(logits, [], 3.0), logits)
    rows = torch.stack([logits, logits])
    out = apply_repetition_penalty(rows, torch.tensor([[0], [4]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 1.0, -1.0, 0.5], [2.0, -2.0, 1.0, -1.0, 0.25]]
    # Penalised tokens always lose probability.
    p0, p1 = torch.softmax(logits, -1), torch.softmax(apply_repetition_penalty(logits, [0, 1], 1.5), -1)
    assert p1[0] < p0[0] and p1[1] < p0[1]
    with pytest.raises(ConfigError, match="repetition_penalty"):
        apply_repetition_penalty(logits, [0], 0.0)


def test_repetition_penalty_in_generation_covers_prompt_and_output():
    model = _model(CONFIGS["ctx16"])
    prompt = _prompt(6)
    plain = generate(model, BYTES, prompt, SamplingConfig(max_new_tokens=40, eos_id=None))
    strong = generate(model, BYTES, prompt, SamplingConfig(max_new_tokens=40, eos_id=None, repetition_penalty=1e6))
    assert len(set(plain.token_ids)) < 40  # a random model loops
    assert len(set(strong.token_ids)) == 40  # a huge penalty: nothing already seen comes again
    assert not set(strong.token_ids) & set(prompt)


def test_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    assert torch.equal(apply_temperature(logits, 1.0), logits)
    assert apply_temperature(logits, 2.0).tolist() == [1.0, 0.5, 0.0, -0.5]

    def entropy(t):
        p = torch.softmax(apply_temperature(logits, t), -1)
        return float(-(p * p.log()).sum())

    assert entropy(0.1) < entropy(0.5) < entropy(1.0) < entropy(2.0) < entropy(100.0) < math.log(4)
    assert torch.softmax(apply_temperature(logits, 0.01), -1)[0] > 0.999  # near greedy
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="temperature"):
            apply_temperature(logits, bad)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"temperature": -0.5}, "temperature must be a number >= 0"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p must be a number in (0, 1]"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k must be a whole number >= 1"),
        ({"top_k": 2.5}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a number > 0"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"num_beams": 0}, "num_beams must be a whole number >= 1"),
        ({"num_beams": 3, "temperature": 0.8}, "beam search (num_beams=3) is deterministic"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a whole number >= 1"),
        ({"max_new_tokens": "10"}, "max_new_tokens"),
        ({"length_penalty": float("inf")}, "length_penalty"),
        ({"seed": -1}, "seed"),
        ({"stop": ["ok", ""]}, "stop must be a list of non-empty strings"),
        ({"eos_id": -3}, "eos_id"),
        ({"eos_id": "end"}, "eos_id"),
    ],
)
def test_invalid_settings_raise_config_error(changes, words):
    sc = SamplingConfig(**changes)
    with pytest.raises(ConfigError) as err:
        sc.validate()
    assert words in str(err.value) and str(err.value).startswith("Invalid generation settings:")
    model = _model(CONFIGS["ctx16"])
    with pytest.raises(ConfigError):  # checked before any work, not as a torch error
        stream(model, BYTES, "hi", sc)
    with pytest.raises(ConfigError):
        generate_ids(model, torch.tensor([[1, 2]]), sc)


def test_config_checks_more():
    with pytest.raises(ConfigError) as err:
        SamplingConfig(temperature=-1, top_k=0, num_beams=0).validate()
    assert all(w in str(err.value) for w in ("temperature", "top_k", "num_beams"))
    assert SamplingConfig(stop="END").stop == ("END",)
    sc = SamplingConfig(temperature=0.7, stop=["a", "b"], seed=3)
    assert SamplingConfig.from_dict(sc.to_dict()) == sc
    with pytest.raises(ConfigError, match="Unknown generation settings: colour"):
        SamplingConfig.from_dict({"colour": 1})
    model = _model(CONFIGS["ctx16"])
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        stream(model, BYTES, "hi", SamplingConfig(eos_id=300))
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        stream(model, BYTES, [5, 400], SamplingConfig())
    with pytest.raises(ConfigError, match="one sequence"):
        generate_ids(model, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="need a tokenizer"):
        generate_ids(model, torch.zeros(1, 3, dtype=torch.long), SamplingConfig(stop=("x",)))


# --- stop strings, eos, cancel, UTF-8 -----------------------------------------------------------------------

def test_cycle_model_writes_its_text():
    events, result = _run(_cycle_model(), "Hey", SamplingConfig(max_new_tokens=42, eos_id=None))
    assert result.text == (" é😀漢!\n<|endoftext|>Hey é😀漢!\n<|endoftext|>Hey é😀漢")
    assert "".join(e.text for e in events) == result.text == BYTES.decode(result.token_ids)


def test_eos_stops_and_is_not_part_of_the_output():
    events, result = _run(_cycle_model(), "Hey", SamplingConfig(max_new_tokens=40))  # eos: the tokenizer's
    assert result.stopped_by == "eos" and result.text == " é😀漢!\n"
    assert BYTES.eot_id not in result.token_ids and len(events) == result.new_tokens == 12


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_utf8_deltas_are_whole_characters(use_cache):
    # 46 new tokens with a context of 16: past the context with the cache too.
    sc = SamplingConfig(max_new_tokens=46, eos_id=None, use_cache=use_cache)
    events, result = _run(_cycle_model(), "é😀漢!\n", sc)
    texts = [e.text for e in events]
    assert "".join(texts) == result.text == BYTES.decode(result.token_ids)
    assert all("\ufffd" not in t for t in texts)
    assert "😀" in texts and "漢" in texts and "é" in texts  # whole characters, once complete
    assert texts.count("") == 3 * (1 + 3 + 2)  # bytes held back: 1 of é, 3 of 😀, 2 of 漢 (three cycles)
    assert all(e.token_id is not None for e in events) and len(events) == 46


def test_an_unfinished_character_at_the_end_is_flushed():
    events, result = _run(_cycle_model(), "Hey é", SamplingConfig(max_new_tokens=2, eos_id=None))
    assert result.token_ids == [0xF0, 0x9F] and len(events) == 2
    assert "".join(e.text for e in events) == result.text == BYTES.decode(result.token_ids)


@pytest.mark.parametrize("stop, text", [
    ("😀", " é"),  # four tokens
    ("漢!", " é😀"),  # four tokens, two characters
    ("!\n", " é😀漢"),  # two tokens
    ("y é", " é😀漢!\n<|endoftext|>He"),  # found in the second cycle
])
def test_stop_strings_spanning_tokens(stop, text):
    events, result = _run(_cycle_model(), "Hey", SamplingConfig(max_new_tokens=40, eos_id=None, stop=(stop, "never")))
    assert result.stopped_by == "stop" and result.text == text
    assert "".join(e.text for e in events) == text  # nothing of the stop string was streamed
    assert BYTES.decode(result.token_ids).endswith(stop)  # the tokens up to the one completing it
    assert len(events) == result.new_tokens


@pytest.mark.parametrize("typed, stops", [
    ("é | 日本", ("é", "日本")),  # non-ASCII characters stay as they are (not "Ã©")
    (r"\n\n | " + '"."', ("\n\n", ".")),  # the field's placeholder: escapes, and quotes around a piece
    (r"a\\b | C:\path", ("a\\b", "C:\\path")),  # \\ is a backslash; one that starts no escape stays
    (r"\t|\|| \u00e9\x41 ", ("\t", "|", "éA")),
    ('" " | "a\\"" |  | ', (" ", 'a"')),  # quotes keep spaces; empty pieces are dropped
    ("", ()),
])
def test_parse_stop_strings(typed, stops):
    assert parse_stop_strings(typed) == stops


def test_parsed_non_ascii_stop_string_stops_generation():
    stop = parse_stop_strings("😀 | é")
    result = generate(_cycle_model(), BYTES, "H", SamplingConfig(max_new_tokens=30, eos_id=None, stop=stop))
    assert result.stopped_by == "stop" and result.text == "ey "


def test_text_that_only_starts_a_stop_string_is_held_then_released():
    events, result = _run(_cycle_model(), "Hey", SamplingConfig(max_new_tokens=12, eos_id=None, stop=("!X",)))
    assert result.stopped_by == "max_tokens" and result.text == " é😀漢!\n"
    texts = [e.text for e in events]
    assert texts[-2:] == ["", "!\n"]  # "!" waited for the next token, which ruled the stop string out
    events, result = _run(_cycle_model(), "Hey", SamplingConfig(max_new_tokens=11, eos_id=None, stop=("!X",)))
    assert [e.text for e in events][-1] == "!" and result.text == " é😀漢!"  # released at the end


def test_held_text_is_released_on_eos():
    events, result = _run(_cycle_model(), "Hey", SamplingConfig(max_new_tokens=40, stop=("\nX",)))
    assert result.stopped_by == "eos" and result.text == " é😀漢!\n"
    assert events[-1].token_id is None and events[-1].text == "\n"
    assert "".join(e.text for e in events) == result.text


@pytest.mark.parametrize("n", [0, 1, 7])
@pytest.mark.parametrize("beams", [1, 3])
def test_cancel_stops_exactly(n, beams):
    model = _model(CONFIGS["ctx16"])
    cancel = threading.Event()
    if n == 0:
        cancel.set()
    s = stream(model, BYTES, "abc", SamplingConfig(max_new_tokens=50, eos_id=None, num_beams=beams), cancel=cancel)
    seen = 0
    events = []
    for event in s:
        events.append(event)
        if event.token_id is None:  # text held back (here: bytes of an unfinished character), released at the end
            continue
        seen += 1
        if seen == n:
            cancel.set()
    assert all(e.token_id is not None for e in events[:-1])
    assert "".join(e.text for e in events) == s.result.text
    assert seen == n and s.result.new_tokens == n and s.result.stopped_by == "cancel"
    assert s.result.token_ids == generate(model, BYTES, "abc", SamplingConfig(max_new_tokens=n or 1, eos_id=None,
                                                                             num_beams=beams)).token_ids[:n]


def test_closing_a_stream_early_restores_the_model():
    model = _model(CONFIGS["ctx16"]).train()
    s = stream(model, BYTES, "abc", SamplingConfig(max_new_tokens=50, eos_id=None))
    next(s)
    assert not model.training  # eval while generating
    s.close()
    assert model.training and s.result.stopped_by == "cancel" and s.result.new_tokens == 1


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mode_is_restored_and_dropout_off(mode):
    cfg = CONFIGS["ctx32-bias-tied"]  # drop_rate 0.1
    model = _model(cfg).train(mode == "train")
    sc = SamplingConfig(max_new_tokens=30, eos_id=None)
    a = generate(model, BYTES, "hello", sc)
    b = generate(model, BYTES, "hello", sc.replace(num_beams=2))
    c = generate_ids(model, torch.tensor([[1, 2, 3]]), sc)
    assert model.training == (mode == "train")
    assert all(m.training == (mode == "train") for m in model.modules())
    assert generate(model, BYTES, "hello", sc).token_ids == a.token_ids  # no dropout noise
    assert b.new_tokens == 30 and c.shape == (1, 33)
    sample_text(model, BYTES, "hi", 5, cfg.context_length)
    assert model.training == (mode == "train")


def test_empty_prompt_starts_a_document():
    model = _model(CONFIGS["ctx16"])
    result = generate(model, BYTES, "", SamplingConfig(max_new_tokens=5, eos_id=None))
    assert result.prompt_tokens == 1 and result.new_tokens == 5
    expected = generate(model, BYTES, [BYTES.eot_id], SamplingConfig(max_new_tokens=5, eos_id=None))
    assert result.token_ids == expected.token_ids


# --- beam search -------------------------------------------------------------------------------------------

def _logprob(model: GPTModel, prompt: list[int], new: list[int]) -> float:
    """Sum of log p(new_i | prompt + new_<i) from one full forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + new]))[0].double()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(new)))


def test_one_beam_is_greedy():
    model = _model(CONFIGS["ctx16"])
    prompt = _prompt(5)
    greedy = generate(model, BYTES, prompt, SamplingConfig(max_new_tokens=40, eos_id=None))
    one = generate(model, BYTES, prompt, SamplingConfig(max_new_tokens=40, eos_id=None, num_beams=1))
    assert one.token_ids == greedy.token_ids
    # The beam search itself, with one beam, past the context length too.
    job = decoding.Job(model, prompt, SamplingConfig(max_new_tokens=40, eos_id=None, num_beams=1), None, None, 0, None)
    steps, stopped, _ = beam_search(job)
    assert [s.token for s in steps] == greedy.token_ids and stopped == "max_tokens"


def test_beam_search_is_exhaustive_with_enough_beams():
    cfg = GPTConfig(vocab_size=6, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
    model = _model(cfg, seed=4)
    prompt = [1, 2]
    best = max(itertools.product(range(6), repeat=3), key=lambda seq: _logprob(model, prompt, list(seq)))
    out = generate_ids(model, torch.tensor([prompt]), SamplingConfig(max_new_tokens=3, eos_id=None, num_beams=36))
    assert out[0, 2:].tolist() == list(best)
    greedy = generate_ids(model, torch.tensor([prompt]), SamplingConfig(max_new_tokens=3, eos_id=None))
    assert _logprob(model, prompt, list(best)) >= _logprob(model, prompt, greedy[0, 2:].tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_beams_find_likelier_sequences_than_greedy(seed, use_cache):
    cfg = CONFIGS["ctx32-bias-tied"]
    model = _model(cfg, seed=seed)
    prompt = _prompt(4, seed=seed)
    sc = SamplingConfig(max_new_tokens=20, eos_id=None, length_penalty=0.0, use_cache=use_cache)
    greedy = generate(model, BYTES, prompt, sc).token_ids
    beams = generate(model, BYTES, prompt, sc.replace(num_beams=4)).token_ids
    assert len(beams) == 20
    assert _logprob(model, prompt, beams) >= _logprob(model, prompt, greedy) - 1e-9
    job = decoding.Job(model, prompt, sc.replace(num_beams=4), None, None, 0, None)
    steps, _, score = beam_search(job)
    assert [s.token for s in steps] == beams
    assert score == pytest.approx(_logprob(model, prompt, beams), abs=1e-4)  # the score is the log-prob


def test_beam_search_past_the_context_same_with_and_without_cache():
    model = _model(CONFIGS["ctx16"])
    sc = SamplingConfig(max_new_tokens=40, eos_id=None, num_beams=3)
    a = generate(model, BYTES, _prompt(5), sc)
    b = generate(model, BYTES, _prompt(5), sc.replace(use_cache=False))
    assert a.token_ids == b.token_ids and a.new_tokens == 40


def test_beam_search_with_eos_and_stop_strings():
    model = _cycle_model()
    result = generate(model, BYTES, "Hey", SamplingConfig(max_new_tokens=40, num_beams=3))
    assert result.stopped_by == "eos" and result.text == " é😀漢!\n"
    events, result = _run(model, "Hey", SamplingConfig(max_new_tokens=40, num_beams=3, eos_id=None, stop=("漢",)))
    assert result.stopped_by == "stop" and result.text == " é😀" == "".join(e.text for e in events)


# --- per-token details -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", [
    dict(),  # greedy: the softmax of the logits
    dict(temperature=1.0, seed=5),  # sampling at temperature 1 without filters: the same
    dict(num_beams=2),
])
def test_details_probabilities(sampler):
    model = _model(CONFIGS["ctx16"])
    prompt = _prompt(5)
    events, result = _run(model, prompt, SamplingConfig(max_new_tokens=8, eos_id=None, **sampler), details=True)
    with torch.no_grad():
        first = torch.softmax(model(torch.tensor([prompt]))[0, -1].double(), -1)
        ids = prompt + result.token_ids
        every = torch.softmax(model(torch.tensor([ids[-16:]]))[0].double(), -1)
    ev = events[0]
    assert ev.prob == pytest.approx(float(first[ev.token_id]), abs=1e-6)
    assert [a.token_id for a in ev.alternatives] == torch.topk(first, 5).indices.tolist()
    for i, ev in enumerate(events):
        probs = [a.prob for a in ev.alternatives]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6 and 0 < ev.prob <= 1
        assert all(a.text == BYTES.token_bytes(a.token_id).decode("utf-8", "replace") for a in ev.alternatives)
        if "temperature" not in sampler:  # greedy and beams pick from the top here
            assert ev.prob <= probs[0] + 1e-9
        # Each chosen probability is the model's softmax at that position (the whole text fits in 16 here).
        pos = len(ids[-16:]) - len(result.token_ids) - 1 + i
        assert ev.prob == pytest.approx(float(every[pos, ev.token_id]), abs=1e-5)


def test_details_follow_the_sampling_distribution():
    model = _model(CONFIGS["ctx16"])
    events, _ = _run(model, "abc", SamplingConfig(max_new_tokens=10, eos_id=None, temperature=1.0, top_k=3, seed=1),
                     details=True, n_alternatives=4)
    for ev in events:
        probs = [a.prob for a in ev.alternatives]
        assert sum(probs[:3]) == pytest.approx(1.0, abs=1e-5) and probs[3] == 0.0  # all mass in the top 3
        assert ev.token_id in [a.token_id for a in ev.alternatives[:3]]
    plain, _ = _run(model, "abc", SamplingConfig(max_new_tokens=3, eos_id=None))
    assert all(e.prob is None and e.alternatives == () for e in plain)  # details off


# --- dtype, result ------------------------------------------------------------------------------------------

def test_bf16_copy_generates_and_leaves_the_model_alone():
    model = _model(CONFIGS["ctx16"])
    half = G.cast_for_inference(model, "bf16", copy_model=True)
    assert model.tok_emb.weight.dtype == torch.float32 and half.tok_emb.weight.dtype == torch.bfloat16
    events, result = _run(half, "hello", SamplingConfig(max_new_tokens=30, eos_id=None, temperature=0.8, seed=1),
                          details=True)
    assert result.new_tokens == 30 and all(0 < e.prob <= 1 for e in events)
    tied = G.cast_for_inference(_model(CONFIGS["ctx32-bias-tied"]), "bf16")
    assert tied.out_head.weight is tied.tok_emb.weight
    with pytest.raises(ConfigError, match="Unknown dtype"):
        G.cast_for_inference(model, "fp8")


def _without_onednn(monkeypatch):
    """As on a torch build without the private oneDNN ops: the fast path runs on F.linear."""
    monkeypatch.setattr(fastdecode, "onednn_bf16", lambda: False)


@pytest.mark.parametrize("ops", ["onednn", "no-onednn"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decode_path_computes_the_models_logits(dtype, ops, monkeypatch):
    """The decoding forward pass (fused q/k/v, own cache; oneDNN-packed weights for bf16 on CPU) gives
    the model's own logits, for a prompt and then token by token, with and without the private ops."""
    if ops == "no-onednn":
        _without_onednn(monkeypatch)
    cfg = CONFIGS["ctx32-bias-tied"]
    model = G.cast_for_inference(_model(cfg), dtype)
    weights = fastdecode.decoder_for(model)
    assert weights is not None and fastdecode.decoder_for(model) is weights  # built once, then reused
    assert weights.packed == (dtype == "bf16" and ops == "onednn" and fastdecode.onednn_bf16())
    ids = torch.tensor([_prompt(20)])
    cache = weights.new_cache(cfg.context_length)
    with torch.inference_mode():
        full = model(ids).float()
        got = [weights.forward(ids[:, :12], cache)]
        got += [weights.forward(ids[:, i:i + 1], cache) for i in range(12, 20)]
    got = torch.stack(got, dim=1).float()
    want = full[:, 11:]
    tol = 1e-5 if dtype == "fp32" else 0.05 * float(want.abs().max())
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    with torch.no_grad():  # an optimizer-style in-place update: the decode weights are rebuilt
        model.out_head.weight.mul_(2)
    assert fastdecode.decoder_for(model) is not weights


def _greedy_tokens(model, prompt, n, **runner):
    r = decoding.Runner(model, model.cfg.context_length, **runner)
    seq = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(n):
            seq = torch.cat([seq, r(seq[:, -(model.cfg.context_length + 1):]).argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(prompt):].tolist(), r


@pytest.mark.parametrize("ops", ["onednn", "no-onednn"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fast_path_greedy_tokens_equal_the_models_forward(name, ops, monkeypatch):
    """Greedy tokens through the fast path = through GPTModel.forward with its KV cache = without a cache,
    past the context length too."""
    if ops == "no-onednn":
        _without_onednn(monkeypatch)
    model = _model(CONFIGS[name], seed=3)
    prompt = _prompt(6)
    fast, r = _greedy_tokens(model, prompt, 40, use_cache=True)
    assert r.fast is not None
    plain, r = _greedy_tokens(model, prompt, 40, use_cache=True, fast=False)
    assert r.fast is None and isinstance(r.cache, type(model.new_cache()))
    uncached, _ = _greedy_tokens(model, prompt, 40, use_cache=False)
    assert fast == plain == uncached


def test_fast_path_falls_back_to_the_models_forward(monkeypatch):
    """Models the fast path does not know, and weights it cannot lay out, run the model's own forward."""
    model = _model(CONFIGS["ctx16"])
    assert fastdecode.decoder_for(_book_twin(model)) is None
    swapped = _model(CONFIGS["ctx16"])
    swapped.trf_blocks[0].att = torch.nn.Identity()
    assert fastdecode.decoder_for(swapped) is None
    want = generate(model, BYTES, "hello", SamplingConfig(max_new_tokens=30, eos_id=None)).token_ids

    def broken(_model):
        raise RuntimeError("no such op")

    monkeypatch.setattr(fastdecode, "DecodeWeights", broken)
    fresh = _model(CONFIGS["ctx16"])  # not in the decode-weights cache yet
    assert fastdecode.decoder_for(fresh) is None
    assert decoding.Runner(fresh, 16, use_cache=True).fast is None
    assert generate(fresh, BYTES, "hello", SamplingConfig(max_new_tokens=30, eos_id=None)).token_ids == want


def test_onednn_probe_says_no_without_onednn(monkeypatch):
    assert isinstance(fastdecode.onednn_bf16(), bool)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert fastdecode.onednn_bf16.__wrapped__() is False


def test_result_and_speed():
    result = generate(_model(CONFIGS["ctx16"]), BYTES, "hello", SamplingConfig(max_new_tokens=20, eos_id=None))
    d = result.to_dict()
    assert set(d) >= {"text", "token_ids", "new_tokens", "tokens_per_sec", "stopped_by"}
    assert result.tokens_per_sec > 0 and math.isfinite(result.tokens_per_sec)
    assert result.stopped_by in G.STOP_REASONS


# --- CLI ----------------------------------------------------------------------------------------------------

def _save_tiny(name: str = "t") -> GPTModel:
    cfg = GPTConfig(vocab_size=257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    model = _model(cfg, seed=7)
    checkpoints.save_checkpoint(name, model, meta={"tokenizer": "bytes"})
    return model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpttui", "generate", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def test_cli_generate_json_matches_the_engine():
    model = _save_tiny()
    proc = _cli("--checkpoint", "t", "--prompt", "Hello 😀", "--max-new-tokens", "40", "--ignore-eos", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    expected = generate(model, BYTES, "Hello 😀", SamplingConfig(max_new_tokens=40, eos_id=None))
    assert data["text"] == expected.text and data["token_ids"] == expected.token_ids
    assert data["new_tokens"] == 40 and data["tokens_per_sec"] > 0 and data["stopped_by"] == "max_tokens"
    # Streaming to stdout: the prompt, then the continuation (--raw: exactly; else control characters
    # shown as symbols, see test_printable).
    proc = _cli("--checkpoint", "t", "--prompt", "Hello 😀", "--max-new-tokens", "40", "--ignore-eos", "--raw")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Hello 😀" + expected.text + "\n"
    assert "40 tokens" in proc.stderr and "tok/s" in proc.stderr


def test_cli_generate_flags(capsys):
    model = _save_tiny()
    args = ["generate", "--checkpoint", "t", "--prompt", "abc", "--max-new-tokens", "15", "--temperature", "0.9",
            "--top-k", "40", "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "11", "--stop", "zz",
            "--stop", "qq", "--ignore-eos", "--json", "--device", "cpu"]
    assert cli.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    expected = generate(model, BYTES, "abc", SamplingConfig(max_new_tokens=15, temperature=0.9, top_k=40, top_p=0.9,
                                                            repetition_penalty=1.2, seed=11, stop=("zz", "qq"),
                                                            eos_id=None))
    assert first["token_ids"] == expected.token_ids and first["seed"] == 11
    assert cli.main(["generate", "--checkpoint", "t", "--prompt", "abc", "--num-beams", "3", "--length-penalty", "0",
                     "--max-new-tokens", "10", "--dtype", "bf16", "--json"]) == 0
    beams = json.loads(capsys.readouterr().out)
    assert beams["new_tokens"] == 10 and beams["dtype"] == "bf16"


@pytest.mark.parametrize("args, words", [
    (["--checkpoint", "nope"], "No checkpoint named 'nope'"),
    (["--checkpoint", "t", "--top-p", "1.5"], "top_p must be a number in (0, 1]"),
    (["--checkpoint", "t", "--temperature", "-1"], "temperature must be a number >= 0"),
    (["--checkpoint", "t", "--max-new-tokens", "0"], "max_new_tokens"),
    (["--checkpoint", "t", "--num-beams", "2", "--temperature", "1"], "deterministic"),
    (["--checkpoint", "t", "--top-k", "0"], "top_k must be a whole number >= 1"),
] + ([(["--checkpoint", "t", "--device", "cuda"], "no CUDA GPU")] if not torch.cuda.is_available() else []))
def test_cli_generate_errors(capsys, args, words):
    _save_tiny()
    assert cli.main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err
