"""Pause-token baseline (paper §3.1): a learned vector inserted after every token at `concept.concept_layer`;
the next token is predicted from the pause slots, so the upper blocks process 2T positions as CoCoMix does.
With `concept.pause_slot = "token"` each slot starts from a copy of its token's hidden state."""

from __future__ import annotations

import torch

from cocomix.methods.base import Batch, Method
from cocomix.model import Transformer
from cocomix.model.concept import PauseSeam


class Pause(Method):
    """NTP on a student with a pause slot after every token."""

    name = "pause"
    concept_settings = ("concept.concept_layer", "concept.pause_slot")

    def build_model(self) -> Transformer:
        model = Transformer(self.run.model)
        model.set_seam(PauseSeam(self.run.concept.concept_layer, self.run.model.d_model, self.run.model.init_std,
                                 copy_token=self.run.concept.pause_slot == "token"))
        return model

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, _ = self.student_loss(model, batch.ids)
        return loss, {"loss": loss.detach()}
