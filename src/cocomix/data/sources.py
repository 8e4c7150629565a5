"""Readers for the non-default corpus sources: plain-text files, JSON Lines files and Hugging Face datasets.

Each reader yields `(name, text)` pairs in a fixed order; `corpus.py` parses the source string and wraps them
into `Document`s. Names are stable (relative file path, `file:line`, `dataset[row]`), because the train/val
split hashes them. Empty and null texts are skipped.

`hf:` reads a hub dataset or a local one: a folder of data files or a single data file (`datasets.load_dataset`,
by the file's extension), or a folder written by `save_to_disk` (`datasets.load_from_disk`, split by name).

No paper equation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cocomix.errors import DataError

_BOM = b"\xef\xbb\xbf"


def _read_utf8(path: Path) -> str:
    """The file's text; a leading byte-order mark (U+FEFF, as some editors write) is dropped."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:  # utf-8-sig counts from after the mark: the offset in the file is given
        with path.open("rb") as f:
            skipped = len(_BOM) if f.read(len(_BOM)) == _BOM else 0
        raise DataError(f"{path}: not valid UTF-8 text (byte {e.start + skipped})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def _tree_files(root: Path, suffix: str) -> list[Path]:
    """The files named *`suffix` under `root`, neither hidden nor in a hidden folder (`.ipynb_checkpoints/`,
    `.git/`: copies, not the corpus), through linked folders too (a corpus made of links to datasets;
    `Path.rglob` does not enter them), each real folder once (a link to an ancestor would loop)."""
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder) / n for n in names if n.endswith(suffix) and not n.startswith(".")
                  and (Path(folder) / n).is_file()]
    return found


def _not_a_file(path: Path, what: str) -> str:
    """Why `path` is neither a file nor a folder we read: missing, or something else (a pipe is read once, and
    `prepare` reads its source more than once)."""
    if not path.exists():
        return f"{path} does not exist (expected {what})"
    return f"{path} is not a regular file (a pipe or device? prepare reads its source more than once: write it to " \
           f"a file; expected {what})"


def split_text_spec(spec: str) -> tuple[str, str | None]:
    """`PATH[#SEPARATOR]` as (path, separator or None). An existing path is taken whole (a file name may hold
    `#`); otherwise the path is the shortest one ending before a `#` that exists."""
    if Path(spec).expanduser().exists() or "#" not in spec:
        return spec, None
    for i, char in enumerate(spec):
        if char == "#" and i > 0 and Path(spec[:i]).expanduser().exists():  # ("" would be the current folder)
            if i == len(spec) - 1:
                raise DataError(f"source 'text:{spec}': empty separator after '#' (text:PATH#SEPARATOR, e.g. "
                                "text:stories.txt#<|endoftext|>)")
            return spec[:i], spec[i + 1:]
    head = spec.partition("#")[0]
    if not head:
        raise DataError(f"source 'text:{spec}': no path before '#' (text:PATH#SEPARATOR)")
    raise DataError(f"source 'text:{spec}': {Path(head).expanduser()} does not exist (expected a .txt file or a "
                    "folder, then optionally #SEPARATOR)")


