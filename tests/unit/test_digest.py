"""File digests: `file_sha256` hashes every byte (of a file, or a folder's files in sorted order) and
`sampled_sha256` hashes the size and evenly spaced blocks, each checked against hashlib directly."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from cocomix.digest import file_sha256, sampled_sha256

MiB = 1 << 20


def _random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def test_file_sha256_hashes_a_file_of_several_blocks_whole(tmp_path: Path) -> None:
    """3 MiB: three 1 MiB reads, and a byte changed in the last block changes the digest."""
    data = _random_bytes(3 * MiB)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    changed = bytearray(data)
    changed[-1] ^= 0x01
    (tmp_path / "f").write_bytes(bytes(changed))
    assert file_sha256(tmp_path / "f") == hashlib.sha256(bytes(changed)).hexdigest()
    assert file_sha256(tmp_path / "f") != hashlib.sha256(data).hexdigest()


def test_file_sha256_of_a_folder_is_its_files_concatenated_in_sorted_path_order(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    parts = {"b": b"second", "a": b"first", "sub/c": b"third"}
    for name, content in parts.items():
        (tmp_path / "d" / name).write_bytes(content)
    assert file_sha256(tmp_path / "d") == hashlib.sha256(b"first" + b"second" + b"third").hexdigest()


def test_sampled_sha256_hashes_the_size_and_sixteen_evenly_spaced_blocks(tmp_path: Path) -> None:
    """The docstring's definition, written out: sha256 of "<size>\\n" then 16 blocks of 64 KiB, the i-th at
    (size - 64 KiB) · i // 15, so that the first starts the file and the last ends it."""
    n, block = 4 * MiB, 64 * 1024
    data = _random_bytes(n, seed=1)
    path = tmp_path / "train.bin"
    path.write_bytes(data)
    offsets = [(n - block) * i // 15 for i in range(16)]
    assert offsets[0] == 0 and offsets[-1] == n - block and offsets[1] == 275251  # (4 MiB - 64 KiB) // 15
    want = hashlib.sha256(f"{n}\n".encode() + b"".join(data[o:o + block] for o in offsets)).hexdigest()
    assert sampled_sha256(path) == want
    tail = bytearray(data)
    tail[-block:] = bytes(b ^ 0xFF for b in tail[-block:])  # only the last 64 KiB differ
    path.write_bytes(bytes(tail))
    assert sampled_sha256(path) != want
    gap = bytearray(data)
    gap[block + 10] ^= 0x01  # between the first two samples: a sampled digest does not see it (by design)
    path.write_bytes(bytes(gap))
    assert sampled_sha256(path) == want


def test_sampled_sha256_hashes_a_file_of_at_most_sixteen_blocks_whole(tmp_path: Path) -> None:
    """Up to 16 × 64 KiB = 1 MiB the file is hashed whole (100 KiB: sixteen overlapping samples would hash other
    bytes); one byte more and it is sampled."""
    block = 64 * 1024
    for n in (100, 100 * 1024, MiB - 1, MiB + 1):
        data = _random_bytes(n, seed=2)
        path = tmp_path / f"{n}.bin"
        path.write_bytes(data)
        whole = hashlib.sha256(f"{n}\n".encode() + data).hexdigest()
        assert (sampled_sha256(path) == whole) == (n <= MiB), n
        if n > block:  # sixteen 64 KiB samples of it, which overlap: other bytes than the file's
            sampled = hashlib.sha256(f"{n}\n".encode() + b"".join(data[(n - block) * i // 15:][:block]
                                                                    for i in range(16))).hexdigest()
            assert sampled != whole and (sampled_sha256(path) == sampled) == (n > MiB), n
