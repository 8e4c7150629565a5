"""Knowledge distillation baseline (paper §3.1): L = L_NTP + λ_KD · KL(p_teacher ‖ p_student), λ_KD = 0.1.

The KL is over next-token distributions at the positions that have a next token (B·(T−1)), averaged. Teacher and
student must share the tokenizer; a teacher whose vocabulary differs from the student's is refused. With
`train.chunked_lm_loss` the student's NLL and KL run through its LM head in row chunks (`chunked_kd`): no
(B, T, V) student logits, no fp32 copies of either distribution; the same loss up to float rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cocomix.errors import ConfigError, named_by
from cocomix.methods.base import Batch, Method, next_token_loss
from cocomix.teacher_precision import teacher_dtype, teacher_precision

if TYPE_CHECKING:
    from cocomix.config import RunConfig
    from cocomix.data.store import TokenStore
    from cocomix.teacher import Teacher


def kl_teacher_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions 0 … T−2 of KL(softmax(teacher) ‖ softmax(student)); logits (B, T, V)."""
    V = student_logits.shape[-1]
    t = F.log_softmax(teacher_logits[:, :-1].float().reshape(-1, V), dim=-1)
    s = F.log_softmax(student_logits[:, :-1].float().reshape(-1, V), dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


class KD(Method):
    """NTP plus distillation from the frozen teacher's next-token distribution."""

    name = "kd"
    concept_settings = ("concept.teacher", "concept.teacher_dtype", "concept.teacher_precision", "concept.lambda_kd")

    def __init__(self, run: RunConfig) -> None:
        super().__init__(run)
        self.teacher: Teacher | None = None  # set by prepare

    def prepare(self, device: torch.device, store: TokenStore) -> None:
        from cocomix.teacher import Teacher

        c = self.run.concept
        if not c.teacher:
            raise ConfigError("concept.teacher: KD needs a teacher (HF name/folder or cocomix run)")
        # KD reads the teacher's logits only: concept.teacher_layer (default 5) is not checked against its depth
        with named_by("concept.teacher"):
            self.teacher = Teacher.from_pretrained(c.teacher, 0, device=device, dtype=teacher_dtype(c.teacher_dtype))
        if self.teacher.output_vocab != self.run.model.vocab_size:
            raise ConfigError(f"concept.teacher: KD needs the student's tokenizer; the teacher predicts "
                              f"{self.teacher.output_vocab} tokens, the student {self.run.model.vocab_size} (a "
                              "teacher with the same tokenizer and a padded vocabulary needs --set "
                              f"model.vocab_size={self.teacher.output_vocab})")
        self.teacher.check_store(store, self.run.data.seq_len, "data.seq_len")

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.teacher is None:
            raise RuntimeError("KD.prepare() was not called before training")
        lam = self.run.concept.lambda_kd
        with teacher_precision(self.run.concept.teacher_precision, batch.ids.device):
            teacher_logits = self.teacher.logits(batch.ids)  # (B, T, V)
        if self.run.train.chunked_lm_loss:  # NLL and KL through the student's head in row chunks
            out = model(batch.ids, lm_loss=True, teacher_logits=teacher_logits, lambda_kd=lam)
            total, ntp, kl = out.loss, out.aux["lm_nll"], out.aux["lm_kl"]
        else:
            logits = model(batch.ids).logits
            ntp = next_token_loss(logits, batch.ids)
            kl = kl_teacher_student(teacher_logits, logits)
            total = ntp + lam * kl
        return total, {"loss": ntp.detach(), "kd_loss": kl.detach(), "total_loss": total.detach()}