def _decode_piece(path: Path, raw: bytes, offset: int | None, first: bool, index: int) -> str:
    """One piece of a file split at a separator: UTF-8 (a leading BOM dropped from the file's first piece), line
    endings read as `Path.read_text` reads them (CR LF and CR become LF), surrounding whitespace dropped. `offset`:
    the file position of raw[0], None where line endings were rewritten before the split (the error then names
    the piece)."""
    try:
        text = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:  # (utf-8-sig counts from after a byte-order mark)
        skipped = len(_BOM) if first and raw.startswith(_BOM) else 0
        where = f"piece {index}" if offset is None else f"byte {offset + skipped + e.start}"
        raise DataError(f"{path}: not valid UTF-8 text ({where})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return text.removeprefix("\ufeff").strip()  # (a byte-order mark of a file `cat` into the middle of this one)


def _read_block(handle: BinaryIO, block: int, newlines: bool) -> bytes:
    """The next `block` bytes of the file; with `newlines`, CR LF and CR read as LF (as the text is read), a CR at
    the block's end completed with the byte after it so that a CR LF is never cut in two."""
    data = handle.read(block)
    if not newlines:
        return data
    while data.endswith(b"\r") and (more := handle.read(1)):
        data += more
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _split_file(path: Path, separator: str, block: int = 1 << 22) -> Iterator[tuple[int, str]]:
    """(index, text) of every piece of the file between occurrences of `separator`, streamed block by block: a
    2 GB file of stories is held one story at a time. Linear in the file's size however long a piece is (bytes
    appended in place, each searched once, plus the separator's length). UTF-8 is self-synchronising, so the
    separator's bytes are found in the bytes exactly where its characters are in the text. A separator with a line
    break (`#\n\n`: blank lines) matches the text as it reads, CR LF and CR line endings as LF."""
    newlines = "\n" in separator or "\r" in separator
    sep = (separator.replace("\r\n", "\n").replace("\r", "\n") if newlines else separator).encode("utf-8")
    try:
        handle = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    with handle:
        buf, offset, index = bytearray(), 0, 0  # offset: the file position of buf[0]
        while True:
            searched = max(0, len(buf) - len(sep) + 1)  # no separator starts before here
            block_bytes = _read_block(handle, block, newlines)
            buf += block_bytes
            start = 0
            while (at := buf.find(sep, max(start, searched))) >= 0:
                yield index, _decode_piece(path, bytes(buf[start:at]), None if newlines else offset + start,
                                           index == 0, index)
                index, start = index + 1, at + len(sep)
            if start:
                del buf[:start]
                offset += start
            if not block_bytes:
                yield index, _decode_piece(path, bytes(buf), None if newlines else offset, index == 0, index)
                return


def read_text(path_str: str, separator: str | None = None) -> Iterator[tuple[str, str]]:
    """A .txt file (one document, named by its file name) or every *.txt under a folder (sorted, one each).
    With a `separator` (`<|endoftext|>` in TinyStories' files) each file is cut into documents there, named
    `file#N` (N counts the pieces, empty ones too), each without its surrounding whitespace; empty ones skipped."""
    path = Path(path_str).expanduser()
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in _tree_files(path, ".txt"))
        if not files:
            raise DataError(f"source 'text:{path_str}': no *.txt files under {path} (hidden folders are skipped)")
    else:
        raise DataError(f"source 'text:{path_str}': {_not_a_file(path, 'a .txt file or a folder')}")
    pieces = [1]  # the most pieces a file was cut into (empty ones too)
    for name, file in files:
        yield from _file_documents(file, name, separator, pieces)
    if separator is not None and pieces[0] == 1:  # every document would run into the next with no boundary
        raise DataError(f"source 'text:{path_str}#{separator}': the separator {separator!r} occurs nowhere in "
                        f"{path}, so it would be one document per file; check it (a shell passes '#\\n' as a "
                        "backslash and an n: write $'…'), or leave out '#…' for one document per file")


def _file_documents(path: Path, name: str, separator: str | None, pieces: list[int]) -> Iterator[tuple[str, str]]:
    if separator is None:
        text = _read_utf8(path)
        if text:
            yield name, text
        return
    for index, text in _split_file(path, separator):
        pieces[0] = max(pieces[0], index + 1)
        if text:
            yield f"{name}#{index}", text


def _jsonl_files(path_str: str) -> list[Path]:
    path = Path(path_str).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(_tree_files(path, ".jsonl"))
        if files:
            return files
        raise DataError(f"source 'jsonl:{path_str}': no *.jsonl files under {path} (hidden folders are skipped)")
    raise DataError(f"source 'jsonl:{path_str}': {_not_a_file(path, 'a .jsonl file or a folder')}")


