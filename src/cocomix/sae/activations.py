"""Teacher activations for SAE training, streamed in shuffled chunks that are a pure function of the step
(the SAE of paper §2.1 / App. A is trained on them; no paper equation).

Chunk c is the teacher's residual stream (at `teacher_layer`) on `chunk_tokens / seq_len` training windows, the
ones `WindowSampler(seed).indices(c, 0)` names (so successive chunks walk through the training split in a seeded
order, epoch after epoch), flattened to (chunk_tokens, d) and permuted by a generator seeded with (seed, c).
Step s reads rows [j·N, (j+1)·N) of chunk s // steps_per_chunk, j = s mod steps_per_chunk, N = batch_tokens.
Nothing depends on earlier steps, so a resumed run recomputes exactly the batches an uninterrupted one sees.
Under torchrun (`ctx`) the ranks share a chunk's teacher batches (rank r runs every world_size-th one) and gather
them, so every rank holds the chunk one process computes; each then trains on its share of every step's rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cocomix.data import TokenStore
from cocomix.data.sampler import WindowSampler, seeded_rng
from cocomix.train import distributed as dd
from cocomix.train.distributed import DistContext

if TYPE_CHECKING:
    from cocomix.teacher import Teacher


class ActivationChunks:
    """Shuffled batches of teacher activations (see the module docstring)."""

    def __init__(self, store: TokenStore, teacher: Teacher, seq_len: int, chunk_tokens: int, batch_tokens: int,
                 teacher_batch: int, seed: int, ctx: DistContext | None = None) -> None:
        self.store, self.teacher, self.seq_len = store, teacher, seq_len
        self.ctx = ctx or DistContext()
        self.windows = chunk_tokens // seq_len
        self.batch_tokens, self.teacher_batch, self.seed = batch_tokens, teacher_batch, seed
        self.steps_per_chunk = chunk_tokens // batch_tokens
        self.sampler = WindowSampler(store.num_chunks("train", seq_len), seed, self.windows)
        self._chunk_id: int | None = None
        self._chunk: torch.Tensor | None = None

    def hidden(self, split: str, window_ids: list[int]) -> torch.Tensor:
        """Teacher residual stream of the given windows, flattened to (len(window_ids)·seq_len, d)."""
        out = []
        for s in range(0, len(window_ids), self.teacher_batch):
            ids = self.store.batch(split, window_ids[s:s + self.teacher_batch], self.seq_len)
            out.append(self.teacher.hidden(ids.to(self.teacher.device)).flatten(0, 1))  # (b·T, d)
        return torch.cat(out)

    def shared_hidden(self, split: str, window_ids: list[int]) -> torch.Tensor:
        """`hidden` of the windows on every rank, computed once: under torchrun rank r runs teacher batches r,
        r + world_size, ... (the batches `hidden` runs) and the ranks gather them in order, in float32 (exact for
        a 16-bit teacher's stream, which training reads in float32)."""
        W, r = self.ctx.world_size, self.ctx.rank
        if not self.ctx.active:
            return self.hidden(split, window_ids)
        starts = range(0, len(window_ids), self.teacher_batch)  # one process's teacher batches
        parts = []
        for first in range(0, len(starts), W):  # rounds of W batches, one per rank
            if first + r < len(starts):
                s = starts[first + r]
                mine = self.hidden(split, window_ids[s:s + self.teacher_batch]).float()  # (b·T, d)
            else:  # the last round's batches went to lower ranks
                mine = torch.empty(0, self.teacher.width, device=self.teacher.device)
            parts.extend(dd.gather_rows(mine, self.teacher_batch * self.seq_len, self.ctx))
        return torch.cat(parts)

    def chunk(self, c: int) -> torch.Tensor:
        """Chunk c, shuffled: (chunk_tokens, d) on the teacher's device."""
        if c != self._chunk_id:
            self._chunk = None  # free the old chunk before computing the next one
            acts = self.shared_hidden("train", self.sampler.indices(c, 0))
            perm = torch.from_numpy(seeded_rng(self.seed, c).permutation(acts.shape[0]))
            self._chunk, self._chunk_id = acts[perm.to(acts.device)], c
        return self._chunk

    def batch(self, step: int) -> torch.Tensor:
        """The activations of optimizer step `step`: (batch_tokens, d)."""
        c, j = divmod(step, self.steps_per_chunk)
        return self.chunk(c)[j * self.batch_tokens:(j + 1) * self.batch_tokens]
