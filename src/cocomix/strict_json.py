"""JSON that strict parsers read: Python's `json` writes a non-finite float as the bare tokens NaN / Infinity,
which `jq`, JavaScript and most other readers refuse; here they become the strings "NaN", "Infinity" and
"-Infinity" (no paper equation). Used where a command prints results for other programs: a diverged checkpoint's
loss, or lm-eval's standard error of a task with one example.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_text(value: Any) -> Any:
    """`value` with every non-finite float, in dicts, lists and tuples at any depth, replaced by its JSON name
    as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: finite_or_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_text(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` of `value` with non-finite floats written as strings (`allow_nan=False` keeps it so)."""
    return json.dumps(finite_or_text(value), allow_nan=False, **kwargs)
