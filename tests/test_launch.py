"""`gpttui.core.launch`: the `gpttui train` arguments of a planned run read back by the CLI's own parser
and helpers into the very same configs (a new model, and a resumed checkpoint whose own settings must
not leak in where the caller chose none)."""

from __future__ import annotations

from gpttui import cli
from gpttui.core.config import TrainConfig
from gpttui.core.data import DataSettings
from gpttui.core.launch import train_argv
from gpttui.core.runplan import plan_model, resume_data_defaults
from gpttui.core.store import default_store

from test_faults import corpus, make_checkpoint  # noqa: F401  (corpus is a fixture)


def parsed(argv):
    args = cli.build_parser().parse_args(argv)
    assert args.func is cli.cmd_train
    return args


def test_a_new_model_round_trips_through_the_cli(tmp_path):
    settings = DataSettings(source=str(tmp_path / "my text.txt"), tokenizer="bytes", context_length=48, stride=24,
                            batch_size=3, train_ratio=0.8, seed=7)
    model = plan_model("tiny", vocab_size=257, context_length=64, n_layers=3, n_heads=2, emb_dim=40,
                       drop_rate=0.05, qkv_bias=True, tie_weights=False).model_config
    config = TrainConfig(epochs=2, max_steps=None, lr=3e-4, min_lr=1e-5, weight_decay=0.05, warmup_steps=4,
                         grad_clip=None, grad_accum=2, eval_freq=3, eval_iter=2, start_context="-- a dash first",
                         sample_tokens=9, sample_at_eval=True, seed=99, device="cpu", dtype="bf16", compile=False,
                         save_name="mine", checkpoint_every=5)
    args = parsed(train_argv(settings, model, config, resume=None, overwrite=True))
    shape = cli._run_shape(args)
    assert shape.model_config == model  # its context (64) differs from the data's windows (48)
    assert cli._data_settings(args, {"context_length": shape.context_length}) == settings
    assert cli._train_config(args) == config
    assert args.overwrite and not args.fresh_optimizer and args.resume is None

    # and the defaults' "none" values, the other way round
    config = TrainConfig(max_steps=12, min_lr=None, grad_clip=1.5, start_context="", sample_at_eval=False,
                         compile=True)
    settings = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=64)
    args = parsed(train_argv(settings, model, config, resume=None, overwrite=False))
    assert cli._train_config(args) == config
    assert cli._data_settings(args, {"context_length": cli._run_shape(args).context_length}) == settings
    assert not args.overwrite


def test_a_resumed_checkpoint_round_trips_and_its_own_settings_do_not_leak_in(corpus):  # noqa: F811
    make_checkpoint(corpus, "base", 2)  # trained with max_steps=2, eval_iter=1, sample_tokens=4, device cpu
    meta = default_store().read_meta("base")
    assert meta.train_config["max_steps"] == 2
    settings = DataSettings(source=str(corpus), tokenizer="bytes", context_length=16, batch_size=2, seed=5)
    config = TrainConfig(max_steps=None, min_lr=None, grad_clip=None, eval_iter=3, save_name="base-more")
    argv = train_argv(settings, None, config, resume="base", overwrite=False, fresh_optimizer=True)
    args = parsed(argv)
    assert args.resume == "base" and args.fresh_optimizer
    assert cli._data_settings(args, resume_data_defaults(meta)) == settings
    assert cli._train_config(args, meta) == config  # max_steps None, not the checkpoint's 2
    assert not any(a.startswith("--n-layers") for a in argv)  # the shape is the checkpoint's
