"""The TopK SAE training objective of Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", §2):
initialisation, the loss (normalised MSE + AuxK) and the unit-norm decoder constraint.

With x_n the (optionally layer-normed) input, z = TopK(W_enc(x_n − b_pre) + b_enc) and x̂_n = W_dec z + b_pre:

    L     = ‖x_n − x̂_n‖² / ‖x_n − mean(x_n)‖²                      (FVU of the batch, in the SAE's input space)
    L_aux = min(n_dead / k_aux, 1) · ‖e − ê‖² / ‖x_n − mean(x_n)‖²   e = x_n − x̂_n (detached),
            ê = W_dec · ReLU(TopK_{k_aux}(pre-activations of dead latents only))
    loss  = L + α · L_aux                                            (α = 1/32, k_aux = d_in / 2)

L_aux is EleutherAI sparsify's form of Gao et al.'s AuxK: scaled by the share of k_aux that is dead and normalised
by the input's variance. OpenAI's `sparse_autoencoder` normalises it by the variance of the residual e instead and
has no scale, so its AuxK is stronger by about 1/FVU. AuxK is meant to revive dead latents; in short, small runs
it can do the opposite: on the demo teacher (block 1, 2048 latents, k 16, 300 steps of 1024 tokens, dead after
20,480 tokens without firing) α = 1/32 left 37% of the latents dead against 14% with α = 0, at the same FVU
(0.060), because its gradient lowers the dead latents' encoder biases. Compare `--auxk-alpha 0` on such runs.

The encoder's backward is sparse (`TopKEncode`): only the k selected pre-activations per token receive gradient,
so the encoder gradient is gathered per latent (B·k·d work) instead of the dense (N, C) × (N, d) product.

Initialisation: b_pre = geometric median of a sample of inputs; decoder columns random unit vectors and the
encoder their transpose ("decoder-based" init); b_enc = 0. After every step the decoder columns are renormalised to
unit norm, and before it the gradient component parallel to each column is removed (it would only change the norm).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cocomix.sae.topk import TopKSAE


class TopKEncode(torch.autograd.Function):
    """values, indices = topk((x − b_pre) @ W_enc.T + b_enc, k) with a sparse backward.

    x (N, d), b_pre (d,), W_enc (C, d), b_enc (C,). Gradients go to b_pre, W_enc and b_enc (not to x: the input
    activations are data). W_enc's gradient gathers, per latent, the tokens that selected it.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
        x_in = x - b_pre  # (N, d)
        values, indices = torch.topk(F.linear(x_in, W_enc, b_enc), k, dim=-1)  # (N, k) each
        ctx.save_for_backward(x_in, W_enc, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx: Any, g_values: Tensor, _g_indices: Tensor) -> tuple[Tensor | None, ...]:
        x_in, W_enc, indices = ctx.saved_tensors
        k, C = indices.shape[1], W_enc.shape[0]
        flat = indices.reshape(-1)  # (N·k,) latent of each (token, slot) pair
        g_flat = g_values.reshape(-1)
        order = torch.argsort(flat, stable=True)  # pairs grouped by latent
        counts = torch.bincount(flat, minlength=C)  # (C,)
        rows = torch.div(order, k, rounding_mode="floor")  # token of each sorted pair
        starts, g_sorted = torch.cumsum(counts, 0) - counts, g_flat[order]
        d_W = F.embedding_bag(rows, x_in, starts, mode="sum", per_sample_weights=g_sorted)  # (C, d)
        # the same per-latent sums of g alone (a one-row table of ones): a fixed summation order, where CUDA's
        # index_add_ would accumulate in a run-dependent one (equal on CPU, bit for bit)
        ones = torch.ones(1, 1, dtype=g_values.dtype, device=g_values.device)
        d_b = F.embedding_bag(torch.zeros_like(rows), ones, starts, mode="sum",
                              per_sample_weights=g_sorted).squeeze(1)  # (C,)
        d_pre = -(d_b @ W_enc) if ctx.needs_input_grad[1] else None  # Σ over tokens of −∂/∂x_in
        return None, d_pre, d_W, d_b, None


