"""`train.chunked_lm_loss`: the student's next-token loss through the LM head in row chunks (fused linear CE,
`cocomix.model.chunked_nll`) gives the loss and every parameter gradient of the whole-logits path, for each
method that uses it, tied or untied head; for KD the NLL + λ·KL of `chunked_kd`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from cocomix.methods import METHODS, Batch
from cocomix.model import chunked_nll as cn


@pytest.mark.parametrize("rows", [1, 4, 1000])
def test_weight_and_bias_gradients_equal_cross_entropy(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cn, "CHUNK_ELEMENTS", rows * 53)
    h = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(53, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(53, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 53, (3, 9))
    got = cn.chunked_nll(h, w, b, ids)
    mine = torch.autograd.grad(2.5 * got + (w * w).sum(), (h, w, b))  # w also used outside: grads add up
    want = F.cross_entropy(F.linear(h, w, b)[:, :-1].reshape(-1, 53), ids[:, 1:].reshape(-1))
    theirs = torch.autograd.grad(2.5 * want + (w * w).sum(), (h, w, b))
    assert torch.allclose(got, want, rtol=1e-12)
    for a, e in zip(mine, theirs, strict=True):
        assert torch.allclose(a, e, rtol=1e-10, atol=1e-13)


def _run(method: str, chunked: bool, tie: bool) -> RunConfig:
    model = ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64, tie_embeddings=tie)
    concept = ConceptConfig(n_latents=80, concept_layer=2, mix_k=8, k_attr=4)
    return RunConfig(method=method, model=model, data=DataConfig(seq_len=16), concept=concept,
                     train=TrainConfig(chunked_lm_loss=chunked))


def _chunked_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one per `ChunkedNLL` forward from now on (the rows it reads): whether the loss went
    through the chunked head at all, which equal losses alone cannot tell."""
    calls: list[int] = []
    forward = cn.ChunkedNLL.forward

    def spy(ctx, h, *args):  # noqa: ANN001, ANN202
        calls.append(h.shape[0] * h.shape[1] if h.dim() == 3 else h.shape[0])
        return forward(ctx, h, *args)

    monkeypatch.setattr(cn.ChunkedNLL, "forward", staticmethod(spy))
    return calls


def _loss_and_grads(method: str, chunked: bool, tie: bool, ids: torch.Tensor,
                    targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    m = METHODS[method](_run(method, chunked, tie))
    m.targets = lambda batch: targets  # the teacher's labels, fixed (no teacher needed here)
    torch.manual_seed(3)
    model = m.build_model()
    loss, _ = m.loss(model, Batch(ids))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("method", ["ntp", "cocomix", "pause"])
def test_chunked_loss_and_gradients_equal_whole_logits(method: str, tie: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cn, "CHUNK_ELEMENTS", 7 * 97)  # 7 rows per chunk: several chunks, a ragged last one
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (3, 16))
    targets = torch.randint(0, 80, (3, 16, 4))
    targets[:, -1] = -1
    passes = _chunked_passes(monkeypatch)
    whole, g_whole = _loss_and_grads(method, False, tie, ids, targets)
    assert passes == []  # the whole-logits path
    chunked, g_chunked = _loss_and_grads(method, True, tie, ids, targets)
    assert len(passes) == 1 and passes[0] >= 3 * 15  # every position with a next token, in chunks of 7 rows
    assert torch.allclose(chunked, whole, rtol=1e-6)
    assert g_chunked.keys() == g_whole.keys()
    for name, g in g_whole.items():
        assert (g_chunked[name] - g).abs().max() <= 1e-5 * g.abs().max(), name  # fp32 rounding only


def test_eval_loss_and_no_logits_with_chunked_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run("ntp", True, True)
    m = METHODS["ntp"](run)
    model = m.build_model()
    ids = torch.randint(0, 97, (2, 16))
    passes = _chunked_passes(monkeypatch)
    with torch.no_grad():
        got = m.eval_loss(model, ids)
        assert len(passes) == 1
        whole = METHODS["ntp"](dataclasses.replace(run, train=TrainConfig())).eval_loss(model, ids)
        assert len(passes) == 1
        assert model(ids, lm_loss=True).logits is None
    assert torch.allclose(got, whole, rtol=1e-6)


