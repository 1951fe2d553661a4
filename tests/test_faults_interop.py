"""Files from elsewhere and files written elsewhere (gpttui.core.interop): crafted tensors refused before
anything large exists, NaN/inf weights refused unless allowed, vocabularies that do not fit the tokenizer
refused, and an export that never clobbers a file it was not asked to replace, nor a checkpoint's own files.

The crafted files are real files: expanded (stride 0) tensors saved with torch.save claim about 32 GB
once copied, so an import that materialised them would fail to allocate (or be killed) instead of
answering with one clear message; the command-line runs also report their peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import book_reference
from gpttui.core import checkpoints, interop, paths
from gpttui.core import gpt2_import as gi
from gpttui.core.config import GPTConfig
from gpttui.core.errors import CheckpointError
from gpttui.core.model import GPTModel

from transformers import GPT2Config, GPT2LMHeadModel  # the `test` extra installs transformers

REPO = Path(__file__).resolve().parent.parent
BOOK = GPTConfig(vocab_size=257, context_length=16, emb_dim=32, n_heads=4, n_layers=1, drop_rate=0.0)
HUGE = 250_000_000  # rows of 32 float32 values: 32 GB if anything copied the expanded tensor
PEAK_LIMIT_KB = 1_500_000  # a refused import stays far below this (torch itself is ~300 MB)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def book_state(cfg: GPTConfig = BOOK, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return book_reference.GPTModel(cfg.to_book_dict()).state_dict()


def save_book(state: dict, file: Path) -> Path:
    torch.save(state, file)
    return file


def make_hf(vocab_size: int = 50257, seed: int = 0) -> GPT2LMHeadModel:
    cfg = GPT2Config(n_embd=32, n_layer=1, n_head=4, n_positions=32, vocab_size=vocab_size, bos_token_id=0,
                     eos_token_id=0, initializer_range=0.1)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).eval()


def save_bin(hf: GPT2LMHeadModel, folder: Path, replace: dict[str, torch.Tensor] | None = None,
             config: dict | None = None) -> Path:
    """A ``pytorch_model.bin`` folder as OpenAI's upload has it (no ``transformer.`` prefix), with some
    tensors replaced and config.json values changed."""
    folder.mkdir(parents=True)
    cfg = hf.config.to_dict()
    cfg.update(config or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state.update(replace or {})
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def no_checkpoints() -> bool:
    return os.listdir(paths.checkpoints_dir()) == []


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpttui", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def run_cli_peak(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    """The command line in a fresh interpreter, and its peak resident memory in KB (Linux ru_maxrss)."""
    code = ("import resource, sys\nfrom gpttui.cli import main\nrc = main(sys.argv[1:])\n"
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    peak = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_KB"))
    return proc, peak


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Expanded, overlapping and shared tensors
# ---------------------------------------------------------------------------------------------


def test_expanded_tensor_in_book_pth_is_refused_before_materialising(tmp_path):
    state = book_state()
    state["tok_emb.weight"] = torch.zeros(1, 1).expand(HUGE, 32)  # 4 bytes stored, 32 GB once copied
    state["out_head.weight"] = torch.zeros(1, 1).expand(HUGE, 32)
    file = save_book(state, tmp_path / "model.pth")
    assert file.stat().st_size < 100_000

    with pytest.raises(CheckpointError, match=r"tok_emb\.weight \(250000000, 32\) is an expanded tensor") as err:
        interop.read_book(file, n_heads=4)
    assert "32.0 GB once copied" in str(err.value)
    with pytest.raises(CheckpointError, match="expanded tensor"):  # a config given changes nothing
        interop.import_book(file, "x", BOOK.replace(vocab_size=HUGE))
    with pytest.raises(CheckpointError, match="expanded tensor"):
        interop.infer_book_config(file, n_heads=4)

    proc, peak = run_cli_peak("checkpoints", "import", str(file), "crafted", "--n-heads", "4")
    assert "expanded tensor" in one_line_error(proc)
    assert peak < PEAK_LIMIT_KB, f"peak {peak} KB"
    assert no_checkpoints()


def test_expanded_tensor_in_model_and_optimizer_pth_is_refused(tmp_path):
    """The optimizer state is untrusted too: an expanded exp_avg would be stored, then trained with."""
    torch.manual_seed(0)
    model = book_reference.GPTModel(BOOK.to_book_dict())
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 257, (1, 8))).sum().backward()
    opt.step()
    opt_state = opt.state_dict()
    opt_state["state"][0]["exp_avg"] = torch.zeros(1, 1).expand(HUGE, 32)
    file = save_book({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt_state},
                     tmp_path / "model_and_optimizer.pth")
    with pytest.raises(CheckpointError, match=r"optimizer_state_dict\['state'\]\[0\]\['exp_avg'\].*expanded"):
        interop.import_book(file, "x", n_heads=4)
    assert no_checkpoints()


def test_expanded_tensor_in_pytorch_model_bin_is_refused_before_materialising(tmp_path):
    folder = save_bin(make_hf(), tmp_path / "gpt2", replace={"wte.weight": torch.zeros(1, 1).expand(HUGE, 32)},
                      config={"vocab_size": HUGE})  # config.json agrees with the crafted shape
    assert (folder / "pytorch_model.bin").stat().st_size < 200_000
    with pytest.raises(CheckpointError, match=r"wte\.weight \(250000000, 32\) is an expanded tensor"):
        gi.read_gpt2(folder)
    with pytest.raises(CheckpointError, match="expanded tensor"):
        gi.load_gpt2(folder)

    proc, peak = run_cli_peak("import-gpt2", str(folder), "--name", "crafted")
    assert "expanded tensor" in one_line_error(proc)
    assert peak < PEAK_LIMIT_KB, f"peak {peak} KB"
    assert no_checkpoints()


def test_config_larger_than_the_weight_files_is_refused(tmp_path):
    """config.json is untrusted: a config describing far more weights than the files hold is refused
    before anything is built from it (here: a million layers)."""
    good = tmp_path / "good"
    make_hf().save_pretrained(good)
    cfg = json.loads((good / "config.json").read_text())
    cfg["n_layer"] = 1_000_000
    (good / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="the config does not match the weights"):
        gi.import_gpt2(good, "x")
    assert no_checkpoints()


def test_self_overlapping_and_shared_tensors_are_refused(tmp_path):
    state = book_state()
    # 1000 x 32 values read from 1031 stored ones: every row starts one value after the previous.
    state["tok_emb.weight"] = torch.randn(1031).as_strided((1000, 32), (1, 1))
    with pytest.raises(CheckpointError, match=r"tok_emb\.weight \(1000, 32\) overlaps itself"):
        interop.read_book(save_book(state, tmp_path / "a.pth"), n_heads=4)

    state = book_state()
    state["trf_blocks.0.att.W_key.weight"] = state["trf_blocks.0.att.W_query.weight"]  # one tensor, twice
    with pytest.raises(CheckpointError, match=r"W_query\.weight and trf_blocks\.0\.att\.W_key\.weight share"):
        interop.read_book(save_book(state, tmp_path / "b.pth"), n_heads=4)

    state = book_state()
    whole = torch.randn(2 * 257 * 32)
    state["tok_emb.weight"] = whole[: 257 * 32].view(257, 32)
    state["out_head.weight"] = whole[257 * 16: 257 * 48].view(257, 32)  # overlapping halves of one storage
    with pytest.raises(CheckpointError, match="share the same stored values"):
        interop.read_book(save_book(state, tmp_path / "c.pth"), n_heads=4)
    assert no_checkpoints()


def test_a_tied_model_saved_with_torch_save_is_accepted(tmp_path):
    """torch.save of a tied model writes one storage viewed twice (tok_emb / out_head): that is fine."""
    state = book_state()
    state["out_head.weight"] = state["tok_emb.weight"]
    imported = interop.read_book(save_book(state, tmp_path / "tied.pth"), n_heads=4)
    assert imported.config.tie_weights and imported.model.out_head.weight is imported.model.tok_emb.weight
    torch.testing.assert_close(imported.model.tok_emb.weight, state["tok_emb.weight"])


def test_compressed_pth_records_are_refused_before_torch_load(tmp_path):
    """torch.load inflates a deflated record of any size; torch.save never writes one."""
    plain = save_book(book_state(), tmp_path / "plain.pth")
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert torch.load(packed, weights_only=True).keys() == torch.load(plain, weights_only=True).keys()
    with pytest.raises(CheckpointError, match="compressed records"):
        interop.import_book(packed, "x", n_heads=4)
    assert no_checkpoints()


def test_check_untrusted_tensors_directly():
    ok = {"a": torch.randn(4, 3), "b": torch.randn(3)}
    assert interop.check_untrusted_tensors(ok, {"a": (4, 3)}, file_size=10_000) == []
    with pytest.raises(CheckpointError, match=r"wrong shapes: a is \(4, 3\), expected \(3, 4\)"):
        interop.check_untrusted_tensors(ok, {"a": (3, 4)})
    with pytest.raises(CheckpointError, match="claim 60 bytes"):
        interop.check_untrusted_tensors(ok, file_size=50)
    assert interop.check_untrusted_tensors({"x": torch.zeros(5, 1).expand(5, 1)}) == []  # size-1 dims
    assert interop.check_untrusted_tensors({"t": torch.randn(3, 5).T}) == []  # transposed: fine
    tied = torch.randn(7, 2)
    assert interop.check_untrusted_tensors({"wte.weight": tied, "lm_head.weight": tied}, file_size=56) == []


# ---------------------------------------------------------------------------------------------
# NaN / inf
# ---------------------------------------------------------------------------------------------


def test_nonfinite_book_weights_refused_and_accepted_with_the_flag(tmp_path):
    state = book_state()
    state["trf_blocks.0.att.W_query.weight"][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    file = save_book(state, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match=r"NaN/inf weights in trf_blocks\.0\.att\.W_query\.weight "
                                              r"\(3 of 1,024 values\).*--allow-nonfinite"):
        interop.import_book(file, "nan", n_heads=4)
    assert no_checkpoints()
    assert "--allow-nonfinite" in one_line_error(run_cli("checkpoints", "import", str(file), "nan",
                                                         "--n-heads", "4"))

    proc = run_cli("checkpoints", "import", str(file), "nan", "--n-heads", "4", "--allow-nonfinite")
    assert proc.returncode == 0, proc.stderr
    assert "note: Imported with NaN/inf values (allowed): trf_blocks.0.att.W_query.weight" in proc.stdout
    loaded = checkpoints.load_checkpoint("nan")
    assert torch.isnan(loaded.model.trf_blocks[0].att.W_query.weight).sum() == 1
    assert "NaN/inf" in loaded.meta["notes"][0]


def test_nonfinite_gpt2_weights_refused_and_accepted_with_the_flag(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "gpt2"
    make_hf().save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    state["transformer.h.0.mlp.c_fc.weight"][1, 2] = float("nan")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"NaN/inf weights in h\.0\.mlp\.c_fc\.weight \(1 of 4,096"):
        gi.import_gpt2(folder, "nan")
    assert no_checkpoints()

    proc = run_cli("import-gpt2", str(folder), "--name", "nan", "--allow-nonfinite")
    assert proc.returncode == 0, proc.stderr
    assert "note: Imported with NaN/inf values (allowed): h.0.mlp.c_fc.weight" in proc.stdout
    assert torch.isnan(checkpoints.load_checkpoint("nan").model.trf_blocks[0].ff.layers[0].weight).sum() == 1


# ---------------------------------------------------------------------------------------------
# Vocabulary and tokenizer
# ---------------------------------------------------------------------------------------------


def test_257_token_book_model_with_the_gpt2_tokenizer_is_refused(tmp_path):
    file = save_book(book_state(), tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match=r"vocabulary of 257 tokens, fewer than the gpt2 tokenizer's 50257.*"
                                              r"fits the bytes tokenizer \(257 tokens\): use --tokenizer bytes"):
        interop.import_book(file, "x", n_heads=4, tokenizer="gpt2")
    assert "use --tokenizer bytes" in one_line_error(
        run_cli("checkpoints", "import", str(file), "x", "--n-heads", "4", "--tokenizer", "gpt2"))
    assert no_checkpoints()

    # Not given: inferred from the vocabulary.
    proc = run_cli("checkpoints", "import", str(file), "book", "--n-heads", "4")
    assert proc.returncode == 0 and "bytes tokenizer" in proc.stdout, proc.stderr
    assert checkpoints.read_meta(checkpoints.checkpoint_path("book"))["tokenizer"] == "bytes"

    padded = save_book(book_state(BOOK.replace(vocab_size=50304)), tmp_path / "padded.pth")
    assert interop.read_book(padded, n_heads=4).meta["tokenizer"] == "gpt2"
    small = save_book(book_state(BOOK.replace(vocab_size=97)), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="97 tokens, smaller than any gpttui tokenizer"):
        interop.read_book(small, n_heads=4)


def test_257_token_gpt2_folder_needs_the_bytes_tokenizer(tmp_path):
    folder = tmp_path / "bytes-gpt2"
    make_hf(vocab_size=257).save_pretrained(folder)
    with pytest.raises(CheckpointError, match=r"257 tokens, fewer than the gpt2 tokenizer's 50257.*--tokenizer bytes"):
        gi.import_gpt2(folder, "x")
    assert no_checkpoints()
    result = gi.import_gpt2(folder, "x", tokenizer="bytes")
    assert checkpoints.read_meta(result.path)["tokenizer"] == "bytes"


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def saved() -> str:
    torch.manual_seed(0)
    checkpoints.save_checkpoint("mine", GPTModel(BOOK), meta={"tokenizer": "bytes"})
    return "mine"


def test_export_refuses_an_existing_file_unless_forced(saved, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a model\n")
    before = notes.read_bytes()
    with pytest.raises(CheckpointError, match="already exists and was not overwritten.*--force"):
        interop.export_book(saved, notes)
    assert "already exists" in one_line_error(run_cli("checkpoints", "export", saved, str(notes)))
    assert notes.read_bytes() == before

    # A folder: the book's file name inside it, under the same rule.
    first = interop.export_book(saved, tmp_path)
    assert first == tmp_path / "model.pth"
    written = first.read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        interop.export_book(saved, tmp_path)
    assert first.read_bytes() == written

    proc = run_cli("checkpoints", "export", saved, str(notes), "--force")
    assert proc.returncode == 0, proc.stderr
    state = torch.load(notes, weights_only=True)
    book_reference.GPTModel(BOOK.to_book_dict()).load_state_dict(state)  # the book's model loads it
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_export_never_writes_inside_the_checkpoints_folder(saved, tmp_path):
    folder = checkpoints.checkpoint_path(saved)
    own = {f: (folder / f).read_bytes() for f in ("model.safetensors", "meta.json")}
    for target in (folder / "model.safetensors", folder / "meta.json", folder, paths.checkpoints_dir(),
                   folder / "new.pth"):
        for force in (False, True):
            with pytest.raises(CheckpointError, match="inside gpttui's checkpoints folder"):
                interop.export_book(saved, target, force=force)
    link = tmp_path / "innocent.pth"  # a symbolic link outside, pointing in
    link.symlink_to(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="inside gpttui's checkpoints folder"):
        interop.export_book(saved, link, force=True)
    linked_dir = tmp_path / "elsewhere"
    linked_dir.symlink_to(folder, target_is_directory=True)
    with pytest.raises(CheckpointError, match="inside gpttui's checkpoints folder"):
        interop.export_book(saved, linked_dir / "model.safetensors", force=True)
    msg = one_line_error(run_cli("checkpoints", "export", saved, str(folder / "model.safetensors"), "--force"))
    assert "inside gpttui's checkpoints folder" in msg

    assert {f: (folder / f).read_bytes() for f in own} == own
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors"]
    checkpoints.load_checkpoint(saved)  # still whole


def test_export_refuses_a_missing_folder_and_does_not_create_it(saved, tmp_path):
    target = tmp_path / "not" / "there" / "model.pth"
    with pytest.raises(CheckpointError, match=r"folder .*not/there does not exist"):
        interop.export_book(saved, target)
    assert "does not exist" in one_line_error(run_cli("checkpoints", "export", saved, str(target), "--force"))
    with pytest.raises(CheckpointError, match="does not exist"):
        interop.export_book(saved, str(tmp_path / "newdir") + os.sep)  # meant as a folder
    assert not (tmp_path / "not").exists() and not (tmp_path / "newdir").exists()


def test_a_file_appearing_before_the_write_is_not_clobbered(tmp_path):
    """The write links the finished temporary file to the target name: that fails if the name exists,
    even if it appeared after export_target looked (O_EXCL semantics)."""
    late = tmp_path / "model.pth"
    assert interop.export_target(late) == late  # free when checked...
    late.write_text("someone else's file")  # ...taken before the write
    with pytest.raises(CheckpointError, match="already exists"):
        interop._write_book_file({"w": torch.ones(2)}, late, force=False)
    assert late.read_text() == "someone else's file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]
    interop._write_book_file({"w": torch.ones(2)}, late, force=True)
    assert torch.equal(torch.load(late, weights_only=True)["w"], torch.ones(2))
