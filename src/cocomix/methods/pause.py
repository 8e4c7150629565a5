"""Pause-token baseline (paper §3.1): a learned vector inserted after every token at `concept.concept_layer`;
the next token is predicted from the pause slots, so the upper blocks process 2T positions as CoCoMix does.
gpt2-flavour slots carry their token's position embedding unless `concept.pause_position = "none"`."""

from __future__ import annotations

import torch

from cocomix.methods.base import Batch, Method, next_token_loss
from cocomix.model import Transformer
from cocomix.model.concept import PauseSeam


class Pause(Method):
    """NTP on a student with a pause slot after every token."""

    name = "pause"

    def build_model(self) -> Transformer:
        model = Transformer(self.run.model)
        positions = model.wpe if self.run.concept.pause_position == "embedding" else None
        model.set_seam(PauseSeam(self.run.concept.concept_layer, self.run.model.d_model, self.run.model.init_std,
                                 positions=positions))
        return model

    def loss(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = next_token_loss(model(batch.ids).logits, batch.ids)
        return loss, {"loss": loss.detach()}
