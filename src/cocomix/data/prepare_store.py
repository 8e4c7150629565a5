"""Writing a token store: `prepare` tokenizes a corpus into the layout `store.py` describes (no paper equation).

The train documents may train a byte-level BPE first; the documents are encoded in batches and streamed to
`.train.bin.new` / `.val.bin.new`, which replace the old streams only once everything succeeded; the tokenizer
and `meta.json` come last (meta.json marks a complete store). One writer per folder (`RunLock`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cocomix.atomic import atomic_write_text, atomic_writer, check_utf8_path, fsync_dir
from cocomix.data import long_text
from cocomix.data.corpus import VAL_FRACTION, Document, iter_split
from cocomix.data.store import (
    DTYPES,
    FORMAT_VERSION,
    INCOMPLETE,
    MAX_VAL_NAMES,
    META_FILE,
    SPLITS,
    TOKENIZER_DIR,
)
from cocomix.data.tokenizer import TextTokenizer, check_bpe_size, load_tokenizer, train_bpe
from cocomix.errors import DataError

_BATCH_DOCS = 512  # documents per encode_batch call ...
_BATCH_CHARS = 8_000_000  # ... or fewer, once this many characters are buffered
_Documents = Callable[[], Iterator[tuple[str, Document]]]  # (split, document) of the source, read again per call


def dtype_name(vocab_size: int) -> str:
    """Name of the smallest supported token dtype that holds ids below `vocab_size`."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


class _Progress:
    """Progress lines on stderr, at most one every `every` seconds (plus forced ones)."""

    def __init__(self, enabled: bool, every: float = 2.0) -> None:
        self.enabled, self.every, self.last = enabled, every, 0.0

    def __call__(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self.last >= self.every):
            self.last = now
            print(f"prepare: {message}", file=sys.stderr, flush=True)


def _build_tokenizer(spec: str, source: str, documents: _Documents, log: _Progress) -> TextTokenizer:
    """`bpe:<vocab>` trains a byte-level BPE on the train documents; anything else goes to load_tokenizer."""
    if not spec.startswith("bpe:"):
        return load_tokenizer(spec)
    try:
        vocab_size = int(spec[4:])
    except ValueError:
        raise DataError(f"tokenizer {spec!r}: expected bpe:<vocab_size>, e.g. bpe:4096") from None
    check_bpe_size(vocab_size)  # before the progress line: a bad size is the only line printed
    log(f"training a byte-level BPE tokenizer (vocab {vocab_size}) on the train documents of {source!r}",
        force=True)
    tok = train_bpe(_counted_train_pieces(documents, log), vocab_size)
    if tok.vocab_size < vocab_size:
        log(f"note: the train documents support only {tok.vocab_size} BPE tokens ({spec} asked for): the store's "
            f"vocabulary is {tok.vocab_size}", force=True)
    return tok


def _counted_train_pieces(documents: _Documents, log: _Progress) -> Iterator[str]:
    """The train documents' text in the pieces BPE training reads (`long_text.training_pieces`), with progress
    lines while the trainer counts them and one when it goes on to the merges (which shows none)."""
    docs = chars = 0
    for split, doc in documents():
        if split != "train":
            continue
        yield from long_text.training_pieces(doc.text)
        docs, chars = docs + 1, chars + len(doc.text)
        log(f"BPE: counted {docs:,} train documents ({chars:,} characters) so far")
    log(f"BPE: computing the merges over {docs:,} train documents ({chars:,} characters)", force=True)


