"""Byte-level BPE training, round-trips, determinism and loading (tokenizer.json, folder, AutoTokenizer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cocomix.data import TextTokenizer, load_tokenizer, train_bpe
from cocomix.data.tokenizer import token_in_context, token_texts
from cocomix.errors import DataError

CORPUS = [
    "To be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles,\n",
    "And by opposing end them? To die: to sleep;\nNo more; and by a sleep to say we end\n",
] * 5

UNICODE = "Ça va? Ünïcödé — 日本語のテキスト, emoji 🎭🗡️, tabs\tand\r\nnewlines, <|endoftext|> stays text?"


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return train_bpe(CORPUS, 300)


def test_bpe_layout_and_round_trip(tok: TextTokenizer) -> None:
    assert tok.vocab_size <= 300 and tok.vocab_size > 257  # 256 bytes + eos + some merges
    assert tok.eos_id == 0 and tok.eos_token == "<|endoftext|>"
    for text in CORPUS[:3] + [UNICODE.replace("<|endoftext|>", ""), "", " leading space", "x" * 1000]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert len(tok.encode(CORPUS[0])) < len(CORPUS[0].encode("utf-8"))  # merges were learned
    assert tok.encode_batch(CORPUS[:3]) == [tok.encode(t) for t in CORPUS[:3]]
    assert tok.decode(tok.encode("a") + [tok.eos_id]) == "a<|endoftext|>"


def test_bpe_is_deterministic(tok: TextTokenizer) -> None:
    assert train_bpe(iter(CORPUS), 300).to_json() == tok.to_json()
    # A fresh process (new hash seeds in the Rust library) gives the same file too.
    code = ("import json, sys; from cocomix.data import train_bpe; "
            "sys.stdout.write(train_bpe(json.loads(sys.stdin.read()), 300).to_json())")
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(CORPUS), capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert out.stdout == tok.to_json()


def test_bpe_vocab_too_small() -> None:
    with pytest.raises(DataError, match="vocab_size >= 257"):
        train_bpe(CORPUS, 100)


def test_save_and_load_folder_and_file(tok: TextTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "tk")
    written = sorted(p.name for p in (tmp_path / "tk").iterdir())
    assert written == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    for spec in (tmp_path / "tk", tmp_path / "tk" / "tokenizer.json"):
        loaded = load_tokenizer(str(spec))
        assert loaded.to_json() == tok.to_json()
        assert (loaded.vocab_size, loaded.eos_id) == (tok.vocab_size, tok.eos_id)
        assert loaded.encode(UNICODE) == tok.encode(UNICODE)


def test_autotokenizer_loads_the_saved_folder(tok: TextTokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from cocomix.data.tokenizer import _from_transformers

    tok.save(tmp_path / "tk")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tk"))
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == tok.eos_id
    text = CORPUS[1] + UNICODE
    assert hf(text)["input_ids"] == tok.encode(text)
    via = _from_transformers(str(tmp_path / "tk"))  # the path load_tokenizer takes for hub names
    assert via.encode(text) == tok.encode(text) and via.eos_id == tok.eos_id
    assert via.vocab_size == tok.vocab_size
    assert hf.unk_token is None  # a byte-level BPE has no unknown token (the end-of-text one was named so)
    sp = _byte_fallback_tokenizer()
    sp.save(tmp_path / "sp")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "sp"))
    assert (hf.unk_token, hf.unk_token_id, hf.eos_token) == ("<unk>", 0, "</s>")


def test_missing_or_bad_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "no_such_folder"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_tokenizer(str(bad))


def test_a_folder_without_a_tokenizer_is_named_for_what_it_is(tok: TextTokenizer, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A token store gives its own tokenizer; a cocomix run, a model saved without tokenizer files or one whose
    files make an empty tokenizer are one-line errors (AutoTokenizer would build a 1-token tokenizer from them and
    `prepare` would write a store of end-of-text tokens only)."""
    tok.save(tmp_path / "store" / "tokenizer")
    with pytest.raises(DataError, match="holds no tokenizer files"):  # a tokenizer/ subfolder alone is no store
        load_tokenizer(str(tmp_path / "store"))
    (tmp_path / "store" / "meta.json").write_text("{}")
    assert load_tokenizer(str(tmp_path / "store")).to_json() == tok.to_json()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "ntp", "data": {"path": "data/corpus"}}))
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(DataError, match=r"a cocomix run, not a tokenizer; give the tokenizer folder of the token "
                                        r"store it was trained on \(data/corpus/tokenizer, its data.path's\)"):
        load_tokenizer(str(run))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="model holds no tokenizer files .*a model saved without its tokenizer"):
        load_tokenizer(str(model))
    for config in ({"tokenizer_class": "GPT2Tokenizer"}, {"tokenizer_class": "GPT2Tokenizer", "pad_token": "<pad>"},
                   {"tokenizer_class": "LlamaTokenizer"}):  # vocabularies of 1 to 3 special tokens: encode nothing
        (model / "tokenizer_config.json").write_text(json.dumps(config))
        with pytest.raises(DataError, match="encodes 'The quick brown fox .*' to nothing .*not a usable tokenizer"):
            load_tokenizer(str(model))
    (model / "tokenizer_config.json").unlink()
    from cocomix.data.tokenizer import _check_tokenizer_folder

    for name in ("spm.model", "sentencepiece.model", "tokenizer.model.v3", "tekken.json", "cl100k.tiktoken"):
        (model / name).write_bytes(b"")  # files AutoTokenizer builds tokenizers from: the folder goes on to it
        assert _check_tokenizer_folder(str(model), model) is None
        (model / name).unlink()
    (model / "checkpoints").mkdir()  # another tool's model folder with checkpoints/: no cocomix run without "method"
    with pytest.raises(DataError, match="holds no tokenizer files"):
        load_tokenizer(str(model))
    (tmp_path / "gpt2").mkdir()
    with pytest.raises(DataError, match="is an empty local folder \\(it hides any hub name of that name\\)"):
        load_tokenizer(str(tmp_path / "gpt2"))
    import transformers

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise ValueError("Couldn't instantiate the backend tokenizer from one of:\n(1) a tokenizers file\n(2) ...")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    (model / "tokenizer_config.json").write_text("{}")
    with pytest.raises(DataError) as caught:
        load_tokenizer(str(model))
    assert str(caught.value).endswith("ValueError: Couldn't instantiate the backend tokenizer from one of: (1) a "
                                      "tokenizers file (2) ...")  # the whole message, on one line


