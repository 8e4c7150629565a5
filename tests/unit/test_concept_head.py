"""The fused, chunked concept head (`cocomix.model.concept_head`) computes what predictor → concept_loss → topk
computes — values, indices, loss and every gradient — without keeping the N × C logits for the backward; without
targets (eval, generation) the seam's TopK runs over row chunks and gives what the whole logits give."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cocomix.config import ModelConfig
from cocomix.methods.cocomix import concept_loss
from cocomix.model import Transformer
from cocomix.model import concept_head as ch
from cocomix.model.concept import ConceptSeam

N, D, C, A, K = 37, 16, 300, 4, 8


def _inputs() -> tuple[torch.Tensor, ...]:
    x = torch.randn(N, D, requires_grad=True)
    w = (torch.randn(C, D) * 0.3).requires_grad_(True)
    b = (torch.randn(C) * 0.1).requires_grad_(True)
    t = torch.randint(0, C, (N, A))
    t[::5] = -1  # invalid positions
    return x, w, b, t


def _grads(loss: torch.Tensor, values: torch.Tensor, g_values: torch.Tensor, *params: torch.Tensor) -> list:
    return list(torch.autograd.grad(3.0 * loss + (values * g_values).sum(), params))


@pytest.mark.parametrize("rows", [1, 7, N])
def test_fused_head_equals_the_unfused_one(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ch, "CHUNK_ELEMENTS", rows * C)
    x, w, b, t = _inputs()
    values, indices, loss = ch.ConceptHeadFn.apply(x, w, b, t, K)
    z = F.linear(x, w, b)  # (N, C)
    ref_loss = concept_loss(z[None], t[None])
    ref_values, ref_indices = torch.topk(z, K, dim=-1)
    assert torch.equal(indices, ref_indices) and torch.allclose(values, ref_values, atol=1e-6)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    g_values = torch.randn(N, K)
    got = _grads(loss, values, g_values, x, w, b)
    want = _grads(ref_loss, ref_values, g_values, x, w, b)
    for g, r in zip(got, want, strict=True):
        assert torch.allclose(g, r, atol=1e-5), (g - r).abs().max()


def test_fused_head_keeps_fp64_inputs_in_fp64(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp64 inputs give an fp64 loss and gradients to fp64 rounding (gradient checks need it), as chunked_nll."""
    monkeypatch.setattr(ch, "CHUNK_ELEMENTS", 7 * C)
    x, w, b, t = _inputs()
    x, w, b = (v.detach().double().requires_grad_(True) for v in (x, w, b))
    values, _, loss = ch.ConceptHeadFn.apply(x, w, b, t, K)
    z = F.linear(x, w, b)  # (N, C) fp64
    valid = t[:, 0] >= 0
    ref_loss = (torch.logsumexp(z, -1) - z.gather(-1, t.clamp_min(0)).mean(-1))[valid].mean()
    assert loss.dtype == torch.float64 and concept_loss(z[None], t[None]).dtype == torch.float64
    assert abs(float((loss - ref_loss).detach())) < 1e-13
    g_values = torch.randn(N, K, dtype=torch.float64)
    got = _grads(loss, values, g_values, x, w, b)
    want = _grads(ref_loss, torch.topk(z, K, dim=-1).values, g_values, x, w, b)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == torch.float64 and (g - r).abs().max() < 1e-12, (g - r).abs().max()