def test_bf16_autocast_gives_close_loss_and_fp32_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = torch.randint(0, 97, (2, 16))
    out = {}
    passes = _chunked_passes(monkeypatch)
    for chunked in (False, True):
        m = METHODS["ntp"](_run("ntp", chunked, True))
        torch.manual_seed(3)
        model = m.build_model()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = m.loss(model, Batch(ids))
        assert len(passes) == int(chunked)
        loss.backward()
        assert model.lm_head.weight.grad.dtype == torch.float32
        out[chunked] = (loss.detach(), model.lm_head.weight.grad)
    assert torch.allclose(out[True][0], out[False][0], rtol=1e-5)  # measured: ~1e-7 (a bf16 log-sum-exp: ~1e-3)
    g_chunked, g_whole = out[True][1], out[False][1]
    assert (g_chunked - g_whole).abs().max() <= 1e-2 * g_whole.abs().max()  # bf16 rounding: measured ~0.4%


@pytest.mark.parametrize("rows", [1, 4, 1000])
def test_chunked_kd_equals_nll_plus_lambda_kl(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """NLL + λ·KL(p_teacher ‖ p_student) at positions 0 … T−2 and every gradient, in fp64, as the whole-logits
    formula written out; the NLL and KL it reports carry no gradient."""
    monkeypatch.setattr(cn, "CHUNK_ELEMENTS", rows * 53)
    h = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(53, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(53, dtype=torch.float64, requires_grad=True)
    ids, teacher = torch.randint(0, 53, (3, 9)), torch.randn(3, 9, 53, dtype=torch.float64) * 2
    total, nll, kl = cn.chunked_kd(h, w, b, ids, teacher, 0.3)
    logits = F.linear(h, w, b)[:, :-1].reshape(-1, 53)
    want_nll = F.cross_entropy(logits, ids[:, 1:].reshape(-1))
    log_t, log_s = F.log_softmax(teacher[:, :-1].reshape(-1, 53), -1), F.log_softmax(logits, -1)
    want_kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    assert torch.allclose(nll, want_nll, rtol=1e-12) and torch.allclose(kl, want_kl, rtol=1e-10)
    assert not nll.requires_grad and not kl.requires_grad
    mine = torch.autograd.grad(total, (h, w, b))
    theirs = torch.autograd.grad(want_nll + 0.3 * want_kl, (h, w, b))
    for a, e in zip(mine, theirs, strict=True):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("method", ["kd", "kd-pause"])
def test_kd_with_chunked_loss_trains_as_with_whole_logits(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.model import Transformer
    from cocomix.teacher import Teacher

    monkeypatch.setattr(cn, "CHUNK_ELEMENTS", 7 * 97)
    torch.manual_seed(0)
    teacher = Teacher(Transformer(_run("ntp", False, True).model), layer=0)
    ids = torch.randint(0, 97, (3, 16))
    out = {}
    passes = _chunked_passes(monkeypatch)
    for chunked in (False, True):
        m = METHODS[method](_run(method, chunked, False))
        m.teacher = teacher
        torch.manual_seed(3)
        model = m.build_model()
        loss, metrics = m.loss(model, Batch(ids))
        assert len(passes) == int(chunked)  # the teacher's own forward takes the whole-logits path
        loss.backward()
        out[chunked] = (loss.detach(), metrics, {n: p.grad for n, p in model.named_parameters()})
    (whole, mw, gw), (chunk, mc, gc) = out[False], out[True]
    assert torch.allclose(chunk, whole, rtol=1e-6)
    for key in ("loss", "kd_loss", "total_loss"):
        assert torch.allclose(mc[key], mw[key], rtol=1e-5), key
    for name, g in gw.items():
        assert (gc[name] - g).abs().max() <= 1e-5 * g.abs().max(), name


def test_no_gradient_work_under_no_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation (no_grad) with a trainable head forms no gradients in the forward (a parameter still reports
    needs_input_grad under no_grad, so the wrapper detaches); with grad enabled, it forms ∂L/∂W."""
    seen = []
    forward = cn.ChunkedNLL.forward

    def spy(ctx, *args):  # noqa: ANN001, ANN202
        seen.append(tuple(ctx.needs_input_grad[:2]))
        return forward(ctx, *args)

    monkeypatch.setattr(cn.ChunkedNLL, "forward", staticmethod(spy))
    w = torch.randn(53, 16, requires_grad=True)
    with torch.no_grad():
        cn.chunked_nll(torch.randn(2, 9, 16), w, None, torch.randint(0, 53, (2, 9)))
    cn.chunked_nll(torch.randn(2, 9, 16), w, None, torch.randint(0, 53, (2, 9)))
    assert seen == [(False, False), (False, True)]
