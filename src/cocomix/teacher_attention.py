"""Switching a teacher to own-position attention (`cocomix.model.own_position`) for one pass (paper Eq. 1).

A cocomix Transformer sets `own_position` on its attention modules. A Hugging Face model gets an attention
implementation registered with transformers' `AttentionInterface` (and the SDPA mask builder under the same name,
so the model builds the masks it would build for SDPA: causal, sliding-window, packed), selected by setting the
`_attn_implementation` of every config in the model for the pass and restored afterwards.

What this cannot serve exactly raises `Unsupported`, and the teacher falls back to one backward per position: a
cocomix run with concept or pause slots (a token's stream continues in its slot, another sequence position),
attention sinks, attention dropout. A model that mixes positions outside attention (convolutions, state-space
layers) passes through here but is caught by the teacher's one-time comparison with per-position backward passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cocomix.model.attention import CausalSelfAttention
from cocomix.model.own_position import Streams, attend

KEY = "cocomix_own_position"
_active: list[Streams] = []  # the streams of the pass in progress (the HF attention function reads them)


class Unsupported(Exception):
    """The model cannot run own-position attention exactly; the message says why."""


def _hf_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs: object) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, T, hd), key/value (B, H_kv, T, hd) ->
    ((B, T, H, hd), no weights)."""
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise Unsupported("attention sinks")
    if any(kwargs.get(name) is not None for name in ("indices", "block_indices", "topk_indices")):
        raise Unsupported("sparse attention (the keys each query reads are selected)")  # (DeepSeek-V3.2's indexer)
    if kwargs.get("position_bias") is not None:
        raise Unsupported("a position bias passed to attention")
    if dropout:
        raise Unsupported("attention dropout")
    causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True)) if causal is None else bool(causal)
    if attention_mask is not None and attention_mask.shape[-1] != key.shape[-2]:
        attention_mask = attention_mask[..., : key.shape[-2]]
    if not _active:
        raise RuntimeError(f"{KEY} attention called outside an own_position() pass")
    softcap = kwargs.get("softcap")
    out = attend(_active[-1], module, query, key, value,
                 scaling=query.shape[-1] ** -0.5 if scaling is None else scaling, mask=attention_mask,
                 causal=causal, softcap=float(softcap) if softcap is not None else None)  # (B, H, T, hd)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(KEY, _hf_attention)
    AttentionMaskInterface.register(KEY, sdpa_mask)


@contextlib.contextmanager
def own_position(model: nn.Module, streams: Streams | None = None) -> Iterator[None]:
    """Within the block, `model`'s attention is own-position attention (same forward values; each position's
    backward runs along its own stream only), recording or reading `streams`. Raises `Unsupported` for models it
    cannot serve."""
    streams = streams or Streams()
    if getattr(model, "seam", None) is not None:
        raise Unsupported("a cocomix run with concept or pause slots")
    ours = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    configs = list({id(c): c for m in model.modules()
                    if hasattr(c := getattr(m, "config", None), "_attn_implementation_internal")}.values())
    if not ours and not configs:
        raise Unsupported(f"{type(model).__name__} is neither a cocomix Transformer nor a Hugging Face model")
    if configs:
        _register()
    saved = [c._attn_implementation_internal for c in configs]
    try:
        _active.append(streams)
        for m in ours:
            m.own_position = streams
        for c in configs:
            c._attn_implementation_internal = KEY
        yield
    finally:
        _active.pop()
        for m in ours:
            m.own_position = None
        for c, impl in zip(configs, saved, strict=True):
            c._attn_implementation_internal = impl
