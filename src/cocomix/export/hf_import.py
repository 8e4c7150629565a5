"""Reading Hugging Face GPT-2 / Llama folders into our `Transformer` (safetensors only, never pickles).

`model_config_from_hf` maps a `config.json` to a `ModelConfig` (refusing what our model cannot represent:
grouped-query attention, scaled RoPE, other activations); `load_hf_weights` loads the tensors, checking names
and shapes, for exported or compatible folders.

No paper equation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cocomix import json_text
from cocomix.config import ModelConfig
from cocomix.errors import CheckpointError, ConfigError
from cocomix.export.hf_names import (
    CONFIG_NAME,
    GPT2_ACTIVATIONS,
    IGNORED_HF_KEYS,
    INDEX_NAME,
    WEIGHTS_NAME,
    gpt2_transposed,
    hf_shapes,
    name_map,
)
from cocomix.model.transformer import Transformer


def _read_hf_config(folder: Path) -> dict[str, Any]:
    p = folder / CONFIG_NAME
    if not p.is_file():
        raise CheckpointError(f"{p}: missing (not a Hugging Face model folder)")
    try:
        data = json_text.loads(p.read_text())
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
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: rope_scaling: expected a JSON object or null, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"{where}: RoPE type {rope_type!r} is not supported (only 'default')")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial rotary embeddings are not supported")
    if "rope_theta" in params:
        return _field(params, "rope_theta", None, float, where)
    return _field(hf, "rope_theta", 10000.0, float, where)


_KINDS = {bool: "true or false", int: "an integer", float: "a number"}


def _field(hf: dict[str, Any], key: str, default: Any, kind: type, where: Path, null_default: bool = False) -> Any:
    """`hf[key]` (`default` when absent, or null with `null_default`) checked to be of `kind` (bool, int or
    float: an integer is a float, a bool is neither); CheckpointError naming the field otherwise (a "false"
    string is no false, 32.9 no width: converting them would build another model than the file's)."""
    value = hf.get(key, default)
    if value is None and null_default:
        value = default
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool))
    if not ok:
        raise CheckpointError(f"{where}: {key}: expected {_KINDS[kind]}, got {value!r}")
    return kind(value)


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

    def get(key: str, default: Any, kind: type, null_default: bool = False) -> Any:
        return _field(hf, key, default, kind, where, null_default)

    try:
        if kind == "gpt2":
            d = get("n_embd", 768, int)
            need(hf.get("activation_function", "gelu_new") in GPT2_ACTIVATIONS,
                 f"activation_function={hf.get('activation_function')!r}")
            need(hf.get("scale_attn_weights", True), "scale_attn_weights=false")
            need(not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true")
            need(not hf.get("add_cross_attention", False), "add_cross_attention=true")
            n_inner = get("n_inner", None, int) if hf.get("n_inner") is not None else None
            return ModelConfig(
                flavour="gpt2", vocab_size=get("vocab_size", 50257, int),
                n_layer=get("n_layer", 12, int), n_head=get("n_head", 12, int), d_model=d,
                d_mlp=None if n_inner is None or n_inner == 4 * d else n_inner,
                context_length=get("n_positions", 1024, int), dropout=get("resid_pdrop", 0.1, float),
                bias=None, tie_embeddings=get("tie_word_embeddings", True, bool),
                norm_eps=get("layer_norm_epsilon", 1e-5, float),
                init_std=get("initializer_range", 0.02, float),
            )
        if kind == "llama":
            d, heads = get("hidden_size", 4096, int), get("num_attention_heads", 32, int)
            if heads < 1:
                raise CheckpointError(f"{where}: num_attention_heads: expected an integer >= 1, got {heads}")
            need(hf.get("hidden_act", "silu") == "silu", f"hidden_act={hf.get('hidden_act')!r}")
            kv = get("num_key_value_heads", heads, int, null_default=True)
            need(kv == heads, f"grouped-query attention (num_key_value_heads={kv} with {heads} heads)")
            head_dim = get("head_dim", d // heads, int, null_default=True)
            need(head_dim * heads == d, f"head_dim={head_dim} with hidden_size={d}, heads={heads}")
            need(get("pretraining_tp", 1, int, null_default=True) == 1, "pretraining_tp > 1")
            attn_bias, mlp_bias = get("attention_bias", False, bool), get("mlp_bias", False, bool)
            need(attn_bias == mlp_bias, f"attention_bias={attn_bias} with mlp_bias={mlp_bias}")
            width = get("intermediate_size", 11008, int)
            base = ModelConfig(flavour="llama", d_model=d, n_head=heads)
            return ModelConfig(
                flavour="llama", vocab_size=get("vocab_size", 32000, int),
                n_layer=get("num_hidden_layers", 32, int), n_head=heads, d_model=d,
                d_mlp=None if width == base.mlp_width else width,
                context_length=get("max_position_embeddings", 2048, int),
                dropout=get("attention_dropout", 0.0, float, null_default=True), bias=True if attn_bias else None,
                tie_embeddings=get("tie_word_embeddings", False, bool),
                norm_eps=get("rms_norm_eps", 1e-6, float), rope_theta=_llama_rope_theta(hf, where),
                init_std=get("initializer_range", 0.02, float),
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
            weight_map = json_text.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: malformed index ({e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map: expected an object of tensor name -> file name")
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
        if IGNORED_HF_KEYS.search(k):
            continue
        if cfg.flavour == "gpt2" and not k.startswith("transformer.") and k != "lm_head.weight":
            k = "transformer." + k
        tensors[k] = t

    params = dict(model.named_parameters())
    shapes = hf_shapes(cfg)
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

    for hf_name, name in name_map(cfg).items():
        if name == "lm_head.weight":
            continue
        if name not in params:
            drop_zero_bias(hf_name)
            continue
        t = take(hf_name)
        assert t is not None
        if cfg.flavour == "gpt2" and gpt2_transposed(hf_name):
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

