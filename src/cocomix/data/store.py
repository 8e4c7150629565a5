"""The token store: a folder of pre-tokenized train/val token streams, written by `prepare`, read by
`TokenStore` (no paper equation).

Layout (nanoGPT style): `train.bin` and `val.bin` hold the token ids of every document, each document followed
by the end-of-document id, as raw little-endian uint16 (vocab <= 65536) or uint32; `tokenizer/` holds the
tokenizer (loadable by `transformers.AutoTokenizer`); `meta.json` describes the rest. Every file is written
atomically and `meta.json` last, so a folder with a `meta.json` is a complete store.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from cocomix.atomic import atomic_write_text, atomic_writer, check_utf8_path, fsync_dir
from cocomix.data import long_text
from cocomix.data.corpus import Document, iter_split
from cocomix.data.tokenizer import TextTokenizer, check_bpe_size, load_tokenizer, train_bpe
from cocomix.errors import DataError

FORMAT_VERSION = 1
SPLITS = ("train", "val")
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
MAX_VAL_NAMES = 100
_INCOMPLETE = ".cocomix-incomplete"  # while prepare swaps in new streams: the folder is a store being written
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_REQUIRED_INT_KEYS = ("format_version", "vocab_size", "eos_id", "train_tokens", "val_tokens")
_BATCH_DOCS = 512  # documents per encode_batch call ...
_BATCH_CHARS = 8_000_000  # ... or fewer, once this many characters are buffered
_ENTROPY_BLOCK = 1 << 24  # tokens per np.bincount call in unigram_entropy
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
    if foreign and not (out / META_FILE).exists() and not (out / _INCOMPLETE).exists() and not overwrite:
        # e.g. nanoGPT's data/openwebtext/{train,val}.bin (no meta.json): never replaced without being asked
        raise DataError(f"{out}: holds {', '.join(foreign)} but no {META_FILE}, so not a cocomix token store; "
                        "pass --overwrite to replace them, or choose another --out")
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
    encoded = dict(zip(short, tok.encode_ordinary_batch([docs[i].text for i in short]), strict=True))
    total = 0
    for i, doc in enumerate(docs):
        ids = np.asarray(encoded.pop(i), dtype=dtype) if i in encoded else long_text.encode_long(tok, doc.text, dtype)
        stream = np.append(ids, np.asarray([tok.eos_id], dtype=dtype))  # (len(ids) + 1,)
        handle.write(stream.tobytes())
        total += int(stream.size)
    return total


def _pending(out: Path, split: str) -> Path:
    return out / f".{split}.bin.new"


def _write_streams(out: Path, tok: TextTokenizer, documents: _Documents, dtype: np.dtype,
                   log: _Progress) -> dict[str, Any]:
    """Write the streams to `.train.bin.new` / `.val.bin.new`; return the token/document counts and val names.

    Nothing the store already holds is touched here, so a source that fails half-way leaves it intact.
    """
    for split in SPLITS:  # a killed prepare's partial streams (atomic_writer's temp files), possibly corpus-sized
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


def prepare(source: str, out_dir: str | Path, tokenizer: str = "bpe:4096", val_fraction: float = 0.05,
            overwrite: bool = False, progress: bool = True, streaming: bool = False, split_by: str = "name") -> dict:
    """Tokenize `source` into a token store at `out_dir`; return its meta (also written to meta.json).

    `tokenizer` is `bpe:<vocab_size>` (train a byte-level BPE on the train documents only) or a spec for
    `load_tokenizer`. See `corpus.py` for the source forms and the train/val split. `streaming` streams an `hf:`
    dataset instead of downloading and converting it first (read twice with `bpe:`: once to train, once to encode);
    `split_by` ("name" or "content") is what the split hashes.
    """
    from cocomix.train.guard import RunLock  # here: cocomix.train imports this module

    out = Path(out_dir).expanduser()
    created = not out.exists()  # removed again if preparing fails before writing anything into it
    _check_out_dir(out, overwrite)
    lock = RunLock(out)  # one writer per store folder
    try:
        _check_out_dir(out, overwrite)  # again under the lock: a concurrent prepare may have finished meanwhile
        documents = partial(iter_split, source, val_fraction, streaming, split_by)
        return _prepare(source, out, tokenizer, val_fraction, _Progress(progress), documents, split_by)
    finally:
        lock.release(remove_empty_dir=created)


def _prepare(source: str, out: Path, tokenizer: str, val_fraction: float, log: _Progress, documents: _Documents,
             split_by: str) -> dict:
    next(documents(), None)  # a bad source, val_fraction or split_by fails here, before any work
    tok = _build_tokenizer(tokenizer, source, documents, log)
    name = dtype_name(tok.vocab_size)
    try:
        counts = _write_streams(out, tok, documents, _DTYPES[name], log)
        if counts["train_tokens"] == 0:  # every document hashed into validation
            for split in SPLITS:
                _pending(out, split).unlink(missing_ok=True)
            raise DataError(f"source {source!r}: val_fraction {val_fraction} leaves no training text (too few "
                            "documents to split); give more text or a smaller --val-fraction")
        if val_fraction > 0 and counts["val_tokens"] == 0:  # training would only find out at its first eval
            for split in SPLITS:
                _pending(out, split).unlink(missing_ok=True)
            raise DataError(f"source {source!r}: val_fraction {val_fraction} holds out no text (too little text "
                            "to split); give more text or a larger --val-fraction")
        # The new streams are complete. From here until meta.json is rewritten the folder is marked incomplete
        # (no meta.json: the store does not open) and ours (the marker: a rerun may replace it without --overwrite)
        atomic_write_text(out / _INCOMPLETE, "a cocomix prepare was replacing this store\n")
        (out / META_FILE).unlink(missing_ok=True)
        for split in SPLITS:
            os.replace(_pending(out, split), out / f"{split}.bin")
        fsync_dir(out)
        tok.save(out / TOKENIZER_DIR)
        meta = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "tokenizer": tokenizer,
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
        atomic_write_text(out / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        (out / _INCOMPLETE).unlink(missing_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot write the token store ({e.strerror or e})") from e
    docs = {s: f"{meta[f'{s}_documents']} document{'s' * (meta[f'{s}_documents'] != 1)}" for s in SPLITS}
    log(f"wrote {out}: {meta['train_tokens']:,} train tokens ({docs['train']}), "
        f"{meta['val_tokens']:,} val tokens ({docs['val']}), vocab {meta['vocab_size']}",
        force=True)
    return meta


def _validate_meta(meta_path: Path, meta: Any) -> dict:
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object")
    for key in (*_REQUIRED_INT_KEYS, "dtype"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r} (corrupt or truncated; prepare it again)")
    for key in _REQUIRED_INT_KEYS:
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"{meta_path}: {key}: expected a non-negative integer, got {value!r}")
    if meta["format_version"] > FORMAT_VERSION:
        raise DataError(f"{meta_path}: format_version {meta['format_version']} is newer than this cocomix "
                        f"reads ({FORMAT_VERSION}); upgrade cocomix or prepare the data again")
    if meta["dtype"] not in _DTYPES:
        raise DataError(f"{meta_path}: dtype: expected one of {sorted(_DTYPES)}, got {meta['dtype']!r}")
    if not 0 <= meta["eos_id"] < meta["vocab_size"]:
        raise DataError(f"{meta_path}: eos_id {meta['eos_id']} is not below vocab_size {meta['vocab_size']}")
    return meta


def _check_store_folder(path: Path) -> None:
    """DataError naming what `path` is when it is plainly not a token store: a file (a store's meta.json, say),
    another command's output (a concept cache also has a meta.json), or a folder whose subfolders hold stores."""
    from cocomix.outputs import STORE, output_kind

    if path.is_file():
        raise DataError(f"{path}: a file, not a token store; give the folder `cocomix prepare` wrote"
                        + (f" ({path.parent})" if path.name in (META_FILE, "train.bin", "val.bin") else ""))
    kind = output_kind(path)
    if kind is not None and kind != STORE:
        raise DataError(f"{path}: holds {kind}, not a token store (the folder `cocomix prepare` wrote)")
    if path.is_dir() and not (path / META_FILE).exists():
        stores = sorted(p.parent.name for p in path.glob(f"*/{META_FILE}") if (p.parent / "train.bin").is_file())
        if stores:
            raise DataError(f"{path}: not a token store; its subfolder{'s' * (len(stores) > 1)} "
                            f"{', '.join(stores[:5])} {'hold' if len(stores) > 1 else 'holds'} one")


class TokenStore:
    """A prepared token store, opened read-only; the token streams are memory-mapped on first use."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self.vocab_size: int = meta["vocab_size"]
        self.eos_id: int = meta["eos_id"]
        self.dtype = _DTYPES[meta["dtype"]]
        self._tokens: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        """Open the store at `path`; DataError if it is missing, incomplete, corrupt or truncated."""
        path = Path(path).expanduser()
        meta_path = path / META_FILE
        _check_store_folder(path)
        if not meta_path.is_file():
            hint = "" if path.is_dir() else " (the folder does not exist)"
            raise DataError(f"{meta_path}: missing{hint}; run `cocomix prepare` to build the token store")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{meta_path}: not valid JSON ({e}); prepare the store again") from e
        store = cls(path, _validate_meta(meta_path, meta))
        for split in SPLITS:
            bin_path = path / f"{split}.bin"
            if not bin_path.is_file():
                raise DataError(f"{bin_path}: missing (incomplete store; prepare it again)")
            expected = meta[f"{split}_tokens"] * store.dtype.itemsize
            actual = bin_path.stat().st_size
            if actual != expected:
                raise DataError(f"{bin_path}: corrupt or truncated: {actual} bytes, expected {expected} "
                                f"({meta[f'{split}_tokens']} {meta['dtype']} tokens per {META_FILE})")
        return store

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def num_tokens(self, split: str) -> int:
        self._check_split(split)
        return int(self.meta[f"{split}_tokens"])

    def tokens(self, split: str) -> np.ndarray:
        """The split's token stream as a read-only memmap, shape (num_tokens,)."""
        self._check_split(split)
        if split not in self._tokens:
            n = self.num_tokens(split)
            if n == 0:  # an empty file cannot be memory-mapped
                empty = np.zeros(0, self.dtype)
                empty.flags.writeable = False
                self._tokens[split] = empty
            else:
                self._tokens[split] = np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r",
                                                shape=(n,))
        return self._tokens[split]

    def num_chunks(self, split: str, seq_len: int) -> int:
        """Number of whole, non-overlapping windows of `seq_len` tokens in the split."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        return self.num_tokens(split) // seq_len

    def batch(self, split: str, chunk_ids: Sequence[int], seq_len: int,
              offsets: Sequence[int] | None = None) -> torch.Tensor:
        """int64 (B, T): row b is tokens[s:s + T], s = c·T + r with c = chunk_ids[b] and r = offsets[b] (0 without
        offsets; the window must fit in the split); DataError on an id >= vocab_size."""
        n_chunks = self.num_chunks(split, seq_len)
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)  # (B,)
        if ids.size and (ids.min() < 0 or ids.max() >= n_chunks):
            raise ValueError(f"chunk ids must be in [0, {n_chunks}) for split {split!r} with seq_len "
                             f"{seq_len}, got min {ids.min()} max {ids.max()}")
        starts = ids * seq_len  # (B,)
        if offsets is not None:
            shift = np.asarray(offsets, dtype=np.int64).reshape(-1)  # (B,)
            if shift.shape != starts.shape:
                raise ValueError(f"window offsets: expected one per chunk id ({starts.size}), got {shift.size}")
            starts = starts + shift
            if shift.size and (shift.min() < 0 or shift.max() > seq_len
                               or starts.max() + seq_len > self.num_tokens(split)):
                raise ValueError(f"window offsets must be in [0, {seq_len}] and keep the window inside split "
                                 f"{split!r}, got {shift.tolist()}")
        index = starts[:, None] + np.arange(seq_len)[None, :]  # (B, T)
        window = self.tokens(split)[index]  # (B, T), store dtype
        if window.size:
            top = int(window.max())
            if top >= self.vocab_size:
                row = int(np.argwhere(window == top)[0, 0])
                raise DataError(f"{self.path / f'{split}.bin'}: token id {top} in chunk {int(ids[row])} of "
                                f"split {split!r} is >= vocab_size {self.vocab_size} (corrupt store)")
        return torch.from_numpy(window.astype(np.int64))  # (B, T) int64

    def tokenizer(self) -> TextTokenizer:
        """The store's tokenizer (from `tokenizer/tokenizer.json`)."""
        path = self.path / TOKENIZER_DIR / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"{path}: missing (incomplete store; prepare it again)")
        tok = load_tokenizer(str(path))
        if tok.eos_id != self.eos_id:
            raise DataError(f"{path}: eos id {tok.eos_id} differs from {META_FILE}'s eos_id {self.eos_id}")
        return tok

    def _blocks(self, split: str) -> Iterator[np.ndarray]:
        tokens = self.tokens(split)
        for start in range(0, tokens.size, _ENTROPY_BLOCK):
            yield tokens[start:start + _ENTROPY_BLOCK]

    def unigram_entropy(self, split: str) -> float:
        """Entropy (nats/token) of the split's empirical unigram distribution: the loss of a unigram model."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)  # (V,)
        for block in self._blocks(split):
            block_counts = np.bincount(block, minlength=self.vocab_size)  # (>= V,)
            if block_counts.size > self.vocab_size:
                raise DataError(f"{self.path / f'{split}.bin'}: holds token id {block_counts.size - 1} >= "
                                f"vocab_size {self.vocab_size} (corrupt store)")
            counts += block_counts
        total = int(counts.sum())
        if total == 0:
            raise DataError(f"{self.path}: split {split!r} holds no tokens")
        p = counts[counts > 0] / total  # (nonzero V,)
        return float(-(p * np.log(p)).sum())


def check_vocab(store: TokenStore, vocab_size: int) -> None:
    """DataError if the store holds ids the model cannot embed (store vocab larger than the model's)."""
    if store.vocab_size > vocab_size:
        raise DataError(f"{store.path}: the token store's vocab_size is {store.vocab_size} but "
                        f"model.vocab_size is {vocab_size}; set model.vocab_size >= {store.vocab_size}")
