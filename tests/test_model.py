"""The model: the book's GPTModel, weight for weight, plus counts, losses, the KV cache and config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import book_reference as book
from gpttui.core import data as D
from gpttui.core.config import GPT_CONFIG_124M, GPTConfig, preset
from gpttui.core.errors import ConfigError
from gpttui.core.model import (
    GPTModel,
    book_state_dict,
    calc_loss_batch,
    calc_loss_loader,
    count_parameters,
    parameter_count,
    perplexity,
)

CONFIGS = {
    "small vocab": GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.1),
    "qkv bias": GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0,
                          qkv_bias=True),
    "one head, 3 layers": GPTConfig(vocab_size=64, context_length=12, emb_dim=24, n_heads=1, n_layers=3),
    "gpt2 vocab": GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=4, n_layers=1, qkv_bias=True),
}


def _pair(cfg: GPTConfig, seed: int = 0):
    torch.manual_seed(seed)
    ref = book.GPTModel(cfg.to_book_dict()).eval()
    ours = GPTModel(cfg).eval()
    return ref, ours


def _inputs(cfg: GPTConfig, batch: int = 2, length: int | None = None, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, length or cfg.context_length), generator=g)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_book_weights_give_book_logits(name):
    cfg = CONFIGS[name]
    ref, ours = _pair(cfg)
    sd = ref.state_dict()
    assert any(k.endswith("att.mask") for k in sd)
    ours.load_state_dict(sd, strict=True)
    assert any(k.endswith("att.mask") for k in sd)  # loading did not change the caller's dict
    with torch.no_grad():
        for length in (cfg.context_length, 5, 1):
            x = _inputs(cfg, length=length)
            torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_our_weights_load_into_the_book(name):
    cfg = CONFIGS[name]
    torch.manual_seed(3)
    ours = GPTModel(cfg).eval()
    ref = book.GPTModel(cfg.to_book_dict()).eval()
    sd = book_state_dict(ours)
    assert set(sd) == set(ref.state_dict())
    ref.load_state_dict(sd, strict=True)
    x = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), ours(x), atol=1e-5, rtol=0)
    # A copy: changing it leaves our model alone.
    sd["tok_emb.weight"].zero_()
    assert ours.tok_emb.weight.abs().sum() > 0


def test_tied_model_exports_untied_book_weights():
    cfg = preset("tiny", vocab_size=257, n_layers=1, context_length=16)
    assert cfg.tie_weights
    torch.manual_seed(0)
    ours = GPTModel(cfg).eval()
    assert ours.out_head.weight is ours.tok_emb.weight
    sd = book_state_dict(ours)
    assert sd["out_head.weight"].data_ptr() != sd["tok_emb.weight"].data_ptr()
    ref = book.GPTModel(cfg.to_book_dict()).eval()
    ref.load_state_dict(sd, strict=True)
    x = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), ours(x), atol=1e-5, rtol=0)


def test_accepts_the_books_dict_and_config():
    d = dict(GPT_CONFIG_124M, vocab_size=101, emb_dim=32, n_heads=4, n_layers=2, context_length=8)
    a = GPTModel(d)
    b = GPTModel(GPTConfig.from_dict(d))
    assert a.cfg == b.cfg == GPTConfig(**d)
    assert a.cfg.to_book_dict() == d
    assert [k for k, _ in a.named_parameters()] == [k for k, _ in b.named_parameters()]
    assert GPTConfig.from_dict(GPT_CONFIG_124M) == GPTConfig()  # the book's defaults are ours
    assert GPTConfig.from_dict(GPTConfig(tie_weights=True).to_dict()).tie_weights
    with pytest.raises(ConfigError, match="Unknown model config keys: colour"):
        GPTModel(dict(d, colour="blue"))


def test_parameter_counts_of_gpt2_small():
    cfg = preset("gpt2-small", context_length=1024)
    assert parameter_count(cfg) == 163_009_536
    assert parameter_count(cfg.replace(tie_weights=True)) == 124_412_160
    with torch.device("meta"):  # the count without allocating 650 MB
        assert count_parameters(GPTModel(cfg)) == 163_009_536
        assert count_parameters(GPTModel(cfg.replace(tie_weights=True))) == 124_412_160
        assert count_parameters(book.GPTModel(cfg.to_book_dict())) == 163_009_536


@pytest.mark.parametrize(
    "cfg",
    list(CONFIGS.values()) + [
        preset("tiny"), preset("mini", vocab_size=257), preset("tiny", tie_weights=False, qkv_bias=True),
        preset("gpt2-medium"),
    ],
    ids=lambda c: f"{c.emb_dim}x{c.n_layers}-v{c.vocab_size}-tie{int(c.tie_weights)}-bias{int(c.qkv_bias)}",
)
def test_parameter_count_from_config(cfg):
    with torch.device("meta"):
        model = GPTModel(cfg)
    assert parameter_count(cfg) == count_parameters(model)


def test_untrained_loss_is_near_ln_vocab():
    """A fresh model predicts nearly uniformly: loss ~ ln(V) plus half the variance of its logits.
    Tied (std 0.02 embedding as output layer): logits tiny, within 0.05 of ln V. Untied, the book's
    out_head (nn.Linear's U(-1/sqrt(d), 1/sqrt(d)), logit variance ~1/3): ~ln V + 1/6, as the book's
    first printed losses (~10.99 for ln 50257 = 10.82) show. (Over ten seeds here: tied -0.005..0.034,
    untied 0.13..0.24.)"""
    for tie, low, high in ((True, -0.06, 0.06), (False, 0.06, 0.4)):
        cfg = GPTConfig(vocab_size=5000, context_length=16, emb_dim=64, n_heads=4, n_layers=2, tie_weights=tie)
        x, y = _inputs(cfg, batch=16, seed=5), _inputs(cfg, batch=16, seed=6)  # 256 random targets
        torch.manual_seed(0)
        model = GPTModel(cfg).eval()
        with torch.no_grad():
            loss = calc_loss_batch(x, y, model, "cpu").item()
        assert low < loss - math.log(cfg.vocab_size) < high, (tie, loss)


# --- the book's loss functions ----------------------------------------------------------------------------

@pytest.fixture
def loss_setup():
    cfg = CONFIGS["small vocab"]
    torch.manual_seed(0)
    ref = book.GPTModel(cfg.to_book_dict()).eval()
    ours = GPTModel(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=300).astype(np.uint16)
    windows = D.TokenWindows(tokens, 16, 16)
    return cfg, ref, ours, tokens, windows


def test_calc_loss_batch_is_the_books(loss_setup):
    cfg, ref, ours, _, windows = loss_setup
    x, y = windows.batch([0, 3, 5])
    with torch.no_grad():
        a = calc_loss_batch(x, y, ours, "cpu")
        b = book.calc_loss_batch(x, y, ref, "cpu")
    assert a.shape == () and abs(a.item() - b.item()) < 1e-5
    a = calc_loss_batch(x, y, ours, torch.device("cpu"))
    a.backward()  # a training loss: differentiable
    assert ours.tok_emb.weight.grad is not None


@pytest.mark.parametrize("num_batches", [None, 1, 3, 100])
@pytest.mark.parametrize("shuffle", [False, True])
def test_calc_loss_loader_is_the_books(loss_setup, num_batches, shuffle):
    cfg, ref, ours, tokens, windows = loss_setup
    loader = D.BatchLoader(windows, 4, shuffle=shuffle, drop_last=shuffle)
    assert len(loader) >= 3
    with torch.no_grad():
        ours_loss = calc_loss_loader(loader, ours, "cpu", num_batches=num_batches)
        ref_loss = book.calc_loss_loader(loader, ref, "cpu", num_batches=num_batches)
        # The book's DataLoader over the book's dataset, in order, gives the same numbers.
        book_loader = torch.utils.data.DataLoader(book.GPTDatasetV1(None, None, 16, 16, token_ids=tokens.tolist()),
                                                  batch_size=4, shuffle=False, drop_last=shuffle)
        in_order = calc_loss_loader(D.BatchLoader(windows, 4, False, shuffle), ours, "cpu", num_batches)
        ref_in_order = book.calc_loss_loader(book_loader, ref, "cpu", num_batches)
    assert math.isfinite(ours_loss)
    assert abs(ours_loss - ref_loss) < 1e-5
    assert abs(in_order - ref_in_order) < 1e-5
    if num_batches is not None and num_batches < len(loader):
        with torch.no_grad():
            full = calc_loss_loader(loader, ours, "cpu")
        assert full != ours_loss  # only the first num_batches counted


def test_calc_loss_loader_empty_is_nan(loss_setup):
    cfg, ref, ours, tokens, _ = loss_setup
    empty = D.BatchLoader(D.TokenWindows(tokens[:10], 16, 16), 2, shuffle=True, drop_last=True)
    assert len(empty) == 0
    assert math.isnan(calc_loss_loader(empty, ours, "cpu"))
    assert math.isnan(calc_loss_loader(empty, ours, "cpu", num_batches=5))
    assert math.isnan(book.calc_loss_loader(empty, ref, "cpu"))


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert abs(perplexity(math.log(50257)) - 50257) < 1e-6
    assert perplexity(1e6) == float("inf")


# --- KV cache -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["small vocab", "qkv bias", "one head, 3 layers"])
@pytest.mark.parametrize("step", [1, 3, 4])
def test_kv_cache_matches_full_forward(name, step):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    x = _inputs(cfg, batch=2)
    prefix = 5
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        parts = [model(x[:, :prefix], cache)]
        for i in range(prefix, cfg.context_length, step):
            parts.append(model(x[:, i:i + step], cache))
        assert cache.length == cfg.context_length
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_from_empty_and_crop():
    cfg = CONFIGS["small vocab"]
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    x = _inputs(cfg, batch=1)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        assert cache.length == 0
        steps = [model(x[:, i:i + 1], cache) for i in range(cfg.context_length)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="exceeds the context length"):
            model(x[:, :1], cache)
        cache.crop(6)  # back to 6 positions, then the rest again
        assert cache.length == 6
        rest = model(x[:, 6:], cache)
    torch.testing.assert_close(rest, full[:, 6:], atol=1e-5, rtol=0)


def test_kv_cache_reorder_selects_rows():
    cfg = CONFIGS["qkv bias"]
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    x = _inputs(cfg, batch=3)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        model(x[:, :4], cache)
        cache.reorder(torch.tensor([2, 0]))
        out = model(x[[2, 0], 4:9], cache)
    torch.testing.assert_close(out, full[[2, 0], 4:9], atol=1e-5, rtol=0)


def test_too_long_input_is_refused():
    cfg = CONFIGS["small vocab"]
    model = GPTModel(cfg)
    with pytest.raises(ValueError, match="crop the input"):
        model(torch.zeros(1, cfg.context_length + 1, dtype=torch.long))


# --- config validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "changes, match",
    [
        ({"emb_dim": 30, "n_heads": 4}, "divisible"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"context_length": -1}, "context_length"),
        ({"n_layers": 2.5}, "n_layers"),
        ({"n_heads": True}, "n_heads"),
        ({"emb_dim": "768"}, "emb_dim"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"drop_rate": "high"}, "drop_rate"),
        ({"drop_rate": None}, "drop_rate"),
    ],
)
def test_invalid_configs_raise_config_error(changes, match):
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**changes)
    with pytest.raises(ConfigError, match=match):
        GPTModel(dict(GPT_CONFIG_124M, **changes))


def test_several_problems_in_one_message():
    with pytest.raises(ConfigError) as err:
        GPTConfig(vocab_size=0, n_layers=0, drop_rate=2)
    msg = str(err.value)
    assert "vocab_size" in msg and "n_layers" in msg and "drop_rate" in msg


def test_presets():
    tiny = preset("tiny")
    assert (tiny.emb_dim, tiny.n_layers, tiny.n_heads, tiny.context_length, tiny.tie_weights) == (128, 2, 4, 128, True)
    small = preset("gpt2-small")
    assert small == GPTConfig()  # the book's GPT_CONFIG_124M
    assert preset("gpt2-xl", context_length=1024).head_dim == 64
    assert preset("tiny", vocab_size=257, context_length=None).context_length == 128  # None: keep
    with pytest.raises(ConfigError, match="Unknown preset"):
        preset("gpt5")
    with pytest.raises(ConfigError, match="divisible"):
        preset("tiny", n_heads=3)
