"""The lm-eval adapter's batch size: a fixed integer, or `auto` (lm-eval's `--batch_size auto`), found by halving
from `max_batch_size` until a forward of the longest sequence fits (no paper equation).

A CUDA device reports an out-of-memory error that can be caught, so the largest batch that fits is found by
trying; a CPU has no such signal (an allocation too large swaps or kills the process), so `auto` there is the
fixed CPU default, said once. lm-eval's `auto:N` (re-detect N times as requests get shorter) is read as `auto`:
the batch detected for the longest sequence fits every shorter one. torch is imported where it is used: the
command line imports this module to parse `--batch-size`.
"""

from __future__ import annotations

from collections.abc import Callable

from cocomix.errors import ConfigError

CPU_AUTO = 8
DEFAULT_MAX = 64  # lm-eval's max_batch_size default


def parse_batch_size(value: int | str, field: str = "--batch-size") -> int | str:
    """An integer >= 1, or "auto" (also lm-eval's "auto:N"); anything else a ConfigError naming `field`."""
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            value = int(text)
        elif text == "auto" or (text.startswith("auto:") and text[5:].replace(".", "", 1).isdigit()):
            return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field}: expected an integer >= 1 or 'auto', got {value!r}")
    return value


def is_out_of_memory(error: BaseException) -> bool:
    """A device allocation that failed (CUDA's OutOfMemoryError, or a RuntimeError saying so)."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError)
                                                         and "out of memory" in str(error))


def largest_fitting(try_batch: Callable[[int], None], start: int) -> int:
    """The first of start, start // 2, …, 1 for which `try_batch(b)` runs without running out of memory (1 when
    none does: that error is then the real one)."""
    import torch

    b = start
    while b > 1:
        try:
            try_batch(b)
            return b
        except BaseException as e:
            if not is_out_of_memory(e):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        b //= 2
    return 1
