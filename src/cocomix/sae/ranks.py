"""What the ranks of a `train-sae` run under torchrun exchange (no paper equation): rank 0's starting state, the
summed gradients of every step and a finished run's report.

Every rank holds the whole SAE and Adam state and applies the same update, so the ranks stay equal without
comparing weights; only rank 0 reads and writes the run directory, so it need not be shared between nodes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cocomix.train.distributed import DistContext

ADAM_STATE = ("exp_avg", "exp_avg_sq")  # torch.optim.Adam's per-parameter tensors besides its step count


def broadcast_state(state: nn.Module, optimizer: torch.optim.Optimizer, resumed: bool, ctx: DistContext) -> None:
    """Rank 0's weights and buffers (and, when it resumed from a checkpoint, its Adam state) on every rank."""
    if not ctx.active:
        return
    for t in state.state_dict().values():  # views of the parameters and buffers: written in place
        _broadcast_into(t)
    if not resumed:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            s = optimizer.state[p]
            if not ctx.is_main:  # Adam's state as it creates it, filled from rank 0 below
                s.update({"step": torch.zeros((), dtype=torch.float32)},
                         **{k: torch.zeros_like(p, memory_format=torch.preserve_format) for k in ADAM_STATE})
            for k in ADAM_STATE:
                _broadcast_into(s[k])
            step = s["step"].to(p.device)  # a CPU scalar in Adam's default form; collectives want the device
            dist.broadcast(step, src=0)
            s["step"].copy_(step)


def _broadcast_into(t: torch.Tensor) -> None:
    """Rank 0's values of t written into t on every rank; through a contiguous copy where t is not contiguous
    (the SAE's W_dec is a transposed view, and NCCL sends contiguous tensors only)."""
    if t.is_contiguous():
        dist.broadcast(t, src=0)
        return
    buf = t.contiguous()
    dist.broadcast(buf, src=0)
    t.copy_(buf)


def sum_grads(module: nn.Module, ctx: DistContext) -> None:
    """Every parameter's gradient summed over the ranks, in one collective (the ranks' losses are parts of one
    sum, `objective.sae_losses(rows=...)`)."""
    if not ctx.active:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(flat[offset:offset + n].view(p.shape))  # (in the gradient's own layout)
        offset += n


def from_main(value: Any, ctx: DistContext) -> Any:
    """Rank 0's small picklable value (a report, None) on every rank; only this job's processes send it."""
    if not ctx.active:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
