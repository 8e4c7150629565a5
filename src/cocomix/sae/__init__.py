"""Sparse autoencoders: the concept extractor of CoCoMix (paper §2.1), c = TopK(E(h)) and ĥ = D(c).

`TopKSAE` computes a TopK SAE exactly as OpenAI's `sparse_autoencoder`, the SAE the official implementation
uses. Loaders read OpenAI state dicts (`.pt` with weights_only, or `.safetensors`), SAELens folders and
EleutherAI sparsify folders into it; `save_saelens` writes a SAELens folder; `load_sae` picks the format from
the path.
"""

from cocomix.sae.formats import load_sae
from cocomix.sae.openai import load_openai
from cocomix.sae.saelens import load_saelens, save_saelens
from cocomix.sae.sparsify import load_sparsify
from cocomix.sae.topk import TopKSAE

__all__ = ["TopKSAE", "load_openai", "load_sae", "load_saelens", "load_sparsify", "save_saelens"]
