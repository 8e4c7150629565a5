"""The slot seam: a place at block index `layer` where a method rewrites the sequence for the remaining blocks.

CoCoMix (Eq. 3-4) inserts a continuous concept vector after every token's hidden state at `concept_layer` and
predicts the next token from those slots; the pause-token baseline inserts a learned vector instead; the
addition ablation adds it in place. All three are a `Seam`: `insert` maps the hidden states entering block
`layer` (and their positions) to the sequence the upper blocks see, `read` maps the last block's output back to
one vector per token. The base class is the identity, which leaves the model a plain transformer.
"""

from __future__ import annotations

import torch
from torch import nn


class Seam(nn.Module):
    """Identity seam at block index `layer`; subclasses override `insert` and `read`."""

    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def insert(self, h: torch.Tensor, pos: torch.Tensor, targets: torch.Tensor | None = None,
               keep_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """h (B, S, d) entering block `layer`, pos (S,) -> (sequence (B, S', d), its positions (S',), aux).
        `targets` are training labels for seams that predict them (CoCoMix's concept targets); others ignore them.
        `keep_logits` asks a seam that predicts concept logits to return them whole (aux["concept_logits"]); the
        transformer passes it only when asked, so a seam without the argument keeps working."""
        return h, pos, {}

    def read(self, h: torch.Tensor) -> torch.Tensor:
        """Output of the last block (B, S', d) -> the vectors that predict the next tokens (B, S, d)."""
        return h


def interleave(h: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """[h_0, s_0, h_1, s_1, ...]: h, slots (B, S, d) -> (B, 2S, d)."""
    B, S, d = h.shape
    return torch.stack((h, slots), dim=2).view(B, 2 * S, d)


def read_slots(h: torch.Tensor) -> torch.Tensor:
    """The slot half of an interleaved sequence: (B, 2S, d) -> (B, S, d)."""
    B, S2, d = h.shape
    return h.view(B, S2 // 2, 2, d)[:, :, 1]
