"""Shared fixtures: tiny model configs and deterministic torch settings for CPU tests.

Tests run single-threaded (here and, through OMP_NUM_THREADS, in the commands they start): their models are
tiny, so extra threads only add synchronisation, and torchrun tests start two processes on two cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pool; inherited by subprocesses

import pytest  # noqa: E402
import torch  # noqa: E402

from cocomix.config import ModelConfig  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def tiny_model_config(flavour: str = "gpt2", **kw) -> ModelConfig:
    base = dict(flavour=flavour, vocab_size=97, n_layer=3, n_head=4, d_model=32, context_length=64)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(params=["gpt2", "llama"])
def flavour(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
