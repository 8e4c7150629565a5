"""The teacher's chunked LM-head NLL (`cocomix.model.chunked_nll`) and the trunk/head split that uses it: same loss
and same residual gradient as the whole model, and a fallback for heads that are more than a linear map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cocomix.errors import CocomixWarning
from cocomix.model import Transformer
from cocomix.model import chunked_nll as cn
from cocomix.teacher import Teacher
from tests.conftest import tiny_model_config


@pytest.mark.parametrize("rows", [1, 5, 1000])
def test_chunked_nll_equals_cross_entropy(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cn, "CHUNK_ELEMENTS", rows * 53)
    h = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(53, 16, dtype=torch.float64), torch.randn(53, dtype=torch.float64)
    ids = torch.randint(0, 53, (3, 9))
    got = cn.chunked_nll(h, w, b, ids)
    want = F.cross_entropy(F.linear(h, w, b)[:, :-1].reshape(-1, 53), ids[:, 1:].reshape(-1))
    assert torch.allclose(got, want, rtol=1e-12)
    (g1,) = torch.autograd.grad(got, h)
    (g2,) = torch.autograd.grad(want, h)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)


def _whole_model_pass(teacher: Teacher, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, grad) through the whole model's logits: the reference for the split path."""
    teacher._split_ok = False
    try:
        tp = teacher.residual_and_grad(ids)
    finally:
        teacher._split_ok = None
    assert tp.logits is not None
    return tp.loss, tp.grad


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_split_teacher_gives_the_whole_model_gradient(flavour: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.export import export_hf

    monkeypatch.setattr(cn, "CHUNK_ELEMENTS", 7 * 97)  # 7 positions per chunk
    model = Transformer(tiny_model_config(flavour, n_layer=3)).eval()
    export_hf(model, tmp_path / "hf")
    ids = torch.randint(0, 97, (2, 16))
    for teacher in (Teacher(model, layer=1), Teacher.from_pretrained(tmp_path / "hf", layer=1)):
        loss, grad = _whole_model_pass(teacher, ids)
        tp = teacher.residual_and_grad(ids)
        assert teacher._split_ok is True and tp.logits is None  # the chunked path was taken
        assert torch.allclose(tp.loss, loss, rtol=1e-6) and (tp.grad - grad).abs().max() < 1e-7


def test_heads_that_are_not_a_linear_map_use_the_whole_model(tmp_path: Path) -> None:
    from cocomix.export import export_hf

    export_hf(Transformer(tiny_model_config(n_layer=3)).eval(), tmp_path / "hf")
    ids = torch.randint(0, 97, (2, 16))
    capped = Teacher.from_pretrained(tmp_path / "hf", layer=1)
    capped.model.config.final_logit_softcapping = 30.0  # declared in the config: never split
    tp = capped.residual_and_grad(ids)
    assert capped._split_ok is False and tp.logits is not None
    odd = Teacher.from_pretrained(tmp_path / "hf", layer=1)
    trunk, head = odd._split()
    odd._split = lambda: ((lambda x: 2.0 * trunk(x)), head)  # a trunk that does not match the model
    with pytest.warns(CocomixWarning, match=r"through its LM head give loss .*from whole logits"):
        tp = odd.residual_and_grad(ids)
    assert odd._split_ok is False and tp.logits is not None  # the one-time check caught it


def test_the_split_check_allows_the_rounding_of_the_logits_matmuls() -> None:
    from cocomix.teacher import split_rtol

    assert split_rtol(torch.zeros(1)) == 1e-4  # fp32: the check's own 1e-4
    assert split_rtol(torch.zeros(1, dtype=torch.bfloat16)) == 2 * 2.0 ** -7  # bf16: chunks may round otherwise
    assert split_rtol(torch.zeros(1, dtype=torch.float64)) == 1e-4


def test_forward_without_grad_computes_no_gradient() -> None:
    h = torch.randn(2, 9, 16)
    w = torch.randn(53, 16)
    ids = torch.randint(0, 53, (2, 9))
    with torch.no_grad():
        got = cn.chunked_nll(h, w, None, ids)
    want = F.cross_entropy(F.linear(h, w)[:, :-1].reshape(-1, 53), ids[:, 1:].reshape(-1))
    assert torch.allclose(got, want, rtol=1e-6)


def test_upstream_gradient_scales_the_stored_gradient() -> None:
    h = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(53, 16, dtype=torch.float64)
    ids = torch.randint(0, 53, (2, 9))
    (g1,) = torch.autograd.grad(3.5 * cn.chunked_nll(h, w, None, ids), h)
    want = F.cross_entropy(F.linear(h, w)[:, :-1].reshape(-1, 53), ids[:, 1:].reshape(-1))
    (g2,) = torch.autograd.grad(3.5 * want, h)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)


def test_a_bf16_head_rounds_the_gradient_as_autograd_does() -> None:
    """In bf16, G = (softmax − onehot)/N is rounded once before the matmul, as autograd's backward of the mean
    NLL over bf16 logits does: no worse than it against an fp64 reference (the division after the bf16 matmul
    rounded a second time); the head's own gradients are unchanged in fp32."""
    torch.manual_seed(0)
    h64 = torch.randn(4, 50, 64, dtype=torch.float64)  # N = 4 · 49 rows: dividing by N is not exact
    w64 = torch.randn(300, 64, dtype=torch.float64) * 0.2
    ids = torch.randint(0, 300, (4, 50))
    h = h64.bfloat16().requires_grad_()
    w = w64.bfloat16()
    (got,) = torch.autograd.grad(cn.chunked_nll(h, w, None, ids), h)
    flat = F.linear(h, w)[:, :-1].reshape(-1, 300).float()
    (auto,) = torch.autograd.grad(F.cross_entropy(flat, ids[:, 1:].reshape(-1)), h)
    ref64 = h64.clone().requires_grad_()
    (ref,) = torch.autograd.grad(F.cross_entropy(F.linear(ref64, w.double())[:, :-1].reshape(-1, 300),
                                                 ids[:, 1:].reshape(-1)), ref64)
    err = (got.double() - ref).norm() / ref.norm()
    assert err <= 1.02 * (auto.double() - ref).norm() / ref.norm()  # rounding after the matmul too: 1.19×
    assert (got != auto).float().mean() < 0.01  # the same bf16 values but for rare last-bit differences