@pytest.mark.parametrize("rows", [7, N])
def test_fused_head_under_bf16_autocast_matches_the_unfused_one(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast (what GPUs train in) the fused head computes its logits, ∂x and ∂W in bf16, as a
    plain Linear does, and returns fp32 gradients for the fp32 parameters: within bf16 rounding of the unfused
    path's."""
    monkeypatch.setattr(ch, "CHUNK_ELEMENTS", rows * C)
    x, w, b, t = _inputs()
    g_values = torch.randn(N, K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values, indices, loss = ch.ConceptHeadFn.apply(x, w, b, t, K)
    # a region of its own: in one region torch 2.6's autocast cache hands F.linear the bf16 copy of w that the
    # fused forward made without gradient tracking, and w gets no gradient (torch 2.13 does not; training uses
    # the predictor's weight in the fused head alone, so only this side-by-side is affected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = F.linear(x, w, b)  # (N, C) bf16
        ref_loss = concept_loss(z[None], t[None])
        ref_values, _ = torch.topk(z, K, dim=-1)
    assert values.dtype == torch.bfloat16 and torch.equal(values, ref_values)
    assert torch.allclose(loss, ref_loss.float(), rtol=1e-3)
    got = _grads(loss, values.float(), g_values, x, w, b)
    want = _grads(ref_loss, ref_values.float(), g_values, x, w, b)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        assert (g - r).abs().max() <= 5e-3 * r.abs().max(), (g - r).abs().max()


def test_without_topk_only_the_loss_flows() -> None:
    x, w, b, t = _inputs()
    values, indices, loss = ch.ConceptHeadFn.apply(x, w, b, t, 0)
    assert values.shape == (N, 0) and indices.shape == (N, 0)
    (gx,) = torch.autograd.grad(loss, x)
    (rx,) = torch.autograd.grad(concept_loss(F.linear(x, w, b)[None], t[None]), x)
    assert torch.allclose(gx, rx, atol=1e-6)


def test_no_n_by_c_tensor_is_kept_for_the_backward() -> None:
    x, w, b, t = _inputs()
    sizes: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ch.ConceptHeadFn.apply(x, w, b, t, K)
    assert sizes and max(sizes) < N * C  # x, weight, lse, indices, targets: never the logits
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        concept_loss(F.linear(x, w, b)[None], t[None])
    assert max(sizes) >= N * C  # the unfused path keeps them


def test_model_with_targets_trains_like_the_unfused_path() -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, n_layer=3, n_head=4, d_model=32, context_length=64))
    model.set_seam(ConceptSeam(1, 32, C, K))
    ids = torch.randint(0, 97, (3, 20))
    t = torch.randint(0, C, (3, 20, A))
    t[:, -1] = -1
    fused = model(ids, concept_targets=t)
    plain = model(ids, concept_logits=True)
    assert "concept_logits" not in fused.aux and torch.allclose(fused.logits, plain.logits, atol=1e-5)
    ref = concept_loss(plain.aux["concept_logits"], t)
    assert torch.allclose(fused.aux["concept_loss"], ref, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(fused.logits.square().mean() + fused.aux["concept_loss"], params)
    g2 = torch.autograd.grad(plain.logits.square().mean() + ref, params)
    for a, r in zip(g1, g2, strict=True):
        assert torch.allclose(a, r, atol=1e-5)


def _logit_rows(fn: object) -> int:
    """The most rows of any (…, C) tensor (concept logits or a chunk of them) an op creates while fn() runs;
    the predictor weight's transpose (d, C) is not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Rows(TorchDispatchMode):
        most = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                logit_shaped = isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == C
                if logit_shaped and func != torch.ops.aten.t.default:
                    Rows.most = max(Rows.most, t.numel() // C)
            return out

    with Rows():
        fn()
    return Rows.most


@pytest.mark.parametrize("rows", [7, 25, 1000])
def test_inference_topk_runs_over_row_chunks_and_equals_the_whole_logits(
        rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ch, "CHUNK_ELEMENTS", rows * C)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, n_layer=3, n_head=4, d_model=32, context_length=64))
    model.set_seam(ConceptSeam(1, 32, C, K))
    model.double()
    ids = torch.randint(0, 97, (3, 20))  # 60 positions: 9, 3 or 1 chunks
    with torch.no_grad():
        lean, whole = model(ids), model(ids, concept_logits=True)
        assert "concept_logits" not in lean.aux and whole.aux["concept_logits"].shape == (3, 20, C)
        assert torch.equal(lean.logits, whole.logits) if rows >= 60 else torch.allclose(lean.logits, whole.logits,
                                                                                       atol=1e-12)
        assert _logit_rows(lambda: model(ids)) == min(rows, 60)  # a chunk of logits at a time
        assert _logit_rows(lambda: model(ids, concept_logits=True)) == 60  # all (3, 20, C) at once
        seam = model.seam
        z = whole.aux["concept_logits"]
        steered = z.argmin(dim=-1)[0, :2]  # two weak concepts, × −40: they enter the TopK somewhere
        seam.steer(steered, torch.tensor([-40.0, -40.0]))
        s_lean = model(ids)
        lean_topk = seam.last_topk
        s_whole = model(ids, concept_logits=True)
        seam.steer(None)
    assert torch.equal(lean_topk, seam.last_topk) and torch.allclose(s_lean.logits, s_whole.logits, atol=1e-12)
    assert not torch.allclose(s_lean.logits, lean.logits)
    params = [p for p in model.parameters() if p.requires_grad]  # with autograd on, no targets: same gradients
    g1 = torch.autograd.grad(model(ids).logits.square().mean(), params, allow_unused=True)
    g2 = torch.autograd.grad(model(ids, concept_logits=True).logits.square().mean(), params, allow_unused=True)
    for a, r in zip(g1, g2, strict=True):
        assert (a is None and r is None) or torch.allclose(a, r, atol=1e-12)


def test_a_training_forward_under_steering_keeps_the_concept_loss() -> None:
    """Targets with steering on take the whole-logits branch; L_concept scores the unsteered prediction there, the
    same value the fused head gives, while the mixed TopK is the steered one."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, n_layer=3, n_head=4, d_model=32, context_length=64))
    model.set_seam(ConceptSeam(1, 32, C, K))
    model.double()
    ids = torch.randint(0, 97, (2, 12))
    targets = torch.randint(0, C, (2, 12, 4))
    targets[:, -1] = -1
    plain = model(ids, concept_targets=targets)
    with torch.no_grad():
        z = model(ids, concept_logits=True).aux["concept_logits"]
    model.seam.steer(z.argmin(dim=-1)[0, :1], torch.tensor([-40.0]))
    steered = model(ids, concept_targets=targets)
    model.seam.steer(None)
    assert "concept_loss" in steered.aux
    assert torch.allclose(steered.aux["concept_loss"], plain.aux["concept_loss"], atol=1e-12)
    assert not torch.allclose(steered.logits, plain.logits)  # the steered concept was mixed
    steered.aux["concept_loss"].backward()
    grad = model.seam.predictor.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