def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's iteration: argmin_m Σ‖p − m‖ over points (N, d) -> (d,), computed in float64."""
    p = points.double()
    m = p.mean(0)
    for _ in range(iters):
        w = 1.0 / (p - m).norm(dim=1).clamp_min(1e-12)  # (N,)
        new = (w[:, None] * p).sum(0) / w.sum()
        if (new - m).norm() <= tol * max(1.0, float(m.norm())):
            m = new
            break
        m = new
    return m.to(points.dtype)


@torch.no_grad()
def initialize(sae: TopKSAE, sample: Tensor, generator: torch.Generator) -> None:
    """Decoder-based init on `sample` (N, d_in) raw activations; deterministic given the generator."""
    x, _ = sae.preprocess(sample)
    sae.pre_bias.copy_(geometric_median(x) if sae.encode_pre_bias else torch.zeros_like(sae.pre_bias))
    directions = torch.randn(sae.n_latents, sae.d_in, generator=generator, dtype=torch.float64)  # (C, d)
    directions = (directions / directions.norm(dim=1, keepdim=True)).to(sae.W_dec.dtype)
    sae.W_dec.copy_(directions.t())
    sae.W_enc.copy_(directions)
    sae.latent_bias.zero_()


def sae_losses(sae: TopKSAE, x: Tensor, dead: Tensor | None, k_aux: int,
               rows: slice | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(fvu, auxk, values, indices) for a batch x (N, d_in) of raw activations; `dead` is a (C,) bool mask.

    values, indices (N, k) are the batch's TopK code (for firing statistics); auxk is 0 when no latent is dead.
    With `rows` (a rank's share under torchrun) both losses sum over those rows only, still divided by the whole
    batch's variance: the ranks' losses (and gradients) add up to the whole batch's.
    """
    x_n, _ = sae.preprocess(x)  # (N, d)
    total_var = (x_n - x_n.mean(0)).pow(2).sum().clamp_min(1e-12)
    if rows is not None:
        x_n = x_n[rows]  # (n, d)
    b_pre = sae.pre_bias if sae.encode_pre_bias else torch.zeros_like(sae.pre_bias)
    values, indices = TopKEncode.apply(x_n, b_pre, sae.W_enc, sae.latent_bias, sae.k)  # (N, k) each
    values = values.clamp_min(0)
    recon = F.embedding_bag(indices, sae.W_dec.t(), per_sample_weights=values, mode="sum") + sae.pre_bias  # (N, d)
    error = x_n - recon  # (N, d)
    fvu = error.pow(2).sum() / total_var
    auxk = fvu.new_zeros(())
    dead_ids = dead.nonzero().squeeze(1) if dead is not None else None  # (n_dead,)
    if dead_ids is not None and dead_ids.numel():
        n_dead = dead_ids.numel()
        k = min(k_aux, n_dead)
        aux_values, aux_pos = TopKEncode.apply(x_n, b_pre, sae.W_enc[dead_ids], sae.latent_bias[dead_ids], k)
        e_hat = F.embedding_bag(dead_ids[aux_pos], sae.W_dec.t(), per_sample_weights=aux_values.clamp_min(0),
                                mode="sum")  # (N, d)
        auxk = min(n_dead / k_aux, 1.0) * (e_hat - error.detach()).pow(2).sum() / total_var
    return fvu, auxk, values.detach(), indices


@torch.no_grad()
def remove_parallel_decoder_grad(sae: TopKSAE) -> None:
    """Project each decoder column's gradient onto the column's orthogonal complement (W_dec columns unit norm)."""
    if sae.W_dec.grad is None:
        return
    W, g = sae.W_dec, sae.W_dec.grad  # (d, C) each
    g.sub_((g * W).sum(0, keepdim=True) * W)


@torch.no_grad()
def normalize_decoder(sae: TopKSAE) -> None:
    """Rescale every decoder column to unit norm."""
    sae.W_dec.div_(sae.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12))
