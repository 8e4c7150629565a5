"""The student transformer (GPT-2 or Llama flavour) with an optional slot seam and a KV cache (paper §2.1;
the seam is where Eq. 3-4 act).

Forward: embed (+ learned positions for gpt2) -> blocks[0:seam.layer] -> seam.insert -> blocks[seam.layer:]
-> seam.read -> final norm -> LM head. With `checkpoint_blocks`, every block's activations are recomputed in
the backward (activation checkpointing) rather than kept. Without a seam this is a standard pre-norm decoder;
the NTP objective on it is the paper's baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cocomix.config import ModelConfig
from cocomix.model.attention import CausalSelfAttention, KVCache
from cocomix.model.chunked_nll import chunked_kd, chunked_nll
from cocomix.model.layers import make_mlp, make_norm
from cocomix.model.seam import Seam


def checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    """`forward` that, while a graph is being built, keeps only its inputs and recomputes the rest in the backward
    (non-reentrant `torch.utils.checkpoint`: the same values, dropout RNG replayed); a plain call otherwise."""

    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


@dataclass
class ModelOutput:
    logits: torch.Tensor | None
    """(B, T, V): logits at t predict token t+1 (None when the forward computed `loss` in chunks instead)."""
    aux: dict = field(default_factory=dict)
    """What the seam produced (e.g. concept logits), for the method's loss."""
    loss: torch.Tensor | None = None
    """With `forward(..., lm_loss=True)`: the mean next-token NLL of the input ids, from chunked logits."""


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg)
        self.mlp = make_mlp(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pos, cache)
        return x + self.drop(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """Decoder-only LM. `seam` (set with `set_seam`) rewrites the sequence between blocks."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.flavour == "gpt2" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.seam: Seam | None = None
        self.checkpoint_blocks = False
        """Recompute each block's activations in the backward instead of storing them
        (`train.activation_checkpointing`); training forwards only (no cache, grad enabled)."""
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std) weights, zero biases, unit norms, residual projections / sqrt(2·n_layer)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, std)
            elif ".ln_" in name or name.startswith("ln_f"):
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            else:
                nn.init.zeros_(p)

    def set_seam(self, seam: Seam) -> None:
        if not 0 < seam.layer < self.cfg.n_layer:
            raise ValueError(f"seam layer must be in [1, {self.cfg.n_layer - 1}], got {seam.layer}")
        self.seam = seam

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None,
                concept_targets: torch.Tensor | None = None, lm_loss: bool = False,
                teacher_logits: torch.Tensor | None = None, lambda_kd: float = 0.0,
                concept_logits: bool = False) -> ModelOutput:
        """ids (B, S) -> logits (B, S, V). With a cache, ids continue the cached sequence. `concept_targets`
        (B, S, k_attr) go to the seam (CoCoMix training: its loss comes back in aux["concept_loss"]). With
        `lm_loss`, no logits: `loss` is the next-token NLL of ids through the head in row chunks
        (`chunked_nll`, `train.chunked_lm_loss`); given the teacher's logits (B, S, V) too, NLL + λ_KD · KL
        (`chunked_kd`, the KD baseline), with NLL and KL in aux["lm_nll"] / aux["lm_kl"]. Both go through forward
        so DDP / FSDP hooks see them. `concept_logits` asks a CoCoMix seam for its whole (B, S, C) concept logits
        in aux["concept_logits"] (otherwise its TopK runs in row chunks and they are never held)."""
        h, aux = self.final_hidden(ids, cache, concept_targets, concept_logits)
        if lm_loss and teacher_logits is not None:
            loss, aux["lm_nll"], aux["lm_kl"] = chunked_kd(h, self.lm_head.weight, None, ids, teacher_logits,
                                                           lambda_kd)
            return ModelOutput(logits=None, aux=aux, loss=loss)
        if lm_loss:
            return ModelOutput(logits=None, aux=aux, loss=chunked_nll(h, self.lm_head.weight, None, ids))
        return ModelOutput(logits=self.lm_head(h), aux=aux)

    def final_hidden(self, ids: torch.Tensor, cache: KVCache | None = None,
                     concept_targets: torch.Tensor | None = None,
                     concept_logits: bool = False) -> tuple[torch.Tensor, dict]:
        """ids (B, S) -> (the normed states the LM head reads (B, S, d), the seam's aux)."""
        B, S = ids.shape
        start = cache.tokens if cache is not None else 0
        pos = torch.arange(start, start + S, device=ids.device)  # (S,)
        if start + S > self.cfg.context_length:
            raise ValueError(f"sequence of {start + S} tokens exceeds context_length={self.cfg.context_length}")
        h = self.wte(ids)  # (B, S, d)
        if self.wpe is not None:
            h = h + self.wpe(pos)
        h = self.drop(h)
        aux: dict = {}
        # the seam sits between two block loops, not inside one: under torch.compile its eager parts (the fused
        # concept head) then break the graph between the two whole halves rather than into a graph per block
        at = self.seam.layer if self.seam is not None and self.seam.layer < len(self.blocks) else len(self.blocks)
        wrap = checkpointed if self.checkpoint_blocks and cache is None else (lambda block: block)
        for block in self.blocks[:at]:
            h = wrap(block)(h, pos, cache)
        if at < len(self.blocks):
            extra = () if concept_targets is None else (concept_targets,)  # seams without targets keep working
            keep = {"keep_logits": True} if concept_logits else {}  # only a concept seam is asked
            h, pos, aux = self.seam.insert(h, pos, *extra, **keep)
        for block in self.blocks[at:]:
            h = wrap(block)(h, pos, cache)
        if self.seam is not None:
            h = self.seam.read(h)
        if cache is not None:
            cache.tokens += S
        return self.ln_f(h), aux

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layer)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied head counted once); optionally without token/position embeddings."""
        n = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        if exclude_embeddings:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n
