"""Seeds for torch's generators (no paper equation).

torch's CPU generator (a Mersenne Twister) keeps only the low 32 bits of the seed it is given, so seeds that
differ above bit 32 — 1 and 2**32 + 1 — would draw the same initial weights, dropout masks and samples while the
window order (`data.sampler.seeded_rng`) tells them apart. `torch_seed` keeps a seed below 2**32 as it is (every
run so far keeps its weights) and maps a larger one through a hash to 32 bits, so such seeds draw other numbers
(one of them may still meet a small seed's stream: 32 bits are all the generator has).
"""

from __future__ import annotations

import hashlib


def torch_seed(seed: int) -> int:
    """`seed` itself below 2**32, else 32 bits of a hash of it: what to give `torch.manual_seed` or a
    `torch.Generator` for seed `seed`."""
    if seed < 2**32:
        return seed
    return int.from_bytes(hashlib.sha256(b"cocomix-seed:%d" % seed).digest()[:4], "little")
