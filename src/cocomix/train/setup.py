"""What a run builds before its first step: the method's student on its device (`build_student`) and the
analytic training FLOPs per token it logs (`flops_per_token`, with the loaded teacher's and SAE's real shapes).

No paper equation (the FLOPs are `cocomix.flops`'s).
"""

from __future__ import annotations

import torch

from cocomix.config import RunConfig
from cocomix.errors import ConfigError
from cocomix.flops import LMShape, plugin_note, recorded_teacher, run_flops, teacher_shape
from cocomix.methods import Method
from cocomix.model import Transformer


def flops_per_token(run: RunConfig, method: Method) -> tuple[dict[str, float], str]:
    """Analytic training FLOPs per token (cocomix.flops) with the real shapes of the loaded teacher and SAE, or,
    for cached targets, of those the cache recorded; and a note when the teacher's shape had to be assumed."""
    teacher, sae = getattr(method, "teacher", None), getattr(method, "sae", None)
    cache = getattr(method, "cache", None)
    recorded = recorded_teacher(cache.meta) if cache is not None else None
    shape, note = None, ""
    sae_k = sae.k if sae is not None else (cache.meta.get("sae_k") if cache is not None else None)
    if teacher is not None:
        shape = LMShape.of_teacher(teacher)
    elif recorded is not None:
        shape = recorded
    elif cache is not None and run.concept.teacher and teacher_shape(run.concept.teacher) is None:
        note = (f"cocomix: note: FLOPs per token count the teacher {run.concept.teacher!r} as GPT-2 small (its "
                "shape is not known here: the target cache predates recorded shapes)")
    if plugin_note(run):
        note = f"cocomix: note: {plugin_note(run)}"
    return run_flops(run, shape, sae_k or run.concept.sae_k or 32), note


def build_student(method: Method, run: RunConfig, device: torch.device) -> Transformer:
    """The method's student on `device`; a model too large for the memory there is a ConfigError naming its shape
    (not an allocator traceback)."""
    where = "cpu"  # built there, then moved
    try:
        model = method.build_model()
        where = device.type
        return model.to(device)
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(e, (MemoryError, torch.OutOfMemoryError)) and "allocate" not in str(e):
            raise
        m = run.model
        raise ConfigError(f"model: the student does not fit in {where} memory (d_model {m.d_model}, n_layer "
                          f"{m.n_layer}, vocab_size {m.vocab_size}, context_length {m.context_length}): "
                          f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
