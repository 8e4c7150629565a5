"""Atomic writes: the final file has ordinary permissions (mkstemp creates 0600), and its content is whole."""

from __future__ import annotations

import os
from pathlib import Path

from cocomix.atomic import atomic_write_text, atomic_writer


def test_atomically_written_files_are_readable_by_others_as_ordinary_files_are(tmp_path: Path) -> None:
    """0644, what `open` gives under the usual umask 022 (set explicitly: mkstemp's 0600 would hide checkpoints and
    configs from the rest of a group sharing run folders)."""
    old = os.umask(0o077)
    try:
        with atomic_writer(tmp_path / "a.bin") as handle:
            handle.write(b"\x00\x01")
        atomic_write_text(tmp_path / "b.txt", "text\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.txt").read_text() == "text\n"
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("a.bin", "b.txt")} == {0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]  # no temp file left
