"""prepare() and TokenStore: layout, meta, round-trip, atomic/overwrite rules, corruption checks."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cocomix.data import TokenStore, prepare
from cocomix.data.corpus import split_key
from cocomix.data.store import check_vocab
from cocomix.errors import DataError

DOCS = {
    f"doc{i:02d}.txt": f"Document {i}: the quick brown fox jumps over the lazy dog. "
                       f"Ünïcödé line {i} — naïve café.\nSecond line of {i}.\n" * (1 + i % 3)
    for i in range(40)
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def store_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(f"text:{corpus}", out, tokenizer="bpe:300", val_fraction=0.2, progress=False)
    return out


def _docs_in(stream: list[int], store: TokenStore) -> list[str]:
    """Split a token stream at eos ids and decode each document."""
    tok = store.tokenizer()
    docs, current = [], []
    for i in stream:
        if i == store.eos_id:
            docs.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    assert current == []  # the stream ends with an eos
    return docs


def test_layout_and_meta(store_dir: Path) -> None:
    assert sorted(p.name for p in store_dir.iterdir()) == [".lock", "meta.json", "tokenizer", "train.bin", "val.bin"]
    meta = json.loads((store_dir / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["source"].startswith("text:")
    assert meta["tokenizer"] == "bpe:300" and meta["dtype"] == "uint16"
    assert meta["val_split"] == "blake2b-64 of document names"
    assert 257 < meta["vocab_size"] <= 300 and meta["eos_id"] == 0
    assert meta["train_documents"] + meta["val_documents"] == len(DOCS)
    assert meta["val_documents"] == len(meta["val_names"]) >= 1
    for split in ("train", "val"):
        assert (store_dir / f"{split}.bin").stat().st_size == 2 * meta[f"{split}_tokens"]
    # no temp files left; .lock is the writers' lock file (it holds the last writer's pid)
    assert [p.name for p in store_dir.rglob("*") if p.name.startswith(".")] == [".lock"]


def test_token_store_round_trips_the_documents(store_dir: Path) -> None:
    store = TokenStore.open(store_dir)
    train, val = store.tokens("train"), store.tokens("val")
    assert train.dtype == np.dtype("<u2") and isinstance(train, np.memmap) and not train.flags.writeable
    assert int(np.count_nonzero(train == store.eos_id)) == store.meta["train_documents"]
    val_docs = _docs_in(val.tolist(), store)
    assert val_docs == [DOCS[name] for name in store.meta["val_names"]]
    train_docs = _docs_in(train.tolist(), store)
    assert sorted(train_docs + val_docs) == sorted(DOCS.values())
    first = next(name for name in sorted(DOCS) if name not in store.meta["val_names"])
    expected = store.tokenizer().encode(DOCS[first]) + [store.eos_id]
    assert train[:len(expected)].tolist() == expected  # documents in source order, each closed by eos


def test_batch_windows(store_dir: Path) -> None:
    store = TokenStore.open(store_dir)
    seq_len = 16
    n = store.num_chunks("train", seq_len)
    assert n == store.meta["train_tokens"] // seq_len > 3
    x = store.batch("train", [2, 0, n - 1], seq_len)
    assert x.dtype == torch.int64 and x.shape == (3, seq_len)
    tokens = store.tokens("train")
    for row, c in zip(x, [2, 0, n - 1], strict=True):
        assert row.tolist() == tokens[c * seq_len:(c + 1) * seq_len].tolist()
    with pytest.raises(ValueError, match=f"chunk ids must be in \\[0, {n}\\) for split 'train'"):
        store.batch("train", [n], seq_len)
    spare = store.num_tokens("train") - n * seq_len
    y = store.batch("train", [2, 0, n - 1], seq_len, offsets=[seq_len, 3, spare])  # shifted windows
    for row, start in zip(y, [3 * seq_len, 3, (n - 1) * seq_len + spare], strict=True):
        assert row.tolist() == tokens[start:start + seq_len].tolist()
    for bad in ([seq_len + 1], [-1]):
        with pytest.raises(ValueError, match="window offsets"):
            store.batch("train", [0], seq_len, offsets=bad)
    with pytest.raises(ValueError, match="window offsets"):
        store.batch("train", [n - 1], seq_len, offsets=[spare + 1])  # past the split's end


def test_prepare_says_when_the_corpus_cannot_fill_the_vocabulary(corpus: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    meta = prepare(f"text:{corpus}", tmp_path / "s", tokenizer="bpe:50000", progress=True)
    assert meta["vocab_size"] < 50000
    err = capsys.readouterr().err
    assert f"support only {meta['vocab_size']} BPE tokens (bpe:50000 asked for)" in err
    # BPE training says what it has read before the merges, which show no progress of their own
    docs = meta["train_documents"]
    chars = sum(len(p.read_text()) for p in corpus.rglob("*.txt"))  # (bounds: val documents are not counted)
    line = next(ln for ln in err.splitlines() if "BPE: computing the merges" in ln)
    assert f"over {docs:,} train documents (" in line
    assert 0 < int(line.split("(")[1].split(" ")[0].replace(",", "")) <= chars


def test_prepare_again_needs_overwrite(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    first = prepare(f"text:{corpus}", out, tokenizer="bpe:260", progress=False)
    with pytest.raises(DataError, match="already prepared.*--overwrite"):
        prepare(f"text:{corpus}", out, tokenizer="bpe:260", progress=False)
    stale = out / "..train.bin.new.k1ll3d.tmp"  # what a SIGKILL during encoding leaves behind
    stale.write_bytes(b"\0" * 1000)
    second = prepare(f"text:{corpus}", out, tokenizer="bpe:260", overwrite=True, progress=False)
    assert second == first  # deterministic
    assert not stale.exists() and not list(out.glob(".*.tmp"))


def test_failed_overwrite_keeps_the_old_store(corpus: Path, store_dir: Path, tmp_path: Path) -> None:
    """A source that fails half-way through encoding must leave the prepared store usable and unchanged."""
    import shutil

    out = tmp_path / "s"
    shutil.copytree(store_dir, out)
    before = TokenStore.open(out).tokens("train").copy()
    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    (bad / "zz_last.txt").write_bytes(b"fine start \xff\xfe not utf-8")
    with pytest.raises(DataError, match="zz_last.txt"):
        prepare(f"text:{bad}", out, tokenizer=str(out / "tokenizer"), overwrite=True, progress=False)
    after = TokenStore.open(out)
    assert np.array_equal(after.tokens("train"), before)
    assert not list(out.glob(".*.new")) and not list(out.glob(".*.tmp"))


def test_a_full_disk_after_encoding_leaves_no_streams_behind(corpus: Path, store_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk the new streams just filled fails the next write: the streams (corpus-sized, hidden) go with the
    failure, a folder the call made goes too, and a rerun does not find the last attempt's streams beside its own."""
    import errno

    import cocomix.data.prepare_store as ps

    real = ps.atomic_write_text

    def full(path: Path, text: str) -> None:
        if Path(path).name == ps.INCOMPLETE:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(ps, "atomic_write_text", full)
    out = tmp_path / "new"
    with pytest.raises(DataError, match=r"new: cannot write the token store \(No space left on device\)"):
        prepare(f"text:{corpus}", out, tokenizer=str(store_dir / "tokenizer"), progress=False)
    assert not out.exists()
    monkeypatch.undo()
    out.mkdir()
    (out / ".train.bin.new").write_bytes(b"\0" * 1000)  # what a killed call leaves
    prepare(f"text:{corpus}", out, tokenizer=str(store_dir / "tokenizer"), progress=False)
    assert not [p.name for p in out.iterdir() if p.name.endswith((".new", ".tmp"))]


