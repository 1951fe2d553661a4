"""Importing GPT-2 weights (`gpttui import-gpt2`): small random GPT-2s built with `transformers`, saved
as Hugging Face folders, must give the same logits, loss and greedy text once imported; bad files are
refused without a checkpoint being written; size names work through the Hugging Face cache and a local
stand-in for the Hub (no internet here), and fail with one clear message when offline."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpttui.core import checkpoints, paths
from gpttui.core import gpt2_import as gi
from gpttui.core.errors import CheckpointError
from gpttui.core.tokenizer import ByteTokenizer

from transformers import GPT2Config, GPT2LMHeadModel  # the `test` extra installs transformers

REPO = Path(__file__).resolve().parent.parent
TEXT = ("Every effort moves you forward, and every step of the journey teaches something new. "
        "The quick brown fox jumps over the lazy dog while the model learns to predict the next token.")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def make_hf(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50257, seed=0, **extra):
    cfg = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
                     vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, initializer_range=0.1, **extra)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).eval()


def save_safetensors(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    return folder


def save_bin(model, folder: Path, *, prefix: bool = False, with_head: bool = True) -> Path:
    """``pytorch_model.bin`` as OpenAI's original upload has it: keys without ``transformer.``, the
    ``attn.bias`` / ``attn.masked_bias`` buffers included. (transformers 5 only writes safetensors.)"""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    n = model.config.n_positions
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            if with_head:
                state[key] = value
            continue
        state[key if prefix else key.removeprefix("transformer.")] = value
    for i in range(model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def token_ids(tokenizer, vocab_size: int) -> list[int]:
    return [i % vocab_size for i in tokenizer.encode(TEXT)]


def greedy(forward, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            nxt = forward(x)[0, -1].argmax()
            x = torch.cat([x, nxt.view(1, 1)], dim=1)
    return x[0, len(ids):].tolist()


def no_checkpoints() -> bool:
    return os.listdir(paths.checkpoints_dir()) == []


def run_cli(*args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (),
            timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "gpttui", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Same model as transformers
# ---------------------------------------------------------------------------------------------

SHAPES = [
    dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50304),  # padded, as nanoGPT does
    dict(n_embd=48, n_layer=3, n_head=3, n_positions=96, vocab_size=257),  # the bytes tokenizer's
    dict(n_embd=64, n_layer=1, n_head=8, n_positions=128, vocab_size=50257),
]


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"e{s['n_embd']}-l{s['n_layer']}-v{s['vocab_size']}")
def test_imported_model_matches_transformers(tmp_path, layout, shape):
    hf = make_hf(**shape, seed=shape["n_layer"])
    folder = tmp_path / "model"
    save_safetensors(hf, folder) if layout == "safetensors" else save_bin(hf, folder)

    tokenizer = "bytes" if shape["vocab_size"] == 257 else "gpt2"
    result = gi.import_gpt2(folder, "imported", tokenizer=tokenizer)
    loaded = checkpoints.load_checkpoint("imported")  # the ordinary checkpoint, read back
    ours = loaded.model.eval()
    cfg = loaded.config
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.context_length, cfg.vocab_size) == (
        shape["n_embd"], shape["n_layer"], shape["n_head"], shape["n_positions"], shape["vocab_size"])
    assert cfg.qkv_bias and cfg.tie_weights and cfg.drop_rate == pytest.approx(0.1)
    assert ours.out_head.weight is ours.tok_emb.weight
    assert result.parameter_count == sum(p.numel() for p in hf.parameters())

    # Any real-text ids will do: the bytes of TEXT, as many as the context holds.
    ids = torch.tensor([token_ids(ByteTokenizer(), shape["vocab_size"])[: shape["n_positions"]]])
    with torch.no_grad():
        hf_out = hf(ids, labels=ids)
        logits = ours(ids)
    torch.testing.assert_close(logits, hf_out.logits, atol=1e-5, rtol=0)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert loss.item() == pytest.approx(hf_out.loss.item(), abs=1e-5)

    prompt = ids[0, :8].tolist()
    ours_tokens = greedy(ours, prompt, 30)
    assert ours_tokens == greedy(lambda x: hf(x).logits, prompt, 30)
    if shape["vocab_size"] == 50257:  # and transformers' own greedy generate
        with torch.no_grad():
            gen = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, min_new_tokens=30,
                              attention_mask=torch.ones(1, len(prompt), dtype=torch.long), pad_token_id=0)
        assert ours_tokens == gen[0, len(prompt):].tolist()

    meta = loaded.meta
    assert meta["source"] == "imported-gpt2" and meta["tokenizer"] == tokenizer
    assert meta["origin"] == {"type": "dir", "path": str(folder.resolve())}
    assert meta["gpt2_size"] is None  # not one of OpenAI's shapes
    assert meta["weights_format"] == layout and not meta["has_optimizer"]


def test_sharded_safetensors_and_prefixless_keys(tmp_path):
    hf = make_hf(n_embd=32, n_layer=3, n_head=2, seed=5)
    sharded = save_safetensors(hf, tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    plain = save_bin(hf, tmp_path / "bin_prefixed", prefix=True, with_head=False)  # transformer.* keys
    ids = torch.randint(0, 1000, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        for folder in (sharded, plain):
            torch.testing.assert_close(gi.load_gpt2(folder).model(ids), expected, atol=1e-5, rtol=0)


def test_untied_head_is_kept(tmp_path):
    hf = make_hf(n_embd=32, n_layer=1, n_head=4, tie_word_embeddings=False, seed=2)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    save_safetensors(hf, tmp_path / "m")
    gi.import_gpt2(tmp_path / "m", "untied")
    loaded = checkpoints.load_checkpoint("untied")
    assert not loaded.config.tie_weights
    ids = torch.randint(0, 1000, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), hf(ids).logits, atol=1e-5, rtol=0)


def test_gpt2_shape_records_size_name(tmp_path):
    # gpt2-small's shape (12 layers, 768 wide, vocab 50257, context 1024) with random weights.
    hf = make_hf(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
    save_safetensors(hf, tmp_path / "small")
    del hf
    result = gi.import_gpt2(tmp_path / "small", "small")
    assert result.size == "gpt2-small"
    assert checkpoints.read_meta(result.path)["gpt2_size"] == "gpt2-small"
    assert result.parameter_count == 124_439_808  # the book's 124M model with tied head


# ---------------------------------------------------------------------------------------------
# OpenAI's TensorFlow checkpoint: the name mapping (without TensorFlow) and the missing-TF message
# ---------------------------------------------------------------------------------------------


def tf_variables(hf) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The variables of OpenAI's TF checkpoint, shaped as tf.train.load_variable returns them."""
    c = hf.config
    out = {}
    for key, value in hf.state_dict().items():
        if key == "lm_head.weight":
            continue
        parts = key.removeprefix("transformer.").split(".")
        arr = value.numpy().copy()
        if parts[0] in ("wte", "wpe"):
            out[f"model/{parts[0]}"] = arr
            continue
        leaf = {"weight": "w", "bias": "b"}[parts[-1]]
        if parts[-2].startswith("ln_"):
            leaf = {"w": "g", "b": "b"}[leaf]
        if leaf == "w":
            arr = arr[None]  # Conv1D weights are (1, in, out) in the TF checkpoint
        if parts[0] == "h":
            out["/".join(["model", f"h{parts[1]}", *parts[2:-1], leaf])] = arr
        else:
            out["/".join(["model", *parts[:-1], leaf])] = arr
    hparams = {"n_vocab": c.vocab_size, "n_ctx": c.n_positions, "n_embd": c.n_embd, "n_head": c.n_head,
               "n_layer": c.n_layer}
    return out, hparams


