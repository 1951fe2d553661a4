"""Test set-up: every test gets its own GPTTUI_HOME, and the GPT-2 BPE files come from
../shared/data/gpt2 (never committed, never downloaded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_BPE = (REPO.parent / "shared" / "data" / "gpt2").resolve()

sys.path.insert(0, str(TESTS))  # book_reference


@pytest.fixture(autouse=True)
def gpttui_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("gpttui_home")
    monkeypatch.setenv("GPTTUI_HOME", str(home))
    # tiktoken's own cache must not leak in from the machine: point it at an empty directory.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(home / "tiktoken-cache"))
    if SHARED_BPE.is_dir():
        monkeypatch.setenv("GPTTUI_GPT2_BPE_DIR", str(SHARED_BPE))
    else:
        monkeypatch.delenv("GPTTUI_GPT2_BPE_DIR", raising=False)
    yield home


@pytest.fixture(scope="session")
def bpe_dir() -> Path:
    if not SHARED_BPE.is_dir():
        pytest.fail(f"GPT-2 BPE files not found at {SHARED_BPE}: tests need ../shared/data/gpt2")
    return SHARED_BPE


@pytest.fixture
def gpt2_tokenizer(bpe_dir):
    from gpttui.core.tokenizer import get_tokenizer

    return get_tokenizer("gpt2", download=False)


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
