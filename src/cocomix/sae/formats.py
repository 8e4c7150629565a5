"""`load_sae`: open an SAE from whatever a path holds, and re-export the per-format loaders and writer.

Dispatch: a `.pt` or `.safetensors` file is an OpenAI `sparse_autoencoder` state dict (`openai.py`); a folder
with `sae_weights.safetensors` is a SAELens SAE (`saelens.py`); a folder with `sae.safetensors` is a sparsify
SAE (`sparsify.py`). Every loader returns a `TopKSAE` (the paper's §2.1 concept extractor, c = TopK(E(h)),
ĥ = D(c)) and refuses anything but plain tensors.
"""

from __future__ import annotations

from pathlib import Path

from cocomix.errors import CheckpointError, ConfigError
from cocomix.sae import saelens, sparsify
from cocomix.sae._io import check_k
from cocomix.sae.openai import load_openai
from cocomix.sae.saelens import load_saelens, save_saelens
from cocomix.sae.sparsify import hookpoint_folder, load_sparsify
from cocomix.sae.topk import TopKSAE

__all__ = ["load_openai", "load_sae", "load_saelens", "load_sparsify", "save_saelens"]

OPENAI_SUFFIXES = (".pt", ".pth", ".safetensors")


def load_sae(spec: str | Path, k: int | None = None, teacher_layer: int | None = None,
             layer_field: str = "teacher_layer") -> TopKSAE:
    """The SAE at `spec`, format chosen by what the path is. `k` is needed for an OpenAI `.safetensors` file
    only; for the other formats it must be None or equal the stored k. With `teacher_layer`, an SAE whose file
    names the hook it was trained on (SAELens `hook_name`, a sparsify hookpoint folder, an OpenAI file kept in the
    published `{location}_v5_32k/autoencoders/{layer}.pt` layout) must read that block's
    output (a named hook that is no block's residual output, e.g. an MLP output, is refused), and a folder of
    sparsify hookpoints resolves to the one for that layer. `layer_field` names the setting that gave
    `teacher_layer`, for the error (`train`: concept.teacher_layer)."""
    check_k(spec, k)
    sae = _load(sae_path(spec, teacher_layer), k)
    for name, tensor in [*sae.named_parameters(), *sae.named_buffers()]:
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):  # NaN concepts, "fvu": NaN in JSON
            raise CheckpointError(f"{spec}: the SAE's {name} holds NaN or infinite values; a damaged or diverged "
                                  "SAE file")
    if teacher_layer is not None and sae.hook_name is not None and sae.hook_block is None:
        raise ConfigError(f"{spec}: trained on {sae.hook_name}, which is not the residual stream at a block's "
                          "output; cocomix encodes the output of block teacher_layer with it (use an SAE of "
                          "blocks.L.hook_resid_post / resid_pre, or a sparsify layers.L hookpoint)")
    if teacher_layer is not None and sae.hook_block is not None and sae.hook_block != teacher_layer:
        where = "the token embeddings" if sae.hook_block < 0 else f"the output of block {sae.hook_block}"
        raise ConfigError(f"{layer_field}: {spec} was trained on {sae.hook_name} ({where}), but {layer_field} is "
                          f"{teacher_layer}" + (f"; set {layer_field}={sae.hook_block}" if sae.hook_block >= 0
                                                else ""))
    return sae


def sae_path(spec: str | Path, teacher_layer: int | None = None) -> Path:
    """The file or folder that holds the SAE `spec` names: `spec` itself, or in a folder of sparsify hookpoints the
    one for `teacher_layer` (what `load_sae` reads, and what target caches hash)."""
    path = Path(spec).expanduser()  # (`~/saes/l5.pt` in a config file, as concept.teacher takes it)
    try:
        if path.is_dir() and _folder_format(path) is None:
            return hookpoint_folder(path, teacher_layer) or path
    except OSError as e:  # a folder this user may not read
        raise CheckpointError(f"{e.filename or path}: cannot read ({e.strerror})") from None
    return path


def sae_files(spec: str | Path, teacher_layer: int | None = None) -> list[Path]:
    """The files `load_sae` takes `spec`'s weights and settings from, in sorted order (a sparsify run's
    config.json, read only to name its hookpoints, is not among them): an OpenAI file itself; a SAELens or sparsify
    folder's cfg.json and weights (not a README, nor the `.cache/` a hub download leaves, which change on every
    download); any other folder's files (which `load_sae` refuses)."""
    path = sae_path(spec, teacher_layer)
    if not path.is_dir():
        return [path]
    kind = _folder_format(path)
    if kind is not None:
        fmt = saelens if kind == "saelens" else sparsify
        return sorted(f for f in (path / fmt.CFG_NAME, path / fmt.WEIGHTS_NAME) if f.is_file())
    return sorted(f for f in path.rglob("*") if f.is_file())


def _folder_format(path: Path) -> str | None:
    """"saelens" or "sparsify" by the weights file a folder holds, else None."""
    if (path / saelens.WEIGHTS_NAME).is_file():
        return "saelens"
    return "sparsify" if (path / sparsify.WEIGHTS_NAME).is_file() else None


def _load(path: Path, k: int | None) -> TopKSAE:
    if path.is_file():
        if path.name in (saelens.WEIGHTS_NAME, sparsify.WEIGHTS_NAME) and (path.parent / "cfg.json").is_file():
            kind = "SAELens" if path.name == saelens.WEIGHTS_NAME else "sparsify"
            raise CheckpointError(f"{path}: the weights of a {kind} SAE; give its folder ({path.parent}), which "
                                  "holds its config too")
        if path.suffix not in OPENAI_SUFFIXES:
            raise CheckpointError(
                f"{path}: unknown SAE file type (expected an OpenAI state dict as .pt or .safetensors)"
            )
        return load_openai(path, k=k)
    if path.is_dir():
        kind = _folder_format(path)
        if kind == "saelens":
            sae = load_saelens(path)
        elif kind == "sparsify":
            sae = load_sparsify(path)
        elif (path / "sae").is_dir() and (path / "summary.json").is_file():
            raise CheckpointError(f"{path}: a train-sae output; give its SAE folder, {path / 'sae'}")
        else:
            raise CheckpointError(
                f"{path}: not an SAE folder (expected sae_weights.safetensors (SAELens) or sae.safetensors (sparsify))"
            )
        if k is not None and k != sae.k:
            raise CheckpointError(f"{path}: k={k} was given but the SAE's config has k={sae.k}")
        return sae
    raise CheckpointError(
        f"{path}: not found (expected an OpenAI .pt/.safetensors file or a SAELens/sparsify SAE folder)"
    )
