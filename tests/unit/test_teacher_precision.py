"""`concept.teacher_precision`: by default the frozen teacher and SAE compute in fp32 even inside the training
autocast (the official teacher is never autocast), so online targets equal `extract-concepts`' fp32 ones;
`autocast` lets them run in the training autocast."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import cocomix.concepts.attribution as attribution
from cocomix.concepts import compute_targets
from cocomix.errors import ConfigError
from cocomix.methods import KD, Batch, CoCoMix
from cocomix.model import Transformer
from cocomix.presets import get_preset
from cocomix.sae import TopKSAE
from cocomix.teacher import Teacher
from cocomix.teacher_precision import teacher_precision
from tests.conftest import tiny_model_config

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def _cocomix(precision: str) -> CoCoMix:
    run = get_preset("tiny-cocomix")
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=97),
                              concept=dataclasses.replace(run.concept, n_latents=64, d_teacher=32,
                                                          teacher_precision=precision))
    method = CoCoMix(run)
    torch.manual_seed(0)
    method.teacher = Teacher(Transformer(tiny_model_config(n_layer=3)).eval(), layer=1)
    method.sae = TopKSAE(32, 64, 8)
    with torch.no_grad():
        for p in method.sae.parameters():
            p.normal_(0.0, 0.3)
    return method


def _autocast_seen(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records whether CPU autocast is on each time compute_targets runs."""
    seen: list[bool] = []
    real = attribution.compute_targets

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "compute_targets", spy)
    return seen


def test_default_targets_are_fp32_inside_a_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    method = _cocomix("fp32")
    ids = torch.randint(0, 97, (3, 16))
    want = compute_targets(method.teacher, method.sae, ids, k_attr=4)  # no autocast anywhere
    seen = _autocast_seen(monkeypatch)
    with torch.autocast(**BF16):
        got = method.targets(Batch(ids, None))
    assert seen == [False] and torch.equal(got, want)


def test_autocast_precision_runs_the_teacher_in_the_training_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    method = _cocomix("autocast")
    seen = _autocast_seen(monkeypatch)
    with torch.autocast(**BF16):
        method.targets(Batch(torch.randint(0, 97, (2, 16)), None))
    assert seen == [True]


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("autocast", torch.bfloat16)])
def test_kd_teacher_logits_follow_the_precision(precision: str, dtype: torch.dtype) -> None:
    run = get_preset("tiny-kd")
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=97, n_layer=2, d_model=32,
                                                             n_head=2),
                              concept=dataclasses.replace(run.concept, teacher_precision=precision))
    method = KD(run)
    method.teacher = Teacher(Transformer(tiny_model_config(n_layer=3)).eval(), layer=1)
    dtypes = []
    real = method.teacher.logits
    method.teacher.logits = lambda ids: (lambda out: (dtypes.append(out.dtype), out)[1])(real(ids))
    with torch.autocast(**BF16):
        method.loss(method.build_model(), Batch(torch.randint(0, 97, (2, 16)), None))
    assert dtypes == [dtype]


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="concept.teacher_precision"):
        dataclasses.replace(get_preset("tiny-cocomix").concept, teacher_precision="fp16")
    with pytest.raises(ConfigError, match="teacher_precision"):
        teacher_precision("fp16", torch.device("cpu"))



def test_cuda_matmul_precision_is_tf32_on_cuda_only_and_training_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA, training lets fp32 matmuls use TF32 (as the official trainer does), through the helper that
    `extract-concepts` calls too (tests/integration/test_concept_cache.py)."""
    import cocomix.train.loop as loop
    from cocomix.teacher_precision import cuda_matmul_precision

    before = torch.get_float32_matmul_precision()
    try:
        cuda_matmul_precision(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == before
        cuda_matmul_precision(torch.device("cuda"))  # sets a process flag; needs no GPU
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    import cocomix.train.device as device

    seen: list[torch.device] = []
    monkeypatch.setattr(device, "cuda_matmul_precision", seen.append)
    loop.autocast_for("auto", torch.device("cpu"))  # the training step's autocast (train/device.py)
    assert seen == [torch.device("cpu")]
