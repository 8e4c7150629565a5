"""Generated or corpus text made safe to show (no paper equation): control and format characters as marks or
escapes, so that a terminal, a Markdown file or an HTML page never receives an ANSI escape or a right-to-left
override from a token, and whitespace-only text is shown by its marks instead of as a blank.
"""

from __future__ import annotations

import unicodedata

_MARKS = {"\n": "⏎", "\t": "⇥", "\r": "␍"}


def visible(text: str, keep: str = "") -> str:
    """Corpus text safe for one line of a terminal or a Markdown cell: newline, tab and carriage return as
    marks, every other control or format character (ANSI escapes, zero-width marks) as a \\xNN / \\uNNNN
    escape; characters in `keep` stay as they are (the HTML page keeps its line breaks)."""
    return "".join(ch if ch in keep else _MARKS.get(ch) or (ascii(ch)[1:-1] if unicodedata.category(ch)[0] == "C"
                                                               else ch) for ch in text)


def whitespace_only(text: str, limit: int = 120) -> str | None:
    """For generated text of whitespace only (a steered newline or space concept): a one-line note with its length
    and marks (␠ for a space), which a column or a code block would otherwise show blank, or "(nothing generated)";
    None for other text."""
    if text.strip():
        return None
    if not text:
        return "(nothing generated)"
    return f"({len(text)} whitespace character{'s' * (len(text) != 1)}: {visible(text).replace(' ', '␠')[:limit]})"