def test_tf_name_mapping():
    assert gi.tf_name_to_hf("model/wte") == "wte.weight"
    assert gi.tf_name_to_hf("model/wpe") == "wpe.weight"
    assert gi.tf_name_to_hf("model/h11/attn/c_attn/w") == "h.11.attn.c_attn.weight"
    assert gi.tf_name_to_hf("model/h0/attn/c_proj/b") == "h.0.attn.c_proj.bias"
    assert gi.tf_name_to_hf("model/h3/ln_1/g") == "h.3.ln_1.weight"
    assert gi.tf_name_to_hf("model/h3/mlp/c_fc/w") == "h.3.mlp.c_fc.weight"
    assert gi.tf_name_to_hf("model/ln_f/b") == "ln_f.bias"
    assert gi.tf_name_to_hf("global_step") is None
    assert gi.tf_name_to_hf("model/h0/attn/c_attn/weird") is None



def test_weight_map_covers_every_parameter_once():
    """The declarative map names each parameter of the book's model exactly once, with its HF shape."""
    from gpttui.core import gpt2_weights as gw
    from gpttui.core.model import GPTModel

    cfg = gw.config_from_hf({"vocab_size": 100, "n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 64})
    with torch.device("meta"):
        model = GPTModel(cfg.replace(tie_weights=False))
    ours = []
    for name in [*gw._expected(cfg), *gw._expected(cfg, optional=True)]:
        key, i = gw._lookup(name, gi.WEIGHT_MAP)
        ours += [n.format(i=i) for n in gi.WEIGHT_MAP[key].ours]
    assert sorted(ours) == sorted(model.state_dict())
    assert gw._expected(cfg)["h.2.attn.c_attn.weight"] == (32, 96) and "h.3.ln_1.weight" not in gw._expected(cfg)
    assert gw._config_numel(cfg) == sum(int(np.prod(s)) for s in gw._expected(cfg).values())
    assert gw._dropped("h.1.attn.masked_bias") and not gw._dropped("h.1.attn.c_attn.bias")
    # every TensorFlow name in the map comes back to its Hugging Face name
    assert all(gi.tf_name_to_hf(w.tf.format(i=7)) == name.format(i=7) for name, w in gi.WEIGHT_MAP.items() if w.tf)

def test_tf_variables_give_the_same_model(tmp_path):
    hf = make_hf(n_embd=48, n_layer=2, n_head=4, seed=3)
    variables, hparams = tf_variables(hf)
    assert variables["model/h1/attn/c_attn/w"].shape == (1, 48, 144)
    assert variables["model/h0/ln_2/g"].shape == (48,)
    model = gi.model_from_tf_variables(variables, hparams)
    ids = torch.randint(0, 1000, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)
    # A mis-shaped or missing variable is reported like any other file problem.
    del variables["model/h1/mlp/c_proj/b"]
    variables["model/h0/mlp/c_fc/w"] = variables["model/h0/mlp/c_fc/w"][:, :, :10]
    with pytest.raises(CheckpointError, match=r"missing tensors: h\.1\.mlp\.c_proj\.bias.*wrong shapes: "
                                              r"h\.0\.mlp\.c_fc\.weight"):
        gi.model_from_tf_variables(variables, hparams)


def _tf_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "hparams.json").write_text(json.dumps({"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768,
                                                     "n_head": 12, "n_layer": 12}))
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n'
                                       'all_model_checkpoint_paths: "model.ckpt"\n')
    for name in ("model.ckpt.index", "model.ckpt.meta", "model.ckpt.data-00000-of-00001"):
        (folder / name).write_bytes(b"\0" * 16)
    return folder


