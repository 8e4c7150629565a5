"""The method protocol: how a training objective plugs into the loop, which knows no method by name
(`next_token_loss` is L_NTP of paper Eq. 4).

A method builds the student (possibly with a seam and extra modules) and turns a batch of token windows into a
scalar loss plus metrics. `next_token_loss` is the shifted cross-entropy every built-in method reports as `loss`,
so runs of different methods are compared on the same quantity (validation always is: `eval_loss`); a method
from another package that logs no `loss` metric has its returned objective logged under that name instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cocomix.config import RunConfig
from cocomix.model import ModelOutput, Transformer

if TYPE_CHECKING:
    from cocomix.data.store import TokenStore


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean CE of logits (B, T, V) at t against ids[t+1] over B·(T-1) positions (official: labels = input_ids)."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1))


@dataclass
class Batch:
    """One micro-batch: token windows and, for methods that read per-window data (cached targets), their ids."""

    ids: torch.Tensor
    """(B, T) token ids."""
    chunk_ids: list[int] | None = None
    """The store windows the rows came from (None when the rows are not whole store windows)."""
    split: str = "train"


class Method:
    """Base class: subclasses set `name` and implement `build_model` and `loss`."""

    name = "base"
    concept_settings: tuple[str, ...] | None = None
    """The `concept.*` settings this method reads (None: any may shape its result); `compare` lets seeds of a
    run differ in the others."""

    def __init__(self, run: RunConfig) -> None:
        self.run = run

    @property
    def unused_parameters(self) -> bool:
        """Whether some of the student's parameters never get a gradient by design (DDP needs to know)."""
        return False

    def build_model(self) -> Transformer:
        return Transformer(self.run.model)

    def prepare(self, device: torch.device, store: TokenStore) -> None:
        """Load what training needs besides the student (teacher, SAE, target cache) and check it against the
        token store; inference (eval, generate) does not call it."""

    def input_fingerprints(self) -> dict[str, str]:
        """The content fingerprints of what `prepare` loaded, by the config key that named it: the teacher
        (`self.teacher` set: `concept.teacher`, its weights sampled), the SAE (`self.sae` set: `concept.sae`,
        hashed) and a target cache (`self.cache` set: `concept.cache`, what made its targets). Every checkpoint
        records them, so a resume may name them by another path (files moved to node-local scratch) and is
        refused when the path it names now holds other content. A hub name has no fingerprint (the name itself
        is compared)."""
        from cocomix.concepts.identity import sae_sha256, teacher_fingerprint

        c, found = self.run.concept, {}
        if getattr(self, "teacher", None) is not None and c.teacher and (teacher := teacher_fingerprint(c.teacher)):
            found["concept.teacher"] = teacher
        if getattr(self, "sae", None) is not None and c.sae and (sae := sae_sha256(c.sae, c.teacher_layer)):
            found["concept.sae"] = sae
        if getattr(self, "cache", None) is not None and c.cache:  # what made its targets (`TargetCache.fingerprint`)
            found["concept.cache"] = self.cache.fingerprint()
        return found

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch.ids (B, T) -> (loss to back-propagate, metrics to log: scalar tensors or numbers). `model` is the
        student as training runs it (possibly compiled, or wrapped by DDP / FSDP). The metric
        `loss` is the next-token CE every run reports (`compare`, the progress line); a method that gives none
        gets the returned loss logged under that name."""
        raise NotImplementedError

    def student_loss(self, model: torch.nn.Module, ids: torch.Tensor,
                     **kwargs: torch.Tensor) -> tuple[torch.Tensor, ModelOutput]:
        """(next-token CE of the student on ids (B, T), its output): from whole logits, or with
        `train.chunked_lm_loss` through the head in row chunks (no logits in the output)."""
        if self.run.train.chunked_lm_loss:
            out: ModelOutput = model(ids, lm_loss=True, **kwargs)
            return out.loss, out
        out = model(ids, **kwargs)
        return next_token_loss(out.logits, ids), out

    def eval_loss(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Next-token CE of the model on ids (B, T); what validation loss and perplexity report."""
        return self.student_loss(model, ids)[0]
