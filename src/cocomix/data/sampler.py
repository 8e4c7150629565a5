"""Deterministic order of training windows: which chunk ids each rank reads at each (step, micro-batch).

All ranks read one global stream of samples. Sample n (counted from the start of training) is chunk
`perm(e)[n % num_chunks]` with epoch e = n // num_chunks and perm(e) a seeded permutation, so every epoch
visits each chunk exactly once. Optimizer step s consumes samples [s·G, (s+1)·G), G = micro_batch_size ·
grad_accum · world_size, laid out micro-batch-major then rank: micro-batch m of rank r holds the
micro_batch_size samples starting at s·G + (m·world_size + r)·micro_batch_size. The mapping is a pure function
of its arguments (no state), so resuming at step s reproduces exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import numpy as np

from cocomix.errors import DataError

_CACHED_EPOCHS = 2


class WindowSampler:
    """Chunk ids per (optimizer step, micro-batch) for one rank; see the module docstring for the order."""

    def __init__(self, num_chunks: int, seed: int, micro_batch_size: int, grad_accum: int = 1,
                 world_size: int = 1, rank: int = 0) -> None:
        if num_chunks <= 0:
            raise DataError("the training split holds fewer tokens than one window of data.seq_len tokens "
                            "(0 chunks); lower data.seq_len or prepare more data")
        for name, value in (("micro_batch_size", micro_batch_size), ("grad_accum", grad_accum),
                            ("world_size", world_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_chunks = num_chunks
        self.seed = seed
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.rank = rank
        self._perms: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        """G: samples consumed per optimizer step across all ranks and micro-batches."""
        return self.micro_batch_size * self.grad_accum * self.world_size

    def perm(self, epoch: int) -> np.ndarray:
        """The chunk order of `epoch`, shape (num_chunks,); the last couple of epochs are cached."""
        if epoch not in self._perms:
            if len(self._perms) >= _CACHED_EPOCHS:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_chunks)
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> list[int]:
        """Chunk ids of this rank's micro-batch `micro` (0 <= micro < grad_accum) of optimizer step `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if not 0 <= micro < self.grad_accum:
            raise ValueError(f"micro must be in [0, {self.grad_accum}), got {micro}")
        first = step * self.global_batch + (micro * self.world_size + self.rank) * self.micro_batch_size
        positions = first + np.arange(self.micro_batch_size, dtype=np.int64)  # (B,) sample stream positions
        epochs, offsets = np.divmod(positions, self.num_chunks)  # (B,), (B,)
        out = np.empty(self.micro_batch_size, dtype=np.int64)  # (B,)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self.perm(int(epoch))[offsets[mask]]
        return out.tolist()

    def epoch_of(self, step: int) -> float:
        """Epochs of the training split consumed before optimizer step `step` (fractional)."""
        return step * self.global_batch / self.num_chunks
