"""Next-token prediction: the paper's baseline, L = mean_t −log p(x_{t+1} | x_≤t)."""

from __future__ import annotations

import torch

from cocomix.methods.base import Batch, Method


class NTP(Method):
    """Plain language modelling on a transformer without a seam."""

    name = "ntp"
    concept_settings = ()

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, _ = self.student_loss(model, batch.ids)
        return loss, {"loss": loss.detach()}
