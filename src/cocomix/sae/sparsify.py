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
* Hookpoints: sparsify's trainer saves one folder per hookpoint under a run folder whose `config.json` (its
  TrainConfig) lists them in `hookpoints`; each is the name of the module hooked, whose *output* was encoded:
  `layers.N` (Llama, Pythia, ...) or `h.N` (GPT-2) is the output of block N, our teacher_layer N. Only folders
  so listed are read that way (kept as `hook_name` / `hook_block`, so `load_sae(..., teacher_layer=)` refuses
  another layer): SAEs from before module hookpoints (the first `EleutherAI/sae-llama-3-8b-32x`, trained on
  `output_hidden_states`) name `hidden_states[N]`, the *input* of block N, `layers.N` too, and a folder without
  its run's config cannot tell the two apart, so it is not checked. A run folder (`Sae.load_many`'s layout)
  resolves to the hookpoint of the requested teacher_layer (`hookpoint_folder`); without the run's `config.json`
  listing hookpoints it is refused rather than guessed. A run trained with several `init_seeds` saves
  `HOOKPOINT/seedN/` per seed: such a folder is read as its hookpoint's, and a run folder resolves to the seed
  folder when there is one, and asks which when there are several.

The SAE of paper §2.1: c = TopK(E(h)), ĥ = D(c).
"""

from __future__ import annotations

import re
from pathlib import Path

from cocomix.errors import CheckpointError
from cocomix.sae._io import check_shape, common_dtype, get_int, get_tensor, read_json, read_safetensors
from cocomix.sae.topk import TopKSAE

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"
RUN_CFG_NAME = "config.json"  # the run folder's TrainConfig, beside the hookpoint folders
WHAT = "sparsify weights encoder.weight (C, d), encoder.bias (C,), W_dec (C, d), b_dec (d,)"
_HARMLESS_FLAGS = ("normalize_decoder", "multi_topk")  # true flags that only shape training, not the forward
_BLOCK_OUTPUT = re.compile(r"(?:.*\.)?(?:layers|h)\.(\d+)")  # a hookpoint that is a whole block's output
_SEED = re.compile(r"seed\d+")  # with several init_seeds, the trainer saves HOOKPOINT/seedN/ per seed


def hookpoint_block(name: str) -> int | None:
    """The block whose output a sparsify module hookpoint reads ("layers.5", "h.5" -> 5), else None."""
    m = _BLOCK_OUTPUT.fullmatch(name)
    return int(m.group(1)) if m else None


def _run_hookpoints(run: Path) -> list[str] | None:
    """The `hookpoints` a sparsify run folder's `config.json` lists, or None (no such config)."""
    try:
        cfg = read_json(run / RUN_CFG_NAME, "a sparsify TrainConfig")
    except CheckpointError:
        return None
    hooks = cfg.get("hookpoints")
    return [h for h in hooks if isinstance(h, str)] if isinstance(hooks, list) else None


def _is_sae(folder: Path) -> bool:
    try:  # (a folder this user may not read, beside the SAEs: not one of them)
        return (folder / WEIGHTS_NAME).is_file() and (folder / CFG_NAME).is_file()
    except OSError:
        return False


def _seeds(hook: Path) -> list[Path]:
    """The `seedN` SAE folders under a hookpoint folder of a run trained with several `init_seeds`."""
    try:
        return sorted(p for p in hook.iterdir() if _SEED.fullmatch(p.name) and _is_sae(p)) if hook.is_dir() else []
    except OSError:
        return []


def _one_seed(hook: Path) -> Path:
    """A hookpoint folder itself, or its only `seedN` folder; CheckpointError when it holds several."""
    seeds = _seeds(hook)
    if len(seeds) > 1 and not _is_sae(hook):
        raise CheckpointError(f"{hook}: SAEs of several seeds ({', '.join(p.name for p in seeds)}); give the folder "
                              "of the one you mean")
    return hook if _is_sae(hook) or not seeds else seeds[0]


