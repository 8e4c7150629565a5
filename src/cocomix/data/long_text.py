"""Long documents in pieces: where to cut a text so that the pieces tokenize as the whole does (no paper equation).

A tokenizer holds hundreds of bytes per token while it encodes, and the BPE trainer ~100 bytes per character of
its input, so a book-sized (or larger) single document is never handed over whole: `prepare` encodes it with
`encode_long` and trains the BPE on `training_pieces`. Cuts go before a line break that a non-space follows or,
where a piece has none, before a space between two non-spaces; a byte-level BPE pre-tokenizes both sides as the
whole, and `encode_long` also checks each cut by encoding the text around it both ways.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from cocomix.data.tokenizer import TextTokenizer

PIECE_CHARS = 1 << 20  # a longer document is encoded in pieces of about this many characters ...
MARGIN = 4096  # ... each cut checked on this many characters either side ...
CUT_TRIES = 8  # ... and after this many failed checks in a row the rest is encoded whole
PIECES_PER_CALL = 8

_LINE_CUT = re.compile(r"\n(?=\S)")  # before a line break that a non-space follows
_SPACE_CUT = re.compile(r"(?<=\S) (?=\S)")  # before a space between two non-spaces
_ANY_CUT = re.compile(r"\n(?=\S)|(?<=\S) (?=\S)")


def _next_cut(text: str, pos: int) -> int:
    """Where to cut a long text at or after `pos`: before a line break that a non-space follows or, where there is
    none within `PIECE_CHARS`, before a space between two non-spaces (a one-line text, indented lines); past that
    window the first of either (one scan that stops there, so cutting a whole text stays linear in its length);
    -1 when the rest has neither. A byte-level BPE pre-tokenizes both sides as it does the whole (` word` keeps its
    space, a line break is a pre-token of its own)."""
    for pattern in (_LINE_CUT, _SPACE_CUT):
        m = pattern.search(text, pos, pos + PIECE_CHARS + 1)  # (+1: the look-ahead sees the window's last cut)
        if m is not None:
            return m.start()
    m = _ANY_CUT.search(text, pos)
    return -1 if m is None else m.start()


def _cut_candidates(text: str, pos: int) -> list[int]:
    """The cuts `encode_long` tries at or after `pos`, in order: `_next_cut`'s and, where that is a line break,
    the first space cut in the window too (the pre-tokenizers of Llama 3, Qwen 2 and GPT-4o glue punctuation to the
    line break after it, so the check fails before most line breaks of prose and code, and passes before a
    space); empty when the rest has no cut."""
    j = _next_cut(text, pos)
    if j == -1:
        return []
    m = _SPACE_CUT.search(text, pos, pos + PIECE_CHARS + 1) if text[j] == "\n" else None
    return [j] if m is None or m.start() == j else [j, m.start()]


def training_pieces(text: str) -> Iterator[str]:
    """A document as BPE training reads it: pieces of about `PIECE_CHARS` characters cut where `_next_cut` says
    (the trainer holds ~100 bytes per character of its input: a book-sized file whole would need tens of GB);
    the pre-tokens, and so the trained merges, are those of the whole text."""
    start, pos = 0, PIECE_CHARS
    while pos < len(text):
        j = _next_cut(text, pos)
        if j == -1:
            break
        yield text[start:j]
        start, pos = j, j + PIECE_CHARS
    yield text[start:]


def encode_long(tok: TextTokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    """The ids of one long document, encoded in pieces of about `PIECE_CHARS` characters (a tokenizer's working
    memory is hundreds of bytes per token: a whole book-sized file at once would need tens of GB).

    A piece ends where `_cut_candidates` says (a line break, else — or where the line break fails the check — a
    space). A cut is taken only where encoding the `MARGIN` characters around it whole gives the same ids as
    encoding the two sides apart, so the ids equal the whole document's (byte-level BPE tokenizers cut cleanly
    there; one that does not, e.g. a SentencePiece tokenizer adding a prefix space to every input, fails the check
    and the text stays whole after `CUT_TRIES` failures)."""
    cuts, failures, pos = [0], 0, PIECE_CHARS
    while pos < len(text) and failures < CUT_TRIES:
        tried = _cut_candidates(text, pos)
        if not tried:
            break
        for j in tried:
            a, b = max(cuts[-1], j - MARGIN), min(len(text), j + MARGIN)
            whole, left, right = tok.encode_ordinary_batch([text[a:b], text[a:j], text[j:b]])
            if whole == left + right:
                cuts.append(j)
                pos, failures = j + PIECE_CHARS, 0
                break
        else:
            pos, failures = max(tried) + 1, failures + 1
    cuts.append(len(text))
    spans = list(zip(cuts[:-1], cuts[1:], strict=True))
    out = []
    for k in range(0, len(spans), PIECES_PER_CALL):  # a few pieces per call: the tokenizer encodes them in parallel
        batch = [text[a:b] for a, b in spans[k:k + PIECES_PER_CALL]]
        out.extend(np.asarray(ids, dtype=dtype) for ids in tok.encode_ordinary_batch(batch))
    return np.concatenate(out)