def test_an_eos_token_the_config_names_must_exist(tok: TextTokenizer, tmp_path: Path) -> None:
    """A config naming an eos the tokenizer lacks is an error, not a silent fall-back to <|endoftext|>."""
    tok.save(tmp_path)
    assert load_tokenizer(str(tmp_path)).eos_id == tok.eos_id
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "</s>"}))
    with pytest.raises(DataError, match="names eos_token '</s>', which is not a token of tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_saved_folder_adds_no_bos_the_store_never_saw(tok: TextTokenizer, tmp_path: Path) -> None:
    """A tokenizer whose post-processor prepends a BOS (Llama-style TemplateProcessing): the store's ids have
    none, so the saved folder drops that post-processor and `AutoTokenizer` encodes exactly as the store did."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_str(tok.to_json())
    backend.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                           special_tokens=[("<|endoftext|>", tok.eos_id)])
    with_bos = TextTokenizer(backend, tok.eos_id)
    assert backend.encode("to be", add_special_tokens=True).ids[0] == tok.eos_id  # the template is active
    with_bos.save(tmp_path / "tk")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tk"))
    assert hf(CORPUS[0])["input_ids"] == with_bos.encode(CORPUS[0]) == tok.encode(CORPUS[0])
    assert load_tokenizer(str(tmp_path / "tk")).encode(CORPUS[0]) == tok.encode(CORPUS[0])


def test_documents_encode_special_token_strings_as_text(tok: TextTokenizer) -> None:
    """The store encodes documents "ordinarily" (tiktoken's encode_ordinary in the official preparation): a literal
    <|endoftext|> inside a document is text and round-trips, never the end-of-document id."""
    (ids,) = tok.encode_ordinary_batch([UNICODE])
    assert tok.eos_id not in ids and tok.decode(ids) == UNICODE
    assert tok.eos_id in tok.encode(UNICODE)  # plain `encode` (prompts, lm-eval contexts) keeps HF's behaviour


def test_saved_truncation_or_padding_never_cuts_documents(tok: TextTokenizer, tmp_path: Path) -> None:
    backend = tok.backend.__class__.from_str(tok.backend.to_str())
    backend.enable_truncation(4)
    backend.enable_padding(length=64)
    (tmp_path / "tokenizer.json").write_text(backend.to_str())
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    text = CORPUS[0] * 3
    assert loaded.encode(text) == tok.encode(text) and len(loaded.encode("the")) < 4
    assert loaded.encode_ordinary_batch([text]) == tok.encode_ordinary_batch([text])
    saved = json.loads(loaded.to_json())
    assert saved["truncation"] is None and saved["padding"] is None


def test_token_texts_keep_characters_split_over_byte_tokens(tok: TextTokenizer) -> None:
    """Characters whose UTF-8 bytes the small BPE splits over several tokens come out whole, at the token that
    completes them, where decoding each token alone gives replacement characters."""
    text = "Où est le café? naïve ✓ 日本"
    ids = tok.encode(text)
    alone = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in a for a in alone)  # the case this is for: a character split over tokens
    texts = tok.token_texts(ids)
    assert "".join(texts) == text and not any("\ufffd" in t for t in texts)
    for t, piece in enumerate(texts):  # a token adds nothing only while its character is incomplete
        assert piece or (t + 1 < len(ids) and tok.decode(ids[:t + 1]).endswith("\ufffd"))
    assert tok.token_texts([]) == []


def test_token_texts_fall_back_to_single_tokens_for_rewriting_decoders() -> None:
    # a decoder whose prefix text is not a prefix of the whole text: each token is decoded alone
    words = {1: "a", 2: "b", 3: "c"}

    def reverse(ids: list[int]) -> str:
        return "".join(words[i] for i in ids)[::-1]

    assert token_texts(reverse, [1, 2, 3]) == ["a", "b", "c"]


def test_token_in_context_cuts_at_character_boundaries(tok: TextTokenizer) -> None:
    text = "le café ✓ 日本 fin"
    ids = tok.encode(text)
    texts = tok.token_texts(ids)
    for at in range(len(ids)):
        left, here, right = token_in_context(tok.decode, ids, at)
        assert left + here + right == text and here and "\ufffd" not in here
        # the token's own text, or (a token holding only the start of a character) that whole character
        assert here == texts[at] or (texts[at] == "" and here == next(t for t in texts[at:] if t))
    first = texts.index("")  # a token holding only the first bytes of a character
    for cut in (ids[first + 1:], ids[:first + 1]):  # windows cutting that character at their start / end
        assert "\ufffd" in tok.decode(cut)
        for at in range(len(cut)):  # its stray bytes are dropped, not shown as U+FFFD
            assert "\ufffd" not in "".join(token_in_context(tok.decode, cut, at))


def test_a_replacement_character_of_the_text_itself_stays_with_its_token(tok: TextTokenizer) -> None:
    """Scraped text holds real U+FFFD characters (3 byte-level tokens in this BPE): the token that completes one
    shows it, as for any character, not the token after it, in `token_texts` and in `token_in_context`."""
    text = "the king\ufffd is dead, caf\u00e9 \ufffd\ufffdok"
    ids = tok.encode(text)
    texts = tok.token_texts(ids)
    assert "".join(texts) == text
    holder = texts.index("\ufffd")  # the first one's third byte completes it; the space is the next token's
    assert texts[holder - 3:holder + 2] == ["ing", "", "", "\ufffd", " "], texts
    assert texts[-8:] == ["", "", "\ufffd", "", "", "\ufffd", "o", "k"], texts  # two in a row: each at its 3rd byte
    for at in range(len(ids)):
        left, here, right = token_in_context(tok.decode, ids, at)
        assert left + here + right == text
        assert here == texts[at] or (texts[at] == "" and here == next(t for t in texts[at:] if t))


def _byte_fallback_tokenizer() -> TextTokenizer:
    """A Llama-2 / SentencePiece-style tokenizer: "▁" for spaces, characters outside its vocabulary as one
    <0xNN> token per UTF-8 byte (byte fallback), a decoder that strips the leading space."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ("▁", "T", "o", "b", "e", "r", "To", "▁To", "▁b", "▁be", "▁o", "▁or"):
        vocab[piece] = len(vocab)
    merges = [("T", "o"), ("▁", "To"), ("▁", "b"), ("▁b", "e"), ("▁", "o"), ("▁o", "r")]
    sp = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    return TextTokenizer(sp, 2)


def test_byte_fallback_tokenizers_give_each_character_to_the_token_completing_it() -> None:
    """A byte-fallback tokenizer decodes each byte of a cut character as its own U+FFFD, and a run of byte tokens
    together: "日" complete, the first byte of "本" turns the run back into four U+FFFD. Prefixes that add a U+FFFD
    were taken for complete text, and a prefix that no longer starts with the text so far sent `token_texts` to
    decoding every token alone (spaces stripped, each byte a U+FFFD) in `inspect` and `describe-concepts`."""
    tok = _byte_fallback_tokenizer()
    ids = tok.encode("To be 日本 or")
    prefixes = [tok.decode(ids[:k + 1]) for k in range(len(ids))]
    assert prefixes[3:7] == ["To be \ufffd", "To be \ufffd\ufffd", "To be 日", "To be " + "\ufffd" * 4]
    texts = tok.token_texts(ids)
    assert texts == ["To", " be", " ", "", "", "日", "", "", "本", " or"] and "".join(texts) == tok.decode(ids)
    assert [token_in_context(tok.decode, ids, at)[1] for at in range(len(ids))] == [
        "To", " be", " ", "日", "日", "日", "本", "本", "本", " or"]
    assert token_in_context(tok.decode, ids, 4) == ("To be ", "日", "本 or")
    assert token_in_context(tok.decode, ids, 7) == ("To be 日", "本", " or")
