"""Causal self-attention (SDPA) with a key/value cache that handles any query length and prefix length.

Decoding with a cache needs the causal mask aligned to the *bottom right* (query i of S new positions sees keys
up to past + i). SDPA's `is_causal` aligns top-left when S differs from the key length, which is the official
implementation's cached-decoding bug; here that case gets an explicit mask. Layers may hold caches of different
lengths (layers above a slot seam hold two entries per token), so lengths are tracked per layer. With
`own_position` set (a teacher computing the Eq. 1 gradient), attention runs `own_position_attention` instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cocomix.config import ModelConfig
from cocomix.model.layers import apply_rope, rope_tables
from cocomix.model.own_position import Streams, attend


class KVCache:
    """Per-layer key/value buffers (B, H, capacity, hd), grown by doubling; `lengths[i]` entries are valid."""

    def __init__(self, n_layer: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.lengths = [0] * n_layer
        self.tokens = 0
        """Real tokens consumed so far (positions of the next token start here)."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, H, S, hd) to layer's cache; return all valid keys and values (B, H, L, hd)."""
        n, s = self.lengths[layer], k.shape[2]
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or n + s > buf_k.shape[2]:
            cap = max(2 * (n + s), 64)
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if buf_k is not None and buf_v is not None:
                new_k[:, :, :n] = buf_k[:, :, :n]
                new_v[:, :, :n] = buf_v[:, :, :n]
            self.keys[layer], self.values[layer] = buf_k, buf_v = new_k, new_v
        assert buf_v is not None
        buf_k[:, :, n : n + s] = k
        buf_v[:, :, n : n + s] = v
        self.lengths[layer] = n + s
        return buf_k[:, :, : n + s], buf_v[:, :, : n + s]

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows `index` (b,) of every layer's buffers (rows that ended leave a batch)."""
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is not None and v is not None:
                self.keys[i], self.values[i] = k.index_select(0, index), v.index_select(0, index)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection; RoPE for the llama flavour."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.d_model = cfg.d_model
        self.rope_theta = cfg.rope_theta if cfg.flavour == "llama" else None
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.use_bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.use_bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.own_position: Streams | None = None
        """Set: own-position attention (the teacher's Eq. 1 gradient; no cache), recording or reading streams."""

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, S, d), pos (S,) integer positions (used by RoPE) -> (B, S, d)."""
        B, S, d = x.shape
        hd = d // self.n_head
        q, k, v = self.qkv(x).split(d, dim=2)
        q = q.view(B, S, self.n_head, hd).transpose(1, 2)  # (B, H, S, hd)
        k = k.view(B, S, self.n_head, hd).transpose(1, 2)
        v = v.view(B, S, self.n_head, hd).transpose(1, 2)
        if self.rope_theta is not None:
            cos, sin = rope_tables(pos, hd, self.rope_theta, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.own_position is not None and cache is None:
            y = attend(self.own_position, self, q, k, v, scaling=hd ** -0.5)  # (B, H, S, hd)
            return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, S, d)))
        mask, causal = None, True
        if cache is not None:
            past = cache.lengths[self.layer]
            k, v = cache.update(self.layer, k, v)  # (B, H, past + S, hd)
            if S == 1:
                causal = False
            elif past > 0:  # bottom-right causal: query i sees keys j <= past + i
                causal = False
                mask = torch.ones(S, past + S, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, S, hd)
        y = y.transpose(1, 2).contiguous().view(B, S, d)
        return self.resid_drop(self.proj(y))