def read_jsonl(path_str: str, field: str) -> Iterator[tuple[str, str]]:
    """One document per non-blank line of a JSON Lines file (or each *.jsonl under a folder), from `field`."""
    root = Path(path_str).expanduser()
    for file in _jsonl_files(path_str):
        label = file.name if file == root else file.relative_to(root).as_posix()
        try:
            handle = file.open("rb")  # lines end at b"\n" (JSON Lines); each is decoded on its own
        except OSError as e:
            raise DataError(f"{file}: cannot read ({e.strerror or e})") from e
        with handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{file}: line {lineno}: not valid UTF-8 text (byte {e.start} of the "
                                    "line)") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError) as e:  # (an integer of > 4300 digits, nesting too deep)
                    why = e.msg if isinstance(e, json.JSONDecodeError) else \
                        "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
                    raise DataError(f"{file}: line {lineno}: not valid JSON ({why})") from None
                text = record.get(field) if isinstance(record, dict) else None
                if text is None and isinstance(record, dict) and field in record:
                    continue  # a null text, skipped as an hf: dataset's None row is
                if not isinstance(text, str):
                    raise DataError(f"{file}: line {lineno}: expected a JSON object with a string field "
                                    f"{field!r}")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:  # a lone "\ud83d" escape (half an emoji, cut by a scraper)
                    raise DataError(f"{file}: line {lineno}: field {field!r} holds an unpaired surrogate escape "
                                    f"({text[e.start]!r} at character {e.start}), which is not text") from None
                if text:
                    yield f"{label}:{lineno}", text


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """Split `<dataset>[:<config>][@<split>]` into (dataset, config, split); split defaults to `train`.

    An existing local path is a dataset folder (or one data file) with no config. Otherwise the dataset is a hub
    name, `name` or `owner/name`, and a config follows a colon (`Salesforce/wikitext:wikitext-2-raw-v1`). The
    form `owner/name/config` is read as well, and a trailing slash (`owner/name/`) changes nothing.
    """
    # an existing path is taken whole, or up to the last `@` after which a split is named: a name may hold `@`
    at = next((i for i in range(len(spec), 0, -1) if (i == len(spec) or spec[i] == "@")
               and Path(spec[:i]).expanduser().exists()), None)
    rest, _, split = (spec[:at], "@", spec[at + 1:]) if at is not None else spec.partition("@")
    split = split or "train"
    expected = "expected hf:<dataset>[:<config>][@<split>] with a dataset name (name or owner/name) or an " \
               "existing local folder or data file"
    if not rest:
        raise DataError(f"source 'hf:{spec}': {expected}")
    if Path(rest).expanduser().exists():  # (absolute, not through links: `.` names a folder as its path does)
        return os.path.abspath(Path(rest).expanduser()), None, split
    if rest.startswith(("/", "./", "../", "~")):  # a path, not a hub name: a typo must not reach the hub
        raise DataError(f"source 'hf:{spec}': {Path(rest).expanduser()} does not exist (a local dataset folder)")
    name, colon, config = rest.partition(":")
    parts = name.rstrip("/").split("/")
    if len(parts) == 3 and not colon:  # owner/name/config
        parts, config = parts[:2], parts[2]
    if (colon and not config) or len(parts) > 2 or not all(parts):
        raise DataError(f"source 'hf:{spec}': {expected}")
    return "/".join(parts), config or None, split


# `datasets` builders for a single local data file, by extension
_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow",
                  ".txt": "text"}


def _from_disk(spec: str, datasets: Any, folder: Path, split: str) -> Any:
    """A folder written by `save_to_disk` (`load_dataset` refuses a Dataset's and misreads a DatasetDict's: its
    split names are guessed from file names), its split chosen by name; slices as `load_dataset` reads them
    (`train[:10%]`, `train[:100]+train[-50:]`). A single Dataset's rows are the split `train`."""
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as e:  # noqa: BLE001 - a damaged JSON file, a missing arrow file, a stray state.json
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        marker = "dataset_dict.json" if (folder / "dataset_dict.json").is_file() else "state.json"
        raise DataError(f"source 'hf:{spec}': {folder} holds {marker}, but datasets.load_from_disk cannot read it as "
                        f"a saved dataset ({type(e).__name__}: {first_line})") from None
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if split in splits:  # a name the slice syntax cannot spell (`train-clean`): `datasets` saves and loads it
        return splits[split]
    try:
        instruction = datasets.ReadInstruction.from_spec(split)
        parts = instruction.to_absolute({name: len(d) for name, d in splits.items()})
    except (ValueError, AssertionError) as e:
        raise DataError(f"source 'hf:{spec}': split {split!r}: {str(e).splitlines()[0] if str(e) else 'invalid'} "
                        f"(the folder's splits: {', '.join(splits)})") from None
    pieces = [splits[part.splitname].select(range(part.from_, part.to)) for part in parts]
    return pieces[0] if len(pieces) == 1 else datasets.concatenate_datasets(pieces)


