"""TopKSAE against the OpenAI TopK SAE equations written out directly (float64), sparse vs dense decode."""

from __future__ import annotations

import pytest
import torch

from cocomix.sae import TopKSAE

D, C, K = 12, 40, 5


def _random_sae(normalize: bool = True, dtype: torch.dtype = torch.float64, seed: int = 0, **kw) -> TopKSAE:
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(D, C, K, normalize=normalize, dtype=dtype, **kw)
    return sae.set_weights(
        pre_bias=0.1 * torch.randn(D, generator=g, dtype=dtype),
        W_enc=torch.randn(C, D, generator=g, dtype=dtype) / D**0.5,
        latent_bias=0.1 * torch.randn(C, generator=g, dtype=dtype),
        W_dec=torch.randn(D, C, generator=g, dtype=dtype),
    )


def _inputs(dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(2, 7, D, generator=g, dtype=dtype) + 0.5


def _reference(sae: TopKSAE, x: torch.Tensor):
    """OpenAI `LN` + `Autoencoder.encode`/`decode`, spelled out."""
    pb, We, lb, Wd = sae.pre_bias.detach(), sae.W_enc.detach(), sae.latent_bias.detach(), sae.W_dec.detach()
    if sae.normalize:
        mu = x.mean(-1, keepdim=True)
        xc = x - mu
        std = xc.std(-1, keepdim=True)  # Bessel-corrected
        xn = xc / (std + 1e-5)
    else:
        mu, std, xn = torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1]), x
    pre = (xn - pb) @ We.T + lb
    top = torch.topk(pre, sae.k, dim=-1)
    vals = torch.relu(top.values)
    z = torch.zeros_like(pre).scatter(-1, top.indices, vals)
    recon = (z @ Wd.T + pb) * std + mu
    return pre, vals, top.indices, z, recon, mu, std