def test_tf_checkpoint_without_tensorflow(tmp_path):
    assert importlib.util.find_spec("tensorflow") is None  # really not installed here
    folder = _tf_folder(tmp_path / "124M")
    with pytest.raises(CheckpointError, match=r"TensorFlow.*pip install 'gpttui\[tf\]'"):
        gi.import_gpt2(folder, "tf")
    assert no_checkpoints()
    proc = run_cli("import-gpt2", str(folder), "--name", "tf")
    assert proc.returncode == 2
    assert "pip install 'gpttui[tf]'" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Refused files: nothing imported, nothing run
# ---------------------------------------------------------------------------------------------


def _safetensors_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _write_state(folder: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture
def good_folder(tmp_path) -> Path:
    return save_safetensors(make_hf(n_embd=32, n_layer=2, n_head=4), tmp_path / "good")


def test_wrong_shapes_are_refused(good_folder):
    state = _safetensors_state(good_folder)
    state["transformer.h.0.attn.c_attn.weight"] = state["transformer.h.0.attn.c_attn.weight"].T  # (96, 32)
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:10]
    _write_state(good_folder, state)
    with pytest.raises(CheckpointError) as err:
        gi.import_gpt2(good_folder, "bad")
    msg = str(err.value)
    assert "wrong shapes" in msg and "h.0.attn.c_attn.weight is (96, 32), expected (32, 96)" in msg
    assert "wpe.weight is (10, 32), expected (64, 32)" in msg and "Nothing was imported" in msg
    assert no_checkpoints()


