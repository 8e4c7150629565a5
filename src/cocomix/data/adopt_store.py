"""Adopting nanoGPT-style token streams as a token store, in place (no paper equation).

The official CoCoMix code trains on nanoGPT's OpenWebText files (`data/openwebtext/prepare.py`: tiktoken GPT-2
ids, the end-of-text id 50256 appended to every document, uint16 `train.bin` / `val.bin`; official-implementation.md
§4). Those streams already have the store's layout (`store.py`), so `adopt` checks them against a tokenizer and
writes the two files that make the folder a store: `tokenizer/` and, last, `meta.json`. The streams themselves
(17 GB for OpenWebText) are neither copied nor rewritten, and the train/val split stays the one they were cut with
(the official `train_test_split(test_size=0.0005, seed=2357)`).

Checks, each a one-line DataError naming the file: both streams exist and hold whole tokens of the dtype the
tokenizer's vocabulary needs (and, for uint16, do not look like uint32 ids: every second one 0); the train stream
is not empty; no interrupted cocomix prepare left the folder; every id is below the vocabulary size; each
non-empty stream ends with the end-of-document id (nanoGPT appends it to every document, so a stream that does not
was written with another tokenizer or is truncated; one with none at all, like nanoGPT's shakespeare stream, is
sent to `cocomix prepare`). A refused adoption leaves the folder as it was (no lock file). A folder that cannot be
written (a read-only mount) is refused with the recipe: link the streams into a writable folder and adopt that one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cocomix.atomic import atomic_write_text
from cocomix.data.prepare_store import dtype_name
from cocomix.data.store import DTYPES, FORMAT_VERSION, INCOMPLETE, META_FILE, SPLITS, TOKENIZER_DIR, unreadable_meta
from cocomix.data.tokenizer import TextTokenizer, load_tokenizer
from cocomix.errors import DataError

BLOCK_TOKENS = 1 << 26  # ids read per step of the scan (128 MiB of uint16)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"prepare --adopt: {message}", file=sys.stderr, flush=True)


def _scan(path: Path, dtype: np.dtype, tok: TextTokenizer, progress: bool) -> tuple[int, int]:
    """(tokens, documents) of one stream, after checking its size, ids and final end-of-document id."""
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype.name} ids (a vocabulary of "
                        f"{tok.vocab_size} is stored as {dtype.name}); truncated, or written with another dtype")
    n = size // dtype.itemsize
    if n == 0:
        return 0, 0
    ids = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    head = ids[:1 << 16]  # (≤ 65536,)
    if dtype.itemsize == 2 and head.size >= 64 and not head[1::2].any() and head[0::2].any():
        # uint32 ids read as uint16: every high half is 0 (the size and even the ids may pass the checks below)
        raise DataError(f"{path}: every second uint16 is 0, as in uint32 ids; a vocabulary of {tok.vocab_size} is "
                        "stored as uint16 ids (written with another dtype?)")
    documents, last_report = 0, time.monotonic()
    for start in range(0, n, BLOCK_TOKENS):
        block = ids[start:start + BLOCK_TOKENS]  # (≤ BLOCK_TOKENS,)
        top = int(block.max())
        if top >= tok.vocab_size:
            at = start + int(np.argmax(block >= tok.vocab_size))
            raise DataError(f"{path}: token {at} is id {int(ids[at])}, not below the tokenizer's vocabulary of "
                            f"{tok.vocab_size}; the stream was written with another tokenizer")
        documents += int(np.count_nonzero(block == tok.eos_id))
        if time.monotonic() - last_report >= 5.0:
            last_report = time.monotonic()
            _say(progress, f"{path.name}: checked {start + block.size:,} of {n:,} ids")
    if documents == 0:  # nanoGPT's shakespeare prepare.py, for one, encodes its text without document ends
        raise DataError(f"{path}: holds no end-of-document id {tok.eos_id} ({tok.eos_token!r}) at all; a store needs "
                        "one after every document (nanoGPT's OpenWebText streams have them; its shakespeare stream "
                        "is one text without): prepare such text with `cocomix prepare`, or give the tokenizer "
                        "that wrote the stream")
    if int(ids[-1]) != tok.eos_id:
        raise DataError(f"{path}: ends with id {int(ids[-1])}, not the end-of-document id {tok.eos_id} "
                        f"({tok.eos_token!r}) that follows every document; written with another tokenizer, "
                        "or truncated")
    return n, documents


def adopt(folder: str | Path, tokenizer: str = "gpt2", progress: bool = True) -> dict:
    """Make `folder`, holding nanoGPT-style `train.bin` / `val.bin`, a token store read by `tokenizer` (a spec for
    `load_tokenizer`); return its meta (also written to meta.json)."""
    from cocomix.atomic import check_utf8_path
    from cocomix.outputs import STORE, output_kind
    from cocomix.train.guard import LOCK_NAME, RunLock  # here: cocomix.train imports the data package

    out = Path(folder).expanduser()
    check_utf8_path(out, "--adopt")  # its resolved path goes into meta.json, written last
    if not out.is_dir():
        raise DataError(f"--adopt {out}: {'not a folder' if out.exists() else 'does not exist'} (expected the "
                        "folder holding train.bin and val.bin)")
    if (out / META_FILE).exists() and output_kind(out) in (None, STORE):  # (another output: refused below)
        why = unreadable_meta(out / META_FILE)  # one that cannot be read at all (cut short, damaged): adopted again
        if why is None:
            raise DataError(f"--adopt {out}: already a token store ({META_FILE} exists); train on it as it is")
        print(f"prepare --adopt: {why.partition('; ')[0]}; adopting the streams again replaces it", file=sys.stderr,
              flush=True)
    if (out / INCOMPLETE).exists():  # its streams may be half old, half new: not nanoGPT's files
        raise DataError(f"--adopt {out}: a cocomix prepare was interrupted while writing this store; run that "
                        "prepare again")
    kind = output_kind(out)
    if kind not in (None, STORE):
        raise DataError(f"--adopt {out}: holds {kind}, not token streams")
    for split in SPLITS:
        if not (out / f"{split}.bin").is_file():
            raise DataError(f"--adopt {out}: no {split}.bin (expected nanoGPT-style train.bin and val.bin)")
    if tokenizer.startswith("bpe:"):
        raise DataError(f"--tokenizer {tokenizer}: adopted streams are already tokenized; give the tokenizer that "
                        "wrote them (gpt2 for nanoGPT's and the official code's OpenWebText)")
    tok = load_tokenizer(tokenizer)
    name = dtype_name(tok.vocab_size)  # what `prepare` would have written
    had_lock = (out / LOCK_NAME).exists()  # a refused adoption leaves the folder as it found it
    try:  # RunLock's file, made here first so that a folder on a read-only mount is told what to do instead
        os.close(os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as e:
        raise DataError(f"--adopt {out}: cannot write there ({e.strerror or e}); adopting adds {TOKENIZER_DIR}/ and "
                        f"{META_FILE} beside the streams: link them into a writable folder (mkdir D; ln -s "
                        f"{out.resolve()}/train.bin {out.resolve()}/val.bin D/) and adopt D") from e
    lock, adopted = RunLock(out, instead="let it finish"), False
    try:
        counts = {}
        for split in SPLITS:
            counts[f"{split}_tokens"], counts[f"{split}_documents"] = _scan(out / f"{split}.bin", DTYPES[name], tok,
                                                                            progress)
        if counts["train_tokens"] == 0:
            raise DataError(f"--adopt {out}: train.bin is empty")
        try:
            tok.save(out / TOKENIZER_DIR)
            meta = {
                "format_version": FORMAT_VERSION,
                "source": f"adopted:{out.resolve()}",
                "tokenizer": tokenizer,
                "vocab_size": tok.vocab_size,
                "eos_id": tok.eos_id,
                "eos_token": tok.eos_token,
                "dtype": name,
                "val_fraction": None,
                "val_split": "as adopted (the folder's val.bin)",
                **counts,
                "val_names": [],
            }
            atomic_write_text(out / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
            adopted = True
        except OSError as e:
            raise DataError(f"--adopt {out}: cannot write {TOKENIZER_DIR}/ and {META_FILE} there "
                            f"({e.strerror or e})") from e
    finally:
        if not adopted and not had_lock:
            with contextlib.suppress(OSError):
                (out / LOCK_NAME).unlink()  # still locked: a waiting adopt then locks a file of its own
        lock.release()
    _say(progress, f"{out} is a token store: {counts['train_tokens']:,} train tokens ({counts['train_documents']:,} "
                   f"documents), {counts['val_tokens']:,} val tokens, vocab {tok.vocab_size}")
    return meta