# what `datasets` says of a hub dataset that is a loading script: 4.x refuses scripts, 2.x/3.x want them trusted
_SCRIPT_SIGNS = ("Dataset scripts are no longer supported", "trust_remote_code")
_SCRIPT_HINT = (" (this hub dataset is a loading script, which datasets 4 and later do not run: use a copy of its "
                "text in data files — Parquet, JSON Lines or .txt — as hf:FOLDER, jsonl:PATH or text:PATH)")


def _load_hf(spec: str, name: str, config: str | None, split: str, streaming: bool = False) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"source 'hf:{spec}': the `datasets` package is not installed; run "
                        f"`pip install datasets` (or `pip install cocomix[hf]`)") from e
    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return _from_disk(spec, datasets, path, split)  # memory-mapped already: streaming changes nothing
    if streaming and "[" in split:
        raise DataError(f"streaming: split {split!r} of 'hf:{spec}': a slice needs the whole split; stream a whole "
                        "split, or leave --streaming out")
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"source 'hf:{spec}': {path.name}: expected a data file ending in "
                            f"{', '.join(_FILE_BUILDERS)} or a dataset folder")
        name, config, data_files = builder, None, str(path)  # one file is the split `train`
    else:
        data_files = None
    try:
        return datasets.load_dataset(name, config, split=split, data_files=data_files, streaming=streaming)
    except Exception as e:  # the library raises many types; all mean "this dataset could not be loaded"
        first_line = (str(e).strip().splitlines() or [""])[0]
        hint = (" (a config follows a colon: hf:NAME:CONFIG; NAME is name or owner/name)"
                if config is None and "/" in name and not path.exists() else "")
        if any(sign in str(e) for sign in _SCRIPT_SIGNS):
            hint = _SCRIPT_HINT
        raise DataError(f"source 'hf:{spec}': datasets.load_dataset({name!r}, {config!r}, split={split!r}) "
                        f"failed: {type(e).__name__}: {first_line}{hint}") from e


def read_hf(spec: str, field: str, streaming: bool = False) -> Iterator[tuple[str, str]]:
    """Rows of a Hugging Face dataset (hub name or local folder), one document per row, text from `field`.
    `streaming` reads the rows as `datasets` streams them (`load_dataset(..., streaming=True)`: nothing downloaded
    to the cache or converted to Arrow first), in the same order, so with the same names and split."""
    name, config, split = parse_hf_spec(spec)
    dataset = _load_hf(spec, name, config, split, streaming)
    columns = dataset.column_names  # None for a stream whose features are only known once it is read
    if columns is not None and field not in columns:
        raise DataError(f"source 'hf:{spec}': the dataset has no column {field!r} (columns: "
                        f"{', '.join(columns)}); pick one with hf:...#<column>")
    # A local folder is named by its base name, so that moving it does not change the train/val split.
    # A hub dataset is named `name/config` (`owner/name/config`) however its config was written.
    label = Path(name).name if Path(name).exists() else name + (f"/{config}" if config else "")
    row = 0
    for batch in _batches(spec, dataset if columns is None else dataset.select_columns([field])):
        if field not in batch:
            raise DataError(f"source 'hf:{spec}': the dataset has no column {field!r} (columns: "
                            f"{', '.join(batch)}); pick one with hf:...#<column>")
        for text in batch[field]:
            if text is not None and not isinstance(text, str):
                raise DataError(f"source 'hf:{spec}': row {row}: column {field!r} holds "
                                f"{type(text).__name__}, expected a string")
            if text:
                yield f"{label}[{row}]", text
            row += 1


def _batches(spec: str, dataset: Any) -> Iterator[dict[str, list]]:
    """The dataset's rows in batches of 1024; what reading them raises (a stream parses its files only here: a bad
    line, a damaged shard, a dropped connection) is a DataError naming the source and the rows read before."""
    rows, read = iter(dataset.iter(batch_size=1024)), 0
    while True:
        try:
            batch = next(rows)
        except StopIteration:
            return
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise DataError(f"source 'hf:{spec}': reading the rows after the first {read} failed: "
                            f"{type(e).__name__}: {first_line}") from e
        read += len(next(iter(batch.values()), []))
        yield batch
