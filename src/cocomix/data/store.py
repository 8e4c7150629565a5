"""The token store: a folder of pre-tokenized train/val token streams, written by `prepare`
(`prepare_store.py`), read by `TokenStore` (no paper equation).

Layout (nanoGPT style): `train.bin` and `val.bin` hold the token ids of every document, each document followed
by the end-of-document id, as raw little-endian uint16 (vocab <= 65536) or uint32; `tokenizer/` holds the
tokenizer (loadable by `transformers.AutoTokenizer`); `meta.json` describes the rest. Every file is written
atomically and `meta.json` last, so a folder with a `meta.json` is a complete store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from cocomix import json_text
from cocomix.data.tokenizer import TextTokenizer, load_tokenizer
from cocomix.errors import DataError

FORMAT_VERSION = 1
SPLITS = ("train", "val")
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
MAX_VAL_NAMES = 100
INCOMPLETE = ".cocomix-incomplete"  # while prepare swaps in new streams: the folder is a store being written
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_REQUIRED_INT_KEYS = ("format_version", "vocab_size", "eos_id", "train_tokens", "val_tokens")
_ENTROPY_BLOCK = 1 << 24  # tokens per np.bincount call in unigram_entropy


def _read_meta(meta_path: Path) -> dict:
    """meta.json parsed, holding every required key; DataError when it cannot be read at all (cut short,
    damaged)."""
    try:
        meta = json_text.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{meta_path}: not valid JSON ({e}); prepare the store again (streams adopted in place: "
                        f"`cocomix prepare --adopt {meta_path.parent} --tokenizer TOKENIZER` again)") from e
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object")
    for key in (*_REQUIRED_INT_KEYS, "dtype"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r} (corrupt or truncated; prepare it again)")
    return meta


def unreadable_meta(meta_path: Path) -> str | None:
    """Why `meta_path` cannot be read as a store's meta.json at all (`_read_meta`'s error), or None when it can
    (whatever else may be wrong with the store)."""
    try:
        _read_meta(meta_path)
    except DataError as e:
        return str(e)
    return None


def _validate_meta(meta_path: Path) -> dict:
    """meta.json read (`_read_meta`) and its values checked."""
    meta = _read_meta(meta_path)
    for key in _REQUIRED_INT_KEYS:
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"{meta_path}: {key}: expected a non-negative integer, got {value!r}")
    if meta["format_version"] > FORMAT_VERSION:
        raise DataError(f"{meta_path}: format_version {meta['format_version']} is newer than this cocomix "
                        f"reads ({FORMAT_VERSION}); upgrade cocomix or prepare the data again")
    if not isinstance(meta["dtype"], str) or meta["dtype"] not in DTYPES:
        raise DataError(f"{meta_path}: dtype: expected one of {sorted(DTYPES)}, got {meta['dtype']!r}")
    if meta["vocab_size"] > (top := int(np.iinfo(DTYPES[meta["dtype"]]).max) + 1):  # (a hand-edited meta.json)
        raise DataError(f"{meta_path}: dtype {meta['dtype']} holds ids below {top}, but vocab_size is "
                        f"{meta['vocab_size']}; the streams were written as uint32 (prepare the store again)")
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
        self.dtype = DTYPES[meta["dtype"]]
        self._tokens: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        """Open the store at `path`; DataError if it is missing, incomplete, corrupt or truncated."""
        path = Path(path).expanduser()
        meta_path = path / META_FILE
        _check_store_folder(path)
        if not meta_path.is_file():
            if path.is_dir() and (path / "train.bin").is_file() and not (path / INCOMPLETE).exists():  # nanoGPT's
                raise DataError(f"{meta_path}: missing, next to a train.bin; `cocomix prepare --adopt {path} "
                                "--tokenizer TOKENIZER` makes nanoGPT-style streams a token store in place")
            hint = "" if path.is_dir() else " (the folder does not exist)"
            raise DataError(f"{meta_path}: missing{hint}; run `cocomix prepare` to build the token store")
        meta = _validate_meta(meta_path)
        store = cls(path, meta)
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
        if tok.vocab_size != self.vocab_size:  # another tokenizer put in its place: its ids mean other tokens
            raise DataError(f"{path}: a vocabulary of {tok.vocab_size} differs from {META_FILE}'s vocab_size "
                            f"{self.vocab_size}; the store's tokenizer was replaced or {META_FILE} edited (prepare "
                            "the store again)")
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
