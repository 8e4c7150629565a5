"""The concept head fused with its loss and TopK for training (paper Eq. 2-3; design §6: "the (B, T, C) logits
dominate memory").

For N positions with normalised hidden states x (N, d), predictor W (C, d), b (C,), targets (N, k_attr)
(−1 marks an invalid position) it returns what training needs of the concept logits z = x Wᵀ + b:

    values, indices = topk(z, mix_k)                                          what the compression mixes
    loss = Σ_valid [logsumexp(z_n) − mean_i z_n[target_n,i]] / #valid          L_concept (Eq. 2, official)

in row chunks of at most `CHUNK_ELEMENTS` logits, keeping only x, the log-sum-exp per row and the TopK indices
for the backward, which recomputes each chunk's logits once:

    ∂z = g_loss/#valid · valid · (softmax(z) − onehot(targets)/k_attr) + scatter(indices, g_values)

The function is the same as `predictor` → `concept_loss` → `topk` (the unfused path, used when no targets are
given), computed without ever holding the N × C logits: one chunk at a time, at the cost of one more
N × d × C matmul in the backward.

Under `train.compile` the function runs eagerly (`torch.compiler.disable`): traced, its chunk loop would be
unrolled into one copy per chunk in the forward and another in the backward (64 each at the 69M preset's 16 × 1024
positions and 32,768 concepts), and compiling them took minutes on a GPU while gaining nothing (each chunk is
one matmul, a log-sum-exp and a TopK).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

CHUNK_ELEMENTS = 1 << 23  # logits per chunk (32 MiB in fp32)


def chunk_rows(n_latents: int) -> int:
    return max(1, CHUNK_ELEMENTS // n_latents)


def _logits(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x (n, d) -> z (n, C) in the autocast dtype of the surrounding region."""
    return torch.nn.functional.linear(x, weight, bias)


class ConceptHeadFn(torch.autograd.Function):
    """See the module docstring. Inputs x (N, d), weight (C, d), bias (C,), targets (N, A) int64, k (mix_k, 0 for
    none); outputs values (N, k), indices (N, k) int64, loss (scalar; fp32, fp64 for fp64 inputs)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, k: int,
                ) -> tuple[Tensor, Tensor, Tensor]:
        N, C = x.shape[0], weight.shape[0]
        rows = chunk_rows(C)
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 sums for bf16 / fp32 inputs, fp64 for fp64
        lse = torch.empty(N, dtype=acc, device=x.device)
        picked = torch.empty(N, dtype=acc, device=x.device)
        values, indices, dtype = [], [], x.dtype
        for s in range(0, N, rows):
            z = _logits(x[s:s + rows], weight, bias)  # (n, C)
            dtype = z.dtype
            zf = z.to(acc)
            lse[s:s + rows] = torch.logsumexp(zf, dim=-1)
            picked[s:s + rows] = zf.gather(-1, targets[s:s + rows].clamp_min(0)).mean(-1)
            if k:
                v, i = torch.topk(z, k, dim=-1)  # (n, k)
                values.append(v)
                indices.append(i)
        valid = targets[:, 0] >= 0  # (N,)
        n_valid = valid.sum().clamp_min(1).float()
        loss = ((lse - picked) * valid).sum() / n_valid
        values = torch.cat(values) if k else x.new_empty(N, 0, dtype=dtype)
        indices = torch.cat(indices) if k else torch.empty(N, 0, dtype=torch.long, device=x.device)
        ctx.save_for_backward(x, weight, bias, targets, lse, indices, valid, n_valid)
        ctx.compute_dtype = dtype
        ctx.mark_non_differentiable(indices)
        return values, indices, loss

    @staticmethod
    def backward(ctx: FunctionCtx, g_values: Tensor | None, g_indices: Tensor | None,
                 g_loss: Tensor | None) -> tuple:
        x, weight, bias, targets, lse, indices, valid, n_valid = ctx.saved_tensors
        dt = ctx.compute_dtype
        N, C, A = x.shape[0], weight.shape[0], targets.shape[1]
        rows = chunk_rows(C)
        xc, wc, bc = x.to(dt), weight.to(dt), bias.to(dt)
        acc = lse.dtype
        scale = (g_loss.to(acc) if g_loss is not None else torch.zeros((), dtype=acc, device=x.device)) / n_valid
        gx = torch.empty_like(x)
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        gb = torch.zeros(bias.shape, dtype=acc, device=bias.device)
        for s in range(0, N, rows):
            e = min(N, s + rows)
            w_row = (scale * valid[s:e]).to(acc)  # (n,)
            grad = torch.exp(torch.nn.functional.linear(xc[s:e], wc, bc).to(acc) - lse[s:e, None])  # softmax (n, C)
            grad.mul_(w_row[:, None])
            grad.scatter_add_(-1, targets[s:e].clamp_min(0), (-w_row / A)[:, None].expand(-1, A).contiguous())
            if g_values is not None and indices.shape[1]:
                grad.scatter_add_(-1, indices[s:e], g_values[s:e].to(acc))
            grad = grad.to(dt)  # (n, C)
            gx[s:e] = (grad @ wc).to(x.dtype)
            gw += (grad.t() @ xc[s:e]).to(acc)  # in the compute dtype (bf16 tensor cores under autocast, as a
            # plain Linear's weight gradient), accumulated over chunks in fp32 (fp64 for fp64 inputs)
            gb += grad.to(acc).sum(0)
        return gx, gw.to(weight.dtype), gb.to(bias.dtype), None, None


def whole_logits_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """L_concept from whole logits (B, T, C) and targets (B, T, A), targets < 0 marking invalid positions: the
    mean over valid positions of the A-averaged C-way CE, the function `ConceptHeadFn` computes fused."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 sums, fp64 kept
    valid = (targets[..., 0] >= 0).to(logits.dtype)  # (B, T)
    lse = torch.logsumexp(logits, dim=-1)  # (B, T)
    picked = logits.gather(-1, targets.clamp_min(0)).mean(-1)  # (B, T)
    return ((lse - picked) * valid).sum() / valid.sum().clamp_min(1.0)


@torch.compiler.disable
def concept_head(x: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, T, d), targets (B, T, A) -> values (B, T, k), indices (B, T, k), L_concept (scalar)."""
    B, T, d = x.shape
    v, i, loss = ConceptHeadFn.apply(x.reshape(B * T, d), weight, bias, targets.reshape(B * T, -1), k)
    return v.view(B, T, -1), i.view(B, T, -1), loss
