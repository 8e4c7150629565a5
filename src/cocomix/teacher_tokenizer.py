"""Can the teacher read a token store, and does the store speak its tokenizer? (The teacher reads the store's ids as
its own tokens: paper §2.1's concepts are only the teacher's if the ids mean the same text.)

`check_teacher_store(teacher, store, seq_len, length)`: ids the teacher can embed, windows its position table holds
with a next token to predict, then the tokenizer check below.

`check_teacher_tokenizer(kind, where, store)`: for a cocomix run as teacher ("run", its checkpoint), the tokenizer
hash the run recorded must be the store's (`runs.check_tokenizer`); for a local Hugging Face folder ("hf", the
folder), every token of the store's tokenizer must have the same id in the folder's `tokenizer.json` (else
`vocab.json` + `added_tokens.json`, else whatever `transformers.AutoTokenizer` reads there, a sentencepiece model
included); for a hub name ("hub"), the same through `AutoTokenizer.from_pretrained(name)`, which finds the files
where the model's came from (the Hugging Face cache, or the hub when the model was just downloaded from it). A
tokenizer that cannot be read (a folder of weights only) is not checked, with a one-line warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from cocomix import json_text
from cocomix.errors import CocomixWarning, ConfigError

if TYPE_CHECKING:
    from cocomix.data.store import TokenStore
    from cocomix.teacher import Teacher

_HINT = "prepare the data with the teacher's tokenizer (cocomix prepare --tokenizer ...)"


def check_teacher_store(teacher: Teacher, store: TokenStore, seq_len: int, length: str = "seq_len") -> None:
    """ConfigError when `teacher` cannot read the store's windows: ids it cannot embed or that stand for other
    tokens (a different tokenizer), windows longer than its position table, or windows with no next token to
    predict. `length` names the setting that gave `seq_len`, for the message."""
    if store.vocab_size > teacher.vocab_size:
        raise ConfigError(f"{store.path}: token store vocab_size {store.vocab_size} exceeds the teacher's "
                          f"{teacher.vocab_size}; prepare the data with the teacher's tokenizer")
    if seq_len < 2:
        raise ConfigError(f"{length}: expected at least 2 tokens per window (one next-token prediction), got "
                          f"{seq_len}")
    limit = teacher.max_positions
    if limit is not None and seq_len > limit:
        raise ConfigError(f"{length}: {seq_len}-token windows exceed the teacher's {limit} positions; use at most "
                          f"{limit}")
    if teacher.tokenizer_source is not None:  # last: it may only warn (no tokenizer to check against)
        check_teacher_tokenizer(*teacher.tokenizer_source, store)


def check_teacher_tokenizer(kind: str, where: Path | str, store: TokenStore) -> None:
    """DataError / ConfigError when the store's token ids stand for other tokens than the teacher's."""
    if kind == "run":
        from cocomix.runs import check_tokenizer

        check_tokenizer(store.path / "tokenizer", Path(where), _HINT, whose="the teacher run")
        return
    theirs = folder_vocab(Path(where)) if kind == "hf" else None
    if theirs is None:
        theirs = auto_vocab(str(where))
    if theirs is None:  # nothing to compare with (a folder of weights only): not checked, said
        warnings.warn(f"{where}: the teacher has no tokenizer to check the store's against; the store's token ids "
                      f"are read as the teacher's own (if the store was prepared with another tokenizer, {_HINT})",
                      CocomixWarning, stacklevel=3)
        return
    ours = store.tokenizer().backend.get_vocab(with_added_tokens=True)
    other = sorted((i, t) for t, i in ours.items() if theirs.get(t) != i)
    if other:
        raise ConfigError(f"{store.path}: its tokenizer is not the teacher's: {len(other)} of its {len(ours)} "
                          f"tokens have other ids in {where} (token {other[0][0]} is {other[0][1]!r}); {_HINT}")


def folder_vocab(folder: Path) -> dict[str, int] | None:
    """token -> id of the tokenizer saved in an HF model folder (tokenizer.json, else vocab.json); None when the
    folder holds neither or it cannot be read (a sentencepiece-only tokenizer)."""
    try:
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)
        if (folder / "vocab.json").is_file():
            vocab = json_text.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            if (folder / "added_tokens.json").is_file():
                vocab = {**vocab, **json_text.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))}
            return vocab if isinstance(vocab, dict) else None
    except Exception:  # noqa: BLE001 - an unreadable tokenizer is not checked; loading the model said what it could
        return None
    return None


def auto_vocab(name_or_folder: str) -> dict[str, int] | None:
    """token -> id of `transformers.AutoTokenizer.from_pretrained(name_or_folder)`, added tokens included; None
    when it cannot be loaded (offline with nothing cached, sentencepiece missing) or holds only special tokens
    (no tokenizer files)."""
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a tokenizer that is not there is not checked: no log lines
        try:
            tok = AutoTokenizer.from_pretrained(name_or_folder)
            vocab, special = tok.get_vocab(), set(tok.all_special_tokens)
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception:  # noqa: BLE001 - OSError, ValueError, ImportError: the tokenizer is not there to check
        return None
    # without tokenizer files, transformers 5 builds the config's tokenizer class empty: special tokens only
    return dict(vocab) if isinstance(vocab, dict) and len(vocab) > len(special) else None
