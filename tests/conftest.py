"""Test set-up: every test gets its own GPTTUI_HOME and an empty tiktoken cache; the GPT-2 BPE files
(encoder.json, vocab.bpe, never committed) are found once per session.

They are looked for, in order, in:
  1. ../shared/data/gpt2 beside the repository (CI has it);
  2. the directory named by the machine's $GPTTUI_GPT2_BPE_DIR;
  3. tiktoken's own cache (the machine's TIKTOKEN_CACHE_DIR / DATA_GYM_CACHE_DIR / temp dir);
  4. gpttui's data dir of the real user (where `gpttui tokenizer import DIR` puts them);
  5. tiktoken's download, in a subprocess cut off after DOWNLOAD_TIMEOUT_S (fails fast offline).
The first source whose files pass gpttui's sha256 check is copied into a session directory, and every
test sees that directory as $GPTTUI_GPT2_BPE_DIR.

Tests that need the files are marked ``requires_gpt2_bpe`` (tests using the ``bpe_dir`` or
``gpt2_tokenizer`` fixtures are marked automatically). With no files anywhere they skip, all with
MISSING_REASON; everything else runs on the bytes tokenizer. Under CI (CI=true) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_BPE = (REPO.parent / "shared" / "data" / "gpt2").resolve()

MARKER = "requires_gpt2_bpe"
BPE_FIXTURES = {"bpe_dir", "gpt2_tokenizer"}
DOWNLOAD_TIMEOUT_S = 20
MISSING_REASON = (
    "GPT-2 BPE files not found (../shared/data/gpt2, $GPTTUI_GPT2_BPE_DIR, tiktoken cache, gpttui data dir; "
    "download failed or offline): run `gpttui tokenizer import DIR` with encoder.json and vocab.bpe in DIR"
)

# The machine's environment before any test changed it: where the real files may be.
REAL_ENV = dict(os.environ)

sys.path.insert(0, str(TESTS))  # book_reference


def _in_ci() -> bool:
    return REAL_ENV.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# --- finding the GPT-2 BPE files, once per session -----------------------------------------------

@dataclass
class BpeFiles:
    dir: Path | None = None  # a verified copy of encoder.json + vocab.bpe, or None
    source: str = ""
    tried: list[str] = field(default_factory=list)


_found: BpeFiles | None = None


def _real_tiktoken_cache() -> dict[str, Path] | None:
    """The two files in the machine's tiktoken cache, decided as gpttui decides it (its own function,
    under the machine's environment rather than a test's)."""
    from gpttui.core import tokenizer as T

    with pytest.MonkeyPatch.context() as mp:
        for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
            if var in REAL_ENV:
                mp.setenv(var, REAL_ENV[var])
            else:
                mp.delenv(var, raising=False)
        return T._tiktoken_cached_files()


def _real_data_dir() -> Path:
    """gpttui.core.tokenizer.gpt2_data_dir() of the real user (paths.data_dir() honours GPTTUI_HOME,
    else platformdirs), worked out without creating directories in the user's home."""
    import platformdirs

    from gpttui.core import paths

    home = REAL_ENV.get(paths.HOME_ENV)
    base = Path(home).expanduser() if home else Path(platformdirs.user_data_dir(paths.APP_NAME, appauthor=False))
    return base / "tokenizers" / "gpt2"


def _in_dir(directory: Path) -> dict[str, Path] | None:
    from gpttui.core import tokenizer as T

    files = {name: directory / name for name in T.GPT2_FILES}
    return files if any(p.exists() for p in files.values()) else None


def _download(cache: Path) -> dict[str, Path] | None:
    """tiktoken's own download (as the app's last resort), into ``cache``, in a subprocess so that a
    network that swallows packets costs at most DOWNLOAD_TIMEOUT_S."""
    from gpttui.core import tokenizer as T

    cache.mkdir(parents=True, exist_ok=True)
    env = {**REAL_ENV, "TIKTOKEN_CACHE_DIR": str(cache)}
    try:
        proc = subprocess.run([sys.executable, "-c", "import tiktoken; tiktoken.get_encoding('gpt2')"],
                              env=env, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"no answer in {DOWNLOAD_TIMEOUT_S} s") from None
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError((lines[-1] if lines else f"exit status {proc.returncode}")[:200])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return T._tiktoken_cached_files()