def test_missing_and_unexpected_tensors_are_refused(good_folder):
    state = _safetensors_state(good_folder)
    del state["transformer.h.1.mlp.c_fc.bias"], state["transformer.ln_f.weight"]
    state["transformer.h.0.attn.q_proj.weight"] = torch.zeros(32, 32)
    _write_state(good_folder, state)
    with pytest.raises(CheckpointError, match=r"missing tensors: h\.1\.mlp\.c_fc\.bias, ln_f\.weight; "
                                              r"unexpected tensors: h\.0\.attn\.q_proj\.weight"):
        gi.import_gpt2(good_folder, "bad")
    assert no_checkpoints()


def test_config_that_does_not_match_the_weights(good_folder):
    cfg = json.loads((good_folder / "config.json").read_text())
    cfg["n_layer"] = 3
    (good_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"3 layers.*missing tensors: h\.2\.ln_1\.weight"):
        gi.import_gpt2(good_folder, "bad")
    assert no_checkpoints()


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "describes a 'llama' model, not GPT-2"),
    ({"activation_function": "relu"}, "activation_function 'relu'"),
    ({"n_embd": None}, "n_embd is missing"),
])
def test_foreign_config_is_refused(good_folder, change, message):
    cfg = json.loads((good_folder / "config.json").read_text())
    cfg.update(change)
    (good_folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    with pytest.raises(CheckpointError, match=message):
        gi.import_gpt2(good_folder, "bad")
    assert no_checkpoints()


def test_truncated_safetensors_is_refused(good_folder):
    file = good_folder / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        gi.import_gpt2(good_folder, "bad")
    assert no_checkpoints()


def test_garbage_bin_is_refused(tmp_path):
    folder = save_bin(make_hf(), tmp_path / "m")
    (folder / "pytorch_model.bin").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a PyTorch file"):
        gi.import_gpt2(folder, "bad")
    assert no_checkpoints()


class Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bin_with_code_payload_is_refused_and_not_run(tmp_path):
    folder = save_bin(make_hf(), tmp_path / "m")
    marker = tmp_path / "pwned"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["h.0.attn.evil"] = Payload(marker)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="contains code or Python objects"):
        gi.import_gpt2(folder, "bad")
    assert not marker.exists()
    proc = run_cli("import-gpt2", str(folder), "--name", "bad")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not loaded" in proc.stderr
    assert not marker.exists() and no_checkpoints()


def test_not_a_model_folder_and_unknown_names(tmp_path):
    with pytest.raises(CheckpointError, match="is not a GPT-2 folder"):
        gi.import_gpt2(tmp_path, "x")
    with pytest.raises(CheckpointError, match="neither a folder nor a GPT-2 size"):
        gi.import_gpt2("gpt3-huge", "x")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        gi.import_gpt2(tmp_path, "x")
    assert no_checkpoints()


def test_existing_name_and_cancel(good_folder):
    gi.import_gpt2(good_folder, "taken")
    with pytest.raises(CheckpointError, match="already exists"):
        gi.import_gpt2(good_folder, "taken")
    gi.import_gpt2(good_folder, "taken", overwrite=True)
    cancel = threading.Event()
    seen = []

    def progress(done, total):  # cancel half-way through the conversion
        seen.append((done, total))
        cancel.set()

    with pytest.raises(gi.ImportCancelled):
        gi.import_gpt2(good_folder, "cancelled", cancel=cancel, progress=progress)
    assert len(seen) == 1 and seen[0][0] < seen[0][1]
    assert [c.name for c in checkpoints.list_checkpoints()] == ["taken"]


# ---------------------------------------------------------------------------------------------
# Size names: Hugging Face cache, download (from a local stand-in for the Hub), offline
# ---------------------------------------------------------------------------------------------


