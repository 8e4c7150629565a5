"""User-facing errors: anything a user can cause (bad config, missing or corrupt file) raises `CocomixError`.

The CLI prints such an error as one line and exits with code 2; everything else is a bug and keeps its traceback.
`CocomixWarning` is the one-line note about the input that does not stop the work.

No paper equation.
"""

import contextlib
import re
from collections.abc import Iterator


def load_failure(exc: Exception) -> str:
    """The informative first line of a `torch.load` / unpickling failure (torch's weights_only refusal spans many
    lines); for the one-line errors of the CLI."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__


class CocomixWarning(UserWarning):
    """A note about the user's input that does not stop the work (an SAE that does not fit its teacher, a teacher
    with no tokenizer to check): the CLI prints it as one line, `cocomix: warning: ...`."""


class CocomixError(Exception):
    """A problem with the user's input: a config value, a file, a path. The message names the field or file."""


class ConfigError(CocomixError):
    """A config field holds a value outside what it accepts."""


class DataError(CocomixError):
    """A data file (corpus, token store, tokenizer) is missing, malformed or inconsistent."""


class CheckpointError(CocomixError):
    """A checkpoint or exported model folder is missing, incomplete or does not match the config."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, a quota): the run's logs so far are kept, not undone as a
    failure on bad input is."""


class Stopped(Exception):  # noqa: N818 - a clean stop, not an error
    """A long command (`train-sae`, `extract-concepts`) stopped on SIGTERM / SIGINT after saving its progress;
    `detail` says where and how to resume. The CLI prints it and exits 128 + the signal number."""

    def __init__(self, signum: int, detail: str) -> None:
        super().__init__(detail)
        self.signum, self.detail = signum, detail

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signum).name


@contextlib.contextmanager
def named_by(key: str) -> Iterator[None]:
    """Re-raise a CocomixError from the block with the config key `key` in front (`concept.sae: ...`), the setting
    `train` speaks in, unless the message already names a key of that section (`concept.teacher_layer: ...`)."""
    section, _, last = key.rpartition(".")
    try:
        yield
    except CocomixError as e:
        said = str(e)
        if not re.match(rf"{re.escape(section)}\.\w+: ", said):  # (`concept.cache_v1/meta.json: …` names no key)
            said = f"{key}: {said.removeprefix(last + ': ')}"  # a bare `teacher: …` becomes `concept.teacher: …`
        raise type(e)(said) from None
