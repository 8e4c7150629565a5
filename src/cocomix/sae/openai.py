"""Load OpenAI `sparse_autoencoder` SAEs (the format the official CoCoMix code downloads) into a `TopKSAE`.

An `Autoencoder.state_dict()` holds the tensors

    pre_bias (d,)   encoder.weight (C, d)   latent_bias (C,)   decoder.weight (d, C)
    stats_last_nonzero, latents_activation_frequency, latents_mean_square (C,)   unused statistics

and, in the released `.pt` files, two non-tensor entries: `activation` ("TopK" for the v5 family, "ReLU" for
v1/v4) and `activation_state_dict` ({"k": 32, "postact_fn": "ReLU"}). OpenAI's `from_state_dict` sets
`normalize = (activation == "TopK")`, so every TopK SAE in this format normalises its input with `LN`. It builds
an fp32 `Autoencoder` and loads strictly: we compute in fp32 whatever the file's dtype, and refuse any other entry,
except `activation.k` / `activation.postact_fn`, the copies a recent torch writes when the upstream code saves a
model it trained (they must agree with `activation_state_dict`).

A `.pt` is read with `torch.load(weights_only=True)`, which admits tensors, numbers, strings and containers
only; a file holding any other object is refused without running it. A `.safetensors` file carries the same
tensor keys but cannot hold the non-tensor entries: it is taken as TopK with ReLU and `normalize=True`, and `k`
must be passed (the official anchor's `sae_openai.safetensors` is such a file, with k = 16).

The SAE of paper §2.1: c = TopK(E(h)), ĥ = D(c).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cocomix.errors import CheckpointError
from cocomix.sae._io import check_k, check_shape, common_dtype, get_tensor, read_safetensors, read_torch_weights
from cocomix.sae.saelens import hook_block
from cocomix.sae.topk import TopKSAE

WHAT = "an OpenAI sparse_autoencoder state dict (pre_bias, encoder.weight, latent_bias, decoder.weight)"
POSTACT_NAMES = {"relu": "relu", "identity": "identity"}
STATISTICS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")  # unused buffers
NON_TENSOR = ("activation", "activation_state_dict")
# what OpenAI's `TopK.state_dict` adds under the module prefix when an `Autoencoder` is saved with a recent torch
# (which calls each child's own `state_dict`); the released files predate that and hold neither
ACTIVATION_COPIES = {"activation.k": "k", "activation.postact_fn": "postact_fn"}


def _postact(path: Path, name: Any) -> str:
    key = str(name).lower() if isinstance(name, str) else None
    if key not in POSTACT_NAMES:
        raise CheckpointError(f"{path}: activation_state_dict.postact_fn must be 'ReLU' or 'Identity', got {name!r}")
    return POSTACT_NAMES[key]


def _from_tensors(path: Path, sd: Mapping[str, Any], k: int, normalize: bool, postact: str) -> TopKSAE:
    tensors = {
        "pre_bias": get_tensor(sd, "pre_bias", path, 1),
        "encoder.weight": get_tensor(sd, "encoder.weight", path, 2),
        "latent_bias": get_tensor(sd, "latent_bias", path, 1),
        "decoder.weight": get_tensor(sd, "decoder.weight", path, 2),
    }
    extra = sorted(set(sd) - set(tensors) - set(STATISTICS) - set(NON_TENSOR) - set(ACTIVATION_COPIES), key=str)
    if extra:  # OpenAI's from_state_dict loads strictly: a tensor it does not know is another kind of model
        raise CheckpointError(f"{path}: unexpected entries {extra} (expected {WHAT}, the statistics "
                              f"{', '.join(STATISTICS)} and {', '.join(NON_TENSOR)})")
    # from_state_dict builds an fp32 Autoencoder and copies the file into it: a half-precision file computes in fp32
    tensors = {name: t.float() for name, t in tensors.items()}
    n_latents, d_in = tensors["encoder.weight"].shape
    check_shape(path, "pre_bias", tensors["pre_bias"], (d_in,))
    check_shape(path, "latent_bias", tensors["latent_bias"], (n_latents,))
    check_shape(path, "decoder.weight", tensors["decoder.weight"], (d_in, n_latents))
    if not 1 <= k <= n_latents:
        raise CheckpointError(f"{path}: k must be in [1, {n_latents}] (the number of latents), got {k}")
    sae = TopKSAE(d_in, n_latents, k, normalize=normalize, postact=postact, dtype=common_dtype(path, tensors))
    return sae.set_weights(
        pre_bias=tensors["pre_bias"],
        W_enc=tensors["encoder.weight"],
        latent_bias=tensors["latent_bias"],
        W_dec=tensors["decoder.weight"],
    )


# OpenAI's published locations (sparse_autoencoder.paths) and the TransformerLens hooks they read
_LOCATIONS = {"resid_post_mlp": "hook_resid_post", "resid_post_attn": "hook_resid_mid",
              "resid_delta_attn": "hook_attn_out", "resid_delta_mlp": "hook_mlp_out", "mlp_post_act": "mlp.hook_post"}


def openai_hook(path: Path) -> str | None:
    """The TransformerLens hook an OpenAI SAE file was trained on when its path keeps the published layout
    (`{location}_{version}/autoencoders/{layer}.pt`, e.g. `resid_post_mlp_v5_32k/autoencoders/5.pt`: block 5's
    output), else None (nothing to check)."""
    if path.parent.name != "autoencoders" or not path.stem.isdigit():
        return None
    location = next((loc for loc in _LOCATIONS if path.parent.parent.name.startswith(loc + "_v")), None)
    return f"blocks.{int(path.stem)}.{_LOCATIONS[location]}" if location else None


def load_openai(path: str | Path, k: int | None = None) -> TopKSAE:
    """A TopK SAE from an OpenAI state dict: a `.pt` (k from the file) or a `.safetensors` (k required). A path in
    the published layout names the hook (`openai_hook`), so `load_sae(..., teacher_layer=)` can check it."""
    sae = _load_openai(Path(path), k)
    sae.hook_name = openai_hook(Path(path))
    sae.hook_block = hook_block(sae.hook_name)
    return sae


def _load_openai(path: Path, k: int | None) -> TopKSAE:
    check_k(path, k)
    if path.suffix == ".safetensors":
        tensors = read_safetensors(path, WHAT)
        if k is None:
            raise CheckpointError(f"{path}: a safetensors OpenAI SAE stores no activation, so no TopK size; give "
                                  "its k (concept.sae_k in a run config, --sae-k on extract-concepts and "
                                  "describe-concepts)")
        return _from_tensors(path, tensors, k, normalize=True, postact="relu")

    sd = read_torch_weights(path, WHAT)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected {WHAT} as a dict, got {type(sd).__name__}")
    activation = sd.get("activation")
    if activation is None:
        raise CheckpointError(f"{path}: no 'activation' entry (expected 'TopK' with activation_state_dict)")
    if activation != "TopK":
        raise CheckpointError(f"{path}: activation is {activation!r}; only TopK SAEs are supported")
    state = sd.get("activation_state_dict")
    if not isinstance(state, Mapping) or "k" not in state:
        raise CheckpointError(f"{path}: 'activation_state_dict' must be a dict with 'k', got {state!r}")
    file_k = state["k"]
    if isinstance(file_k, bool) or not isinstance(file_k, int):
        raise CheckpointError(f"{path}: activation_state_dict.k must be an integer, got {file_k!r}")
    if k is not None and k != file_k:
        raise CheckpointError(f"{path}: k={k} was given but the file's TopK has k={file_k}")
    postact = _postact(path, state.get("postact_fn", "ReLU"))
    for key, field in ACTIVATION_COPIES.items():  # a home-saved file's second copy must say the same
        copy = sd.get(key)  # (an int or a name as written; a tensor or anything else there is no copy of them)
        if key in sd and (type(copy) not in (int, str) or copy != state.get(field, "ReLU" if field == "postact_fn"
                                                                           else None)):
            raise CheckpointError(f"{path}: {key} is {sd[key]!r} but activation_state_dict.{field} is "
                                  f"{state.get(field)!r}")
    # OpenAI's from_state_dict: normalize = (activation == "TopK")
    return _from_tensors(path, sd, file_k, normalize=True, postact=postact)
