"""KD + pause baseline (paper §3.3f, "KD+Pause"): the pause-token student (`pause.py`) trained with the
distillation loss of `kd.py`, L = L_NTP + λ_KD · KL(p_teacher ‖ p_student), the student's next-token
distribution read from its pause slots as in NTP+Pause."""

from __future__ import annotations

from cocomix.methods.kd import KD
from cocomix.methods.pause import Pause
from cocomix.model import Transformer


class KDPause(KD):
    """Distillation from the frozen teacher on a student with a pause slot after every token."""

    name = "kd-pause"
    concept_settings = (*KD.concept_settings, *Pause.concept_settings)

    def build_model(self) -> Transformer:
        return Pause.build_model(self)  # type: ignore[arg-type]  # Pause's model needs only self.run
