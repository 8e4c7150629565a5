"""prepare --adopt: nanoGPT-style train.bin / val.bin made a token store in place, checked against a tokenizer."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cocomix.data import TokenStore, prepare
from cocomix.data.adopt_store import adopt
from cocomix.errors import DataError
from cocomix.train.resume import store_identity
from tests.cli import run_cli

DOCS = {f"doc{i:02d}.txt": f"Document {i} tells of the fox and the dog.\nAnother line {i}.\n" * (1 + i % 4)
        for i in range(30)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store `prepare` wrote: its streams are what nanoGPT's prepare.py writes (ids, eos after each document)."""
    corpus = tmp_path_factory.mktemp("corpus")
    for name, text in DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(f"text:{corpus}", out, tokenizer="bpe:300", val_fraction=0.2, progress=False)
    return out


def _bins(prepared: Path, folder: Path) -> Path:
    """A folder holding only a copy of the prepared streams (nanoGPT's data/openwebtext layout)."""
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copyfile(prepared / f"{split}.bin", folder / f"{split}.bin")
    return folder


def test_adopted_streams_open_as_the_same_store_without_being_rewritten(prepared: Path, tmp_path: Path) -> None:
    bins = _bins(prepared, tmp_path / "owt")
    with pytest.raises(DataError, match=r"meta\.json: missing, next to a train\.bin; `cocomix prepare --adopt "):
        TokenStore.open(bins)  # a training pointed at the bins says how to use them
    with pytest.raises(DataError, match=r"or use them as they are with `cocomix prepare --adopt "):
        prepare("shakespeare", bins, progress=False)
    before = {split: (bins / f"{split}.bin").read_bytes() for split in ("train", "val")}
    meta = adopt(bins, tokenizer=str(prepared / "tokenizer"), progress=False)
    original = json.loads((prepared / "meta.json").read_text())
    for key in ("vocab_size", "eos_id", "dtype", "train_tokens", "val_tokens", "train_documents", "val_documents"):
        assert meta[key] == original[key], key
    assert meta["source"] == f"adopted:{bins.resolve()}" and meta["val_fraction"] is None
    assert {split: (bins / f"{split}.bin").read_bytes() for split in ("train", "val")} == before
    adopted, reference = TokenStore.open(bins), TokenStore.open(prepared)
    assert store_identity(adopted) == store_identity(reference)  # same ids, same tokenizer file
    assert (adopted.batch("train", [0, 3], 16) == reference.batch("train", [0, 3], 16)).all()
    with pytest.raises(DataError, match=r"already a token store \(meta\.json exists\)"):
        adopt(bins, tokenizer=str(prepared / "tokenizer"), progress=False)
    # a meta.json cut short: the store says how to adopt again, and adopting again writes it from the streams
    (bins / "meta.json").write_text((bins / "meta.json").read_text()[:100])
    with pytest.raises(DataError, match=r"not valid JSON .*`cocomix prepare --adopt .* --tokenizer TOKENIZER` again"):
        TokenStore.open(bins)
    assert adopt(bins, tokenizer=str(prepared / "tokenizer"), progress=False) == meta == TokenStore.open(bins).meta
    # a meta.json that reads but does not open (a newer cocomix's, streams of other sizes) stays: refused as before
    newer = {**meta, "format_version": meta["format_version"] + 1, "val_names": ["kept"]}
    (bins / "meta.json").write_text(json.dumps(newer))
    with pytest.raises(DataError, match=r"already a token store \(meta\.json exists\)"):
        adopt(bins, tokenizer=str(prepared / "tokenizer"), progress=False)
    assert json.loads((bins / "meta.json").read_text()) == newer


def _write(path: Path, ids: list[int], dtype: str = "<u2") -> None:
    path.write_bytes(np.asarray(ids, dtype=dtype).tobytes())


