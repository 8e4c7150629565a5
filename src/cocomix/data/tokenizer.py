"""The text tokenizer: a thin wrapper around a fast Hugging Face `tokenizers.Tokenizer`.

`train_bpe` trains a byte-level BPE (GPT-2 style: every byte is a base token, so any text round-trips)
with the special token `<|endoftext|>` as end of document. `load_tokenizer` reads a `tokenizer.json`, a
folder holding one, or anything `transformers.AutoTokenizer` can load. Encoding never adds special tokens
(no BOS): the token store appends the end-of-document id itself, and encodes documents with
`encode_ordinary_batch` (special-token strings inside a document stay text). Truncation or padding settings in a
loaded tokenizer.json are dropped.

No paper equation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cocomix import json_text
from cocomix.atomic import atomic_write_text
from cocomix.errors import DataError

EOS_TOKEN = "<|endoftext|>"
_FALLBACK_EOS = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>")


def _pending(text: str, later: Iterable[str]) -> int:
    """How many "\ufffd" at the end of `text` (a decoded prefix of ids) stand for the bytes of a character that
    tokens after it go on with, given the prefixes one, two, … tokens longer (`later`). A byte-level BPE decodes a
    cut character as one "\ufffd", which the next prefix repeats (that token added bytes to it) until the
    completing token replaces it; a byte-fallback tokenizer (Llama 2's, Mistral's, SentencePiece's) gives one per
    byte, so the next prefixes add "\ufffd"s. The first later prefix that does more decides: one that no longer
    starts with `text` replaced them (the characters they share with it are settled); one that goes on from `text`
    leaves them as the text's own (as scraped text holds them) — unless the next prefix repeated `text`, whose
    last "\ufffd" was then the start of a character that came out as U+FFFD itself. 0 when `text` ends otherwise."""
    if not text.endswith("\ufffd"):
        return 0
    repeated = None
    for after in later:
        repeated = after == text if repeated is None else repeated
        if after.startswith(text) and not after[len(text):].strip("\ufffd"):  # the same, or more "\ufffd"
            continue
        if not after.startswith(text):
            return len(text) - len(os.path.commonprefix([text, after]))
        break
    return 1 if repeated else 0


def token_texts(decode: Callable[[list[int]], str], ids: list[int]) -> list[str]:
    """The text each of `ids` adds to the decoded text: the characters that are complete once that token is read.

    Decoding one token at a time breaks a character whose UTF-8 bytes span several byte-level tokens ("é", "日",
    "—" in a small BPE) into replacement characters "\ufffd"; here such a character belongs to the token that
    completes it, and the tokens before it in the character get "" (so does a "\ufffd" of the text itself, as
    scraped text holds). Prefixes are decoded in turn (O(n²) in tokens: meant for a window or a context, not a
    corpus). A byte-fallback decoder decodes a run of byte tokens together, so the first byte of the next
    character turns the whole run, the completed character before it too, back into "\ufffd"s until that one is
    complete: such a token gets "" as well (at the end of `ids`, bytes cut off so are left out). A tokenizer whose
    decoded prefixes are otherwise not prefixes of the whole (a decoder that rewrites earlier text) falls back to
    decoding each token alone.
    """
    prefixes = [decode(list(ids[:t + 1])) for t in range(len(ids))]
    out, done = [], ""
    for t, text in enumerate(prefixes):
        if not text.startswith(done):
            if not text[len(os.path.commonprefix([text, done])):].strip("\ufffd"):  # a byte run decoded anew
                out.append("")
                continue
            return [decode([i]) for i in ids]
        if t + 1 < len(ids) and _pending(text, prefixes[t + 1:]):  # a character still missing bytes: wait
            out.append("")
            continue
        out.append(text[len(done):])
        done = text
    return out


def token_in_context(decode: Callable[[list[int]], str], ids: list[int], at: int) -> tuple[str, str, str]:
    """(text before, text of, text after) token `at` of `ids`, cut at character boundaries: a character whose
    bytes token `at` starts or continues is given whole to it (as `token_texts` gives it to the token completing
    it), and bytes of a character cut off at either end of `ids` are dropped, so none of the three holds a
    replacement character made by a cut — for a byte-level BPE: a byte-fallback decoder shows the rest of a byte
    run that a window cuts into as "\ufffd"s, which are dropped with the characters they hide. A few decodes, and
    one more per "\ufffd" the text holds or a byte run shows around token `at`."""
    def later(end: int) -> Iterator[str]:  # the prefixes of ids[:end + 1], ids[:end + 2], …
        return (decode(list(ids[:k + 1])) for k in range(end, len(ids)))

    left, upto, whole = decode(list(ids[:at])), decode(list(ids[:at + 1])), decode(list(ids))
    end = at + 1
    while end < len(ids) and _pending(upto, later(end)):  # the character token `at` is in needs more bytes
        end, upto = end + 1, decode(list(ids[:end + 1]))
    # the text before it: the longest prefix ids[:k], k <= at, that `upto` goes on from and whose last character
    # is complete (a character token `at` continues belongs to it)
    k, stable = at, left
    while k > 0 and (not upto.startswith(stable) or _pending(stable, later(k))):
        k, stable = k - 1, decode(list(ids[:k - 1]))
    if not (upto.startswith(stable) and whole.startswith(upto)):  # a decoder that rewrites earlier text
        return left, decode([ids[at]]), decode(list(ids[at + 1:]))
    left, here, right = stable.lstrip("\ufffd"), upto[len(stable):], whole[len(upto):].rstrip("\ufffd")
    here = here if left else here.lstrip("\ufffd")  # stray bytes at the start of ids ...
    return left, (here if right else here.rstrip("\ufffd")), right  # ... or at its end


class TextTokenizer:
    """Text <-> token ids, with a known end-of-document id `eos_id`."""

    def __init__(self, tokenizer: Tokenizer, eos_id: int) -> None:
        # a copy without the truncation or padding a saved tokenizer.json may carry: documents are never cut or padded
        self._tok = Tokenizer.from_str(tokenizer.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()
        self._ordinary: Tokenizer | None = None
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        # One more than the largest id, so that every id the tokenizer emits is below it.
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        if not 0 <= eos_id < self._vocab_size:
            raise DataError(f"tokenizer: eos_id {eos_id} is outside the vocabulary (size {self._vocab_size})")
        self._eos_id = eos_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def eos_token(self) -> str:
        return self._tok.id_to_token(self._eos_id)

    @property
    def backend(self) -> Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        """Like `encode_batch`, but special-token strings in the text (a literal "<|endoftext|>") are encoded as
        text, not as the special id: tiktoken's `encode_ordinary`, which the official data preparation uses, so a
        document boundary never appears inside a document."""
        if self._ordinary is None:
            self._ordinary = Tokenizer.from_str(self._tok.to_str())
            self._ordinary.encode_special_tokens = True
        return [enc.ids for enc in self._ordinary.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_texts(self, ids: list[int]) -> list[str]:
        """The text each token adds (see `token_texts`): joined, they give `decode(ids)`."""
        return token_texts(self.decode, ids)

    def to_json(self) -> str:
        """The `tokenizer.json` text. A post-processor that adds special tokens (a Llama tokenizer's BOS template)
        is left out: the store's ids never hold them (`encode` adds none), so a plain HF `AutoTokenizer` of the
        saved folder must not add them either. Read off the post-processor, not by encoding a probe text (which a
        vocabulary without an unknown token cannot encode)."""
        post = self._tok.post_processor
        if post is None or post.num_special_tokens_to_add(False) == 0:
            return self._tok.to_str()
        data = json.loads(self._tok.to_str())
        data["post_processor"] = None
        return json.dumps(data, ensure_ascii=False)

    def save(self, directory: str | Path) -> None:
        """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` (atomically) so that
        `transformers.AutoTokenizer.from_pretrained(directory)` loads it as a PreTrainedTokenizerFast."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        eos = self.eos_token
        model = json.loads(self._tok.to_str())["model"]  # its unknown token, where it has one (a byte-level BPE
        unk_token = model.get("unk_token")  # has none; a SentencePiece one its <unk>, a Unigram one by id)
        if unk_token is None and isinstance(model.get("unk_id"), int) and model.get("vocab"):
            unk_token = model["vocab"][model["unk_id"]][0]
        unk = {"unk_token": unk_token} if isinstance(unk_token, str) else {}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": eos,
            "bos_token": eos,
            **unk,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
        }
        special = {"eos_token": eos, "bos_token": eos, **unk}
        atomic_write_text(directory / "tokenizer.json", self.to_json())
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        atomic_write_text(directory / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")


BPE_MAX_VOCAB = 2**24
"""The largest `bpe:<vocab_size>` prepare trains (real vocabularies stay below 2**20)."""


def check_bpe_size(vocab_size: int) -> None:
    """DataError unless a byte-level BPE can have `vocab_size` ids (256 bytes + the end-of-text token at least, and
    at most BPE_MAX_VOCAB: the Rust trainer aborts the process, not raises, on sizes of 2**31 and more)."""
    minimum = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise DataError(f"tokenizer: a byte-level BPE needs vocab_size >= {minimum} (256 bytes + "
                        f"{EOS_TOKEN}), got {vocab_size!r}")
    if vocab_size > BPE_MAX_VOCAB:
        raise DataError(f"tokenizer: a byte-level BPE takes vocab_size <= {BPE_MAX_VOCAB} (2**24, far above any "
                        f"real vocabulary), got {vocab_size}")


def train_bpe(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Train a byte-level BPE with `vocab_size` ids (256 bytes + `<|endoftext|>` + merges) on `texts`.

    Deterministic: the same texts give the same `tokenizer.json`.
    """
    check_bpe_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok, tok.token_to_id(EOS_TOKEN))


def _eos_from_config(directory: Path) -> str | None:
    """The eos token named by a `tokenizer_config.json` or `special_tokens_map.json` in `directory`."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            eos: Any = json_text.loads(path.read_text(encoding="utf-8")).get("eos_token")
        except (OSError, ValueError, AttributeError) as e:
            raise DataError(f"{path}: not a valid JSON object ({e})") from e
        if isinstance(eos, dict):  # AddedToken serialised as {"content": ...}
            eos = eos.get("content")
        if isinstance(eos, str):
            return eos
    return None


def _from_tokenizer_json(path: Path) -> TextTokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise DataError(f"{path}: not a valid tokenizer.json ({e})") from e
    named = _eos_from_config(path.parent)
    if named and tok.token_to_id(named) is None:  # a fallback would silently end documents with another token
        raise DataError(f"{path.parent}: its config names eos_token {named!r}, which is not a token of {path.name}")
    candidates = [c for c in (named,) if c] + list(_FALLBACK_EOS)
    for token in candidates:
        eos_id = tok.token_to_id(token)
        if eos_id is not None:
            return TextTokenizer(tok, eos_id)
    raise DataError(f"{path}: no end-of-text token found (tried {candidates}); add a tokenizer_config.json "
                    f"naming eos_token next to it")


def _from_transformers(spec: str) -> TextTokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise DataError(f"tokenizer {spec!r}: not a tokenizer.json or a folder with one, and loading it by "
                        f"name needs `transformers` (pip install transformers)") from e
    try:
        hf_tok = AutoTokenizer.from_pretrained(spec)
    except Exception as e:  # OSError, ValueError, hub errors: all mean "cannot load"
        said = " ".join(str(e).split())  # transformers' messages run over several lines: kept on one
        said = said if len(said) <= 300 else said[:300] + " …"
        raise DataError(f"tokenizer {spec!r}: AutoTokenizer.from_pretrained failed: {type(e).__name__}: "
                        f"{said}") from e
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"tokenizer {spec!r}: has no fast (tokenizers) backend; convert it to tokenizer.json")
    if hf_tok.eos_token_id is None:
        raise DataError(f"tokenizer {spec!r}: has no eos token (eos_token_id is None)")
    try:
        ids = backend.encode(_PROBE, add_special_tokens=False).ids
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
        said = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"tokenizer {spec!r}: cannot encode {_PROBE!r} ({said}): a vocabulary without an unknown "
                        "token fails on any text outside it; give a tokenizer that encodes any text") from None
    unk = hf_tok.unk_token_id
    if not ids or all(i == unk for i in ids):  # an empty tokenizer: every document would be one eos
        raise DataError(f"tokenizer {spec!r}: encodes {_PROBE!r} to {'nothing' if not ids else 'unknown tokens only'} "
                        f"(a vocabulary of {backend.get_vocab_size(with_added_tokens=True)}): not a usable tokenizer "
                        "(a folder saved without its vocabulary files?)")
    return TextTokenizer(backend, int(hf_tok.eos_token_id))


def _looks_like_path(spec: str) -> bool:
    explicit = spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or ":" in spec[1:3]  # C: = drive
    return explicit or spec.endswith(".json")


_PROBE = "The quick brown fox jumps over the lazy dog."  # any usable tokenizer gives it known tokens
# what a Hugging Face tokenizer is saved as (AutoTokenizer builds an empty tokenizer from a folder with none of them):
# these names, or any sentencepiece `*.model` / `tokenizer.model.*` / `*.tiktoken` file
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tekken.json")
_TOKENIZER_GLOBS = ("*.model", "tokenizer.model.*", "*.tiktoken")


def _is_cocomix_run(path: Path) -> dict | None:
    """A cocomix run's config.json (its folder also holds checkpoints/ or metrics.jsonl), else None. Stricter than
    `outputs.output_kind`'s RUN: another tool's model folder with a config.json and checkpoints/ is no run."""
    if not ((path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file()):
        return None
    try:
        config = json_text.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and "method" in config and isinstance(config.get("data"), dict) else None


def _check_tokenizer_folder(spec: str, path: Path) -> None:
    """DataError for a local folder that holds no tokenizer: a cocomix run (named with its store's tokenizer) or a
    model saved without one."""
    if any((path / name).is_file() for name in _TOKENIZER_FILES) or any(
            any(path.glob(pattern)) for pattern in _TOKENIZER_GLOBS):
        return
    run = _is_cocomix_run(path)
    if run is not None:
        store = run["data"].get("path")
        where = f" ({Path(store) / 'tokenizer'}, its data.path's)" if isinstance(store, str) else ""
        raise DataError(f"tokenizer {spec!r}: a cocomix run, not a tokenizer; give the tokenizer folder of the token "
                        f"store it was trained on{where}")
    if not any(path.iterdir()):
        raise DataError(f"tokenizer {spec!r}: {path} is an empty local folder (it hides any hub name of that name); "
                        "give a tokenizer's folder or name")
    raise DataError(f"tokenizer {spec!r}: {path} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, "
                    "*.model, ...): a model saved without its tokenizer? Give the folder its tokenizer was saved to")


def load_tokenizer(spec: str) -> TextTokenizer:
    """A `tokenizer.json` path, a folder holding one, a token store (its `tokenizer/`), or a name/folder for
    `transformers.AutoTokenizer`; DataError for a folder with no tokenizer in it (a cocomix run, a model saved
    without its tokenizer)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return _from_tokenizer_json(path)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(path / "tokenizer.json")
    if path.is_dir() and (path / "meta.json").is_file() and (path / "tokenizer" / "tokenizer.json").is_file():
        # a token store: the tokenizer it was prepared with
        return _from_tokenizer_json(path / "tokenizer" / "tokenizer.json")
    if path.is_dir():
        _check_tokenizer_folder(spec, path)
    if _looks_like_path(spec) and not path.exists():
        raise DataError(f"tokenizer {spec!r}: {path} does not exist (expected a tokenizer.json, a folder "
                        f"with one, or a Hugging Face tokenizer name)")
    return _from_transformers(spec)
