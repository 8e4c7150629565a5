"""Which device a run or command uses, and the autocast its training step runs under (no paper equation)."""

from __future__ import annotations

import contextlib
import os
import re

import torch

from cocomix.errors import ConfigError
from cocomix.teacher_precision import cuda_matmul_precision


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    """The torch device for `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`; `field` names the setting
    or flag in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or re.fullmatch(r"cuda:(0|[1-9][0-9]*)", name, re.ASCII)):
        raise ConfigError(f"{field}: expected auto, cpu, cuda or cuda:N, got {name!r}")
    n = torch.cuda.device_count() if name.startswith("cuda") and torch.cuda.is_available() else 0
    torchrun = "LOCAL_RANK" in os.environ  # each process takes cuda:LOCAL_RANK whatever N says (`distributed.setup`)
    if name.startswith("cuda") and (not n or (not torchrun and int(name[5:] or 0) >= n)):  # an N beyond the GPUs
        raise ConfigError(f"{field}: {name!r} requested but " + (f"this machine has {n} CUDA device(s)" if n
                                                                  else "CUDA is not available"))
    return torch.device(name)


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for `auto`/`bf16`, on CPU only for an explicit `bf16`; otherwise fp32. On CUDA, fp32
    matmuls (the teacher's, with `concept.teacher_precision = fp32`) may use TF32, as in the official trainer."""
    cuda_matmul_precision(device)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
