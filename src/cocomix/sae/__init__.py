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
from typing import Any

_WHERE = {"TopKSAE": "topk", "load_openai": "openai", "load_sae": "formats", "load_saelens": "saelens",
          "load_sparsify": "sparsify", "save_saelens": "saelens"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"cocomix.sae.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cocomix.sae' has no attribute {name!r}")
