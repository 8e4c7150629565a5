"""Mean next-token NLL through an LM head, in row chunks (design §6): the teacher's attribution loss (the loss
differentiated in paper Eq. 1), and the student's next-token loss L_NTP of Eq. 4 with `train.chunked_lm_loss` (a
fused linear cross-entropy).

For final hidden states h (N, d) after the last norm, a head W (V, d) (+ bias b) and labels y (N,):

    L = (1/N) Σ_n [logsumexp(h_n Wᵀ + b) − (h_n Wᵀ + b)[y_n]]
    G = (softmax(h Wᵀ + b) − onehot(y)) / N          (N, V), ∂L/∂logits
    ∂L/∂h = G W          ∂L/∂W = Gᵀ h          ∂L/∂b = Σ_n G_n

computed one chunk of rows at a time, so the (N, V) logits never exist at once. The gradients the inputs need
(h's always when it requires grad; W's and b's only when they require grad — never for the frozen teacher) are
formed in the forward, chunk by chunk, while each chunk's logits are at hand: the same matmuls an unchunked
forward + backward does, without recomputing the logits. The backward only scales them by the incoming gradient.

With teacher logits Z_t (N, V) and a weight λ (the KD baseline, `chunked_kd`), the loss is L + λ·KL with
KL = (1/N) Σ_n KL(softmax(Z_t,n) ‖ softmax(h_n Wᵀ + b)) (the KD baseline, paper §3.1), and G gains λ (p_s − p_t) / N;
the teacher logits are read chunk by chunk too, so no fp32 (N, V) copy of either distribution is made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

CHUNK_ELEMENTS = 1 << 23  # logits per chunk (32 MiB in fp32)


def _rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


class ChunkedNLL(torch.autograd.Function):
    """h (N, d), weight (V, d), bias (V,) or None, labels (N,), and for KD teacher logits (M, V), λ and the rows
    of them that match h's (N,) -> (mean NLL + λ·mean KL, mean NLL, mean KL) (scalars, fp32 or fp64; the gradient
    flows through the first only)."""

    @staticmethod
    def forward(ctx: FunctionCtx, h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                teacher: Tensor | None = None, lam: float = 0.0, teacher_rows: Tensor | None = None,
                ) -> tuple[Tensor, Tensor, Tensor]:
        N, V = h.shape[0], weight.shape[0]
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=acc, device=h.device)
        kl = torch.zeros((), dtype=acc, device=h.device)
        gh = torch.empty_like(h) if need_h else None  # (N, d): ∂L/∂h, filled chunk by chunk
        gw = torch.zeros(weight.shape, dtype=acc, device=h.device) if need_w else None  # (V, d), summed over chunks
        gb = torch.zeros(V, dtype=acc, device=h.device) if need_b else None  # (V,)
        # a head in a narrower dtype than `acc` (bf16) gets G rounded once, as autograd's backward of the mean does;
        # in fp32 / fp64 the division by N comes after the matmuls
        scale_first = weight.dtype != acc
        for s in range(0, N, _rows(V)):
            e = min(N, s + _rows(V))
            z = F.linear(h[s:e], weight, bias).to(acc)  # (n, V) logits
            lse = torch.logsumexp(z, dim=-1)  # (n,)
            total += (lse - z.gather(-1, labels[s:e, None])[:, 0]).sum()
            p_t = None
            if teacher is not None:
                log_t = torch.log_softmax(teacher[teacher_rows[s:e]].to(acc), dim=-1)  # (n, V)
                p_t = log_t.exp()
                kl += (p_t * (log_t - z + lse[:, None])).sum()  # Σ p_t (log p_t − log p_s)
                del log_t
            if need_h or need_w or need_b:
                p = torch.exp(z.sub_(lse[:, None]))  # softmax (n, V), in place of the logits
                if p_t is not None:  # N·G = p_s − onehot + λ (p_s − p_t)
                    p.mul_(1.0 + lam).sub_(p_t, alpha=lam)
                p.scatter_add_(-1, labels[s:e, None], -torch.ones(e - s, 1, dtype=p.dtype, device=p.device))
                if scale_first:
                    p.div_(N)
                g = p.to(weight.dtype)  # (n, V): rows of G, or of N·G
                if need_h:
                    gh_rows = (g @ weight).to(h.dtype)  # (n, d)
                    gh[s:e] = gh_rows if scale_first else gh_rows / N
                if need_w:
                    gw += (g.t() @ h[s:e].to(weight.dtype)).to(acc)  # (V, d), divided by N below (or before)
                if need_b:
                    gb += p.sum(0)
        for t in (gw, gb):
            if t is not None and not scale_first:
                t.div_(N)
        ctx.save_for_backward(gh, gw, gb)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        nll, kl = total / N, kl / N
        both = nll + lam * kl
        ctx.mark_non_differentiable(nll, kl)
        return both, nll, kl

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor, _g_nll: Tensor, _g_kl: Tensor) -> tuple:
        gh, gw, gb = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        return (None if gh is None else gh * g.to(gh.dtype),
                None if gw is None else (gw * g).to(w_dtype),
                None if gb is None else (gb * g).to(b_dtype), None, None, None, None)


def chunked_nll(h: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor) -> Tensor:
    """Mean NLL of ids[:, 1:] from final hidden states h (B, T, d) through the head (weight, bias)."""
    return _apply(h, weight, bias, ids, None, 0.0)[0]


def chunked_kd(h: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, teacher_logits: Tensor,
               lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """(NLL + λ·KL to back-propagate, NLL, KL) of the student's final hidden states h (B, T, d) through its head,
    against ids[:, 1:] and the teacher's next-token distributions teacher_logits (B, T, V), both at positions
    0 … T−2 (the KD baseline's loss, `kd.kl_teacher_student`, without whole logits)."""
    B, T, V = teacher_logits.shape
    # the rows of positions 0 … T−2 in the (B·T, V) view, read chunk by chunk: no copy of the teacher's logits
    rows = (torch.arange(B, device=ids.device)[:, None] * T + torch.arange(T - 1, device=ids.device)).reshape(-1)
    return _apply(h, weight, bias, ids, teacher_logits.reshape(B * T, V), lam, rows)


@torch.compiler.disable  # eager under train.compile: a traced chunk loop is unrolled (see concept_head.py)
def _apply(h: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, teacher: Tensor | None,
           lam: float, teacher_rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    B, T, d = h.shape
    if not torch.is_grad_enabled():  # under no_grad a parameter still reports needs_input_grad: no gradients then
        h, weight, bias = h.detach(), weight.detach(), None if bias is None else bias.detach()
    return ChunkedNLL.apply(h[:, :-1].reshape(-1, d), weight, bias, ids[:, 1:].reshape(-1), teacher, lam,
                            teacher_rows)
