"""Errors the engine raises for bad input: their message is meant for the user, as is."""


class GPTTUIError(Exception):
    """Base class: ``str(err)`` is a complete, user-facing message."""


class DataError(GPTTUIError):
    """A corpus that cannot be used: missing, empty, binary, too small for the settings."""


class TokenizerError(GPTTUIError):
    """A tokenizer that cannot be built (e.g. the GPT-2 BPE files are nowhere to be found)."""


class ConfigError(GPTTUIError):
    """An invalid model or training setting."""


class CheckpointError(GPTTUIError):
    """A checkpoint that cannot be read, written or found."""
