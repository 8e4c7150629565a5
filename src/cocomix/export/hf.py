"""Hugging Face export: an NTP, KD or prediction-only CoCoMix `Transformer` as a `transformers` GPT-2 / Llama folder.

`export_hf` writes `config.json` (`hf_config`) and `model.safetensors` (`hf_state_dict`), optionally with the
tokenizer files, atomically. NTP and KD students export, and prediction-only CoCoMix ones (`concept.mixing=none`,
without their concept predictor); a seam that mixes slots into the hidden states does not. The folder loads
offline with `GPT2LMHeadModel.from_pretrained` (gpt2 flavour) or `LlamaForCausalLM.from_pretrained` (llama
flavour) and gives the same logits as our model.
The reverse direction (`load_hf_weights`, `model_config_from_hf`) is in `hf_import.py`; tensor names and
layouts are in `hf_names.py`.

`transformers` is imported inside the functions that need it, so `import cocomix` does not require it.

No paper equation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from cocomix import json_text
from cocomix.atomic import check_out_folder, fsync_dir, fsync_folder, ordinary_mode, remove_empty_folders
from cocomix.config import ModelConfig
from cocomix.errors import CheckpointError
from cocomix.export.hf_names import TOKENIZER_FILES, WEIGHTS_NAME, fresh_tensor, gpt2_transposed, name_map
from cocomix.model.transformer import Transformer

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under HF names and layouts (fp32, CPU, contiguous, no shared storage).

    A prediction-only CoCoMix model (`concept.mixing=none`: its seam predicts concepts and leaves the hidden
    states as they are) is exported as its language model: the concept predictor, which no logit depends on, is
    left out. A tied LM head is left out (HF re-ties it from `tie_word_embeddings`). Biases our model lacks (gpt2
    flavour with `bias=False`; HF GPT-2 always has them) are written as zeros: the same function.
    """
    if model.seam is not None and getattr(model.seam, "mixing", None) != "none":
        raise CheckpointError("export supports NTP and KD models (and prediction-only CoCoMix, concept.mixing=none) "
                              "only: this model mixes slots into its hidden states (CoCoMix, pause or addition), "
                              "which is not a plain Hugging Face GPT-2 or Llama architecture")
    cfg = model.cfg
    if cfg.tie_embeddings and model.lm_head.weight is not model.wte.weight and not torch.equal(
            model.lm_head.weight, model.wte.weight):
        raise CheckpointError("model config ties embeddings but lm_head.weight differs from wte.weight")
    ours = dict(model.named_parameters())
    d = cfg.d_model
    out: dict[str, torch.Tensor] = {}
    for hf_name, name in name_map(cfg).items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if name in ours:
            t = ours[name]
        elif cfg.flavour == "gpt2" and name.endswith(".bias"):
            weight = ours[name[: -len("bias")] + "weight"]
            t = weight.new_zeros(weight.shape[0])  # LayerNorm (d,) or Linear (out,)
        else:
            continue  # llama without biases
        if cfg.flavour == "gpt2" and gpt2_transposed(hf_name):
            t = t.t()  # Linear (out, in) -> Conv1D (in, out)
        out[hf_name] = fresh_tensor(t)
    if cfg.flavour == "llama":
        for i in range(cfg.n_layer):
            attn = f"model.layers.{i}.self_attn"
            w = ours[f"blocks.{i}.attn.qkv.weight"]  # (3d, d), rows [q; k; v]
            for j, p in enumerate("qkv"):
                out[f"{attn}.{p}_proj.weight"] = fresh_tensor(w[j * d : (j + 1) * d])  # (d, d)
            if cfg.use_bias:
                bias = ours[f"blocks.{i}.attn.qkv.bias"]  # (3d,)
                for j, p in enumerate("qkv"):
                    out[f"{attn}.{p}_proj.bias"] = fresh_tensor(bias[j * d : (j + 1) * d])  # (d,)
    return out


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _add_legacy_rope_theta(path: Path, cfg: ModelConfig) -> None:
    """A llama config.json written by transformers 5 holds RoPE's theta only in `rope_parameters`, which a
    transformers 4 release (the pyproject floor is 4.56) ignores for its default 10000: the top-level `rope_theta`
    is written too, which transformers 5 reads the same."""
    data = json_text.loads(path.read_text(encoding="utf-8"))
    if cfg.flavour == "llama" and "rope_theta" not in data:
        data["rope_theta"] = cfg.rope_theta
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def hf_config(cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None
              ) -> PretrainedConfig:
    """The `GPT2Config` (gpt2 flavour) or `LlamaConfig` (llama flavour) of a model built from `cfg`."""
    from transformers import GPT2Config, LlamaConfig

    v5 = _transformers_major() >= 5
    common: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=None, use_cache=True,
        architectures=["GPT2LMHeadModel" if cfg.flavour == "gpt2" else "LlamaForCausalLM"],
    )
    common["dtype" if v5 else "torch_dtype"] = "float32"
    if cfg.flavour == "gpt2":
        return GPT2Config(
            n_positions=cfg.context_length, n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
            n_inner=cfg.mlp_width, activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, **common,
        )
    rope: dict[str, Any] = (
        {"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}} if v5
        else {"rope_theta": cfg.rope_theta, "rope_scaling": None}
    )
    return LlamaConfig(
        hidden_size=cfg.d_model, intermediate_size=cfg.mlp_width, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head, head_dim=cfg.head_dim,
        hidden_act="silu", max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps,
        attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias, attention_dropout=cfg.dropout, pretraining_tp=1,
        **rope, **common,
    )


def _special_token(value: Any) -> str | None:
    """A special token entry of tokenizer_config.json: a string, or a dict with `content` (AddedToken)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _tokenizer_special_ids(tokenizer_dir: Path, vocab_size: int) -> tuple[dict[str, int | None], int, str | None]:
    """bos/eos ids named by the tokenizer folder (tokenizer_config.json, else special_tokens_map.json; with no eos
    named, the first of `<|endoftext|>`, `</s>`, ... the tokenizer holds, as `load_tokenizer` reads it), and the
    tokenizer's size (its largest id + 1), and the eos token."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise CheckpointError(f"{tokenizer_dir / 'tokenizer.json'}: cannot read tokenizer ({e})") from None
    # one more than its largest id (as `TextTokenizer.vocab_size`): a vocabulary with gaps in its ids has fewer
    # tokens than that, and counting them would suppress real tokens and let a too-large id pass
    n = max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    if n > vocab_size:
        raise CheckpointError(f"{tokenizer_dir}: tokenizer has ids up to {n - 1} but the model's vocab_size is "
                              f"{vocab_size}")
    names: dict[str, Any] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        p = tokenizer_dir / fname
        if p.is_file():
            try:
                data = json_text.loads(p.read_text())
            except ValueError as e:
                raise CheckpointError(f"{p}: not valid JSON ({e})") from None
            if isinstance(data, dict):  # (a null or "" names nothing: the other file's, or the fallback below)
                names.update({k: data[k] for k in ("bos_token", "eos_token") if _special_token(data.get(k))})
    if _special_token(names.get("eos_token")) is None:  # as `load_tokenizer` finds a store's end-of-text token
        from cocomix.data.tokenizer import _FALLBACK_EOS

        names["eos_token"] = next((t for t in _FALLBACK_EOS if tok.token_to_id(t) is not None), None)
    ids: dict[str, int | None] = {}
    for key in ("bos_token", "eos_token"):
        token = _special_token(names.get(key))
        ids[f"{key}_id"] = tok.token_to_id(token) if token is not None else None
    return ids, n, _special_token(names.get("eos_token"))


def _write_tokenizer_config(path: Path, context_length: int, eos_token: str | None) -> None:
    """tokenizer_config.json with `model_max_length` = the model's context (`truncation=True` in transformers then
    cuts to what the model can read) and `eos_token` where it named none; the store's own config, if any, keeps its
    other keys."""
    try:
        tok_cfg = json_text.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as e:
        raise CheckpointError(f"{path}: unreadable tokenizer config ({e})") from None
    tok_cfg = tok_cfg if isinstance(tok_cfg, dict) else {}
    tok_cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    if eos_token is not None and not _special_token(tok_cfg.get("eos_token")):
        tok_cfg["eos_token"] = eos_token
    tok_cfg["model_max_length"] = context_length
    path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_hf(model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write `model` as a Hugging Face folder at `out_dir` (created atomically) and return its path.

    The folder holds config.json, model.safetensors (fp32) and, when `tokenizer_dir` is given, its
    tokenizer.json / tokenizer_config.json / special_tokens_map.json, so `AutoTokenizer` loads it too. A model
    vocabulary larger than the tokenizer's (a padded vocab_size, a small store) also gets generation_config.json
    with `suppress_tokens` = the ids above the tokenizer's largest, so that HF `generate` never samples them (as
    `cocomix generate`; gaps among the tokenizer's own ids are left as they are); the logits stay the model's.
    Refuses (CheckpointError) a model whose seam mixes slots in (CoCoMix, pause, addition) and an `out_dir` that
    exists and is not empty.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: export target exists and is " + ("a file" if not out.is_dir() else
                                                                           "not an empty directory")
                              + "; give a new or empty folder")
    if out.is_dir():  # an empty folder, given as `.` or through a symlink: the folder itself is replaced
        if out.resolve() == Path.cwd().resolve():
            raise CheckpointError(f"{out}: the current folder; give a new folder, or an empty one you are not in")
        out = out.resolve()
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok_dir is not None and not (tok_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{tok_dir}: no tokenizer.json to export")
    state = hf_state_dict(model)  # raises for seam models before anything is written
    special, n_tokens, eos = (_tokenizer_special_ids(tok_dir, model.cfg.vocab_size) if tok_dir is not None
                              else ({}, 0, None))
    config = hf_config(model.cfg, **special)

    check_out_folder(out)  # a file on the way: said as such, not as "File exists"
    made = [p for p in out.parents if not p.exists()]  # folders created for it: removed again if it fails
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        remove_empty_folders(made)
        raise CheckpointError(f"{out}: cannot create the export folder there ({e.strerror or e})") from None
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        os.chmod(tmp / WEIGHTS_NAME, ordinary_mode())  # safetensors creates it 0600: as the umask gives
        config.save_pretrained(str(tmp))
        _add_legacy_rope_theta(tmp / "config.json", model.cfg)
        if tok_dir is not None:
            for fname in TOKENIZER_FILES:
                if (tok_dir / fname).is_file():
                    shutil.copyfile(tok_dir / fname, tmp / fname)
            _write_tokenizer_config(tmp / "tokenizer_config.json", model.cfg.context_length, eos)
            if n_tokens < model.cfg.vocab_size:  # ids above the tokenizer's: never generated (as `cocomix generate`)
                from transformers import GenerationConfig

                GenerationConfig(**{k: v for k, v in special.items() if v is not None},
                                 suppress_tokens=list(range(n_tokens, model.cfg.vocab_size))).save_pretrained(str(tmp))
        os.chmod(tmp, ordinary_mode(folder=True))  # mkdtemp makes it 0700
        fsync_folder(tmp)
        os.replace(tmp, out)  # atomic; replaces an empty directory, fails on a non-empty one
        fsync_dir(out.parent)
    except (OSError, SafetensorError) as e:  # (safetensors' writer reports a full disk as a SafetensorError)
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_folders(made)
        raise CheckpointError(f"{out}: export failed ({' '.join(str(e).split())[:200]})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_folders(made)
        raise
    return out
