"""Own-position attention: causal attention whose backward keeps only each position's path to itself.

Paper Eq. 1 scores a concept at position t by the gradient of that position's own next-token loss,
∂NLL_t/∂h_t. In a decoder whose only cross-position operator is causal attention, h_t reaches NLL_t along one
stream only: position t's own, through its own query, key and value at every layer above (a path through a later
position u > t never comes back to t; no earlier position depends on h_t). So if, in each attention layer, the
keys and values of the *other* positions are held constant for the backward pass, the gradient of Σ_t NLL_t at
h_t is ∂NLL_t/∂h_t for every t at once: one backward pass instead of one per position.

`own_position_attention` computes ordinary softmax attention (the forward values are unchanged) with that
backward. Without logit soft-capping it is SDPA on detached keys and values (which already gives each query its
whole gradient) plus a term that is zero in value and carries the own-position paths: ∂out_u/∂v_u = p_uu and
∂out_u/∂s_uu = p_uu (v_u − out_u) through the own score s_uu = q_u·k_u, with p_uu each query's attention weight on
its own key: exp(s_uu − lse_u) with the log-sum-exp that SDPA's CPU flash kernel returns along with its output
(`_flash_cpu`), or elsewhere (CUDA, autocast) from a row-chunked second pass over the scores (`_own_weight`; no
(T, T) tensor kept). Memory is that of SDPA plus a few (B, H, T, hd) fp32 tensors for the own-path term. With
soft-capping it is eager attention with the diagonal score kept in the graph (a (B, H, T, T) tensor per layer).

`Streams` extends this to the paper's Eq. 1 as written, −log p(x_{t+1} | D(c_t), h_<t): the teacher runs once on
the true residual stream, `record`ing every layer's keys and values, and once from the SAE reconstruction D(c),
where each query u attends to the recorded keys and values of the other positions (the true h_<u) and to its own
live key and value (eager attention, with a reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Streams:
    """What own-position attention does besides attending: `record` collects each attention layer's keys and
    values, (B, H_kv, T, hd) each, keyed by the layer's module; `reference` supplies them as the keys and values of
    the other positions (a query's own key and value stay those of the stream being run)."""

    record: dict | None = None
    reference: dict | None = None
    layers: set = field(default_factory=set)
    """The attention layers that ran through `attend` (a teacher checks that every block's attention did)."""


def attend(streams: Streams, layer: object, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scaling: float,
           mask: torch.Tensor | None = None, causal: bool = True, softcap: float | None = None) -> torch.Tensor:
    """`own_position_attention` for attention layer `layer` (any hashable key), recording or reading `streams`."""
    streams.layers.add(layer)
    if streams.record is not None:
        streams.record[layer] = (k.detach(), v.detach())
    ref = streams.reference[layer] if streams.reference is not None else None
    return own_position_attention(q, k, v, scaling=scaling, mask=mask, causal=causal, softcap=softcap, ref=ref)


def own_position_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scaling: float,
                           mask: torch.Tensor | None = None, causal: bool = True, softcap: float | None = None,
                           ref: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """softmax(q kᵀ·scaling [softcapped] + mask) v with gradients only along each query position's own key/value.

    q (B, H, T, hd); k, v (B, H_kv, T, hd) with H a multiple of H_kv (grouped-query heads share a key/value
    head); `mask`: None (causal when `causal`), a bool mask broadcastable to (B, H, T, T) that is True where a
    query may attend, or an additive float mask. With `ref` = (k_ref, v_ref) shaped like k and v, a query attends
    to the other positions' k_ref and v_ref and to its own k and v. Returns (B, H, T, hd).
    """
    groups = q.shape[1] // k.shape[1]
    if ref is not None and (ref[0].shape != k.shape or ref[1].shape != v.shape):
        raise ValueError(f"reference keys/values {tuple(ref[0].shape)} do not match {tuple(k.shape)}")
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, H, T, hd)
        if ref is not None:
            ref = (ref[0].repeat_interleave(groups, dim=1), ref[1].repeat_interleave(groups, dim=1))
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"own-position attention needs as many keys as queries, got {k.shape[2]} for {q.shape[2]}")
    if softcap is not None or ref is not None:
        if mask is None and causal:
            mask = _causal(0, q.shape[2], q.shape[2], q.device)
        return _eager(q, k, v, scaling, mask, softcap, ref)
    kd, vd = k.detach(), v.detach()
    is_causal = mask is None and causal  # SDPA's own causal kernels (flash on GPU), no (T, T) mask
    wide = torch.promote_types(q.dtype, torch.float32)  # the own score in fp32 at least (16-bit: no overflow)
    found = _flash_cpu(q, kd, vd, scaling, mask, is_causal)
    if found is not None:  # the kernel's log-sum-exp gives the own weights for free
        out, p_own = found
    else:
        out = F.scaled_dot_product_attention(q, kd, vd, attn_mask=mask, is_causal=is_causal,
                                             scale=scaling)  # (B, H, T, hd)
        with torch.no_grad():
            p_own = _own_weight(q, kd, scaling, mask, is_causal)  # (B, H, T, 1), wide
    with torch.no_grad():
        away = (vd - out).to(wide)  # (B, H, T, hd): v_u − out_u
    s_own = (q.detach().to(wide) * k.to(wide)).sum(-1, keepdim=True) * scaling  # (B, H, T, 1): through k_u only
    own_paths = p_own * (v - vd).to(wide) + p_own * away * (s_own - s_own.detach())  # zero in value
    return out + own_paths.to(out.dtype)


