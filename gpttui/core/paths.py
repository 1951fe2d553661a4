"""Where gpttui keeps its state.

Everything lives under platformdirs' user directories, or under ``$GPTTUI_HOME`` when that is set
(tests always set it). Functions, not constants, so a changed environment is honoured at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "gpttui"
HOME_ENV = "GPTTUI_HOME"


def _home_override() -> Path | None:
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else None


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Durable user data: checkpoints, runs, tokenizer files."""
    home = _home_override()
    return _ensure(home if home else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)))


def cache_dir() -> Path:
    """Re-creatable data: tokenized corpora."""
    home = _home_override()
    return _ensure(home / "cache" if home else Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)))


def config_dir() -> Path:
    home = _home_override()
    return _ensure(home / "config" if home else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)))


def checkpoints_dir() -> Path:
    return _ensure(data_dir() / "checkpoints")


def runs_dir() -> Path:
    return _ensure(data_dir() / "runs")


def tokenizers_dir() -> Path:
    return _ensure(data_dir() / "tokenizers")


def token_cache_dir() -> Path:
    return _ensure(cache_dir() / "tokens")
