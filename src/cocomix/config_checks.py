"""The value checks of the config dataclasses (`config.py`): one `ConfigError` naming the field and what it
accepts, for the library API as for `--set` and config files.

No paper equation.
"""

from __future__ import annotations

import math
from typing import Any

from cocomix.errors import ConfigError


def is_int(v: Any) -> bool:
    """An int, not a bool (which Python counts as one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float, not a bool (nor an int too large for a float: math.isfinite would overflow)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check(cond: bool, name: str, expected: str, value: Any) -> None:
    """ConfigError "NAME: expected EXPECTED, got VALUE" (the value's repr cut at 80 characters) unless `cond`."""
    if not cond:
        shown = repr(value)
        raise ConfigError(f"{name}: expected {expected}, got {shown if len(shown) <= 80 else shown[:77] + '...'}")