def test_prepare_with_a_saved_tokenizer_and_progress(corpus: Path, store_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    meta = prepare(f"text:{corpus}", tmp_path / "s", tokenizer=str(store_dir / "tokenizer"), val_fraction=0.2)
    reference = TokenStore.open(store_dir).meta
    for key in ("vocab_size", "eos_id", "train_tokens", "val_tokens", "val_names"):
        assert meta[key] == reference[key]
    assert "prepare: wrote" in capsys.readouterr().err


def test_out_dir_problems(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        prepare(f"text:{corpus}", a_file, tokenizer="bpe:260", progress=False)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_write = Path.write_bytes

    def refuse(path: Path, data: bytes) -> int:  # what a read-only folder does (root would write anyway)
        if path.parent == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(DataError, match="cannot write the token store there .Permission denied"):
        prepare(f"text:{corpus}", locked, tokenizer="bpe:260", progress=False)
    monkeypatch.undo()
    with pytest.raises(DataError, match="bpe:<vocab_size>"):
        prepare(f"text:{corpus}", tmp_path / "x", tokenizer="bpe:big", progress=False)


def test_failed_prepare_leaves_no_store(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken}\n', encoding="utf-8")
    out = tmp_path / "s"
    with pytest.raises(DataError, match="line 2"):
        prepare(f"jsonl:{path}", out, tokenizer="bpe:260", progress=False)
    assert not out.exists()  # the folder this call created, removed again (nothing was written)
    out.mkdir()  # a folder that was there before is kept, and holds no store
    with pytest.raises(DataError, match="line 2"):
        prepare(f"jsonl:{path}", out, tokenizer="bpe:260", progress=False)
    assert not (out / "meta.json").exists() and not list(out.glob("*.bin"))
    with pytest.raises(DataError, match="meta.json: missing"):
        TokenStore.open(out)


def _copy_store(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_stores_are_rejected(store_dir: Path, tmp_path: Path) -> None:
    truncated = _copy_store(store_dir, tmp_path / "truncated")
    with open(truncated / "train.bin", "r+b") as f:
        f.truncate((truncated / "train.bin").stat().st_size - 2)
    with pytest.raises(DataError, match=r"train\.bin: corrupt or truncated"):
        TokenStore.open(truncated)

    missing = _copy_store(store_dir, tmp_path / "missing")
    (missing / "val.bin").unlink()
    with pytest.raises(DataError, match=r"val\.bin: missing"):
        TokenStore.open(missing)

    garbled = _copy_store(store_dir, tmp_path / "garbled")
    (garbled / "meta.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        TokenStore.open(garbled)
    meta = json.loads((store_dir / "meta.json").read_text())
    del meta["val_tokens"]
    (garbled / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match="missing key 'val_tokens'"):
        TokenStore.open(garbled)


def test_out_of_vocab_id_raises_in_batch(store_dir: Path, tmp_path: Path) -> None:
    bad = _copy_store(store_dir, tmp_path / "bad")
    vocab = TokenStore.open(bad).vocab_size
    tokens = np.fromfile(bad / "val.bin", dtype="<u2")
    tokens[5] = vocab + 7
    tokens.tofile(bad / "val.bin")
    store = TokenStore.open(bad)
    assert store.batch("val", [0], 4).shape == (1, 4)  # tokens 0..3: the window without the bad id is fine
    with pytest.raises(DataError, match=rf"token id {vocab + 7} in chunk 1 of split 'val' is >= vocab_size"):
        store.batch("val", [0, 1], 5)
    with pytest.raises(DataError, match=r"vocab_size"):
        store.unigram_entropy("val")


def test_check_vocab(store_dir: Path) -> None:
    store = TokenStore.open(store_dir)
    check_vocab(store, store.vocab_size)
    check_vocab(store, 50257)
    with pytest.raises(DataError, match="model.vocab_size"):
        check_vocab(store, store.vocab_size - 1)


def test_unigram_entropy_of_a_known_distribution(tmp_path: Path) -> None:
    # Hand-made store: ids 0..3 with counts 4, 2, 1, 1 -> H = 1.75 bits.
    tokens = np.array([0, 0, 0, 0, 1, 1, 2, 3], dtype="<u2")  # (8,)
    tokens.tofile(tmp_path / "train.bin")
    np.array([1, 1, 1], dtype="<u2").tofile(tmp_path / "val.bin")
    meta = {"format_version": 1, "vocab_size": 10, "eos_id": 0, "dtype": "uint16", "train_tokens": 8,
            "val_tokens": 3}
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    store = TokenStore.open(tmp_path)
    assert store.unigram_entropy("train") == pytest.approx(1.75 * math.log(2))
    assert store.unigram_entropy("val") == pytest.approx(0.0)


def test_dtype_choice_and_a_uint32_store(tmp_path: Path) -> None:
    from cocomix.data.prepare_store import dtype_name

    assert dtype_name(4096) == dtype_name(65536) == "uint16" and dtype_name(65537) == "uint32"
    tokens = np.array([70000, 5, 99999, 0], dtype="<u4")  # (4,)
    tokens.tofile(tmp_path / "train.bin")
    (tmp_path / "val.bin").write_bytes(b"")
    meta = {"format_version": 1, "vocab_size": 100000, "eos_id": 0, "dtype": "uint32", "train_tokens": 4,
            "val_tokens": 0}
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    store = TokenStore.open(tmp_path)
    assert store.batch("train", [1, 0], 2).tolist() == [[99999, 0], [70000, 5]]
    assert store.tokens("val").size == 0 and store.num_chunks("val", 2) == 0
    for bad in (["uint32"], {"a": 1}, "int8"):  # any JSON value: a one-line error, never a TypeError
        (tmp_path / "meta.json").write_text(json.dumps({**meta, "dtype": bad}), encoding="utf-8")
        with pytest.raises(DataError, match=r"meta.json: dtype: expected one of \['uint16', 'uint32'\], got "):
            TokenStore.open(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "dtype": "uint16", "train_tokens": 8}), encoding="utf-8")
    with pytest.raises(DataError, match=r"meta.json: dtype uint16 holds ids below 65536, but vocab_size is 100000"):
        TokenStore.open(tmp_path)  # (its 16 bytes would read as 8 wrong uint16 ids)


def test_a_second_prepare_into_a_locked_folder_is_refused(tmp_path: Path) -> None:
    from cocomix.data import prepare
    from cocomix.errors import CocomixError
    from cocomix.train.guard import RunLock

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("some words " * 50)
    (tmp_path / "docs" / "b.txt").write_text("other words " * 50)
    out = tmp_path / "store"
    out.mkdir()
    lock = RunLock(out)  # a prepare in progress elsewhere
    try:
        with pytest.raises(CocomixError, match="another cocomix process is writing this directory"):
            prepare(f"text:{tmp_path / 'docs'}", out, tokenizer="bpe:300", val_fraction=0.5, progress=False)
    finally:
        lock.release()
    assert not (out / "meta.json").exists()
    prepare(f"text:{tmp_path / 'docs'}", out, tokenizer="bpe:300", val_fraction=0.5, progress=False)
    assert (out / "meta.json").is_file()


def test_a_val_fraction_that_holds_out_nothing_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("abcdefghij", encoding="utf-8")  # 5% of 10 characters rounds to none
    with pytest.raises(DataError, match="holds out no text"):
        prepare(f"text:{tmp_path / 'short.txt'}", tmp_path / "s", tokenizer="bpe:260", progress=False)
    assert not (tmp_path / "s" / "meta.json").exists() and not list((tmp_path / "s").glob("*bin*"))
    prepare(f"text:{tmp_path / 'short.txt'}", tmp_path / "s0", tokenizer="bpe:260", val_fraction=0.0,
            progress=False)  # no validation asked for: fine


def test_a_val_fraction_that_leaves_no_training_text_is_an_error(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    names = [n for n in (f"d{i}.txt" for i in range(200)) if split_key(n) < 0.9 * 2**64][:2]
    for n in names:  # both documents hash into validation at 0.9
        (docs / n).write_text("some words here " * 20, encoding="utf-8")
    with pytest.raises(DataError, match="leaves no training text"):
        prepare(f"text:{docs}", tmp_path / "s", tokenizer="bpe:260", val_fraction=0.9, progress=False)
    assert not (tmp_path / "s" / "meta.json").exists()


def test_a_tokenizer_that_encodes_every_document_to_nothing_is_refused(tmp_path: Path) -> None:
    """An untrained BPE tokenizer.json (its end-of-text token alone) would make a store of end-of-text ids only."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    empty = Tokenizer(models.BPE())
    empty.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    empty.add_special_tokens(["<|endoftext|>"])
    empty.save(str(tmp_path / "tokenizer.json"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"d{i}.txt").write_text(f"document {i} has some words", encoding="utf-8")
    with pytest.raises(DataError, match=r"tokenizer '.*tokenizer.json': encodes every document of 'text:.*' to no "
                                        r"tokens \(a vocabulary of 1: an untrained or empty tokenizer\?\)"):
        prepare(f"text:{docs}", tmp_path / "s", tokenizer=str(tmp_path / "tokenizer.json"), progress=False)
    assert not (tmp_path / "s" / "meta.json").exists() and not list((tmp_path / "s").glob("*bin*"))


class _PrefixSpace:
    """A tokenizer that, like SentencePiece's, marks the start of every input (so pieces cannot be cut apart)."""

    def __init__(self, tok: object) -> None:
        self.tok = tok

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [[7] + ids for ids in self.tok.encode_ordinary_batch(texts)]


def test_a_long_document_is_encoded_in_pieces_to_the_same_ids(store_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.data import long_text

    tok = TokenStore.open(store_dir).tokenizer()
    text = "".join(DOCS.values()) * 3  # lines, blank lines, indented and unicode text
    whole = np.asarray(tok.encode_ordinary_batch([text])[0], dtype=np.uint32)
    monkeypatch.setattr(long_text, "PIECE_CHARS", 300)
    monkeypatch.setattr(long_text, "MARGIN", 64)
    calls = []
    real = tok.encode_ordinary_batch
    monkeypatch.setattr(tok, "encode_ordinary_batch", lambda texts: calls.append(len(texts)) or real(texts))
    got = long_text.encode_long(tok, text, np.dtype(np.uint32))
    assert np.array_equal(got, whole) and len(text) // 300 // 2 < calls.count(3)  # many cuts, each checked
    odd = _PrefixSpace(real.__self__)
    want = np.asarray(odd.encode_ordinary_batch([text])[0], dtype=np.uint32)
    assert np.array_equal(long_text.encode_long(odd, text, np.dtype(np.uint32)), want)  # no cut passes


def test_a_runs_store_path_failure_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.config import DataConfig, RunConfig
    from cocomix.runs import run_store

    monkeypatch.chdir(tmp_path)
    run = RunConfig(data=DataConfig(path="data/shakespeare"))
    with pytest.raises(DataError, match=r"the run's data.path 'data/shakespeare', read from .*; pass --data DIR"):
        run_store(run)
    with pytest.raises(DataError) as e:
        run_store(run, tmp_path / "elsewhere")  # an explicit --data: its own error, no hint about data.path
    assert "data.path" not in str(e.value)


def test_one_line_and_indented_documents_are_cut_too(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no line break that a non-space follows, a long document is cut before spaces (same ids)."""
    from cocomix.data import long_text

    tok = TokenStore.open(store_dir).tokenizer()
    monkeypatch.setattr(long_text, "PIECE_CHARS", 300)
    monkeypatch.setattr(long_text, "MARGIN", 64)
    for text in (" ".join(DOCS.values()).replace("\n", " ") * 2,  # one line
                 "".join("    " + line + "\n" for v in DOCS.values() for line in v.splitlines()) * 2):  # indented
        whole = np.asarray(tok.encode_ordinary_batch([text])[0], dtype=np.uint32)
        calls = []
        real = tok.encode_ordinary_batch
        monkeypatch.setattr(tok, "encode_ordinary_batch",
                            lambda texts, calls=calls, real=real: calls.append(texts) or real(texts))
        got = long_text.encode_long(tok, text, np.dtype(np.uint32))
        monkeypatch.setattr(tok, "encode_ordinary_batch", real)
        pieces = [len(t) for batch in calls if len(batch) != 3 for t in batch]  # the encoding calls (not checks)
        assert np.array_equal(got, whole) and len(pieces) > len(text) // 600 and max(pieces) < 1000


def test_lines_ending_in_punctuation_are_cut_for_a_llama3_style_pre_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama 3's, Qwen 2's and GPT-4o's pre-tokenizers glue punctuation to the line break after it: a cut before
    such a line break fails the check, so a document of prose or code lines (". \n", "; \n", "{\n") was encoded
    whole after CUT_TRIES failures; it is cut before a space instead, to the same ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from cocomix.data import long_text
    from cocomix.data.tokenizer import TextTokenizer

    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3's
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    lines = ["It was the best of times, it was the worst of times.", "Call me Ishmael; some years ago;",
             "if (x) {", "And so it goes,"]
    text = "\n".join(f"{lines[i % 4]} {i}." for i in range(400))
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end_of_text|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok = TextTokenizer(bpe, 0)
    monkeypatch.setattr(long_text, "PIECE_CHARS", 300)
    monkeypatch.setattr(long_text, "MARGIN", 64)
    calls: list[list[str]] = []
    real = tok.encode_ordinary_batch
    monkeypatch.setattr(tok, "encode_ordinary_batch", lambda texts: calls.append(texts) or real(texts))
    got = long_text.encode_long(tok, text, np.dtype(np.uint32))
    pieces = [len(t) for batch in calls if len(batch) != 3 for t in batch]  # the encoding calls (not checks)
    assert np.array_equal(got, np.asarray(real([text])[0], dtype=np.uint32))
    assert len(pieces) > len(text) // 600 and max(pieces) < 1000


def test_bpe_training_reads_long_documents_in_pieces_with_the_same_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.data import long_text
    from cocomix.data.tokenizer import train_bpe

    text = "".join(DOCS.values()) * 4 + " ".join(DOCS.values()).replace("\n", " ") * 2
    monkeypatch.setattr(long_text, "PIECE_CHARS", 500)
    pieces = list(long_text.training_pieces(text))
    assert "".join(pieces) == text and len(pieces) > len(text) // 1000 and max(map(len, pieces)) < 1500
    assert train_bpe(pieces, 400).to_json() == train_bpe([text], 400).to_json()


def test_a_folder_of_someone_elses_bins_is_not_replaced_without_overwrite(corpus: Path, tmp_path: Path) -> None:
    """nanoGPT's data/openwebtext holds train.bin / val.bin and no meta.json: refused unless --overwrite; a
    cocomix prepare killed while it swapped in its streams (its marker left) is rerun without --overwrite."""
    out = tmp_path / "openwebtext"
    out.mkdir()
    (out / "train.bin").write_bytes(b"\1\0" * 1000)
    (out / "val.bin").write_bytes(b"\1\0" * 100)
    with pytest.raises(DataError, match=r"holds train\.bin, val\.bin but no meta\.json.*--overwrite"):
        prepare(f"text:{corpus}", out, tokenizer="bpe:260", progress=False)
    assert (out / "train.bin").read_bytes() == b"\1\0" * 1000
    prepare(f"text:{corpus}", out, tokenizer="bpe:260", overwrite=True, progress=False)
    assert not (out / ".cocomix-incomplete").exists()
    (out / "meta.json").unlink()  # as a kill between the streams' swap and meta.json leaves it ...
    (out / ".cocomix-incomplete").write_text("")  # ... with the marker written before the swap
    prepare(f"text:{corpus}", out, tokenizer="bpe:260", progress=False)
    assert TokenStore.open(out).num_tokens("train") > 0


def test_file_names_that_are_not_utf8_are_split_and_recorded(tmp_path: Path) -> None:
    import os

    folder = os.fsencode(tmp_path / "docs")
    os.mkdir(folder)
    for i in range(6):
        with open(folder + b"/caf\xe9%d.txt" % i, "w") as f:
            f.write(f"word{i} and more text here\n" * 50)
    meta = prepare(f"text:{tmp_path / 'docs'}", tmp_path / "s", tokenizer="bpe:260", val_fraction=0.3,
                   progress=False)
    assert meta["val_documents"] >= 1 and all("\ufffd" in n for n in meta["val_names"])
    assert json.loads((tmp_path / "s" / "meta.json").read_text(encoding="utf-8"))["val_names"] == meta["val_names"]
    # a source folder whose own name is not UTF-8 (as the library takes it from os.fsdecode) is recorded escaped;
    # it failed writing meta.json, after the old store's streams had been replaced (the store lost)
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9-docs")
    os.rename(folder, odd)
    again = prepare(f"text:{odd}", tmp_path / "s", tokenizer=str(tmp_path / "s" / "tokenizer"), val_fraction=0.3,
                    overwrite=True, progress=False)
    assert again["source"].endswith("caf\\udce9-docs") and TokenStore.open(tmp_path / "s").meta == again


def test_a_streamed_hf_source_prepares_the_same_store(tmp_path: Path, offline_datasets: Any) -> None:
    """`cocomix prepare --streaming` on an hf: source: the same tokens, tokenizer and split as without it."""
    import json

    from cocomix.cli import main

    folder = tmp_path / "corpus"
    folder.mkdir()
    who, where = ["king", "queen", "fool", "lord"], ["home", "away", "north", "south", "out"]
    lines = [f"the {who[i % 4]} of row {i} went {where[i % 5]} again" for i in range(120)]
    (folder / "rows.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    stores = {}
    for flag in ([], ["--streaming"]):
        out = tmp_path / ("streamed" if flag else "loaded")
        assert main(["prepare", "--source", f"hf:{folder}", "--tokenizer", "bpe:300", "--out", str(out), *flag]) == 0
        stores[bool(flag)] = out
    for name in ("train.bin", "val.bin", "tokenizer/tokenizer.json"):
        assert (stores[True] / name).read_bytes() == (stores[False] / name).read_bytes(), name
    meta = [json.loads((stores[k] / "meta.json").read_text()) for k in (False, True)]
    assert meta[0] == meta[1] and meta[0]["val_documents"] > 0
    assert meta[0]["val_split"] == "blake2b-64 of document names"
    out = tmp_path / "by-content"
    assert main(["prepare", "--source", f"hf:{folder}", "--tokenizer", "bpe:300", "--out", str(out),
                 "--split-by", "content"]) == 0
    by_content = json.loads((out / "meta.json").read_text())
    assert by_content["val_split"] == "blake2b-64 of document contents"
    assert by_content["val_names"] != meta[0]["val_names"]  # another split of the same rows


def test_a_path_that_is_plainly_not_a_store_is_named_for_what_it_is(store_dir: Path, tmp_path: Path) -> None:
    """A store's file, another command's output with a meta.json of its own (a concept cache) and the folder above
    a store each get their own diagnosis, not "corrupt, prepare it again"."""
    with pytest.raises(DataError, match=rf"meta.json: a file, not a token store; .* \({re.escape(str(store_dir))}\)"):
        TokenStore.open(store_dir / "meta.json")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "meta.json").write_text("{}")
    (cache / "targets_train.bin").write_bytes(b"")
    with pytest.raises(DataError, match="cache: holds a concept cache, not a token store"):
        TokenStore.open(cache)
    with pytest.raises(DataError, match=rf"not a token store; its subfolder {store_dir.name} holds one"):
        TokenStore.open(store_dir.parent)
    with pytest.raises(DataError, match="meta.json: missing; run `cocomix prepare`"):  # an empty folder, as before
        TokenStore.open(tmp_path)


def test_prepare_with_no_validation_text_says_that_training_will_refuse_it(corpus: Path, tmp_path: Path) -> None:
    from tests.cli import run_cli

    r = run_cli("prepare", "--source", f"text:{corpus}", "--tokenizer", "bpe:260", "--val-fraction", "0", "--out",
                str(tmp_path / "s"))
    assert r.returncode == 0 and json.loads(r.stdout)["val_tokens"] == 0
    assert "no validation text was held out (--val-fraction 0)" in r.stderr and "will refuse this store" in r.stderr
    r = run_cli("prepare", "--source", f"text:{corpus}", "--tokenizer", "bpe:1", "--val-fraction", "0", "--out",
                str(tmp_path / "u"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1  # an error stays the one line
    r = run_cli("prepare", "--source", f"text:{corpus}", "--tokenizer", "bpe:260", "--out", str(tmp_path / "t"))
    assert r.returncode == 0 and "no validation text" not in r.stderr


def test_a_tokenizer_that_cannot_encode_a_document_names_it(tmp_path: Path) -> None:
    """A Unigram model trained without an unknown token fails on a character it never saw: a DataError naming the
    document (and nothing left behind), not the tokenizers library's traceback."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the king is dead and the queen is sad"] * 50,
                            trainers.UnigramTrainer(vocab_size=40, special_tokens=["</s>"]))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "docs").mkdir()
    for i in range(6):
        (tmp_path / "docs" / f"d{i}.txt").write_text("the king is sad" + (" zq!" if i == 4 else ""))
    with pytest.raises(DataError, match=r"^document 'd4\.txt': the tokenizer cannot encode it \(Exception: "):
        prepare(f"text:{tmp_path / 'docs'}", tmp_path / "store", tokenizer=str(tmp_path / "tok"), progress=False)
    assert not (tmp_path / "store").exists()


def test_a_tokenizer_without_an_unknown_token_prepares_a_corpus_it_covers(store_dir: Path, tmp_path: Path) -> None:
    """A word-level vocabulary with no unknown token encodes a corpus of its own words: its store is prepared
    (over an earlier one with --overwrite) and saved without encoding any text of ours. The same tokenizer by an
    AutoTokenizer (a hub name, a folder of other files), which prepare probes with a sentence, is a one-line error
    naming it."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    from cocomix.data.tokenizer import _from_transformers

    words = ["the", "king", "is", "sad", "dead", "<|endoftext|>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "docs").mkdir()
    for i in range(20):
        (tmp_path / "docs" / f"d{i}.txt").write_text(" ".join(words[(i + j) % 5] for j in range(30)))
    out = tmp_path / "store"
    shutil.copytree(store_dir, out)
    prepare(f"text:{tmp_path / 'docs'}", out, tokenizer=str(tmp_path / "tok"), overwrite=True, progress=False)
    store = TokenStore.open(out)
    assert store.vocab_size == 6 and store.tokenizer().decode(store.tokens("train")[:3].tolist()) == "the king is"
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"cannot encode 'The quick brown fox.*a vocabulary without an unknown token"):
        _from_transformers(str(tmp_path / "tok"))


def test_a_replaced_tokenizer_is_refused(tmp_path: Path) -> None:
    import shutil

    from cocomix.data import prepare

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(" ".join(f"word{i} thing{i % 7}" for i in range(400)))
    for vocab in (280, 330):
        prepare(f"text:{tmp_path / 'docs'}", tmp_path / f"s{vocab}", tokenizer=f"bpe:{vocab}", val_fraction=0.0,
                progress=False)
    store, other = TokenStore.open(tmp_path / "s280"), TokenStore.open(tmp_path / "s330")
    assert store.tokenizer().vocab_size == store.vocab_size != other.vocab_size  # (a small text: fewer merges)
    assert other.eos_id == store.eos_id  # the eos check alone lets it pass
    shutil.copy(tmp_path / "s330" / "tokenizer" / "tokenizer.json", tmp_path / "s280" / "tokenizer" / "tokenizer.json")
    said = (rf"tokenizer\.json: a vocabulary of {other.vocab_size} differs from meta\.json's vocab_size "
            rf"{store.vocab_size}; the store's tokenizer was replaced")
    with pytest.raises(DataError, match=said):
        store.tokenizer()
