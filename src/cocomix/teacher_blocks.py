"""Finding the parts of a causal LM that the teacher hooks: its language-model config and its list of decoder
blocks, for Hugging Face models (multimodal ones included) and cocomix `Transformer`s alike (no paper equation).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cocomix.errors import CheckpointError


def text_config(model: nn.Module) -> Any:
    """An HF model's language-model config (a multimodal model's text part; the config itself otherwise)."""
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder-block list of an HF causal LM or a cocomix Transformer (the ModuleList of n_layer blocks).
    A multimodal model (Gemma 3 and the like, which `AutoModelForCausalLM` also loads) is searched in its text
    decoder only, never in its vision tower."""
    if hasattr(model, "blocks") and isinstance(model.blocks, nn.ModuleList):
        return model.blocks
    n = getattr(text_config(model), "num_hidden_layers", None)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    # (ModernBERT-decoder's `get_decoder()` is its output projection, which holds no blocks: the model is searched)
    roots = [decoder, model] if isinstance(decoder, nn.Module) and decoder is not model else [model]
    for root in roots:
        lists = [(name, m) for name, m in root.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        found = next((m for _, m in lists if n is None or len(m) == n), None)
        # a config whose num_hidden_layers counts other blocks (BART's and Marian's: the encoder's) still names
        # the decoder's list by its usual attribute
        found = found or next((m for name, m in lists if name.rpartition(".")[2] in ("layers", "h", "blocks")), None)
        if found is not None:
            return found
    raise CheckpointError(f"{type(model).__name__}: cannot find its list of decoder blocks")