@pytest.mark.parametrize("damage, message", [
    ("odd", r"train\.bin: 7 bytes is not a whole number of uint16 ids"),
    ("big_id", r"train\.bin: token 1 is id 4000, not below the tokenizer's vocabulary of 300"),
    ("no_eos", r"val\.bin: ends with id 5, not the end-of-document id 0"),
    ("no_eos_at_all", r"val\.bin: holds no end-of-document id 0 .* at all; .*prepare such text with `cocomix prepare`"),
    ("no_val", r"no val\.bin \(expected nanoGPT-style train\.bin and val\.bin\)"),
    ("empty_train", r"train\.bin is empty"),
    ("uint32", r"train\.bin: every second uint16 is 0, as in uint32 ids"),
    ("incomplete", r"a cocomix prepare was interrupted while writing this store"),
])
def test_streams_that_do_not_fit_the_tokenizer_are_refused_and_nothing_is_written(
        prepared: Path, tmp_path: Path, damage: str, message: str) -> None:
    bins = _bins(prepared, tmp_path / "owt")
    eos = TokenStore.open(prepared).eos_id
    assert eos == 0  # the messages above name it
    if damage == "odd":
        (bins / "train.bin").write_bytes(b"\x01\x00\x02\x00\x03\x00\x00")
    elif damage == "big_id":
        _write(bins / "train.bin", [5, 4000, 6, eos])
    elif damage == "no_eos":
        _write(bins / "val.bin", [7, eos, 5])
    elif damage == "no_eos_at_all":  # as nanoGPT's shakespeare prepare.py writes its stream
        _write(bins / "val.bin", [7, 8, 5])
    elif damage == "no_val":
        (bins / "val.bin").unlink()
    elif damage == "uint32":  # the same ids written 4 bytes each: size, ids and final eos all pass as uint16
        ids = np.fromfile(prepared / "train.bin", dtype="<u2")
        _write(bins / "train.bin", ids.tolist(), dtype="<u4")
    elif damage == "incomplete":
        (bins / ".cocomix-incomplete").write_text("")
    else:
        (bins / "train.bin").write_bytes(b"")
    with pytest.raises(DataError, match=message):
        adopt(bins, tokenizer=str(prepared / "tokenizer"), progress=False)
    assert not (bins / "meta.json").exists() and not (bins / "tokenizer").exists()
    assert not (bins / ".lock").exists()  # nor a lock file left in the user's folder


def test_cli_adopt_and_its_one_line_errors(prepared: Path, tmp_path: Path) -> None:
    bins = _bins(prepared, tmp_path / "owt")
    tok = str(prepared / "tokenizer")
    for extra, flag in ((["--out", str(tmp_path / "x")], "--out"), (["--streaming"], "--streaming"),
                        (["--source", "text:a.txt"], "--source")):
        r = run_cli("prepare", "--adopt", str(bins), "--tokenizer", tok, *extra)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and flag in r.stderr, r.stderr
    r = run_cli("prepare", "--adopt", str(bins), "--tokenizer", "bpe:300")
    assert r.returncode == 2 and "already tokenized" in r.stderr
    r = run_cli("prepare", "--adopt", str(tmp_path / "nowhere"), "--tokenizer", tok)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("prepare", "--adopt", str(bins), "--tokenizer", tok)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["train_tokens"] == TokenStore.open(prepared).num_tokens("train")
    assert "is a token store" in r.stderr


def test_a_folder_that_cannot_be_written_is_refused_with_the_link_recipe_and_linked_streams_adopt(
        prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bins = _bins(prepared, tmp_path / "readonly")
    real_open = os.open

    def read_only(path: str | os.PathLike, flags: int, *args: int) -> int:  # a folder on a read-only mount
        if Path(path).parent == bins and flags & os.O_CREAT:
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(DataError, match=r"readonly: cannot write there \(Read-only file system\); .*ln -s"):
        adopt(bins, tokenizer=str(prepared / "tokenizer"), progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in bins.iterdir()) == ["train.bin", "val.bin"]
    linked = tmp_path / "linked"  # the recipe: the streams linked into a writable folder, adopted there
    linked.mkdir()
    for split in ("train", "val"):
        (linked / f"{split}.bin").symlink_to(bins / f"{split}.bin")
    adopt(linked, tokenizer=str(prepared / "tokenizer"), progress=False)
    adopted, reference = TokenStore.open(linked), TokenStore.open(prepared)
    assert store_identity(adopted) == store_identity(reference)
    assert (adopted.batch("val", [0, 1], 16) == reference.batch("val", [0, 1], 16)).all()
    assert sorted(p.name for p in bins.iterdir()) == ["train.bin", "val.bin"]  # nothing written beside the originals


def test_another_output_with_a_meta_json_is_refused_without_a_readopt_note(
        prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "meta.json").write_text("{")  # a concept cache's, cut short
    (cache / "progress.json").write_text("{}")
    with pytest.raises(DataError, match=r"holds a concept cache, not token streams"):
        adopt(cache, tokenizer=str(prepared / "tokenizer"), progress=False)
    assert "adopting the streams again" not in capsys.readouterr().err
