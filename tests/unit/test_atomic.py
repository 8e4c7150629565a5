"""Writing outputs safely: atomic writes give whole files with ordinary permissions (mkstemp creates 0600), and
`output_kind` tells which command's output a folder holds (what every `--out` check asks)."""

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


def test_each_output_kind_is_told_by_its_marking_files(tmp_path: Path) -> None:
    """`output_kind`, which every `--out` check asks: a run by its config plus checkpoints *or* metrics (a run
    stopped before its first checkpoint is still a run), a target cache by any of its files (an extraction stopped
    after its first batch), and a folder with none of the files is no output."""
    from cocomix.outputs import output_kind

    def folder(name: str, *files: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        for f in files:
            (path / f).mkdir() if f.endswith("/") else (path / f).write_text("")
        return path

    assert output_kind(folder("run-ckpt", "config.json", "checkpoints/")) == "a cocomix run"
    assert output_kind(folder("run-log", "config.json", "metrics.jsonl")) == "a cocomix run"
    assert output_kind(folder("cache", "progress.json")) == "a concept cache"
    assert output_kind(folder("cache-train", "targets_train.bin", "meta.json")) == "a concept cache"
    assert output_kind(folder("store", "train.bin", "meta.json")) == "a token store"
    assert output_kind(folder("log-only", "slurm-123.out")) is None and output_kind(tmp_path / "missing") is None