class FakeHub(http.server.ThreadingHTTPServer):
    """Serves ``/{repo}/resolve/{revision}/{file}`` with the headers huggingface_hub reads."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.files: dict[tuple[str, str], bytes] = {}
        self.gets: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    def _file(self) -> bytes | None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.server.files.get(("/".join(parts[:2]), "/".join(parts[4:])))
        return None

    def _head(self, data: bytes | None) -> None:
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", "c0ffee" * 6 + "c0ff")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._head(self._file())

    def do_GET(self) -> None:
        data = self._file()
        self.server.gets.append(self.path)
        self._head(data)
        if data is not None:
            try:
                for i in range(0, len(data), 65536):
                    self.wfile.write(data[i:i + 65536])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client cancelled

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_size_name_downloads_with_progress_cancel_and_then_imports_offline_from_cache(tmp_path, fake_hub):
    # Vocabulary 50257 at width 64: a 13 MB model.safetensors, more than one 10 MB download chunk.
    hf = make_hf(n_embd=64, n_layer=1, n_head=4, n_positions=64, vocab_size=50257)
    folder = save_safetensors(hf, tmp_path / "src")
    for f in gi.HUB_FILES:
        fake_hub.files[("openai-community/gpt2-medium", f)] = (folder / f).read_bytes()
    cache = tmp_path / "hf-cache"
    total_size = (folder / "model.safetensors").stat().st_size

    cancel = threading.Event()
    calls: list[tuple[int, int]] = []

    def cancel_at_first(done, total):
        calls.append((done, total))
        cancel.set()

    with pytest.raises(gi.ImportCancelled, match="cancelled"):
        gi.import_gpt2("gpt2-medium", "med", cache_dir=cache, endpoint=fake_hub.endpoint, cancel=cancel,
                       progress=cancel_at_first)
    assert calls == [(10 * 1024 * 1024, total_size)]
    assert no_checkpoints()

    stages: list[str] = []
    progress: list[tuple[int, int]] = []
    result = gi.import_gpt2("355M", "med", cache_dir=cache, endpoint=fake_hub.endpoint,
                            progress=lambda d, t: progress.append((d, t)), on_stage=stages.append)
    assert (total_size, total_size) in progress  # the download reached its end...
    assert progress[-1][0] == progress[-1][1]  # ...and so did the conversion
    assert any(s.startswith("Downloading model.safetensors") for s in stages)
    assert result.size == "gpt2-medium"
    assert result.origin["type"] == "hub" and result.origin["repo_id"] == "openai-community/gpt2-medium"
    assert result.origin["revision"] == "c0ffee" * 6 + "c0ff" and result.origin["cached"] is False
    meta = checkpoints.read_meta(result.path)
    assert meta["gpt2_size"] == "gpt2-medium" and meta["imported_from"] == "openai-community/gpt2-medium"
    ids = torch.randint(0, 50257, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(checkpoints.load_checkpoint("med").model(ids), hf(ids).logits,
                                   atol=1e-5, rtol=0)

    # The Hub goes away: the cached files still import, with no network call.
    n_gets = len(fake_hub.gets)
    fake_hub.shutdown()
    fake_hub.server_close()
    again = gi.import_gpt2("gpt2-medium", "med-2", cache_dir=cache, endpoint=fake_hub.endpoint)
    assert again.origin["cached"] is True and len(fake_hub.gets) == n_gets
    # ...and from the command line, offline, through huggingface_hub's own cache settings.
    proc = run_cli("import-gpt2", "gpt2-medium", "--name", "med-cli",
                   env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Imported gpt2-medium from openai-community/gpt2-medium as checkpoint 'med-cli'" in proc.stdout


def test_size_name_offline_gives_one_clear_message(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}  # an empty cache
    proc = run_cli("import-gpt2", "gpt2-small", "--name", "my-gpt2", env=env, drop=("HF_HUB_CACHE",))
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err
    assert "openai-community/gpt2" in err and "offline" in err
    assert "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors" in err
    assert "then run: gpttui import-gpt2 DIR --name my-gpt2" in err
    assert no_checkpoints()


def test_unreachable_hub_fails_fast(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError) as err:
        gi.import_gpt2("gpt2-large", "big", cache_dir=tmp_path / "c", endpoint=f"http://127.0.0.1:{port}")
    msg = str(err.value)
    assert "you seem to be offline" in msg and "openai-community/gpt2-large" in msg
    assert "gpttui import-gpt2 DIR --name big" in msg
    with pytest.raises(CheckpointError, match="only the local cache was searched"):
        gi.import_gpt2("gpt2-xl", "xl", cache_dir=tmp_path / "c", local_files_only=True)
    assert no_checkpoints()



def test_hub_errors_are_told_apart_by_huggingface_hub_classes():
    errors = pytest.importorskip("huggingface_hub.errors")
    from gpttui.core import gpt2_sources as gs

    local = getattr(errors, "LocalEntryNotFoundError", None) or gs._hub_error_class("LocalEntryNotFoundError")
    try:  # what hf_hub_download raises with HF_HUB_OFFLINE: the offline error wrapped
        try:
            raise errors.OfflineModeIsEnabled("offline")
        except OSError as cause:
            raise local("not in cache") from cause
    except OSError as e:
        assert gs._hub_error_reason(e, offline_mode=False).startswith("offline mode is on")
    assert gs._hub_error_reason(local("x"), offline_mode=True).startswith("offline mode is on")
    assert gs._hub_error_reason(local("x"), offline_mode=False).startswith("the Hub cannot be reached")
    assert gs._hub_error_reason(OSError("No space left on device"), False) == "OSError: No space left on device"
    assert issubclass(gs._hub_error_class("RepositoryNotFoundError"), Exception)
    assert gs._hub_error_class("NoSuchHubError") is gs._NeverRaised  # a class an older version lacks

def test_without_huggingface_hub_says_what_to_install():
    code = ("import sys; sys.modules['huggingface_hub'] = None\n"  # as if it were not installed
            "from gpttui.cli import main\n"
            "sys.exit(main(['import-gpt2', 'gpt2-small', '--name', 's']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'gpttui[hub]'" in proc.stderr and "Traceback" not in proc.stderr
    assert "gpttui import-gpt2 DIR --name s" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Command line: import, list, continue pre-training
# ---------------------------------------------------------------------------------------------


def test_cli_import_list_and_train_resume(tmp_path, bpe_dir):
    hf = make_hf(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50257)
    folder = save_safetensors(hf, tmp_path / "gpt2 folder")
    proc = run_cli("import-gpt2", str(folder), "--name", "tiny-gpt2")
    assert proc.returncode == 0, proc.stderr
    assert "as checkpoint 'tiny-gpt2'" in proc.stdout

    listing = run_cli("checkpoints", "list")
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("tiny-gpt2"))
    assert "imported-gpt2" in row and ("KB" in row or "MB" in row)
    info = json.loads(run_cli("checkpoints", "list", "--json").stdout)[0]
    assert info["name"] == "tiny-gpt2" and info["source"] == "imported-gpt2" and info["tokenizer"] == "gpt2"
    assert info["origin"]["type"] == "dir" and info["size_bytes"] > 0

    before = checkpoints.load_checkpoint("tiny-gpt2").model.state_dict()
    data = tmp_path / "my_text.txt"
    data.write_text((TEXT + "\n") * 40, encoding="utf-8")
    train = run_cli("train", "--resume", "tiny-gpt2", "--data", str(data), "--tokenizer", "gpt2",
                    "--max-steps", "2", "--context-length", "32", "--batch-size", "2")
    assert train.returncode == 0, train.stdout + train.stderr
    # imported weights continued on the user's text save under a new name; the import stays as it was
    assert "saves as 'tiny-gpt2-on-my_text'" in train.stderr
    assert all(torch.equal(v, before[k]) for k, v in checkpoints.load_checkpoint("tiny-gpt2").model.state_dict().items())
    after = checkpoints.load_checkpoint("tiny-gpt2-on-my_text", load_optimizer=True)
    assert after.meta["step"] == 2 and after.meta["has_optimizer"]
    assert after.optimizer_state is not None
    assert after.config.context_length == 64 and after.config.tie_weights
    changed = [k for k, v in after.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "trf_blocks.0.att.W_query.weight" in changed and "tok_emb.weight" in changed