def hookpoint_folder(root: Path, teacher_layer: int | None) -> Path | None:
    """In a sparsify run folder, the hookpoint folder of `teacher_layer` (its `seedN` folder when the run trained
    one seed per hookpoint); None when `root` holds no hookpoint folders. Raises when it does but none is that
    block's output, the run's config does not say what they are, or that hookpoint has several seeds."""
    if _seeds(root):  # a hookpoint folder of a several-seed run
        return _one_seed(root)
    hooks = sorted(p for p in root.iterdir() if _is_sae(p) or _seeds(p))
    if not hooks:
        return None
    names = ", ".join(p.name for p in hooks[:8]) + (", ..." if len(hooks) > 8 else "")
    listed = _run_hookpoints(root)
    if listed is None:
        raise CheckpointError(f"{root}: holds sparsify SAE folders ({names}) but no {RUN_CFG_NAME} listing them as "
                              "module hookpoints (older SAEs name hidden_states[N], the input of block N, layers.N); "
                              "give the folder of the SAE you mean")
    blocks: dict[int, Path] = {}
    for p in hooks:
        block = hookpoint_block(p.name) if p.name in listed else None
        if block is not None and block in blocks:
            raise CheckpointError(f"{root}: {blocks[block].name} and {p.name} both read block {block}; give the "
                                  "folder of the SAE you mean")
        if block is not None:
            blocks[block] = p
    if teacher_layer is not None and teacher_layer in blocks:
        return _one_seed(blocks[teacher_layer])
    want = f"one for teacher_layer {teacher_layer}" if teacher_layer is not None else "a teacher_layer to pick one"
    raise CheckpointError(f"{root}: a sparsify run with SAE folders {names}; expected {want}, or give the "
                          "hookpoint's folder itself")


def load_sparsify(folder: str | Path) -> TopKSAE:
    """A TopK SAE from a sparsify folder; `d_in` and the latent count fall back to the tensor shapes."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    cfg = read_json(cfg_path, "a sparsify SparseCoderConfig with k")
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise CheckpointError(f"{cfg_path}: activation {activation!r}; only TopK SAEs are supported")
    for flag, value in cfg.items():  # transcode, skip_connection, embed_skip, ... all change the forward pass
        if value is True and flag not in _HARMLESS_FLAGS:
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
    extra = sorted(set(sd) - set(tensors))
    if extra:
        raise CheckpointError(f"{weights_path}: unexpected tensors {extra} for a TopK SAE (expected {WHAT})")
    n_latents, d_in = tensors["encoder.weight"].shape
    if "d_in" in cfg and cfg["d_in"] != d_in:
        raise CheckpointError(f"{cfg_path}: d_in={cfg['d_in']!r} but encoder.weight gives {d_in}")
    expected_latents = get_int(cfg, "num_latents", cfg_path, minimum=0) if cfg.get("num_latents") is not None else 0
    if not expected_latents and cfg.get("expansion_factor"):  # (0 or absent: the width the weights have)
        expected_latents = get_int(cfg, "expansion_factor", cfg_path) * d_in
    if expected_latents and expected_latents != n_latents:
        raise CheckpointError(f"{cfg_path}: the config gives {expected_latents} latents, encoder.weight {n_latents}")
    check_shape(weights_path, "encoder.bias", tensors["encoder.bias"], (n_latents,))
    check_shape(weights_path, "W_dec", tensors["W_dec"], (n_latents, d_in))
    check_shape(weights_path, "b_dec", tensors["b_dec"], (d_in,))
    if k > n_latents:
        raise CheckpointError(f"{cfg_path}: k={k} exceeds the {n_latents} latents")

    sae = TopKSAE(d_in, n_latents, k, normalize=False, relu_before_topk=True, dtype=common_dtype(weights_path, tensors))
    hook = folder.resolve()
    hook = hook.parent if _SEED.fullmatch(hook.name) and not _run_hookpoints(hook.parent) else hook  # HOOK/seedN
    if hook.name in (_run_hookpoints(hook.parent) or []):  # a module hookpoint of a sparsify run
        sae.hook_name, sae.hook_block = hook.name, hookpoint_block(hook.name)
    return sae.set_weights(
        pre_bias=tensors["b_dec"],
        W_enc=tensors["encoder.weight"],
        latent_bias=tensors["encoder.bias"],
        W_dec=tensors["W_dec"].T,
    )
