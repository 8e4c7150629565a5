"""Parsing JSON that a user or a crash may have damaged: every way the text can fail to parse is a ValueError.

`json.loads` reports most malformed text as a ValueError (JSONDecodeError, an integer past Python's digit limit,
bytes that are not UTF-8), but nesting deeper than its recursive parser goes as a RecursionError, which the
callers' `except ValueError` would let through as a traceback. `loads` turns that one into a ValueError too, so a
file's reader keeps a single clause for "not JSON we can read".
"""
from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """`json.loads(text, **kwargs)`; nesting too deep to parse raises ValueError("JSON nested too deeply ...")."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
