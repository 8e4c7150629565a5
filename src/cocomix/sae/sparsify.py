"""Load EleutherAI `sparsify` SAE folders (`cfg.json` + `sae.safetensors`) as a `TopKSAE`.

What sparsify does (`sparsify/sparse_coder.py`, `fused_encoder.py`, `config.py`; older `sae/sae.py` the same):

* Tensors (`SparseCoder.state_dict()`): `encoder.weight` (C, d), `encoder.bias` (C,), `W_dec` (C, d),
  `b_dec` (d,); `W_skip` (d, d) only with `skip_connection`.
* Config (`SparseCoderConfig` plus `d_in`): `k`, `num_latents` (0 means `expansion_factor · d_in`),
  `expansion_factor`, `activation` ("topk" or "groupmax"), `transcode`, `skip_connection`, `normalize_decoder`,
  `multi_topk` (training only).
* Encode: `relu(F.linear(x − b_dec, encoder.weight, encoder.bias))`, then `topk(k, sorted=False)`: ReLU
  *before* TopK, the reverse of OpenAI's order (`TopKSAE(relu_before_topk=True)`). The dense codes agree; only
  which zero-valued latents fill the k slots can differ. Decode: `Σ acts · W_dec[idx] + b_dec`. There is no
  input normalisation, so `normalize=False`, and b_dec plays OpenAI's pre_bias role exactly.
* Refused: `activation="groupmax"`, transcoders (`transcode`, which predict another activation and do not
  subtract b_dec), and `skip_connection` (the `W_skip` term is not a TopK SAE).
"""

from __future__ import annotations

from pathlib import Path

from cocomix.errors import CheckpointError
from cocomix.sae._io import check_shape, common_dtype, get_int, get_tensor, read_json, read_safetensors
from cocomix.sae.topk import TopKSAE

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"
WHAT = "sparsify weights encoder.weight (C, d), encoder.bias (C,), W_dec (C, d), b_dec (d,)"


def load_sparsify(folder: str | Path) -> TopKSAE:
    """A TopK SAE from a sparsify folder; `d_in` and the latent count fall back to the tensor shapes."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    cfg = read_json(cfg_path, "a sparsify SparseCoderConfig with k")
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise CheckpointError(f"{cfg_path}: activation {activation!r}; only TopK SAEs are supported")
    for flag in ("transcode", "skip_connection"):
        if cfg.get(flag, False):
            raise CheckpointError(f"{cfg_path}: {flag}=true is not supported (expected a plain TopK autoencoder)")
    k = get_int(cfg, "k", cfg_path)

    sd = read_safetensors(weights_path, WHAT)
    if "W_skip" in sd:
        raise CheckpointError(f"{weights_path}: has W_skip (a skip connection), which is not supported")
    tensors = {
        "encoder.weight": get_tensor(sd, "encoder.weight", weights_path, 2),
        "encoder.bias": get_tensor(sd, "encoder.bias", weights_path, 1),
        "W_dec": get_tensor(sd, "W_dec", weights_path, 2),
        "b_dec": get_tensor(sd, "b_dec", weights_path, 1),
    }
    n_latents, d_in = tensors["encoder.weight"].shape
    if "d_in" in cfg and cfg["d_in"] != d_in:
        raise CheckpointError(f"{cfg_path}: d_in={cfg['d_in']!r} but encoder.weight gives {d_in}")
    expected_latents = cfg.get("num_latents") or 0
    if not expected_latents and cfg.get("expansion_factor"):
        expected_latents = cfg["expansion_factor"] * d_in
    if expected_latents and expected_latents != n_latents:
        raise CheckpointError(f"{cfg_path}: the config gives {expected_latents} latents, encoder.weight {n_latents}")
    check_shape(weights_path, "encoder.bias", tensors["encoder.bias"], (n_latents,))
    check_shape(weights_path, "W_dec", tensors["W_dec"], (n_latents, d_in))
    check_shape(weights_path, "b_dec", tensors["b_dec"], (d_in,))
    if k > n_latents:
        raise CheckpointError(f"{cfg_path}: k={k} exceeds the {n_latents} latents")

    sae = TopKSAE(d_in, n_latents, k, normalize=False, relu_before_topk=True, dtype=common_dtype(weights_path, tensors))
    return sae.set_weights(
        pre_bias=tensors["b_dec"],
        W_enc=tensors["encoder.weight"],
        latent_bias=tensors["encoder.bias"],
        W_dec=tensors["W_dec"].T,
    )
