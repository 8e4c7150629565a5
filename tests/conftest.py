"""Shared fixtures: tiny model configs and deterministic torch settings for CPU tests."""

from __future__ import annotations

import os

# Tests never reach a hub: a name that is not a local folder fails at once (huggingface_hub's offline mode) instead
# of after the hub client's retries, here and in the subprocesses tests start. Read when huggingface_hub is first
# imported, so it is set before any test module imports transformers.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch

from cocomix.config import ModelConfig

# FSDP2 on CPU (gloo) needs torch >= 2.7 (`cocomix.train.distributed.check_support`): below pyproject's floor (2.8),
# for a torch installed around it
needs_cpu_fsdp = pytest.mark.skipif(not hasattr(torch.cpu.Stream, "record_event"),
                                    reason=f"FSDP2 on CPU needs torch >= 2.7 (this is {torch.__version__})")


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


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """The `datasets` module with its cache under tmp_path and the hub offline (the test skips without it)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return datasets