def _check_out_dir(out: Path, overwrite: bool) -> None:
    check_utf8_path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder (expected a folder for the token store)")
    from cocomix.outputs import STORE, output_kind

    kind = output_kind(out)
    if kind not in (None, STORE):  # a run, an SAE, a cache, a report: never mixed with a store
        raise DataError(f"{out}: holds {kind}, not a token store; choose a new or empty --out")
    if (out / META_FILE).exists() and not overwrite:
        raise DataError(f"{out}: already prepared ({META_FILE} exists); pass --overwrite to replace it")
    foreign = [n for n in ("train.bin", "val.bin", TOKENIZER_DIR) if (out / n).exists()]
    if foreign and not (out / META_FILE).exists() and not (out / INCOMPLETE).exists() and not overwrite:
        # e.g. nanoGPT's data/openwebtext/{train,val}.bin (no meta.json): never replaced without being asked
        raise DataError(f"{out}: holds {', '.join(foreign)} but no {META_FILE}, so not a cocomix token store; "
                        "pass --overwrite to replace them, choose another --out, or use them as they are with "
                        f"`cocomix prepare --adopt {out}` (nanoGPT-style streams)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".cocomix-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{out}: cannot write the token store there ({e.strerror or e})") from e


def _encode_into(tok: TextTokenizer, docs: list[Document], handle: BinaryIO, dtype: np.dtype) -> int:
    """Encode `docs`, append the eos id to each, write the ids to `handle`; return the token count. A document
    longer than `long_text.PIECE_CHARS` is encoded in pieces (`long_text.encode_long`)."""
    short = [i for i, doc in enumerate(docs) if len(doc.text) <= long_text.PIECE_CHARS]
    encoded = dict(zip(short, _encoded(tok, [docs[i] for i in short]), strict=True))
    total = 0
    for i, doc in enumerate(docs):
        ids = np.asarray(encoded.pop(i), dtype=dtype) if i in encoded else _encoded(tok, [doc], dtype)
        stream = np.append(ids, np.asarray([tok.eos_id], dtype=dtype))  # (len(ids) + 1,)
        handle.write(stream.tobytes())
        total += int(stream.size)
    return total


def _encoded(tok: TextTokenizer, docs: list[Document], dtype: np.dtype | None = None) -> Any:
    """The ids of `docs` (with `dtype`: of the one long document, `long_text.encode_long`); an error the tokenizer
    raises (a Unigram or WordLevel model without an unknown token meeting an unseen character) is a DataError
    naming the document."""
    try:
        if dtype is not None:
            return long_text.encode_long(tok, docs[0].text, dtype)
        return tok.encode_ordinary_batch([doc.text for doc in docs])
    except Exception as e:
        failing = docs[0].name
        for doc in docs:  # which one: each alone
            try:
                tok.encode_ordinary_batch([doc.text])
            except Exception:
                failing = doc.name
                break
        shown = failing.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise DataError(f"document {shown!r}: the tokenizer cannot encode it ({type(e).__name__}: "
                        f"{(str(e).strip().splitlines() or [''])[0]}); give a tokenizer with an unknown token, or a "
                        "byte-level one") from e


def _pending(out: Path, split: str) -> Path:
    return out / f".{split}.bin.new"


def _write_streams(out: Path, tok: TextTokenizer, documents: _Documents, dtype: np.dtype,
                   log: _Progress) -> dict[str, Any]:
    """Write the streams to `.train.bin.new` / `.val.bin.new`; return the token/document counts and val names.

    Nothing the store already holds is touched here, so a source that fails half-way leaves it intact.
    """
    for split in SPLITS:  # a killed prepare's streams (atomic_writer's temp files, or whole ones it had not yet
        _pending(out, split).unlink(missing_ok=True)  # swapped in), possibly corpus-sized
        for stale in out.glob(f".{_pending(out, split).name}.*.tmp"):
            stale.unlink(missing_ok=True)
    counts = {f"{split}_{kind}": 0 for split in SPLITS for kind in ("tokens", "documents")}
    val_names: list[str] = []
    buffers: dict[str, list[Document]] = {split: [] for split in SPLITS}
    buffered_chars = dict.fromkeys(SPLITS, 0)
    with ExitStack() as stack:
        handles = {split: stack.enter_context(atomic_writer(_pending(out, split))) for split in SPLITS}

        def flush(split: str) -> None:
            counts[f"{split}_tokens"] += _encode_into(tok, buffers[split], handles[split], dtype)
            counts[f"{split}_documents"] += len(buffers[split])
            buffers[split], buffered_chars[split] = [], 0
            waiting = sum(len(b) for b in buffers.values())  # (the other split's, encoded once it fills a batch)
            log(f"encoded {counts['train_documents'] + counts['val_documents']} documents so far: "
                f"{counts['train_tokens']:,} train and {counts['val_tokens']:,} val tokens; {waiting} more read")

        for split, doc in documents():
            if split == "val" and len(val_names) < MAX_VAL_NAMES:  # (a non-UTF-8 file name shown with U+FFFD)
                val_names.append(doc.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            buffers[split].append(doc)
            buffered_chars[split] += len(doc.text)
            if len(buffers[split]) >= _BATCH_DOCS or buffered_chars[split] >= _BATCH_CHARS:
                flush(split)
        for split in SPLITS:
            flush(split)
    return {**counts, "val_names": val_names}


def prepare(source: str, out_dir: str | Path, tokenizer: str = "bpe:4096", val_fraction: float | None = None,
            overwrite: bool = False, progress: bool = True, streaming: bool = False, split_by: str = "name") -> dict:
    """Tokenize `source` into a token store at `out_dir`; return its meta (also written to meta.json).

    `tokenizer` is `bpe:<vocab_size>` (train a byte-level BPE on the train documents only) or a spec for
    `load_tokenizer`. See `corpus.py` for the source forms and the train/val split. `streaming` streams an `hf:`
    dataset instead of downloading and converting it first (read twice with `bpe:`: once to train, once to encode);
    `split_by` ("name" or "content") is what the split hashes. `val_fraction` defaults to 0.05; the shakespeare
    corpus holds out fixed plays and refuses `val_fraction` and `split_by`.
    """
    from cocomix.train.guard import RunLock  # here: cocomix.train imports this module

    out = Path(out_dir).expanduser()
    created = not out.exists()  # removed again if preparing fails before writing anything into it
    _check_out_dir(out, overwrite)
    lock = RunLock(out)  # one writer per store folder
    try:
        _check_out_dir(out, overwrite)  # again under the lock: a concurrent prepare may have finished meanwhile
        documents = partial(iter_split, source, val_fraction, streaming, split_by)
        fraction = VAL_FRACTION if val_fraction is None else val_fraction
        return _prepare(source, out, tokenizer, fraction, _Progress(progress), documents, split_by)
    finally:
        lock.release(remove_empty_dir=created)


def _prepare(source: str, out: Path, tokenizer: str, val_fraction: float, log: _Progress, documents: _Documents,
             split_by: str) -> dict:
    next(documents(), None)  # a bad source, val_fraction or split_by fails here, before any work
    tok = _build_tokenizer(tokenizer, source, documents, log)
    name = dtype_name(tok.vocab_size)
    try:
        counts = _write_streams(out, tok, documents, DTYPES[name], log)
        if counts["train_tokens"] == 0:  # every document hashed into validation
            raise DataError(f"source {source!r}: val_fraction {val_fraction} leaves no training text (too few "
                            "documents to split); give more text or a smaller --val-fraction")
        if counts["train_tokens"] == counts["train_documents"]:  # every document's ids: its end-of-text alone
            raise DataError(f"tokenizer {tokenizer!r}: encodes every document of {source!r} to no tokens (a "
                            f"vocabulary of {tok.vocab_size}: an untrained or empty tokenizer?); give a usable one")
        if val_fraction > 0 and counts["val_tokens"] == 0:  # training would only find out at its first eval
            raise DataError(f"source {source!r}: val_fraction {val_fraction} holds out no text (too little text "
                            "to split); give more text or a larger --val-fraction")
        meta = {
            "format_version": FORMAT_VERSION,
            # (a path whose bytes are not UTF-8, as Python hands it over, recorded with its \udcXX escapes)
            "source": source.encode("utf-8", "backslashreplace").decode("utf-8"),
            "tokenizer": tokenizer.encode("utf-8", "backslashreplace").decode("utf-8"),
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "eos_token": tok.eos_token,
            "dtype": name,
            "val_fraction": None if source == "shakespeare" else val_fraction,  # shakespeare: fixed held-out plays
            "val_split": "fixed plays" if source == "shakespeare" else f"blake2b-64 of document {split_by}s",
            "train_tokens": counts["train_tokens"],
            "val_tokens": counts["val_tokens"],
            "train_documents": counts["train_documents"],
            "val_documents": counts["val_documents"],
            "val_names": counts["val_names"],
        }
        meta_text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"  # what can fail, before the swap
        tok.to_json()  # what tok.save writes, rendered while the old store is whole (a failure here loses nothing)
        # The new streams are complete. From here until meta.json is rewritten the folder is marked incomplete
        # (no meta.json: the store does not open) and ours (the marker: a rerun may replace it without --overwrite)
        atomic_write_text(out / INCOMPLETE, "a cocomix prepare was replacing this store\n")
        (out / META_FILE).unlink(missing_ok=True)
        for split in SPLITS:
            os.replace(_pending(out, split), out / f"{split}.bin")
        fsync_dir(out)
        tok.save(out / TOKENIZER_DIR)
        atomic_write_text(out / META_FILE, meta_text)
        (out / INCOMPLETE).unlink(missing_ok=True)
    except BaseException as e:  # the new streams go (they may be corpus-sized; a rerun encodes again)
        for split in SPLITS:
            _pending(out, split).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DataError(f"{out}: cannot write the token store ({e.strerror or e})") from e
        raise
    docs = {s: f"{meta[f'{s}_documents']} document{'s' * (meta[f'{s}_documents'] != 1)}" for s in SPLITS}
    log(f"wrote {out}: {meta['train_tokens']:,} train tokens ({docs['train']}), "
        f"{meta['val_tokens']:,} val tokens ({docs['val']}), vocab {meta['vocab_size']}",
        force=True)
    return meta
