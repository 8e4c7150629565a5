"""Read and write SAELens SAE folders (`cfg.json` + `sae_weights.safetensors`) as a `TopKSAE`.

What SAELens does (sae_lens 6.x `saes/sae.py`, `saes/topk_sae.py`, `loading/pretrained_sae_loaders.py`):

* Tensors: `W_enc` (d_in, d_sae), `b_enc` (d_sae,), `W_dec` (d_sae, d_in), `b_dec` (d_in,). Our W_enc = W_enc.T,
  W_dec = W_dec.T, latent_bias = b_enc, pre_bias = b_dec.
* Encode: `sae_in = norm_in(x) − b_dec · apply_b_dec_to_input`, `pre = sae_in @ W_enc + b_enc`, then `TopK`:
  `torch.topk(pre, k)` and ReLU on the k values, scattered into zeros: OpenAI's order. Decode:
  `norm_out(acts @ W_dec + b_dec)`. With `apply_b_dec_to_input` true (the default) this is exactly OpenAI's
  pre_bias; when false, b_dec is only added on decode (`TopKSAE(encode_pre_bias=False)`).
* `normalize_activations`: "none" is the identity; "layer_norm" is mu = mean, x −= mu, std = x.std() (unbiased),
  x / (std + 1e-5), undone as x · std + mu: identical to OpenAI's `LN`, so it maps to `normalize=True` (and
  `save_saelens` writes normalize=True that way, with no caveat). "expected_average_only_in" needs a scaling
  factor kept outside the folder and "constant_norm_rescale" is another function: both are refused.
* Config: 6.x writes `architecture: "topk"` and `k` (plus `metadata.sae_lens_version`); before 6.0 a TopK SAE
  was `activation_fn_str: "topk"` (renamed `activation_fn` later) with `activation_fn_kwargs: {"k": ...}`.
* `rescale_acts_by_decoder_norm` (6.x): pre is multiplied by ‖W_dec row‖ and acts divided by it before
  decoding; this is folded into the weights on load (W_enc·n, b_enc·n, W_dec/n), the same function.
* A non-unit `scaling_factor` / `finetuning_scaling_factor` tensor (old fine-tuning rescale) is refused.
* `hook_name` (top level before 6.0, in `metadata` since): a residual hook `blocks.L.hook_resid_post` is the
  output of block L (our teacher_layer L), `blocks.L.hook_resid_pre` that of block L − 1; kept on the SAE
  (`hook_name`, `hook_block`) so that `load_sae(..., teacher_layer=)` refuses a mismatched layer. A Hugging Face
  module name (`transformer.h.L`, `model.layers.L`) is block L's output; any other named hook (an MLP or
  attention output, `hook_resid_mid`) is refused for a teacher_layer, as are `reshape_activations` (`hook_z`)
  and `hook_head_index` SAEs. Older configs name the hook `hook_point`.
* TransformerLens centring: `model_from_pretrained_kwargs.center_writing_weights: true` (TransformerLens's own
  default; SAELens has written `false` by default in recent versions) means the SAE saw the residual stream minus
  each position's mean over d. Without `layer_norm` such an SAE centres its input (`TopKSAE.center_input`),
  which is exact for LayerNorm models (every write to the stream centred). When the key is absent, nothing is
  assumed (older SAEs trained with TransformerLens's defaults are centred and say so nowhere). `save_saelens`
  always writes the key: true for an SAE that centres its input, else what the caller's metadata says, by
  default false (the raw stream every `train-sae` SAE saw).

The SAE of paper §2.1: c = TopK(E(h)), ĥ = D(c).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

from cocomix.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, ordinary_mode
from cocomix.errors import CheckpointError
from cocomix.sae._io import (
    SAE_DTYPES,
    check_shape,
    common_dtype,
    get_int,
    get_tensor,
    read_json,
    read_safetensors,
)
from cocomix.sae.sparsify import hookpoint_block
from cocomix.sae.topk import TopKSAE

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
SAELENS_VERSION = "6.0.0"  # the config layout written by save_saelens (>= 6.0 skips SAELens's pre-6 conversion)
WHAT = "SAELens weights W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,)"
SCALING_KEYS = ("scaling_factor", "finetuning_scaling_factor")


def _topk_k(cfg_path: Path, cfg: dict[str, Any]) -> int:
    """k of a TopK SAELens config; CheckpointError for any other architecture."""
    architecture = cfg.get("architecture") or "standard"
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{cfg_path}: 'activation_fn_kwargs' must be an object, got {kwargs!r}")
    if architecture == "topk" or (architecture == "standard" and activation == "topk"):
        if "k" in cfg and "k" in kwargs and cfg["k"] != kwargs["k"]:  # SAELens's pre-6 conversion takes kwargs'
            raise CheckpointError(f"{cfg_path}: k={cfg['k']!r} and activation_fn_kwargs.k={kwargs['k']!r} "
                                  "disagree; expected one k")
        if "k" in cfg:
            return get_int(cfg, "k", cfg_path)
        if "k" in kwargs:
            return get_int(kwargs, "k", cfg_path)
        raise CheckpointError(f"{cfg_path}: TopK SAE without 'k' (expected 'k' or activation_fn_kwargs.k)")
    raise CheckpointError(
        f"{cfg_path}: architecture {architecture!r} with activation {activation!r}; only TopK SAEs are supported"
    )


def _normalize(cfg_path: Path, cfg: dict[str, Any]) -> bool:
    value = cfg.get("normalize_activations", "none")
    if value in (None, False, "none"):
        return False
    if value == "layer_norm":
        return True
    raise CheckpointError(
        f"{cfg_path}: normalize_activations={value!r} is not supported (expected 'none' or 'layer_norm')"
    )


def hook_block(name: str | None) -> int | None:
    """The block whose output a residual hook reads: TransformerLens `blocks.L.hook_resid_post` is block L's output
    (teacher_layer L), `blocks.L.hook_resid_pre` block L−1's (−1: the embeddings); a Hugging Face module name
    (`transformer.h.L`, `model.layers.L`, as SAELens names hooks of HF models) is block L's output; None for
    any other hook (an MLP or attention output, `hook_resid_mid`, `hook_z`: not the residual stream between
    blocks)."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", name or "")
    if m is not None:
        return int(m.group(1)) - (m.group(2) == "pre")
    return hookpoint_block(name or "")  # an HF module name, as sparsify names its hookpoints


