"""Hugging Face export / import (`cocomix.export.hf`): logit parity with transformers' GPT-2 and Llama,
round trips through `load_hf_weights`, tokenizer copying, and the refusals (non-empty target, seam models,
bad files). Tiny random models only; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cocomix.config import ModelConfig
from cocomix.errors import CheckpointError
from cocomix.export import export_hf, hf_config, hf_state_dict, load_hf_weights, model_config_from_hf
from cocomix.model import Seam, Transformer

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY = dict(vocab_size=97, d_model=32, n_layer=2, n_head=4, context_length=32, init_std=0.25)


def tiny_model(seed: int = 0, **overrides: object) -> Transformer:
    """A random model in which every parameter matters: norm weights and all biases perturbed off 1 / 0."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY, **overrides})  # type: ignore[arg-type]
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def random_ids(model: Transformer, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.vocab_size, (batch, model.cfg.context_length), generator=g)  # (B, T)


def hf_class(flavour: str) -> type:
    return transformers.GPT2LMHeadModel if flavour == "gpt2" else transformers.LlamaForCausalLM


@torch.no_grad()
def ours_vs_hf(model: Transformer, folder: Path) -> float:
    """Load `folder` with the HF class, check nothing was missing or left over; max |logit difference|."""
    cls = hf_class(model.cfg.flavour)
    hf, info = cls.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids = random_ids(model)
    ours = model(ids).logits  # (B, T, V)
    theirs = hf(ids).logits  # (B, T, V)
    assert ours.shape == theirs.shape == (2, model.cfg.context_length, model.cfg.vocab_size)
    assert ours.std() > 0.5, "logits too flat for the comparison to mean anything"
    return (ours - theirs).abs().max().item()


