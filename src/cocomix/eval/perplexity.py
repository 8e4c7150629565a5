"""Validation loss and perplexity: mean next-token NLL over non-overlapping windows of a prepared split
(the paper's validation perplexity, §3; no paper equation)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cocomix.data import TokenStore
from cocomix.errors import ConfigError, DataError
from cocomix.methods import Method
from cocomix.model import Transformer


@torch.no_grad()
def evaluate_loss(method: Method, model: Transformer, store: TokenStore, split: str, seq_len: int,
                  batch_size: int, max_batches: int = 0, device: torch.device | None = None,
                  autocast: torch.autocast | None = None, shard: tuple[int, int] = (0, 1),
                  sum_over_shards: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  max_windows: int = 0, progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Mean next-token loss (nats/token) over the first max_batches·batch_size windows (0: all) of `split`, or
    the first `max_windows` when that is set (batch_size then only sets how many run per forward).

    Windows are the split's fixed chunks in order; every window contributes T−1 predictions, so the mean over
    batches is weighted by window count. The model is put in eval mode (no dropout) and restored after.
    Under torchrun, `shard = (rank, world_size)` gives each process every world_size-th batch and
    `sum_over_shards` (an all-reduce sum) combines their (loss sum, window count): the same windows and mean as
    one process. Every process runs the same number of forwards (a process without a batch left runs one again
    and does not count it), as FSDP's collective forwards need. `progress(done, total)` is called with this
    process's windows after each of its batches.
    """
    if seq_len < 2:
        raise ConfigError(f"seq_len: expected an integer >= 2 (one prediction needs two tokens), got {seq_len}")
    if batch_size < 1 or max_batches < 0 or max_windows < 0:
        raise ConfigError(f"batch_size must be >= 1 and max_batches, max_windows >= 0, got {batch_size}, "
                          f"{max_batches} and {max_windows}")
    if seq_len > model.cfg.context_length:
        raise ConfigError(f"seq_len: {seq_len} exceeds the model's context_length {model.cfg.context_length}")
    n = store.num_chunks(split, seq_len)
    if n == 0:
        raise DataError(f"{store.path}: split {split!r} holds {store.num_tokens(split)} tokens, fewer than one "
                        f"window of {seq_len}; nothing to evaluate (lower seq_len or hold out more data)")
    if max_windows or max_batches:
        n = min(n, max_windows or max_batches * batch_size)
    rank, world = shard
    starts = list(range(0, n, batch_size))  # every batch's first window
    rounds = -(-len(starts) // world)
    mine = sum(min(n, s + batch_size) - s for s in starts[rank::world])  # this process's windows
    was_training = model.training
    model.eval()
    total, windows = 0.0, 0
    device = device or next(model.parameters()).device
    for r in range(rounds):
        b = r * world + rank
        counted = b < len(starts)
        start = starts[b] if counted else starts[rank % len(starts)]
        chunk_ids = list(range(start, min(n, start + batch_size)))
        ids = store.batch(split, chunk_ids, seq_len).to(device)
        if autocast is not None:
            with autocast:
                loss = method.eval_loss(model, ids)
        else:
            loss = method.eval_loss(model, ids)
        if counted:
            total += float(loss) * len(chunk_ids)
            windows += len(chunk_ids)
            if progress is not None:
                progress(windows, mine)
    model.train(was_training)
    if sum_over_shards is not None:
        summed = sum_over_shards(torch.tensor([total, float(windows)], dtype=torch.float64, device=device))
        total, windows = float(summed[0]), int(round(float(summed[1])))
    mean = total / max(1, windows)
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0)), "windows": windows,
            "tokens": windows * (seq_len - 1)}
