"""Sparse autoencoders: the concept extractor of CoCoMix (paper §2.1), c = TopK(E(h)) and ĥ = D(c).

`TopKSAE` computes a TopK SAE exactly as OpenAI's `sparse_autoencoder`, the SAE the official implementation
uses. Loaders read OpenAI state dicts (`.pt` with weights_only, or `.safetensors`), SAELens folders and
EleutherAI sparsify folders into it; `save_saelens` writes a SAELens folder; `load_sae` picks the format from
the path.

The names are imported on first use (PEP 562): `cocomix.sae.train_config`, which the command line reads to build
`train-sae`'s flags, then does not import torch, and `cocomix --help` answers at once.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see; at run time `__getattr__` imports each on first use
    from cocomix.sae.formats import load_sae
    from cocomix.sae.openai import load_openai
    from cocomix.sae.saelens import load_saelens, save_saelens
    from cocomix.sae.sparsify import load_sparsify
    from cocomix.sae.topk import TopKSAE

_WHERE = {"TopKSAE": "topk", "load_openai": "openai", "load_sae": "formats", "load_saelens": "saelens",
          "load_sparsify": "sparsify", "save_saelens": "saelens"}
__all__ = ["TopKSAE", "load_openai", "load_sae", "load_saelens", "load_sparsify", "save_saelens"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"cocomix.sae.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cocomix.sae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