@pytest.mark.parametrize("normalize", [True, False])
def test_encode_decode_match_direct_formula(normalize: bool) -> None:
    sae = _random_sae(normalize)
    x = _inputs()
    pre_ref, vals_ref, idx_ref, z_ref, recon_ref, mu_ref, std_ref = _reference(sae, x)
    with torch.no_grad():
        pre, info = sae.pre_activation(x)
        values, indices, info2 = sae.encode(x)
        z, _ = sae.encode_dense(x)
        recon = sae(x)
    assert pre.shape == (2, 7, C) and values.shape == indices.shape == (2, 7, K)
    assert indices.dtype == torch.int64
    assert (pre - pre_ref).abs().max() < 1e-10
    assert torch.equal(indices, idx_ref)
    assert (values - vals_ref).abs().max() < 1e-10
    assert (z - z_ref).abs().max() < 1e-10
    assert (recon - recon_ref).abs().max() < 1e-10
    assert (info["mu"] - mu_ref).abs().max() < 1e-12 and (info["std"] - std_ref).abs().max() < 1e-12
    assert info2["mu"].shape == (2, 7, 1) and info2["std"].shape == (2, 7, 1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_sparse_decode_equals_dense_decode(dtype: torch.dtype, tol: float) -> None:
    sae = _random_sae(dtype=dtype)
    x = _inputs(dtype)
    with torch.no_grad():
        values, indices, info = sae.encode(x)
        z, _ = sae.encode_dense(x)
        sparse = sae.decode_sparse(values, indices, info)
        dense = sae.decode(z, info)
    assert sparse.shape == x.shape
    assert (sparse - dense).abs().max() < tol * max(1.0, dense.abs().max().item())


def test_topk_selects_the_k_largest_pre_activations() -> None:
    sae = _random_sae()
    x = _inputs()
    with torch.no_grad():
        pre, _ = sae.pre_activation(x)
        _, indices, _ = sae.encode(x)
    chosen = pre.gather(-1, indices)
    mask = torch.ones_like(pre, dtype=torch.bool).scatter(-1, indices, False)
    rest_max = pre.masked_fill(~mask, float("-inf")).amax(-1)
    assert torch.all(chosen.amin(-1) >= rest_max)
    assert torch.all(chosen[..., :-1] >= chosen[..., 1:])  # torch.topk order: descending


def test_relu_zeroes_negative_values_among_the_top_k() -> None:
    sae = _random_sae()
    with torch.no_grad():
        sae.latent_bias -= 2.5  # push most pre-activations below zero
        pre, _ = sae.pre_activation(_inputs())
        values, indices, _ = sae.encode(_inputs())
    chosen = pre.gather(-1, indices)
    assert (chosen < 0).any() and (chosen > 0).any()
    assert torch.equal(values, chosen.clamp_min(0))
    assert torch.all(values[chosen < 0] == 0)


def test_identity_postact_keeps_negative_values() -> None:
    sae = _random_sae(postact="identity")
    with torch.no_grad():
        sae.latent_bias -= 2.5
        pre, _ = sae.pre_activation(_inputs())
        values, indices, _ = sae.encode(_inputs())
    assert torch.equal(values, pre.gather(-1, indices))


def test_relu_before_topk_gives_the_same_dense_code() -> None:
    a, b = _random_sae(), _random_sae(relu_before_topk=True)
    with torch.no_grad():
        a.latent_bias -= 2.5
        b.latent_bias -= 2.5
        x = _inputs()
        za, _ = a.encode_dense(x)
        zb, _ = b.encode_dense(x)
        assert torch.equal(za, zb)
        assert (a(x) - b(x)).abs().max() < 1e-12


def test_no_normalization_and_no_encode_pre_bias() -> None:
    sae = _random_sae(normalize=False, encode_pre_bias=False)
    x = _inputs()
    with torch.no_grad():
        pre, info = sae.pre_activation(x)
        recon = sae(x)
    assert torch.all(info["mu"] == 0) and torch.all(info["std"] == 1)
    assert (pre - (x @ sae.W_enc.T + sae.latent_bias)).abs().max() < 1e-10
    values, indices, _ = sae.encode(x)
    z = torch.zeros(2, 7, C, dtype=x.dtype).scatter(-1, indices, values)
    assert (recon - (z @ sae.W_dec.T + sae.pre_bias)).abs().max() < 1e-10


def test_sparse_decode_has_the_dense_decodes_gradients() -> None:
    grads = {}
    for sparse in (True, False):
        sae = _random_sae()  # the same weights both times (seeded), float64
        x = _inputs()
        values, indices, info = sae.encode(x)
        if sparse:
            recon = sae.decode_sparse(values, indices, info)
        else:  # the dense code written out: zeros(C) with the k values scattered in
            z = torch.zeros(*values.shape[:-1], C, dtype=values.dtype).scatter(-1, indices, values)
            recon = sae.decode(z, info)
        (recon.square().sum() + (recon * x).sum()).backward()
        grads[sparse] = {name: p.grad.clone() for name, p in sae.named_parameters()}
    assert set(grads[True]) == {"pre_bias", "W_enc", "latent_bias", "W_dec"}
    for name, g in grads[False].items():
        assert g.abs().max() > 0 and torch.allclose(grads[True][name], g, rtol=0, atol=1e-10), name


def test_layout_properties_and_validation() -> None:
    sae = _random_sae(dtype=torch.float32)
    assert sae.d_in == D and sae.n_latents == C
    assert sae.W_dec.shape == (D, C) and sae.W_enc.shape == (C, D)
    assert sae.W_dec.t().is_contiguous()  # columns are contiguous for the embedding-bag gather
    assert sae.double().W_dec.t().is_contiguous()
    with pytest.raises(ValueError, match="k must be in"):
        TopKSAE(D, C, C + 1)
    with pytest.raises(ValueError, match="postact must be one of"):
        TopKSAE(D, C, K, postact="gelu")
    with pytest.raises(ValueError, match="W_enc: expected shape"):
        sae.set_weights(
            pre_bias=torch.zeros(D), W_enc=torch.zeros(D, C), latent_bias=torch.zeros(C), W_dec=torch.zeros(D, C)
        )
