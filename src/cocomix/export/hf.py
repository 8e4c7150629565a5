"""Hugging Face interop: export an NTP `Transformer` as a `transformers` GPT-2 / Llama folder; read one back.

`export_hf` writes `config.json` (`hf_config`) and `model.safetensors` (`hf_state_dict`), optionally with the
tokenizer files, atomically. The folder loads offline with `GPT2LMHeadModel.from_pretrained` (gpt2 flavour)
or `LlamaForCausalLM.from_pretrained` (llama flavour) and gives the same logits as our model.
`load_hf_weights` and `model_config_from_hf` go the other way, for exported or compatible HF GPT-2 / Llama
folders (safetensors only, never pickles).

Weight layouts. Ours: `nn.Linear` (out, in) everywhere, attention `qkv` fused as rows [q; k; v] with heads
contiguous in each. HF GPT-2 uses `Conv1D` (in, out), so every Linear weight is transposed and `c_attn` is the
transposed fused qkv. HF Llama keeps (out, in) with separate `q_proj` / `k_proj` / `v_proj`; our RoPE is
already in its rotate-half convention, so no row permutation is needed.

`transformers` is imported inside the functions that need it, so `import cocomix` does not require it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cocomix.config import ModelConfig
from cocomix.errors import CheckpointError, ConfigError
from cocomix.model.transformer import Transformer

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["export_hf", "hf_config", "hf_state_dict", "load_hf_weights", "model_config_from_hf"]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
"""HF activation names that are the tanh-approximated GELU our gpt2 flavour uses."""
_IGNORED_HF_KEYS = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$|rotary_emb\.inv_freq$")
"""Non-parameter buffers some HF checkpoints carry (GPT-2 causal-mask buffers, old Llama RoPE tables)."""


# ----------------------------------------------------------------------------------------------------------
# Names: one table per flavour from HF tensor name to (our name, how to convert).


def _name_map(cfg: ModelConfig) -> dict[str, str]:
    """HF tensor name -> our parameter name, for every tensor except Llama's split q/k/v projections."""
    m: dict[str, str] = {}
    if cfg.flavour == "gpt2":
        m["transformer.wte.weight"] = "wte.weight"
        m["transformer.wpe.weight"] = "wpe.weight"
        for i in range(cfg.n_layer):
            h, b = f"transformer.h.{i}", f"blocks.{i}"
            for hf, ours in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.c_attn", "attn.qkv"),
                             ("attn.c_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc"),
                             ("mlp.c_proj", "mlp.proj")):
                m[f"{h}.{hf}.weight"] = f"{b}.{ours}.weight"
                m[f"{h}.{hf}.bias"] = f"{b}.{ours}.bias"
        m["transformer.ln_f.weight"] = "ln_f.weight"
        m["transformer.ln_f.bias"] = "ln_f.bias"
    else:
        m["model.embed_tokens.weight"] = "wte.weight"
        for i in range(cfg.n_layer):
            h, b = f"model.layers.{i}", f"blocks.{i}"
            m[f"{h}.input_layernorm.weight"] = f"{b}.ln_1.weight"
            m[f"{h}.post_attention_layernorm.weight"] = f"{b}.ln_2.weight"
            for hf, ours in (("self_attn.o_proj", "attn.proj"), ("mlp.gate_proj", "mlp.gate"),
                             ("mlp.up_proj", "mlp.up"), ("mlp.down_proj", "mlp.proj")):
                m[f"{h}.{hf}.weight"] = f"{b}.{ours}.weight"
                m[f"{h}.{hf}.bias"] = f"{b}.{ours}.bias"
        m["model.norm.weight"] = "ln_f.weight"
    m["lm_head.weight"] = "lm_head.weight"
    return m


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> its shape in an HF folder for `cfg` (biases included whether or not we have them)."""
    V, d, m, C = cfg.vocab_size, cfg.d_model, cfg.mlp_width, cfg.context_length
    s: dict[str, tuple[int, ...]] = {"lm_head.weight": (V, d)}
    if cfg.flavour == "gpt2":
        s.update({"transformer.wte.weight": (V, d), "transformer.wpe.weight": (C, d),
                  "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
        for i in range(cfg.n_layer):
            h = f"transformer.h.{i}"
            for ln in ("ln_1", "ln_2"):
                s[f"{h}.{ln}.weight"] = s[f"{h}.{ln}.bias"] = (d,)
            for mod, n_in, n_out in (("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, m),
                                     ("mlp.c_proj", m, d)):
                s[f"{h}.{mod}.weight"], s[f"{h}.{mod}.bias"] = (n_in, n_out), (n_out,)  # Conv1D (in, out)
    else:
        s.update({"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)})
        for i in range(cfg.n_layer):
            h = f"model.layers.{i}"
            s[f"{h}.input_layernorm.weight"] = s[f"{h}.post_attention_layernorm.weight"] = (d,)
            for mod, n_in, n_out in (("self_attn.q_proj", d, d), ("self_attn.k_proj", d, d),
                                     ("self_attn.v_proj", d, d), ("self_attn.o_proj", d, d),
                                     ("mlp.gate_proj", d, m), ("mlp.up_proj", d, m), ("mlp.down_proj", m, d)):
                s[f"{h}.{mod}.weight"], s[f"{h}.{mod}.bias"] = (n_out, n_in), (n_out,)  # Linear (out, in)
    return s


def _gpt2_transposed(hf_name: str) -> bool:
    """GPT-2 Conv1D weights are stored (in, out): every 2-D block weight (not embeddings, not lm_head)."""
    return hf_name.startswith("transformer.h.") and hf_name.endswith(".weight") and ".ln_" not in hf_name


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A contiguous fp32 CPU copy that shares no storage (safetensors refuses shared or strided tensors)."""
    return t.detach().to(device="cpu", dtype=torch.float32).clone(memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------------------------
# Export.


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under HF names and layouts (fp32, CPU, contiguous, no shared storage).

    A tied LM head is left out (HF re-ties it from `tie_word_embeddings`). Biases our model lacks (gpt2
    flavour with `bias=False`; HF GPT-2 always has them) are written as zeros: the same function.
    """
    if model.seam is not None:
        raise CheckpointError("export supports NTP models only: this model has a slot seam (CoCoMix, pause "
                              "or addition), which is not a plain Hugging Face GPT-2 or Llama architecture")
    cfg = model.cfg
    if cfg.tie_embeddings and model.lm_head.weight is not model.wte.weight and not torch.equal(
            model.lm_head.weight, model.wte.weight):
        raise CheckpointError("model config ties embeddings but lm_head.weight differs from wte.weight")
    ours = dict(model.named_parameters())
    d = cfg.d_model
    out: dict[str, torch.Tensor] = {}
    for hf_name, name in _name_map(cfg).items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if name in ours:
            t = ours[name]
        elif cfg.flavour == "gpt2" and name.endswith(".bias"):
            weight = ours[name[: -len("bias")] + "weight"]
            t = weight.new_zeros(weight.shape[0])  # LayerNorm (d,) or Linear (out,)
        else:
            continue  # llama without biases
        if cfg.flavour == "gpt2" and _gpt2_transposed(hf_name):
            t = t.t()  # Linear (out, in) -> Conv1D (in, out)
        out[hf_name] = _fresh(t)
    if cfg.flavour == "llama":
        for i in range(cfg.n_layer):
            attn = f"model.layers.{i}.self_attn"
            w = ours[f"blocks.{i}.attn.qkv.weight"]  # (3d, d), rows [q; k; v]
            for j, p in enumerate("qkv"):
                out[f"{attn}.{p}_proj.weight"] = _fresh(w[j * d : (j + 1) * d])  # (d, d)
            if cfg.use_bias:
                bias = ours[f"blocks.{i}.attn.qkv.bias"]  # (3d,)
                for j, p in enumerate("qkv"):
                    out[f"{attn}.{p}_proj.bias"] = _fresh(bias[j * d : (j + 1) * d])  # (d,)
    return out


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


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


def _tokenizer_special_ids(tokenizer_dir: Path, vocab_size: int) -> dict[str, int | None]:
    """bos/eos ids named by the tokenizer folder (tokenizer_config.json, else special_tokens_map.json)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise CheckpointError(f"{tokenizer_dir / 'tokenizer.json'}: cannot read tokenizer ({e})") from None
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise CheckpointError(f"{tokenizer_dir}: tokenizer has {n} tokens but the model's vocab_size is "
                              f"{vocab_size}")
    names: dict[str, Any] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        p = tokenizer_dir / fname
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except ValueError as e:
                raise CheckpointError(f"{p}: not valid JSON ({e})") from None
            names.update({k: data[k] for k in ("bos_token", "eos_token") if k in data})
    ids: dict[str, int | None] = {}
    for key in ("bos_token", "eos_token"):
        token = _special_token(names.get(key))
        ids[f"{key}_id"] = tok.token_to_id(token) if token is not None else None
    return ids


def export_hf(model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write `model` as a Hugging Face folder at `out_dir` (created atomically) and return its path.

    The folder holds config.json, model.safetensors (fp32) and, when `tokenizer_dir` is given, its
    tokenizer.json / tokenizer_config.json / special_tokens_map.json, so `AutoTokenizer` loads it too.
    Refuses (CheckpointError) a model with a slot seam and an `out_dir` that exists and is not empty.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: export target exists and is not an empty directory")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok_dir is not None and not (tok_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{tok_dir}: no tokenizer.json to export")
    state = hf_state_dict(model)  # raises for seam models before anything is written
    special = _tokenizer_special_ids(tok_dir, model.cfg.vocab_size) if tok_dir is not None else {}
    config = hf_config(model.cfg, **special)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        if tok_dir is not None:
            for fname in TOKENIZER_FILES:
                if (tok_dir / fname).is_file():
                    shutil.copyfile(tok_dir / fname, tmp / fname)
            if not (tmp / "tokenizer_config.json").is_file():
                (tmp / "tokenizer_config.json").write_text(
                    json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        os.replace(tmp, out)  # atomic; replaces an empty directory, fails on a non-empty one
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{out}: export failed ({e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------------------------------------
# Import.


def _read_hf_config(folder: Path) -> dict[str, Any]:
    p = folder / CONFIG_NAME
    if not p.is_file():
        raise CheckpointError(f"{p}: missing (not a Hugging Face model folder)")
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{p}: expected a JSON object")
    return data


def _llama_rope_theta(hf: dict[str, Any], where: Path) -> float:
    """RoPE base from `rope_parameters` (transformers 5) or `rope_theta` / `rope_scaling` (4.x).

    Only plain RoPE is accepted: scaled variants (linear, dynamic, yarn, llama3, ...) are a CheckpointError.
    """
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_type" not in params and "rope_theta" not in params:
        raise CheckpointError(f"{where}: per-layer-type rope_parameters are not supported")
    params = params if isinstance(params, dict) else hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"{where}: RoPE type {rope_type!r} is not supported (only 'default')")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial rotary embeddings are not supported")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(folder: str | Path) -> ModelConfig:
    """The ModelConfig of an HF GPT-2 / Llama folder (its config.json); CheckpointError if ours can't hold it.

    `d_mlp` and `bias` are left None when they equal the flavour's default, so exported configs round-trip.
    (A gpt2-flavour model exported with `bias=false` comes back with biases, which load as zeros.)
    """
    folder = Path(folder)
    hf = _read_hf_config(folder)
    where = folder / CONFIG_NAME
    kind = hf.get("model_type")

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise CheckpointError(f"{where}: {what} is not supported by cocomix models")

    try:
        if kind == "gpt2":
            d = int(hf.get("n_embd", 768))
            need(hf.get("activation_function", "gelu_new") in GPT2_ACTIVATIONS,
                 f"activation_function={hf.get('activation_function')!r}")
            need(hf.get("scale_attn_weights", True), "scale_attn_weights=false")
            need(not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true")
            need(not hf.get("add_cross_attention", False), "add_cross_attention=true")
            n_inner = hf.get("n_inner")
            return ModelConfig(
                flavour="gpt2", vocab_size=int(hf.get("vocab_size", 50257)),
                n_layer=int(hf.get("n_layer", 12)), n_head=int(hf.get("n_head", 12)), d_model=d,
                d_mlp=None if n_inner is None or n_inner == 4 * d else int(n_inner),
                context_length=int(hf.get("n_positions", 1024)), dropout=float(hf.get("resid_pdrop", 0.1)),
                bias=None, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                init_std=float(hf.get("initializer_range", 0.02)),
            )
        if kind == "llama":
            d, heads = int(hf.get("hidden_size", 4096)), int(hf.get("num_attention_heads", 32))
            need(hf.get("hidden_act", "silu") == "silu", f"hidden_act={hf.get('hidden_act')!r}")
            kv = hf.get("num_key_value_heads") or heads
            need(kv == heads, f"grouped-query attention (num_key_value_heads={kv} < {heads})")
            head_dim = hf.get("head_dim") or d // heads
            need(head_dim * heads == d, f"head_dim={head_dim} with hidden_size={d}, heads={heads}")
            need(int(hf.get("pretraining_tp", 1) or 1) == 1, "pretraining_tp > 1")
            attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
            need(attn_bias == mlp_bias, f"attention_bias={attn_bias} with mlp_bias={mlp_bias}")
            width = int(hf.get("intermediate_size", 11008))
            base = ModelConfig(flavour="llama", d_model=d, n_head=heads)
            return ModelConfig(
                flavour="llama", vocab_size=int(hf.get("vocab_size", 32000)),
                n_layer=int(hf.get("num_hidden_layers", 32)), n_head=heads, d_model=d,
                d_mlp=None if width == base.mlp_width else width,
                context_length=int(hf.get("max_position_embeddings", 2048)),
                dropout=float(hf.get("attention_dropout", 0.0) or 0.0), bias=True if attn_bias else None,
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=_llama_rope_theta(hf, where),
                init_std=float(hf.get("initializer_range", 0.02)),
            )
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: malformed field ({e})") from None
    raise CheckpointError(f"{where}: model_type {kind!r} is not supported (expected 'gpt2' or 'llama')")


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards a model.safetensors.index.json names."""
    from safetensors.torch import load_file

    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: malformed index ({e})") from None
        files = [folder / f for f in sorted(set(weight_map.values()))]
    else:
        raise CheckpointError(f"{single}: missing (only safetensors weights are read, never pickles)")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: missing weights shard")
        try:
            out.update(load_file(str(f)))
        except Exception as e:  # safetensors raises SafetensorError / OSError on a corrupt file
            raise CheckpointError(f"{f}: cannot read safetensors ({e})") from None
    return out


def _check_same_architecture(ours: ModelConfig, theirs: ModelConfig, folder: Path) -> None:
    """Fields that shapes alone don't pin down: a mismatch would load silently and compute something else."""
    fields = ["flavour", "n_head", "norm_eps"] + (["rope_theta"] if ours.flavour == "llama" else [])
    for f in fields:
        a, b = getattr(ours, f), getattr(theirs, f)
        if a != b:
            raise CheckpointError(f"{folder}: {f}={b!r} in the HF config but {a!r} in the model config")


def load_hf_weights(model: Transformer, folder: str | Path) -> None:
    """Copy an HF GPT-2 / Llama folder's weights (config.json + safetensors) into `model`, in place.

    Accepts GPT-2 names with or without the `transformer.` prefix and a missing `lm_head.weight` (tied
    checkpoints). Every parameter of the backbone must be present with our shape; a seam's own parameters (if
    any) are left untouched. Raises CheckpointError naming the file or tensor on any mismatch.
    """
    folder = Path(folder)
    cfg = model.cfg
    theirs = model_config_from_hf(folder)
    _check_same_architecture(cfg, theirs, folder)
    raw = _read_safetensors(folder)
    tensors: dict[str, torch.Tensor] = {}
    for k, t in raw.items():
        if _IGNORED_HF_KEYS.search(k):
            continue
        if cfg.flavour == "gpt2" and not k.startswith("transformer.") and k != "lm_head.weight":
            k = "transformer." + k
        tensors[k] = t

    params = dict(model.named_parameters())
    shapes = _hf_shapes(cfg)
    new: dict[str, torch.Tensor] = {}  # our name -> value in our layout

    def take(hf_name: str, required: bool = True) -> torch.Tensor | None:
        """Pop an HF tensor after checking its shape; None if absent and not required."""
        t = tensors.pop(hf_name, None)
        if t is None:
            if required:
                raise CheckpointError(f"{folder}: tensor {hf_name!r} missing from the safetensors weights")
            return None
        if tuple(t.shape) != shapes[hf_name]:
            raise CheckpointError(f"{folder}: tensor {hf_name!r} has shape {tuple(t.shape)}, the model "
                                  f"expects {shapes[hf_name]}")
        return t

    def drop_zero_bias(hf_name: str) -> None:
        """A bias our model doesn't have: accept it only when absent or all zeros (what we export)."""
        t = take(hf_name, required=False)
        if t is not None and t.count_nonzero() > 0:
            raise CheckpointError(f"{folder}: tensor {hf_name!r} is non-zero but the model has no biases "
                                  f"(set model.bias=true)")

    for hf_name, name in _name_map(cfg).items():
        if name == "lm_head.weight":
            continue
        if name not in params:
            drop_zero_bias(hf_name)
            continue
        t = take(hf_name)
        assert t is not None
        if cfg.flavour == "gpt2" and _gpt2_transposed(hf_name):
            t = t.t()  # Conv1D (in, out) -> Linear (out, in)
        new[name] = t
    if cfg.flavour == "llama":
        for i in range(cfg.n_layer):
            attn = f"model.layers.{i}.self_attn"
            qkv = [take(f"{attn}.{p}_proj.weight") for p in "qkv"]
            new[f"blocks.{i}.attn.qkv.weight"] = torch.cat(qkv, dim=0)  # 3 x (d, d) -> (3d, d), [q; k; v]
            if cfg.use_bias:
                qkv = [take(f"{attn}.{p}_proj.bias") for p in "qkv"]
                new[f"blocks.{i}.attn.qkv.bias"] = torch.cat(qkv, dim=0)  # 3 x (d,) -> (3d,)
            else:
                for p in "qkv":
                    drop_zero_bias(f"{attn}.{p}_proj.bias")
    emb_name = "transformer.wte.weight" if cfg.flavour == "gpt2" else "model.embed_tokens.weight"
    head = take("lm_head.weight", required=False)
    if cfg.tie_embeddings:
        if head is not None and not torch.equal(head, new["wte.weight"]):
            raise CheckpointError(f"{folder}: 'lm_head.weight' differs from {emb_name!r} but the model ties "
                                  f"embeddings (set model.tie_embeddings=false)")
    elif head is not None:
        new["lm_head.weight"] = head
    elif theirs.tie_embeddings:
        new["lm_head.weight"] = new["wte.weight"]
    else:
        raise CheckpointError(f"{folder}: tensor 'lm_head.weight' missing and the HF config does not tie it")
    if tensors:
        names = sorted(tensors)
        raise CheckpointError(f"{folder}: unexpected tensor(s) {names[:5]}{' ...' if len(names) > 5 else ''}")

    with torch.no_grad():
        for name, t in new.items():
            params[name].copy_(t.to(dtype=params[name].dtype))
