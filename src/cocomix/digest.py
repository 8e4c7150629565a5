"""sha256 digests of files and folders: checkpoint manifests, target-cache provenance, token-store identity.

No paper equation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, or of a folder's files concatenated in sorted path order; read in 1 MiB blocks."""
    return files_sha256(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])


def files_sha256(files: list[Path]) -> str:
    """Hex sha256 of the files' bytes concatenated in the order given; read in 1 MiB blocks."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def sampled_sha256(path: Path, samples: int = 16, size: int = 1 << 16) -> str:
    """Hex sha256 of a file's size and `samples` evenly spaced blocks of `size` bytes (the whole file when it is
    smaller than that): cheap on a corpus-sized token stream, and different for a stream re-prepared from other
    text or in another order (not a check against a single damaged byte)."""
    n = path.stat().st_size
    h = hashlib.sha256(f"{n}\n".encode())
    with open(path, "rb") as fh:
        if n <= samples * size:
            h.update(fh.read())
        else:
            for i in range(samples):
                fh.seek((n - size) * i // (samples - 1))
                h.update(fh.read(size))
    return h.hexdigest()
