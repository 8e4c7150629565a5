"""Deterministic order of training windows: which chunk ids each rank reads at each (step, micro-batch).

All ranks read one global stream of samples. Sample n (counted from the start of training) is chunk
`perm(e)[n % num_chunks]` with epoch e = n // num_chunks and perm(e) a seeded permutation, so every epoch
visits each chunk exactly once. Optimizer step s consumes samples [s·G, (s+1)·G), G = micro_batch_size ·
grad_accum · world_size, laid out micro-batch-major then rank: micro-batch m of rank r holds the
micro_batch_size samples starting at s·G + (m·world_size + r)·micro_batch_size. The mapping is a pure function
of its arguments (no state), so resuming at step s reproduces exactly the batches an uninterrupted run sees.

With random window offsets (`data.window_offset="random"`, the official loader's crops), sample n also has a
token offset r: chunk c of epoch e starts at c·T + r, r = offsets(e)[c] drawn uniformly from [0, T] (the last
chunk's from [0, spare], the tokens after the last whole chunk) by a generator seeded with (seed, e), so each
epoch sees every chunk once, each time shifted differently, and the offsets are as reproducible as the order.

No paper equation.
"""

from __future__ import annotations

import numpy as np

from cocomix.errors import DataError

_CACHED_EPOCHS = 2


def seeded_rng(seed: int, *words: int) -> np.random.Generator:
    """A generator seeded with (seed, *words), each word < 2**32. numpy reads an integer of the entropy list as
    however many 32-bit words it takes and pads with zeros, so [2**32 + 1, 0] and [1, 1] would be one generator
    (two seeds, epoch-shifted copies of one order): a seed of 2**32 and above is given as two fixed words, with a
    spawn key no smaller seed has. Below 2**32 the entropy is [seed, *words], as every run before had it."""
    if seed < 2**32:
        return np.random.default_rng([seed, *words])
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *words], spawn_key=(1,)))


class WindowSampler:
    """Chunk ids per (optimizer step, micro-batch) for one rank; see the module docstring for the order."""

    def __init__(self, num_chunks: int, seed: int, micro_batch_size: int, grad_accum: int = 1,
                 world_size: int = 1, rank: int = 0, seq_len: int = 0, spare: int = 0) -> None:
        """`seq_len` > 0 turns on random window offsets in [0, seq_len] ([0, spare] for the last chunk)."""
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
        if seq_len < 0 or spare < 0:
            raise ValueError(f"seq_len and spare must be >= 0, got {seq_len}, {spare}")
        self.seq_len = seq_len
        self.spare = spare
        self._perms: dict[int, np.ndarray] = {}
        self._offsets: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        """G: samples consumed per optimizer step across all ranks and micro-batches."""
        return self.micro_batch_size * self.grad_accum * self.world_size

    def perm(self, epoch: int) -> np.ndarray:
        """The chunk order of `epoch`, shape (num_chunks,); the last couple of epochs are cached."""
        if epoch not in self._perms:
            if len(self._perms) >= _CACHED_EPOCHS:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = seeded_rng(self.seed, epoch).permutation(self.num_chunks)
        return self._perms[epoch]

    def offsets(self, epoch: int) -> np.ndarray:
        """Token offset of every chunk in `epoch`, shape (num_chunks,); zeros without random offsets."""
        if epoch not in self._offsets:
            if len(self._offsets) >= _CACHED_EPOCHS:
                self._offsets.pop(min(self._offsets))
            if self.seq_len == 0:
                self._offsets[epoch] = np.zeros(self.num_chunks, dtype=np.int64)
            else:
                rng = seeded_rng(self.seed, epoch, 1)  # a stream apart from the permutation's
                r = rng.integers(0, self.seq_len + 1, size=self.num_chunks, dtype=np.int64)
                r[-1] = rng.integers(0, self.spare + 1)
                self._offsets[epoch] = r
        return self._offsets[epoch]

    def windows(self, step: int, micro: int) -> tuple[list[int], list[int]]:
        """(chunk ids, token offsets) of this rank's micro-batch `micro` (0 <= micro < grad_accum) of optimizer
        step `step`; window b starts at chunk_ids[b]·T + offsets[b]."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if not 0 <= micro < self.grad_accum:
            raise ValueError(f"micro must be in [0, {self.grad_accum}), got {micro}")
        first = step * self.global_batch + (micro * self.world_size + self.rank) * self.micro_batch_size
        positions = first + np.arange(self.micro_batch_size, dtype=np.int64)  # (B,) sample stream positions
        epochs, slots = np.divmod(positions, self.num_chunks)  # (B,), (B,)
        chunks = np.empty(self.micro_batch_size, dtype=np.int64)  # (B,)
        shifts = np.zeros(self.micro_batch_size, dtype=np.int64)  # (B,)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            chunks[mask] = self.perm(int(epoch))[slots[mask]]
            shifts[mask] = self.offsets(int(epoch))[chunks[mask]]
        return chunks.tolist(), shifts.tolist()

    def indices(self, step: int, micro: int) -> list[int]:
        """Chunk ids of this rank's micro-batch `micro` (0 <= micro < grad_accum) of optimizer step `step`."""
        return self.windows(step, micro)[0]

    def epoch_of(self, step: int) -> float:
        """Epochs of the training split consumed before optimizer step `step` (fractional)."""
        return step * self.global_batch / self.num_chunks