def load_saelens(folder: str | Path) -> TopKSAE:
    """A TopK SAE from a SAELens folder (cfg.json + sae_weights.safetensors), 6.x or pre-6 config layout."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    cfg = read_json(cfg_path, "a SAELens SAE config")
    k = _topk_k(cfg_path, cfg)
    normalize = _normalize(cfg_path, cfg)
    if (cfg.get("activation_fn_kwargs") or {}).get("postact_fn", "ReLU") not in ("ReLU", "relu"):
        raise CheckpointError(f"{cfg_path}: only a ReLU post-activation after the TopK is supported")
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path}: 'metadata' must be an object, got {type(meta).__name__}")
    # 6.x keeps hook_name and hook_head_index in metadata, pre-6 at the top level, older configs say hook_point
    hook = cfg.get("hook_name") or meta.get("hook_name") or cfg.get("hook_point")
    hook = hook if isinstance(hook, str) else None
    head = cfg.get("hook_head_index", meta.get("hook_head_index"))
    # without the key, SAELens's pre-6 conversion reshapes a hook_z SAE's (B, T, heads, d_head) input
    reshape = cfg.get("reshape_activations", "hook_z" if hook and "hook_z" in hook else "none")
    if reshape not in (None, "none") or head is not None:
        raise CheckpointError(f"{cfg_path}: an SAE on reshaped activations (reshape_activations={reshape!r}, "
                              f"hook_head_index={head!r}, hook {hook!r}) is not supported; cocomix encodes "
                              "the residual stream")
    apply_b_dec = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise CheckpointError(f"{cfg_path}: 'apply_b_dec_to_input' must be true or false, got {apply_b_dec!r}")

    sd = read_safetensors(weights_path, WHAT)
    for key in SCALING_KEYS:
        if key in sd and not torch.all(sd[key] == 1):
            raise CheckpointError(f"{weights_path}: a non-unit {key!r} (fine-tuning rescale) is not supported")
    tensors = {
        "W_enc": get_tensor(sd, "W_enc", weights_path, 2),
        "b_enc": get_tensor(sd, "b_enc", weights_path, 1),
        "W_dec": get_tensor(sd, "W_dec", weights_path, 2),
        "b_dec": get_tensor(sd, "b_dec", weights_path, 1),
    }
    extra = sorted(set(sd) - set(tensors) - set(SCALING_KEYS))
    if extra:
        raise CheckpointError(f"{weights_path}: unexpected tensors {extra} for a TopK SAE (expected {WHAT})")
    name = cfg["dtype"].removeprefix("torch.") if isinstance(cfg.get("dtype"), str) else ""
    dtype = getattr(torch, name, None) if name else None  # "float32" or, from older writers, "torch.float32"
    if name and dtype not in SAE_DTYPES:  # (as SAELens's str_to_dtype: float8 has no matmul, no isfinite)
        raise CheckpointError(f"{cfg_path}: 'dtype' {cfg['dtype']!r} is not one of float32, float64, float16, "
                              "bfloat16")
    if dtype is not None:  # SAELens computes in its config's dtype
        tensors = {name: t.to(dtype) for name, t in tensors.items()}
    d_in, d_sae = tensors["W_enc"].shape
    for key in SCALING_KEYS:  # (all ones, checked above: one per latent)
        if key in sd:
            check_shape(weights_path, key, sd[key], (d_sae,))
    for key, expected in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg and cfg[key] != expected:
            raise CheckpointError(f"{cfg_path}: {key}={cfg[key]!r} but W_enc in {weights_path.name} gives {expected}")
    check_shape(weights_path, "b_enc", tensors["b_enc"], (d_sae,))
    check_shape(weights_path, "W_dec", tensors["W_dec"], (d_sae, d_in))
    check_shape(weights_path, "b_dec", tensors["b_dec"], (d_in,))
    if not 1 <= k <= d_sae:
        raise CheckpointError(f"{cfg_path}: k must be in [1, d_sae={d_sae}], got {k}")

    W_enc, b_enc, W_dec = tensors["W_enc"], tensors["b_enc"], tensors["W_dec"]
    if cfg.get("rescale_acts_by_decoder_norm", False):
        norms = W_dec.norm(dim=-1)  # (d_sae,)
        if not torch.all(norms > 0):
            raise CheckpointError(f"{weights_path}: rescale_acts_by_decoder_norm with a zero W_dec row")
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]

    sae = TopKSAE(
        d_in, d_sae, k, normalize=normalize, encode_pre_bias=apply_b_dec, dtype=common_dtype(weights_path, tensors)
    )
    sae = sae.set_weights(pre_bias=tensors["b_dec"], W_enc=W_enc.T, latent_bias=b_enc, W_dec=W_dec.T)
    sae.hook_name = hook
    sae.hook_block = hook_block(sae.hook_name)
    model_name = cfg.get("model_name") or meta.get("model_name")
    sae.model_name = model_name if isinstance(model_name, str) else None
    kwargs = meta.get("model_from_pretrained_kwargs", cfg.get("model_from_pretrained_kwargs")) or {}
    sae.center_input = isinstance(kwargs, dict) and kwargs.get("center_writing_weights") is True and not normalize
    return sae


def saelens_config(sae: TopKSAE, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SAELens 6.x cfg.json content for `sae` (architecture "topk")."""
    if sae.postact != "relu":
        raise CheckpointError(f"cannot write a SAELens SAE: SAELens's TopK applies ReLU, this SAE uses {sae.postact!r}")
    meta = dict(metadata or {})
    meta.update({"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION})
    # how the activations were read, for SAELens users who load the model with TransformerLens (whose own default
    # centres the residual stream): centred if this SAE centres its input; else as the caller's metadata says, and
    # by default the raw stream (what every SAE train-sae writes saw)
    kwargs = dict(meta.get("model_from_pretrained_kwargs") or {})
    if sae.center_input:
        kwargs["center_writing_weights"] = True
    kwargs.setdefault("center_writing_weights", False)
    meta["model_from_pretrained_kwargs"] = kwargs
    meta.setdefault("written_by", "cocomix.sae.save_saelens")
    return {
        "architecture": "topk",
        "d_in": sae.d_in,
        "d_sae": sae.n_latents,
        "k": sae.k,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.encode_pre_bias,
        "normalize_activations": "layer_norm" if sae.normalize else "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "sae_lens_version": SAELENS_VERSION,  # read by SAELens versions that look for it at the top level
        "metadata": meta,
    }


def save_saelens(sae: TopKSAE, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `sae` as a SAELens folder that `SAE.load_from_disk` and `load_saelens` read back; returns the folder.

    The folder is built under a temporary name next to it and renamed into place. An existing folder is
    replaced only if it is empty or already holds `sae_weights.safetensors`. `metadata` (JSON-serialisable)
    goes into cfg.json's `metadata`.
    """
    folder = Path(folder)
    cfg_text = json.dumps(saelens_config(sae, metadata), indent=2, sort_keys=True) + "\n"
    tensors = {
        "W_enc": sae.W_enc.detach().T,
        "b_enc": sae.latent_bias.detach(),
        "W_dec": sae.W_dec.detach().T,
        "b_dec": sae.pre_bias.detach(),
    }
    blob = safetensors_save({k: v.cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder (expected a SAELens SAE folder)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder}: not empty and not a SAELens SAE folder; refusing to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old: Path | None = None
    try:
        os.chmod(tmp, ordinary_mode(folder=True))  # (mkdtemp makes it 0700)
        atomic_write_bytes(tmp / WEIGHTS_NAME, blob)
        atomic_write_text(tmp / CFG_NAME, cfg_text)
        fsync_dir(tmp)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / "sae")
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and (old / "sae").exists() and not folder.exists():
            os.replace(old / "sae", folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    fsync_dir(folder.parent)
    return folder