PARITY_CASES = {
    "gpt2": dict(flavour="gpt2"),
    "gpt2-untied-nobias": dict(flavour="gpt2", tie_embeddings=False, bias=False, d_mlp=48, norm_eps=1e-6),
    "llama": dict(flavour="llama", rope_theta=500.0),
    "llama-untied": dict(flavour="llama", tie_embeddings=False),
    "llama-bias": dict(flavour="llama", bias=True, d_mlp=80, norm_eps=1e-6),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_logits_match_transformers(case: str, tmp_path: Path) -> None:
    model = tiny_model(**PARITY_CASES[case])
    folder = export_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    diff = ours_vs_hf(model, folder)
    print(f"\n[export parity] {case}: max |logits_ours - logits_hf| = {diff:.3e}")
    assert diff < 1e-4


def test_parity_check_detects_a_wrong_export(tmp_path: Path) -> None:
    """The parity check is not vacuous: swapping q and k in one layer of the export breaks it."""
    model = tiny_model(flavour="llama")
    folder = export_hf(model, tmp_path / "hf")
    sd = safetensors_torch.load_file(str(folder / "model.safetensors"))
    a, b = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"
    sd[a], sd[b] = sd[b], sd[a]
    safetensors_torch.save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert ours_vs_hf(model, folder) > 1e-2


def test_config_fields(tmp_path: Path) -> None:
    g = hf_config(ModelConfig(**TINY, flavour="gpt2", dropout=0.1, norm_eps=1e-6))  # type: ignore[arg-type]
    assert (g.n_positions, g.n_embd, g.n_inner, g.activation_function) == (32, 32, 128, "gelu_new")
    assert (g.resid_pdrop, g.embd_pdrop, g.attn_pdrop, g.layer_norm_epsilon) == (0.1, 0.1, 0.1, 1e-6)
    assert g.tie_word_embeddings and g.bos_token_id is None and g.eos_token_id is None
    cfg = ModelConfig(**TINY, flavour="llama", rope_theta=500.0, tie_embeddings=False)  # type: ignore[arg-type]
    ll = hf_config(cfg)
    widths = (ll.max_position_embeddings, ll.intermediate_size, ll.num_key_value_heads, ll.head_dim)
    assert widths == (32, 128, 4, 8)
    assert not ll.tie_word_embeddings and not ll.attention_bias and not ll.mlp_bias
    rope = getattr(ll, "rope_parameters", None) or {"rope_theta": ll.rope_theta}
    assert rope["rope_theta"] == 500.0
    export_hf(tiny_model(flavour="llama", rope_theta=500.0), tmp_path / "hf")
    data = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert data["model_type"] == "llama" and data["architectures"] == ["LlamaForCausalLM"]
    assert data.get("dtype", data.get("torch_dtype")) == "float32"
    assert data["rope_theta"] == 500.0  # top level too, where transformers 4 reads it (5 reads rope_parameters)


def test_state_dict_layout() -> None:
    g = hf_state_dict(tiny_model(flavour="gpt2"))
    assert g["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D (in, out)
    assert "lm_head.weight" not in g  # tied
    ll = hf_state_dict(tiny_model(flavour="llama", tie_embeddings=False))
    assert ll["model.layers.0.mlp.down_proj.weight"].shape == (32, 128)
    assert "lm_head.weight" in ll and "model.layers.0.self_attn.q_proj.bias" not in ll
    assert all(t.is_contiguous() and t.dtype == torch.float32 for t in ll.values())


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_round_trip_through_load_hf_weights(flavour: str, tmp_path: Path) -> None:
    model = tiny_model(flavour=flavour, tie_embeddings=flavour == "gpt2")
    folder = export_hf(model, tmp_path / "hf")
    cfg = model_config_from_hf(folder)
    assert cfg == model.cfg
    fresh = Transformer(cfg).eval()
    load_hf_weights(fresh, folder)
    ids = random_ids(model)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)
    assert (fresh.lm_head.weight is fresh.wte.weight) == cfg.tie_embeddings


def test_gpt2_names_without_prefix_and_without_lm_head(tmp_path: Path) -> None:
    model = tiny_model(flavour="gpt2", tie_embeddings=False)
    folder = export_hf(model, tmp_path / "hf")
    sd = safetensors_torch.load_file(str(folder / "model.safetensors"))
    head = sd.pop("lm_head.weight")
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    sd["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)  # causal-mask buffer of old GPT-2 checkpoints: ignored
    safetensors_torch.save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    fresh = Transformer(model.cfg)
    load_hf_weights(fresh, folder)  # untied model, tied checkpoint: the head is a copy of the embedding
    assert torch.equal(fresh.lm_head.weight, model.wte.weight) and not torch.equal(fresh.lm_head.weight, head)
    assert torch.equal(fresh.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    model = tiny_model(flavour="llama")
    folder = export_hf(model, tmp_path / "hf")
    with pytest.raises(CheckpointError, match="model.embed_tokens.weight"):
        load_hf_weights(Transformer(ModelConfig(**{**TINY, "vocab_size": 98}, flavour="llama")), folder)
    with pytest.raises(CheckpointError, match="n_head"):
        load_hf_weights(Transformer(ModelConfig(**{**TINY, "n_head": 2}, flavour="llama")), folder)
    with pytest.raises(CheckpointError, match="flavour"):
        load_hf_weights(Transformer(ModelConfig(**TINY, flavour="gpt2")), folder)  # type: ignore[arg-type]
    sd = safetensors_torch.load_file(str(folder / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    safetensors_torch.save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        load_hf_weights(Transformer(model.cfg), folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf_weights(Transformer(model.cfg), folder)
    with pytest.raises(CheckpointError, match="config.json"):
        model_config_from_hf(tmp_path)
    hf_cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**hf_cfg, "rope_parameters": None, "rope_scaling": "bad"}))
    with pytest.raises(CheckpointError, match="rope_scaling: expected a JSON object"):
        model_config_from_hf(folder)
    (folder / "config.json").write_text(json.dumps(hf_cfg))
    (folder / "pytorch_model.bin").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a.safetensors"]}))
    with pytest.raises(CheckpointError, match="weight_map: expected an object"):
        load_hf_weights(Transformer(model.cfg), folder)


def test_refuses_non_empty_target_and_seam_models(tmp_path: Path) -> None:
    model = tiny_model(flavour="gpt2")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not an empty directory"):
        export_hf(model, target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    (target / "keep.txt").unlink()
    export_hf(model, target)  # an empty directory is fine
    assert (target / "model.safetensors").is_file()
    seamed = tiny_model(flavour="gpt2")
    seamed.set_seam(Seam(1))
    with pytest.raises(CheckpointError, match="NTP and KD models .* only: this model mixes slots"):
        export_hf(seamed, tmp_path / "seamed")
    assert not (tmp_path / "seamed").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left behind


def test_a_failed_export_leaves_no_folder_it_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted while writing (or a full disk): neither the target, its temporary folder nor the parent folders
    made for it are left; a parent that existed stays."""
    (tmp_path / "kept").mkdir()

    def interrupted(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_hf(tiny_model(flavour="gpt2"), tmp_path / "kept" / "a" / "b" / "out")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]


def test_an_empty_folder_through_a_symlink_is_filled_and_the_current_folder_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(flavour="gpt2")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    assert export_hf(model, tmp_path / "link") == tmp_path / "empty"  # the folder it points to, the link kept
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link" / "model.safetensors").is_file()
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(CheckpointError, match=r"^\.: the current folder; give a new folder"):
        export_hf(model, ".")
    assert list((tmp_path / "here").iterdir()) == [] and (tmp_path / "here").is_dir()


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_a_prediction_only_cocomix_model_exports_as_its_language_model(flavour: str, tmp_path: Path) -> None:
    """concept.mixing=none: the seam predicts concepts and leaves the hidden states alone, so the language model
    is a plain decoder; the export drops the predictor and gives the same logits. Mixing seams stay refused."""
    from cocomix.model.concept import ConceptSeam, HiddenSeam

    model = tiny_model(flavour=flavour)
    model.set_seam(ConceptSeam(1, TINY["d_model"], n_latents=64, mix_k=8, mixing="none"))
    with torch.no_grad():
        model.seam.predictor.weight.normal_()  # a predictor that matters for its own output
    export_hf(model, tmp_path / "none")
    assert ours_vs_hf(model, tmp_path / "none") < 1e-4
    for seam in (ConceptSeam(1, TINY["d_model"], 64, 8, mixing="add"), HiddenSeam(1, TINY["d_model"], 16)):
        mixed = tiny_model(flavour=flavour)
        mixed.set_seam(seam)
        with pytest.raises(CheckpointError, match="this model mixes slots"):
            export_hf(mixed, tmp_path / "mixed")


def make_tokenizer_dir(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["the cat sat on the mat", "a dog ate the hat", "the rain in spain falls mainly on the plain"]
    tok.train_from_iterator(text * 5, trainer)
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                  "bos_token": "<|endoftext|>"}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return path


def test_tokenizer_files_are_copied(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tok_dir = make_tokenizer_dir(tmp_path / "tok")
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert 257 < raw.get_vocab_size() <= 280  # 256 bytes, <|endoftext|>, some merges
    folder = export_hf(tiny_model(flavour="llama", vocab_size=288), tmp_path / "hf", tokenizer_dir=tok_dir)
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    from cocomix.atomic import ordinary_mode

    assert {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()}["model.safetensors"] == ordinary_mode()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = "the cat ate the plain hat"
    assert tok(text)["input_ids"] == raw.encode(text).ids
    assert tok.decode(raw.encode(text).ids) == text
    eos = raw.token_to_id("<|endoftext|>")
    assert tok.eos_token_id == eos
    assert tok.model_max_length == 32  # the model's context, so truncation=True cuts to what it can read
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] == eos
    # the model's 288 ids exceed the tokenizer's: HF generate never samples the ids no token stands for
    n = raw.get_vocab_size(with_added_tokens=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert hf.generation_config.suppress_tokens == list(range(n, 288))
    torch.manual_seed(0)
    ids = tok("the cat", return_tensors="pt")["input_ids"]
    out = hf.generate(ids, do_sample=True, top_k=0, temperature=3.0, max_new_tokens=30, min_new_tokens=30,
                      pad_token_id=eos)
    assert out.shape[1] == ids.shape[1] + 30 and int(out.max()) < n
    plain = export_hf(tiny_model(flavour="llama", vocab_size=n), tmp_path / "exact", tokenizer_dir=tok_dir)
    assert not (plain / "generation_config.json").exists()  # nothing to suppress
    with pytest.raises(CheckpointError, match="vocab_size"):
        export_hf(tiny_model(flavour="llama"), tmp_path / "small", tokenizer_dir=tok_dir)
    bare = tmp_path / "bare"  # a tokenizer.json alone, naming no eos: found as `load_tokenizer` finds it
    bare.mkdir()
    shutil.copyfile(tok_dir / "tokenizer.json", bare / "tokenizer.json")
    folder = export_hf(tiny_model(flavour="llama", vocab_size=288), tmp_path / "hf-bare", tokenizer_dir=bare)
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] == eos
    assert transformers.AutoTokenizer.from_pretrained(folder).eos_token_id == eos
    for i, named in enumerate(("null", '""')):  # a null or empty name names none either
        (bare / "tokenizer_config.json").write_text(f'{{"eos_token": {named}}}')
        folder = export_hf(tiny_model(flavour="llama", vocab_size=288), tmp_path / f"hf-{i}", tokenizer_dir=bare)
        assert json.loads((folder / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
        assert json.loads((folder / "config.json").read_text())["eos_token_id"] == eos


def test_a_tokenizer_with_gaps_in_its_ids_suppresses_only_the_ids_above_its_largest(tmp_path: Path) -> None:
    """A vocabulary of 13 tokens at ids 0, 1 and 20 … 30 reads as size 31 (as `TextTokenizer.vocab_size`, what
    `cocomix generate` limits to): its words are never suppressed, and a 25-id model is too small for it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["the", "cat", "ate", "a", "plain", "hat", "dog", "sat", "on", "mat", "red"]
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, **{w: 20 + i for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    folder = export_hf(tiny_model(flavour="llama", vocab_size=40), tmp_path / "hf", tokenizer_dir=tmp_path / "tok")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert hf.generation_config.suppress_tokens == list(range(31, 40))
    with pytest.raises(CheckpointError, match="tokenizer has ids up to 30 but the model's vocab_size is 25"):
        export_hf(tiny_model(flavour="llama", vocab_size=25), tmp_path / "small", tokenizer_dir=tmp_path / "tok")


def edit_weights(folder: Path, **changes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rewrite the folder's model.safetensors with `changes` (name -> tensor) applied; the original tensors."""
    sd = safetensors_torch.load_file(str(folder / "model.safetensors"))
    safetensors_torch.save_file({**sd, **changes}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return sd


def edit_config(folder: Path, drop: tuple[str, ...] = (), **changes: object) -> dict[str, object]:
    """Rewrite the folder's config.json without the keys `drop` and with `changes`; the result."""
    data = json.loads((folder / "config.json").read_text())
    data = {k: v for k, v in {**data, **changes}.items() if k not in drop}
    (folder / "config.json").write_text(json.dumps(data))
    return data


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_non_zero_bias_refused_for_a_bias_less_model(flavour: str, tmp_path: Path) -> None:
    """A bias our bias-less model can't hold loads only when all zeros; a non-zero one would be silently dropped."""
    model = tiny_model(flavour=flavour, bias=False)
    folder = export_hf(model, tmp_path / "hf")
    name = "transformer.h.1.mlp.c_fc.bias" if flavour == "gpt2" else "model.layers.1.self_attn.k_proj.bias"
    bias = torch.zeros(128 if flavour == "gpt2" else 32)
    sd = edit_weights(folder, **{name: bias})  # (GPT-2 exports always hold biases: zeros for ours)
    assert flavour == "llama" or torch.equal(sd[name], bias)
    load_hf_weights(Transformer(model.cfg), folder)  # zeros: the same function, accepted
    bias[3] = 0.5  # one non-zero entry is enough
    edit_weights(folder, **{name: bias})
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is non-zero but the model has no biases"):
        load_hf_weights(Transformer(model.cfg), folder)


def test_tied_model_refuses_a_different_lm_head(tmp_path: Path) -> None:
    """A tied model takes an lm_head equal to the embeddings, refuses one that differs (it would be ignored)."""
    model = tiny_model(flavour="gpt2")
    folder = export_hf(model, tmp_path / "hf")
    wte = safetensors_torch.load_file(str(folder / "model.safetensors"))["transformer.wte.weight"]
    edit_weights(folder, **{"lm_head.weight": wte.clone()})
    load_hf_weights(Transformer(model.cfg), folder)
    head = wte.clone()
    head[5, 7] += 1.0
    edit_weights(folder, **{"lm_head.weight": head})
    with pytest.raises(CheckpointError, match="'lm_head.weight' differs from 'transformer.wte.weight' but the model "
                                              "ties embeddings"):
        load_hf_weights(Transformer(model.cfg), folder)


def test_unexpected_tensors_refused(tmp_path: Path) -> None:
    model = tiny_model(flavour="llama")
    folder = export_hf(model, tmp_path / "hf")
    edit_weights(folder, **{"model.layers.0.mlp.extra.weight": torch.ones(4)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['model.layers.0.mlp.extra.weight'\]"):
        load_hf_weights(Transformer(model.cfg), folder)


@pytest.mark.parametrize(("flavour", "field", "ours", "theirs"),
                         [("gpt2", "norm_eps", 1e-5, 1e-6), ("llama", "norm_eps", 1e-5, 1e-6),
                          ("llama", "rope_theta", 10000.0, 500.0)])
def test_norm_eps_and_rope_theta_mismatch_refused(flavour: str, field: str, ours: float, theirs: float,
                                                  tmp_path: Path) -> None:
    """Same shapes, another function: a folder made with a different norm_eps / rope_theta is refused."""
    folder = export_hf(tiny_model(flavour=flavour, **{field: theirs}), tmp_path / "hf")
    target = Transformer(ModelConfig(**TINY, flavour=flavour, **{field: ours}))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=f"{field}={theirs!r} in the HF config but {ours!r} in the model"):
        load_hf_weights(target, folder)


def test_scale_attn_by_inverse_layer_idx_refused(tmp_path: Path) -> None:
    """Off (as in transformers' default, which an omitted key means) is accepted; on is refused."""
    folder = export_hf(tiny_model(flavour="gpt2"), tmp_path / "hf")
    assert transformers.GPT2Config().scale_attn_by_inverse_layer_idx is False
    edit_config(folder, drop=("scale_attn_by_inverse_layer_idx",))
    assert model_config_from_hf(folder).flavour == "gpt2"
    edit_config(folder, scale_attn_by_inverse_layer_idx=False)
    assert model_config_from_hf(folder).flavour == "gpt2"
    edit_config(folder, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx=true is not supported"):
        model_config_from_hf(folder)


def test_omitted_config_fields_take_transformers_defaults(tmp_path: Path) -> None:
    """A config.json without resid_pdrop / rms_norm_eps means what transformers reads it as: its class defaults."""
    gpt2 = export_hf(tiny_model(flavour="gpt2"), tmp_path / "gpt2")
    assert model_config_from_hf(gpt2).dropout == 0.0 != transformers.GPT2Config().resid_pdrop
    edit_config(gpt2, drop=("resid_pdrop",))
    assert model_config_from_hf(gpt2).dropout == transformers.GPT2Config().resid_pdrop
    llama = export_hf(tiny_model(flavour="llama"), tmp_path / "llama")
    assert model_config_from_hf(llama).norm_eps == 1e-5 != transformers.LlamaConfig().rms_norm_eps
    edit_config(llama, drop=("rms_norm_eps",))
    assert model_config_from_hf(llama).norm_eps == transformers.LlamaConfig().rms_norm_eps
