"""Optimizer groups and the warm-up + cosine schedule (HF cosine_with_min_lr semantics)."""

from __future__ import annotations

import math

import torch

from cocomix.config import TrainConfig
from cocomix.model import Transformer
from cocomix.train.optim import build_optimizer, lr_at
from tests.conftest import tiny_model_config


def test_schedule_matches_official_anchor_steps() -> None:
    # official anchor: warm-up 0, 2 steps, lr 6e-4, min 6e-5 -> lr 6e-4 then 3.3e-4
    cfg = TrainConfig(steps=2, lr=6e-4, warmup_steps=0, min_lr_ratio=0.1)
    assert math.isclose(lr_at(0, cfg), 6e-4) and math.isclose(lr_at(1, cfg), 3.3e-4)


def test_schedule_warmup_and_floor() -> None:
    cfg = TrainConfig(steps=1000, lr=1e-3, warmup_steps=100, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 0.0  # the first update of a warm-up has lr 0, as in the official trainer
    assert math.isclose(lr_at(50, cfg), 5e-4)
    assert math.isclose(lr_at(100, cfg), 1e-3)
    assert math.isclose(lr_at(550, cfg), 1e-3 * (0.1 + 0.9 * 0.5))
    assert math.isclose(lr_at(1000, cfg), 1e-4)
    lrs = [lr_at(s, cfg) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_param_groups() -> None:
    model = Transformer(tiny_model_config())
    n_unique = len({id(p) for p in model.parameters()})
    one = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    assert len(one.param_groups) == 1 and len(one.param_groups[0]["params"]) == n_unique
    assert one.param_groups[0]["weight_decay"] == 0.1
    two = build_optimizer(model, TrainConfig(decay_all_params=False), torch.device("cpu"))
    decay, no_decay = two.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(decay["params"]) + len(no_decay["params"]) == n_unique
    assert decay["weight_decay"] == 0.1
