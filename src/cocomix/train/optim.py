"""AdamW parameter groups and the learning-rate schedule (paper App. A: warm-up, then cosine to 10% of peak).

The schedule is the Hugging Face `cosine_with_min_lr` one the official trainer uses: for update s (0-based),
lr = peak·s/w during warm-up, then peak·(r + (1−r)·½(1 + cos(π·(s−w)/(S−w)))) with r = min_lr_ratio. It is a
pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cocomix.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer update `step` (0-based)."""
    w, total, r = cfg.warmup, cfg.steps, cfg.min_lr_ratio
    if step < w:
        return cfg.lr * step / max(1, w)
    progress = (step - w) / max(1, total - w)
    return cfg.lr * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the unique trainable parameters; one decayed group (official) or decay/no-decay groups."""
    params = [p for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad]
    if cfg.decay_all_params:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=True if device.type == "cuda" else None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