def _find_bpe(dest: Path, scratch: Path) -> BpeFiles:
    """The first source with good files, copied to ``dest`` and checked there by gpttui's own check."""
    from gpttui.core import tokenizer as T

    result = BpeFiles()
    env_dir = REAL_ENV.get(T.BPE_DIR_ENV)
    sources = [("../shared/data/gpt2", lambda: _in_dir(SHARED_BPE))]
    if env_dir:
        sources.append((f"${T.BPE_DIR_ENV}", lambda: _in_dir(Path(env_dir).expanduser())))
    sources += [
        ("tiktoken cache", _real_tiktoken_cache),
        ("gpttui data dir", lambda: _in_dir(_real_data_dir())),
        ("download", lambda: _download(scratch / "tiktoken-download")),
    ]
    for label, locate in sources:
        try:
            files = locate()
        except Exception as exc:  # noqa: BLE001 - every failure is just "not here"
            result.tried.append(f"{label}: {exc}")
            continue
        if files is None:
            result.tried.append(f"{label}: not there")
            continue
        dest.mkdir(parents=True, exist_ok=True)
        try:
            for name, path in files.items():
                shutil.copyfile(path, dest / name)
                (dest / name).chmod(0o444)  # a shared copy: a test must not change it
            T._check_dir(dest)  # missing file or sha256 mismatch -> TokenizerError
        except (OSError, T.TokenizerError) as exc:
            result.tried.append(f"{label}: {exc}")
            shutil.rmtree(dest, ignore_errors=True)
            continue
        result.dir, result.source = dest, label
        return result
    return result


@pytest.fixture(scope="session")
def gpt2_bpe(tmp_path_factory) -> BpeFiles:
    global _found
    if _found is None:
        base = tmp_path_factory.mktemp("gpt2-bpe")
        _found = _find_bpe(base / "gpt2", base)
    return _found


def _require_bpe(found: BpeFiles) -> Path:
    if found.dir is not None:
        return found.dir
    if _in_ci():
        pytest.fail(f"{MISSING_REASON}\nCI=true, where the GPT-2 tests must run; tried:\n  "
                    + "\n  ".join(found.tried), pytrace=False)
    pytest.skip(MISSING_REASON)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BPE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(MARKER)


# --- per test --------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def gpttui_home(tmp_path_factory, monkeypatch, request, gpt2_bpe):
    if request.node.get_closest_marker(MARKER):
        _require_bpe(gpt2_bpe)
    home = tmp_path_factory.mktemp("gpttui_home")
    monkeypatch.setenv("GPTTUI_HOME", str(home))
    # tiktoken's own cache must not leak in from the machine: point it at an empty directory.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(home / "tiktoken-cache"))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    if gpt2_bpe.dir is not None:
        monkeypatch.setenv("GPTTUI_GPT2_BPE_DIR", str(gpt2_bpe.dir))
    else:
        monkeypatch.delenv("GPTTUI_GPT2_BPE_DIR", raising=False)
    yield home


@pytest.fixture
def bpe_dir(gpt2_bpe) -> Path:
    """A directory with OpenAI's encoder.json and vocab.bpe (read-only; copy before changing)."""
    return _require_bpe(gpt2_bpe)


@pytest.fixture
def gpt2_tokenizer(bpe_dir):
    from gpttui.core.tokenizer import get_tokenizer

    return get_tokenizer("gpt2", download=False)


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if hasattr(config.option, "warn_unused_snapshots") and not _in_ci():
        # Outside CI a snapshot test may skip for a missing environment (no GPT-2 files): its picture is
        # then unused, which syrupy would count as a failure. Under CI=true every one runs, and a stale
        # picture still fails the run.
        config.option.warn_unused_snapshots = True


def pytest_terminal_summary(terminalreporter):
    if _found is None:
        return
    if _found.dir is not None:
        terminalreporter.write_line(f"GPT-2 BPE files: from {_found.source}")
    else:
        terminalreporter.write_line("GPT-2 BPE files: none; tried " + "; ".join(_found.tried))
