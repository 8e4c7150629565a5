"""The frozen teacher's numeric precision (no paper equation): its weights' dtype (`concept.teacher_dtype`), the
region it computes in during training (`concept.teacher_precision`), and TF32 for fp32 matmuls on CUDA as the
official trainer sets it.
"""

from __future__ import annotations

import contextlib

import torch

from cocomix.errors import ConfigError


def teacher_dtype(name: str) -> torch.dtype:
    """The torch dtype of `concept.teacher_dtype` / `--teacher-dtype` (`float32` or `bfloat16`)."""
    if name not in ("float32", "bfloat16"):
        raise ConfigError(f"teacher_dtype: expected 'float32' or 'bfloat16', got {name!r}")
    return getattr(torch, name)


def cuda_matmul_precision(device: torch.device) -> None:
    """On CUDA, fp32 matmuls may use TF32 (precision "high"), as the official trainer turns TF32 on. Called by
    training and by `extract-concepts` alike, so that an fp32 teacher and SAE give cached targets computed as the
    online ones are."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def teacher_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The region the frozen teacher (and SAE) compute in during training (`concept.teacher_precision`): `fp32`
    leaves any surrounding autocast (the official teacher is never autocast), `autocast` keeps it."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "autocast":
        return contextlib.nullcontext()
    raise ConfigError(f"concept.teacher_precision: expected 'fp32' or 'autocast', got {precision!r}")
