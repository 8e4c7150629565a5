"""Attribution scores and concept targets (paper §2.2, Eq. 1; official semantics, official-implementation.md §2.1).

Official default: with g = ∂L/∂h the gradient of the teacher's mean next-token NLL over the window with
respect to the residual stream h at `teacher_layer`, and z the SAE's post-TopK activations of h,

    s[b, t, i] = z[b, t, i] · (g[b, t] · W_dec[:, i])

(no std rescaling, as in the official code), and the targets are the `k_attr` largest *signed* scores. Only the
`sae_k` active latents can score non-zero, so only their W_dec columns are gathered (B·T·k·d work instead of
B·T·C·d). The dense `torch.topk` of the official code ranks positive scores first, then zero-score latents
(inactive ones included), then negative scores; `select_targets` reproduces that order by adding zero-score
candidates (the smallest latent ids not active at that position).

The final position of a window has no next token, so its gradient and scores are zero: its targets are
marked invalid with -1.

The SAE encode and the attribution run in row chunks, so its (rows, C) pre-activations never span the whole
batch.

`selection="activation"` is the paper's ablation (§3.3a): the `k_attr` latents with the largest activation.
`multiplier="pre_activation"` is Eq. 1's multiplier: s = c_pre ⊙ (g · W_dec) with the SAE's pre-TopK
activations, so inactive latents can score too; it needs all C decoder columns and is computed in row chunks to
bound memory. `attribution_loss="next_token"` is Eq. 1's loss: each position's scores use the gradient of its own
next-token NLL only (see `cocomix.teacher_eq1`; one teacher backward pass through own-position attention). Both take
the gradient at the teacher's true residual stream h_t, as the official code does. `gradient_at="reconstruction"`
(with `next_token`) takes it as Eq. 1 writes it: with the teacher run from the SAE's reconstruction D(c_t) at
position t and the true h_<t before it, ∂/∂D(c_t) (two teacher forwards and one backward). The chain rule to c_t
through an input-normalising SAE's decoder adds a positive per-position factor (the residual's std), which leaves
each position's ranking, hence the targets, unchanged; it is not applied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cocomix.config import ATTRIBUTION_LOSSES, GRADIENT_POINTS
from cocomix.errors import ConfigError

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher

SELECTIONS = ("attribution", "activation")
MULTIPLIERS = ("activation", "pre_activation")
SAE_CHUNK_ELEMENTS = 1 << 24  # rows × C per chunk of the dense pre-activation scores
INVALID = -1


def active_attribution(grad: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                       W_dec: torch.Tensor) -> torch.Tensor:
    """Scores of the active latents: grad (B, T, d), values/indices (B, T, k), W_dec (d, C) -> (B, T, k)."""
    cols = F.embedding(indices, W_dec.t())  # (B, T, k, d): the decoder directions of the active latents
    return torch.einsum("btd,btkd->btk", grad.to(cols.dtype), cols) * values


def select_targets(scores: torch.Tensor, indices: torch.Tensor, k_attr: int) -> torch.Tensor:
    """Top `k_attr` latent ids by signed score among active latents, ranked as a dense topk over all C would.

    scores, indices (B, T, k) -> (B, T, k_attr) int64. Zero-score candidates are the smallest latent ids that
    are not active, so a position with fewer than k_attr positive scores gets the same set as the official
    dense topk would (up to its arbitrary choice among zeros).
    """
    B, T, k = indices.shape
    cand = torch.arange(k + k_attr, device=indices.device).expand(B, T, k + k_attr)  # (B, T, k + k_attr)
    taken = (cand[..., :, None] == indices[..., None, :]).any(-1)  # (B, T, k + k_attr)
    key = torch.where(taken, torch.full_like(cand, k + k_attr + 1), cand)
    fill = torch.topk(-key, k_attr, dim=-1).indices  # positions of the k_attr smallest free ids
    fill_ids = torch.gather(cand, -1, fill)  # (B, T, k_attr)
    all_scores = torch.cat((scores, torch.zeros_like(scores[..., :k_attr])), dim=-1)  # (B, T, k + k_attr)
    all_ids = torch.cat((indices, fill_ids), dim=-1)
    order = torch.sort(all_scores, dim=-1, descending=True, stable=True).indices[..., :k_attr]  # (B, T, k_attr)
    return torch.gather(all_ids, -1, order)  # ties keep candidate order: active latents, then ascending free ids


def dense_preactivation_targets(grad: torch.Tensor, pre: torch.Tensor, W_dec: torch.Tensor,
                                k_attr: int) -> torch.Tensor:
    """Eq. 1 with the pre-activation: top k_attr of c_pre ⊙ (g · W_dec) over all C latents.

    grad (B, T, d), pre (B, T, C), W_dec (d, C) -> (B, T, k_attr) int64.
    """
    B, T, C = pre.shape
    g, p = grad.reshape(B * T, -1).to(W_dec.dtype), pre.reshape(B * T, C)
    rows = max(1, SAE_CHUNK_ELEMENTS // C)
    out = []
    for s in range(0, B * T, rows):
        scores = (g[s:s + rows] @ W_dec) * p[s:s + rows]  # (rows, C)
        out.append(torch.topk(scores, k_attr, dim=-1).indices)
    return torch.cat(out).view(B, T, k_attr)


def check_option_names(k_attr: int, selection: str, multiplier: str, attribution_loss: str,
                       gradient_at: str) -> None:
    """ConfigError for target options that are unknown or do not fit together (no SAE needed: a command checks
    them before the teacher and SAE load)."""
    for name, value, allowed in (("multiplier", multiplier, MULTIPLIERS), ("selection", selection, SELECTIONS),
                                 ("attribution_loss", attribution_loss, ATTRIBUTION_LOSSES),
                                 ("gradient_at", gradient_at, GRADIENT_POINTS)):
        if value not in allowed:
            raise ConfigError(f"{name}: expected one of {allowed}, got {value!r}")
    if isinstance(k_attr, bool) or not isinstance(k_attr, int) or k_attr < 1:
        raise ConfigError(f"k_attr: expected an integer >= 1, got {k_attr!r}")
    if selection == "activation" and (multiplier, attribution_loss, gradient_at) != (
            "activation", "window_mean", "residual"):
        raise ConfigError("selection=activation takes the most active latents: multiplier, attribution_loss and "
                          "gradient_at apply to selection=attribution only; leave them at their defaults")
    if gradient_at == "reconstruction" and attribution_loss != "next_token":
        raise ConfigError("gradient_at=reconstruction: needs attribution_loss=next_token (paper Eq. 1)")


def check_target_options(sae: TopKSAE, k_attr: int, selection: str, multiplier: str, attribution_loss: str,
                         gradient_at: str) -> None:
    """ConfigError for target options that do not fit together or the SAE (before any work is done)."""
    check_option_names(k_attr, selection, multiplier, attribution_loss, gradient_at)
    if not 1 <= k_attr <= sae.k:
        raise ConfigError(f"k_attr: expected an integer in [1, sae k={sae.k}], got {k_attr}")
    if sae.n_latents < sae.k + k_attr:  # select_targets fills from the ids below k + k_attr
        raise ConfigError(f"SAE with {sae.n_latents} latents: need at least sae k + k_attr = {sae.k + k_attr} "
                          "latents to choose targets from")


@torch.no_grad()
def compute_targets(teacher: Teacher, sae: TopKSAE, ids: torch.Tensor, k_attr: int = 4,
                    selection: str = "attribution", multiplier: str = "activation",
                    attribution_loss: str = "window_mean", gradient_at: str = "residual") -> torch.Tensor:
    """Concept targets (B, T, k_attr) int64 for windows ids (B, T); the final position is INVALID (-1).

    `teacher` is a `cocomix.teacher.Teacher`, `sae` a `cocomix.sae.TopKSAE` whose d_in matches the teacher's
    residual width.
    """
    check_target_options(sae, k_attr, selection, multiplier, attribution_loss, gradient_at)
    if selection == "activation":  # no gradient needed: a teacher forward gives the hidden state
        hidden, grad = teacher.hidden(ids), None
    else:
        reconstruct = (lambda h: reconstruction(sae, h)) if gradient_at == "reconstruction" else None
        tp = teacher.residual_and_grad(ids, loss=attribution_loss, reconstruct=reconstruct)
        hidden, grad = tp.hidden, tp.grad
    if hidden.shape[-1] != sae.d_in:
        raise ConfigError(f"SAE input width {sae.d_in} does not match the teacher's residual width "
                          f"{hidden.shape[-1]} at teacher_layer {teacher.layer}")
    hidden = hidden.to(sae.W_dec.dtype)
    B, T, d = hidden.shape
    flat_h = hidden.reshape(1, B * T, d)
    flat_g = grad.to(hidden.dtype).reshape(1, B * T, d) if grad is not None else None
    rows = max(1, SAE_CHUNK_ELEMENTS // (2 * sae.n_latents))  # bounds the SAE's (rows, C) pre-activations
    targets = []
    for s in range(0, B * T, rows):  # every position is independent: the same targets in row chunks
        if multiplier == "pre_activation" and selection == "attribution":
            pre, _ = sae.pre_activation(flat_h[:, s:s + rows])  # (1, n, C)
            targets.append(dense_preactivation_targets(flat_g[:, s:s + rows], pre, sae.W_dec, k_attr))
            continue
        values, indices, _ = sae.encode(flat_h[:, s:s + rows])  # (1, n, k) each
        if selection == "activation":
            scores = values
        else:
            scores = active_attribution(flat_g[:, s:s + rows], values, indices, sae.W_dec)  # (1, n, k)
        targets.append(select_targets(scores, indices, k_attr))
    targets = torch.cat(targets, dim=1).view(B, T, k_attr)
    targets[:, -1] = INVALID
    return targets


@torch.no_grad()
def reconstruction(sae: TopKSAE, hidden: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction D(TopK(E(h))) of hidden (B, T, d) in the residual's dtype, in row chunks."""
    if hidden.shape[-1] != sae.d_in:
        raise ConfigError(f"SAE input width {sae.d_in} does not match the teacher's residual width {hidden.shape[-1]}")
    flat = hidden.reshape(-1, hidden.shape[-1])  # (B·T, d)
    rows = max(1, SAE_CHUNK_ELEMENTS // sae.n_latents)
    out = torch.cat([sae(flat[s:s + rows]) for s in range(0, flat.shape[0], rows)])  # (B·T, d)
    return out.to(hidden.dtype).view_as(hidden)
