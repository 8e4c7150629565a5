"""SAE training objective: sparse encoder backward == dense autograd, FVU/AuxK formulas, decoder constraint, init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cocomix.errors import ConfigError
from cocomix.sae import TopKSAE
from cocomix.sae.objective import (
    TopKEncode,
    geometric_median,
    initialize,
    normalize_decoder,
    remove_parallel_decoder_grad,
    sae_losses,
)
from cocomix.sae.train_config import SAETrainConfig
from cocomix.sae.training import lr_at


def _sae(normalize: bool = True, dtype: torch.dtype = torch.float64) -> TopKSAE:
    sae = TopKSAE(12, 48, 5, normalize=normalize).to(dtype)
    initialize(sae, torch.randn(200, 12, dtype=dtype) * 3 + 1, torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.latent_bias.normal_(0, 0.1)
    return sae


def test_sparse_encoder_backward_equals_dense_autograd() -> None:
    torch.manual_seed(0)
    x = torch.randn(30, 12, dtype=torch.float64)
    W = torch.randn(48, 12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(48, dtype=torch.float64, requires_grad=True)
    b_pre = torch.randn(12, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(30, 5, dtype=torch.float64)

    values, indices = TopKEncode.apply(x, b_pre, W, b, 5)
    (values * weights).sum().backward()
    sparse = [t.grad.clone() for t in (W, b, b_pre)]
    for t in (W, b, b_pre):
        t.grad = None
    dense_values, dense_indices = torch.topk(F.linear(x - b_pre, W, b), 5, dim=-1)
    (dense_values * weights).sum().backward()
    assert torch.equal(indices, dense_indices) and torch.allclose(values, dense_values)
    for got, t in zip(sparse, (W, b, b_pre), strict=True):
        assert torch.allclose(got, t.grad, atol=1e-12), (got - t.grad).abs().max()


def test_fvu_is_the_batch_fraction_of_variance_unexplained() -> None:
    sae = _sae()
    x = torch.randn(64, 12, dtype=torch.float64) * 2
    fvu, auxk, values, indices = sae_losses(sae, x, None, 6)
    x_n, info = sae.preprocess(x)
    recon_n = (sae(x) - info["mu"]) / info["std"]  # the forward reconstruction, back in the SAE's input space
    direct = ((x_n - recon_n) ** 2).sum() / ((x_n - x_n.mean(0)) ** 2).sum()
    assert torch.allclose(fvu, direct) and float(auxk) == 0.0
    ref_values, ref_indices, _ = sae.encode(x)
    assert torch.equal(indices, ref_indices) and torch.allclose(values, ref_values)


def test_auxk_uses_only_dead_latents_and_trains_only_them() -> None:
    sae = _sae()
    x = torch.randn(64, 12, dtype=torch.float64)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[[3, 7, 20, 31, 40]] = True
    _, auxk, _, _ = sae_losses(sae, x, dead, 6)
    assert float(auxk.detach()) > 0
    auxk.backward()
    rows_with_grad = sae.W_enc.grad.abs().sum(1) > 0  # (C,)
    cols_with_grad = sae.W_dec.grad.abs().sum(0) > 0
    assert rows_with_grad.any() and not rows_with_grad[~dead].any() and not cols_with_grad[~dead].any()
    # with 5 dead latents and k_aux 6 the loss is scaled by 5/6 and uses all five
    _, auxk_big, _, _ = sae_losses(sae, x, dead, 5)
    assert not torch.allclose(auxk, auxk_big)


@pytest.mark.parametrize("k_aux", [3, 5, 6, 40])
def test_auxk_equals_the_dense_formula(k_aux: int) -> None:
    """AuxK (Gao et al. 2024): the top min(k_aux, n_dead) dead latents (ReLU) reconstruct the main error,
    min(n_dead / k_aux, 1) · ‖e_hat − (x_n − recon)‖² / total variance, written out with dense matrices."""
    sae = _sae()
    x = torch.randn(64, 12, dtype=torch.float64)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[[3, 7, 20, 31, 40]] = True
    _, auxk, _, _ = sae_losses(sae, x, dead, k_aux)
    x_n, _ = sae.preprocess(x)
    b_pre = sae.pre_bias if sae.encode_pre_bias else torch.zeros_like(sae.pre_bias)
    pre = (x_n - b_pre) @ sae.W_enc.T + sae.latent_bias                      # (N, C)
    top = torch.topk(pre, sae.k, dim=-1)
    code = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
    error = x_n - (code @ sae.W_dec.T + sae.pre_bias)                        # (N, d)
    dead_pre = pre.masked_fill(~dead, float("-inf"))
    aux = torch.topk(dead_pre, min(k_aux, 5), dim=-1)
    aux_code = torch.zeros_like(pre).scatter(-1, aux.indices, aux.values.clamp_min(0))
    e_hat = aux_code @ sae.W_dec.T
    total_var = ((x_n - x_n.mean(0)) ** 2).sum()
    want = min(5 / k_aux, 1.0) * ((e_hat - error) ** 2).sum() / total_var
    assert torch.allclose(auxk.detach(), want.detach(), rtol=1e-10), (float(auxk), float(want))


def test_decoder_constraint_keeps_unit_columns_and_removes_parallel_gradient() -> None:
    sae = _sae()
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    remove_parallel_decoder_grad(sae)
    parallel = (sae.W_dec.grad * sae.W_dec).sum(0)  # (C,)
    assert parallel.abs().max() < 1e-12
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(48, dtype=torch.float64) + 0.5)
    normalize_decoder(sae)
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(48, dtype=torch.float64))
    assert sae.W_dec.t().is_contiguous()  # the column-major layout decode_sparse relies on survives


def test_initialisation_is_decoder_based_and_pre_bias_is_the_geometric_median() -> None:
    sae = _sae(normalize=False)
    assert torch.allclose(sae.W_enc, sae.W_dec.t()) and torch.allclose(sae.W_dec.norm(dim=0),
                                                                         torch.ones(48, dtype=torch.float64))
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]], dtype=torch.float64)
    m = geometric_median(pts)
    assert m.norm() < 1.0  # the outlier barely moves the median (the mean would be ~25)
    sums = lambda c: (pts - c).norm(dim=1).sum()  # noqa: E731
    for delta in ([1e-3, 0], [0, 1e-3], [-1e-3, 0], [0, -1e-3]):
        assert sums(m) <= sums(m + torch.tensor(delta, dtype=torch.float64)) + 1e-9


def test_learning_rate_schedule_warms_up_holds_and_decays_to_zero() -> None:
    cfg = SAETrainConfig(teacher="t", teacher_layer=0, data="d", steps=100, warmup_steps=10, decay_fraction=0.2)
    lrs = [lr_at(s, cfg, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[50] == 1.0 and lrs[79] == 1.0
    assert lrs[80] == 1.0 and lrs[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    # a warm-up that runs into the decay follows the lower line: no jump from its top down to the decay
    for warmup in (95, 100):
        cfg = SAETrainConfig(teacher="t", teacher_layer=0, data="d", steps=100, warmup_steps=warmup,
                             decay_fraction=0.2)
        lrs = [lr_at(s, cfg, 1.0) for s in range(100)]
        assert max(abs(a - b) for a, b in zip(lrs, lrs[1:], strict=False)) <= 0.05 + 1e-12
        assert lrs[-1] == pytest.approx(0.05) and max(lrs) < 1.0


@pytest.mark.parametrize("change,message", [
    ({"k": 0}, "k: expected a positive integer"),
    ({"n_latents": 16, "k": 32}, "k: must not exceed n_latents=16"),
    ({"chunk_tokens": 5000}, "chunk_tokens: must be a multiple of batch_tokens"),
    ({"lr": float("nan")}, "lr: expected a finite number"),
    ({"decay_fraction": 1.5}, "decay_fraction"),
    ({"decay_fraction": "0.2"}, "decay_fraction: expected a finite number >= 0, got '0.2'"),
    ({"lr": True}, "lr: expected a finite number >= 0, got True"),  # (Adam at lr 1.0 otherwise)
    ({"auxk_alpha": True}, "auxk_alpha: expected a finite number"),
    ({"normalize": "false"}, "normalize: expected true or false, got 'false'"),
    ({"teacher_layer": -1}, "teacher_layer: expected a non-negative integer"),
])
def test_bad_settings_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SAETrainConfig(**{"teacher": "t", "teacher_layer": 0, "data": "d", **change})


def test_sae_training_defaults_follow_gao_et_al() -> None:
    """Gao et al. 2024 / OpenAI's sparse_autoencoder: k = 32, layer-normed input, AuxK α = 1/32 with k_aux = d/2,
    lr 2e-4 / √(C / 2^14); width 32 × d (ours); a latent is dead after 10M tokens without firing (capped at a
    quarter of a shorter run)."""
    cfg = SAETrainConfig(teacher="t", teacher_layer=5, data="d")
    assert (cfg.k, cfg.normalize, cfg.auxk_alpha, cfg.expansion) == (32, True, 1.0 / 32, 32)
    assert cfg.width(768) == 24576 and cfg.aux_latents(768) == 384
    assert cfg.learning_rate(768) == pytest.approx(2e-4 / (24576 / 16384) ** 0.5, rel=1e-12)
    long_run = SAETrainConfig(teacher="t", teacher_layer=5, data="d", steps=100_000, batch_tokens=4096)
    assert long_run.dead_after == 10_000_000 and cfg.dead_after == 2000 * 4096 // 4
    given = SAETrainConfig(teacher="t", teacher_layer=5, data="d", n_latents=32768, lr=1e-3, k_aux=100)
    assert (given.width(768), given.learning_rate(768), given.aux_latents(768)) == (32768, 1e-3, 100)
