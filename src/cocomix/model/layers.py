"""Building blocks of the student transformer: norms, MLPs and rotary position embeddings (no paper
equation: the paper's students are GPT-2 models, §3).

GPT-2 flavour: LayerNorm, GELU (tanh approximation, HF `gelu_new`) MLP. Llama flavour: RMSNorm, SwiGLU MLP and
RoPE in the rotate-half convention of Hugging Face's Llama, so exported weights load without permutation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cocomix.config import ModelConfig


def make_norm(cfg: ModelConfig) -> nn.Module:
    """LayerNorm for gpt2 (with bias when cfg.use_bias), RMSNorm for llama."""
    if cfg.flavour == "gpt2":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.use_bias)
    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


class GeluMLP(nn.Module):
    """x -> proj(gelu_tanh(fc(x))), the GPT-2 MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_width, bias=cfg.use_bias)
        self.proj = nn.Linear(cfg.mlp_width, cfg.d_model, bias=cfg.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, d) -> (B, S, d)
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class SwiGLUMLP(nn.Module):
    """x -> proj(silu(gate(x)) * up(x)), the Llama MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.mlp_width, bias=cfg.use_bias)
        self.up = nn.Linear(cfg.d_model, cfg.mlp_width, bias=cfg.use_bias)
        self.proj = nn.Linear(cfg.mlp_width, cfg.d_model, bias=cfg.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, d) -> (B, S, d)
        return self.proj(F.silu(self.gate(x)) * self.up(x))


def make_mlp(cfg: ModelConfig) -> nn.Module:
    return GeluMLP(cfg) if cfg.flavour == "gpt2" else SwiGLUMLP(cfg)


def rope_tables(pos: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos and sin tables (S, head_dim) for integer positions pos (S,), computed in fp32 then cast."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim))
    freqs = pos.to(torch.float32)[:, None] * inv_freq[None, :]  # (S, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (S, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, S, hd) by the tables (S, hd): x·cos + rotate_half(x)·sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
