"""Mean next-token NLL through a frozen LM head, in row chunks (design §6; used for the teacher's attribution loss).

For final hidden states h (N, d) after the last norm, a frozen head W (V, d) (+ bias) and labels y (N,):

    L = (1/N) Σ_n [logsumexp(h_n Wᵀ + b) − (h_n Wᵀ + b)[y_n]]          ∂L/∂h_n = (softmax_n − onehot(y_n)) W / N

computed one chunk of rows at a time in both directions, so the (N, V) logits never exist at once (the forward
keeps h and one log-sum-exp per row; the backward recomputes each chunk's logits). W gets no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 23  # logits per chunk (32 MiB in fp32)


def _rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


class ChunkedNLL(torch.autograd.Function):
    """h (N, d) with grad, weight (V, d), bias (V,) or None, labels (N,) -> mean NLL (scalar, fp32 or fp64)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:  # noqa: ANN001
        N, V = h.shape[0], weight.shape[0]
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        lse = torch.empty(N, dtype=acc, device=h.device)
        picked = torch.empty(N, dtype=acc, device=h.device)
        for s in range(0, N, _rows(V)):
            z = F.linear(h[s:s + _rows(V)], weight, bias).to(acc)  # (n, V)
            lse[s:s + _rows(V)] = torch.logsumexp(z, dim=-1)
            picked[s:s + _rows(V)] = z.gather(-1, labels[s:s + _rows(V), None])[:, 0]
        ctx.save_for_backward(h, weight, bias, labels, lse)
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple:  # noqa: ANN001
        h, weight, bias, labels, lse = ctx.saved_tensors
        N, V = h.shape[0], weight.shape[0]
        gh = torch.empty_like(h)
        for s in range(0, N, _rows(V)):
            e = min(N, s + _rows(V))
            p = torch.exp(F.linear(h[s:e], weight, bias).to(lse.dtype) - lse[s:e, None])  # softmax (n, V)
            p.scatter_add_(-1, labels[s:e, None], -torch.ones(e - s, 1, dtype=p.dtype, device=p.device))
            p.mul_(g / N)
            gh[s:e] = (p.to(weight.dtype) @ weight).to(h.dtype)
        return gh, None, None, None


def chunked_nll(h: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor) -> Tensor:
    """Mean NLL of ids[:, 1:] from final hidden states h (B, T, d) through the head (weight, bias)."""
    B, T, d = h.shape
    return ChunkedNLL.apply(h[:, :-1].reshape(-1, d), weight, bias, ids[:, 1:].reshape(-1))
