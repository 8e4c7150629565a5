"""A plain nanoGPT-style GPT-2, used as the speed yardstick for `bench/throughput.py`.

Written independently of `cocomix.model` (it imports nothing from cocomix) so that the benchmark compares our
transformer against a straightforward PyTorch implementation of the same network:

- token embedding + learned absolute position embedding, dropout on their sum;
- pre-LayerNorm blocks: x + attn(ln_1(x)), then x + mlp(ln_2(x));
- attention with one fused `c_attn` Linear producing q, k, v, `F.scaled_dot_product_attention(is_causal=True)`
  and an output projection `c_proj`;
- MLP d -> 4d -> d with the tanh-approximated GELU (GPT-2's `gelu_new`);
- final LayerNorm and an LM head whose weight is the token embedding (tied);
- GPT-2 init: N(0, 0.02) for matrices and embeddings, zero biases, residual output projections scaled by
  1 / sqrt(2 * n_layer).

`GPT.forward(ids)` returns the logits (B, T, V) for every position; the loss is left to the caller so that the
benchmark can apply one loss function to both models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Shapes and regularisation of the reference GPT."""

    vocab_size: int = 50257
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    dropout: float = 0.0
    bias: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02


class SelfAttention(nn.Module):
    """Causal multi-head self-attention through PyTorch's fused SDPA kernel."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_head != 0:
            raise ValueError(f"n_head={cfg.n_head} must divide d_model={cfg.d_model}")
        self.n_head = cfg.n_head
        self.d_model = cfg.d_model
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        heads = self.n_head
        q, k, v = self.c_attn(x).split(width, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q = q.view(batch, seq, heads, width // heads).transpose(1, 2)
        k = k.view(batch, seq, heads, width // heads).transpose(1, 2)
        v = v.view(batch, seq, heads, width // heads).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(batch, seq, width)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(d, 4d) -> tanh-GELU -> Linear(4d, d) -> dropout."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """One pre-norm transformer layer."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only GPT-2 language model; `forward(ids)` -> logits."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying: one matrix embeds and un-embeds
        self.apply(self._init_module)
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def _init_module(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 -> logits (B, T, V) predicting the token after each position."""
        _, seq = ids.shape
        if seq > self.cfg.context_length:
            raise ValueError(f"sequence length {seq} exceeds context_length={self.cfg.context_length}")
        pos = torch.arange(seq, dtype=torch.long, device=ids.device)
        x = self.drop(self.wte(ids) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def num_params(self) -> int:
        """Distinct parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())  # parameters() already de-duplicates shared tensors