def _flash_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, mask: torch.Tensor | None,
               is_causal: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """On CPU outside autocast: SDPA's flash kernel (what `F.scaled_dot_product_attention` runs there), which also
    returns each query's log-sum-exp, so the own weight is exp(s_uu + mask_uu − lse_u) with no second pass over the
    scores: (out (B, H, T, hd) in the graph through q, p_own (B, H, T, 1) fp32 at least, no graph). None where
    SDPA would not run that kernel (CUDA, autocast, inputs whose last dimension is not contiguous) or the kernel
    refuses the inputs (e.g. a float mask of another dtype): then `_own_weight`. The kernel takes additive masks
    only: a bool mask becomes one in the inputs' dtype (its shape, e.g. (B, 1, T, T)); a float mask is passed on
    unchanged."""
    if (q.device.type != "cpu" or torch.is_autocast_enabled("cpu") or not (q.dtype == k.dtype == v.dtype)
            or any(x.stride(-1) != 1 for x in (q, k, v))):  # the kernel assumes contiguous head dimensions
        return None
    wide = torch.promote_types(q.dtype, torch.float32)
    bias = mask  # the mask as the kernel takes it: additive
    if mask is not None and mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    try:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal,
                                                                              attn_mask=bias, scale=scaling)
    except (RuntimeError, AttributeError):
        return None
    with torch.no_grad():
        B, H, T, _ = q.shape
        s_own = (q.detach().to(wide) * k.to(wide)).sum(-1) * scaling  # (B, H, T)
        if bias is not None:  # a query whose own key is masked puts no weight on it (also a fully masked row)
            full = torch.broadcast_to(bias, (*bias.shape[:-2], T, T))  # a (…, 1, T) padding mask too; a view
            s_own = s_own + full.diagonal(dim1=-2, dim2=-1).to(wide)
        p_own = torch.where(s_own == float("-inf"), 0.0, torch.exp(s_own - lse.to(wide))).unsqueeze(-1)  # (B,H,T,1)
    return out, p_own


def _causal(start: int, stop: int, T: int, device: torch.device) -> torch.Tensor:
    """(stop − start, T) bool: query rows start … stop−1 of a causal mask."""
    return torch.arange(T, device=device) <= torch.arange(start, stop, device=device)[:, None]


def _own_weight(q: torch.Tensor, k: torch.Tensor, scaling: float, mask: torch.Tensor | None, causal: bool,
                budget: int = 1 << 26) -> torch.Tensor:
    """(B, H, T, 1): each query's softmax weight on its own key, exp(s_uu − logsumexp_s s_us), in fp32 at least
    and outside any autocast (0 for a query that may attend to nothing), with the scores formed in (b, H, r, T)
    blocks of about `budget` elements (`mask` None and `causal`: the causal mask, built per block). The own score
    is read from the same block as the log-sum-exp (one matmul's rounding, TF32 or not, for both)."""
    B, H, T, _ = q.shape
    wide = torch.promote_types(q.dtype, torch.float32)
    qw, kw = q.to(wide), k.to(wide)
    if mask is not None:
        mask = torch.broadcast_to(mask, (*mask.shape[:-2], T, T))  # a (…, 1, T) padding mask too; a view
    weight = torch.empty(B, H, T, dtype=wide, device=q.device)
    b_step = max(1, min(B, budget // (H * T * T)))
    r_step = max(1, min(T, budget // (b_step * H * T)))
    with torch.autocast(q.device.type, enabled=False):
        for b in range(0, B, b_step):
            for a in range(0, T, r_step):
                s = (qw[b:b + b_step, :, a:a + r_step] @ kw[b:b + b_step].transpose(-1, -2)) * scaling  # (b,H,r,T)
                m = _causal(a, min(T, a + r_step), T, q.device) if mask is None and causal else None
                if mask is not None:
                    m = mask[b:b + b_step] if mask.dim() == 4 and mask.shape[0] > 1 else mask
                    m = m[..., a:a + r_step, :]
                if m is not None:
                    s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
                lse = torch.logsumexp(s, dim=-1)  # (b, H, r)
                own = s.diagonal(offset=a, dim1=-2, dim2=-1)  # (b, H, r): query a + i's score on key a + i
                weight[b:b + b_step, :, a:a + r_step] = torch.where(lse == float("-inf"), torch.zeros_like(lse),
                                                                     torch.exp(own - lse))
    return weight.unsqueeze(-1)


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, mask: torch.Tensor | None,
           softcap: float | None, ref: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Eager attention (B, H, T, hd) over constant keys/values of the other positions (k, v detached, or `ref`)
    with each query's own score and value live."""
    k_other, v_other = (k, v) if ref is None else ref
    k_other, v_other = k_other.detach(), v_other.detach()
    scores = torch.matmul(q, k_other.transpose(-1, -2)) * scaling  # (B, H, T, T)
    scores.diagonal(dim1=-2, dim2=-1).copy_((q * k).sum(-1) * scaling)  # q_u·k_u, in the graph through both
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    p = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(v.dtype)  # (B, H, T, T)
    own = p.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)  # (B, H, T, 1)
    # p @ v_other counts the other stream's v_u on the diagonal: the second term swaps in the own v_u (without a
    # reference it is zero in value and carries ∂out_u/∂v_u = p_uu)
    return torch.matmul(p, v_other) + own * (v - v_other)  # (B, H, T, hd)
