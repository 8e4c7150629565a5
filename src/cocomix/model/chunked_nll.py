"""Mean next-token NLL through a frozen LM head, in row chunks (design §6; used for the teacher's attribution loss).

For final hidden states h (N, d) after the last norm, a frozen head W (V, d) (+ bias) and labels y (N,):

    L = (1/N) Σ_n [logsumexp(h_n Wᵀ + b) − (h_n Wᵀ + b)[y_n]]          ∂L/∂h_n = (softmax_n − onehot(y_n)) W / N

computed one chunk of rows at a time, so the (N, V) logits never exist at once. When h requires grad, the forward
also computes ∂L/∂h chunk by chunk while each chunk's logits are at hand (the head's two matmuls, as an unchunked
forward + backward would do, without recomputing the logits) and keeps it: the backward only scales it by the
incoming gradient. W and b get no gradient (the teacher is frozen).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 23  # logits per chunk (32 MiB in fp32)


def _rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


class ChunkedNLL(torch.autograd.Function):
    """h (N, d), weight (V, d), bias (V,) or None, labels (N,) -> mean NLL (scalar, fp32 or fp64)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:  # noqa: ANN001
        N, V = h.shape[0], weight.shape[0]
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        with_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=acc, device=h.device)
        gh = torch.empty_like(h) if with_grad else None  # (N, d): ∂L/∂h, filled chunk by chunk
        for s in range(0, N, _rows(V)):
            e = min(N, s + _rows(V))
            z = F.linear(h[s:e], weight, bias).to(acc)  # (n, V) logits
            lse = torch.logsumexp(z, dim=-1)  # (n,)
            total += (lse - z.gather(-1, labels[s:e, None])[:, 0]).sum()
            if with_grad:
                p = torch.exp(z.sub_(lse[:, None]))  # softmax (n, V), in place of the logits
                p.scatter_add_(-1, labels[s:e, None], -torch.ones(e - s, 1, dtype=p.dtype, device=p.device))
                gh[s:e] = (p.to(weight.dtype) @ weight).to(h.dtype) / N  # (n, d)
        ctx.save_for_backward(gh)
        return total / N

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple:  # noqa: ANN001
        (gh,) = ctx.saved_tensors
        return gh * g.to(gh.dtype), None, None, None


def chunked_nll(h: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor) -> Tensor:
    """Mean NLL of ids[:, 1:] from final hidden states h (B, T, d) through the head (weight, bias)."""
    B, T, d = h.shape
    return ChunkedNLL.apply(h[:, :-1].reshape(-1, d), weight, bias, ids[:, 1:].reshape(-1))
