"""User-facing errors: anything a user can cause (bad config, missing or corrupt file) raises `CocomixError`.

The CLI prints such an error as one line and exits with code 2; everything else is a bug and keeps its traceback.
"""


class CocomixError(Exception):
    """A problem with the user's input: a config value, a file, a path. The message names the field or file."""


class ConfigError(CocomixError):
    """A config field holds a value outside what it accepts."""


class DataError(CocomixError):
    """A data file (corpus, token store, tokenizer) is missing, malformed or inconsistent."""


class CheckpointError(CocomixError):
    """A checkpoint or exported model folder is missing, incomplete or does not match the config."""
