"""WindowSampler: epochs are permutations, the order is a pure function, ranks/micro-batches tile the step."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cocomix.data import WindowSampler
from cocomix.errors import DataError


def _stream(sampler: WindowSampler, steps: int) -> list[int]:
    return [c for s in range(steps) for m in range(sampler.grad_accum) for c in sampler.indices(s, m)]


def test_each_epoch_visits_every_chunk_once() -> None:
    n = 37
    sampler = WindowSampler(n, seed=3, micro_batch_size=4, grad_accum=2)  # G = 8, not a divisor of 37
    stream = _stream(sampler, 40)  # 320 samples: 8 full epochs and a bit
    for e in range(len(stream) // n):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n:2 * n]  # a fresh permutation each epoch
    assert stream[:n] != list(range(n))


def test_pure_function_of_its_arguments() -> None:
    a = WindowSampler(50, seed=7, micro_batch_size=3, grad_accum=2, world_size=2, rank=1)
    b = WindowSampler(50, seed=7, micro_batch_size=3, grad_accum=2, world_size=2, rank=1)
    forward = [a.indices(s, m) for s in range(30) for m in range(2)]
    # Asked in a scrambled order (as after a resume), a fresh sampler gives the same answers.
    order = list(itertools.product(range(30), range(2)))
    rng = np.random.default_rng(0)
    rng.shuffle(order)
    scrambled = {(s, m): b.indices(s, m) for s, m in order}
    assert forward == [scrambled[(s, m)] for s in range(30) for m in range(2)]
    other_seed = WindowSampler(50, seed=8, micro_batch_size=3, grad_accum=2, world_size=2, rank=1)
    assert [other_seed.indices(s, 0) for s in range(5)] != [a.indices(s, 0) for s in range(5)]


@pytest.mark.parametrize(("world_size", "grad_accum"), [(2, 1), (4, 3), (3, 2)])
def test_ranks_and_micro_batches_tile_one_single_process_step(world_size: int, grad_accum: int) -> None:
    n, mbs, seed = 1000, 5, 11
    ranks = [WindowSampler(n, seed, mbs, grad_accum, world_size, r) for r in range(world_size)]
    single = WindowSampler(n, seed, mbs, grad_accum=grad_accum * world_size)
    one_big = WindowSampler(n, seed, mbs * grad_accum * world_size)
    for step in (0, 1, 7):
        per_rank = [[c for m in range(grad_accum) for c in s.indices(step, m)] for s in ranks]
        flat = list(itertools.chain.from_iterable(per_rank))
        assert len(set(flat)) == len(flat)  # ranks in one step get disjoint chunks
        # Micro-batch m of rank r is micro-batch m·world_size + r of a single process (same chunks, order).
        for m in range(grad_accum):
            for r in range(world_size):
                assert ranks[r].indices(step, m) == single.indices(step, m * world_size + r)
        assert sorted(flat) == sorted(one_big.indices(step, 0))


def test_epoch_boundary_inside_a_micro_batch_and_epoch_of() -> None:
    sampler = WindowSampler(10, seed=0, micro_batch_size=4)
    ids = sampler.indices(2, 0)  # stream positions 8..11: two from epoch 0, two from epoch 1
    assert ids[:2] == sampler.perm(0)[8:10].tolist() and ids[2:] == sampler.perm(1)[:2].tolist()
    assert sampler.epoch_of(0) == 0.0 and sampler.epoch_of(5) == pytest.approx(2.0)


def test_argument_checks() -> None:
    with pytest.raises(DataError, match="seq_len"):
        WindowSampler(0, seed=0, micro_batch_size=1)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        WindowSampler(5, seed=0, micro_batch_size=1, world_size=2, rank=2)
    with pytest.raises(ValueError, match=r"micro must be in \[0, 2\), got 2"):
        WindowSampler(5, seed=0, micro_batch_size=1, grad_accum=2).indices(0, 2)


def test_random_window_offsets_follow_the_official_crops() -> None:
    """Chunk c of epoch e starts at c·T + r, r uniform in [0, T] ([0, spare] for the last chunk), drawn anew each
    epoch; the chunk order is the fixed-window sampler's, and the offsets are as reproducible as the order."""
    n, T, spare = 40, 16, 5
    fixed = WindowSampler(n, seed=2, micro_batch_size=4, grad_accum=2)
    rand = WindowSampler(n, seed=2, micro_batch_size=4, grad_accum=2, seq_len=T, spare=spare)
    again = WindowSampler(n, seed=2, micro_batch_size=4, grad_accum=2, seq_len=T, spare=spare)
    seen: dict[int, list[int]] = {}
    for step in range(30):  # 240 samples: 6 epochs
        for m in range(2):
            chunks, offsets = rand.windows(step, m)
            assert chunks == fixed.indices(step, m) and (chunks, offsets) == again.windows(step, m)
            assert fixed.windows(step, m)[1] == [0] * 4
            for c, r in zip(chunks, offsets, strict=True):
                assert 0 <= r <= (spare if c == n - 1 else T)
                seen.setdefault(c, []).append(r)
    everything = [r for rs in seen.values() for r in rs]
    assert min(everything) == 0 and max(everything) == T  # both ends of [0, T] inclusive occur
    assert all(len(set(rs)) > 1 for c, rs in seen.items() if c != n - 1)  # shifted anew each epoch
    ranks = [WindowSampler(n, 2, 2, 2, 2, r, seq_len=T, spare=spare) for r in range(2)]
    for step in (0, 3):  # per-rank micro-batches are slices of the single-process stream, offsets included
        for m in range(2):
            for r in range(2):
                chunks, offsets = rand.windows(step, m)
                got = ranks[r].windows(step, m)
                assert got == (chunks[2 * r:2 * r + 2], offsets[2 * r:2 * r + 2])


def test_seeds_past_32_bits_give_their_own_orders_not_shifted_copies_of_small_seeds() -> None:
    """numpy reads 2**32 + 1 as the words [1, 1]: seeded with (seed, epoch) as is, seed 2**32 + 1 at epoch 0 would
    be seed 1 at epoch 1 (and 2**32 at epoch 0 seed 0 at epoch 0). Seeds below 2**32 keep the orders they had."""
    small, large = WindowSampler(50, 1, 10, seq_len=8), WindowSampler(50, 2**32 + 1, 10, seq_len=8)
    assert not np.array_equal(large.perm(0), small.perm(1))
    assert not np.array_equal(large.offsets(0), small.offsets(1))
    assert not np.array_equal(WindowSampler(50, 2**32, 10).perm(0), WindowSampler(50, 0, 10).perm(0))
    assert not np.array_equal(large.perm(0), WindowSampler(50, 2**33 + 1, 10).perm(0))
    assert np.array_equal(small.perm(1), np.random.default_rng([1, 1]).permutation(50))  # as every run before
    assert np.array_equal(small.offsets(1)[:-1], np.random.default_rng([1, 1, 1]).integers(0, 9, size=50)[:-1])
