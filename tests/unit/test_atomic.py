"""Writing outputs safely: atomic writes give whole files with ordinary permissions (mkstemp creates 0600), and
`output_kind` tells which command's output a folder holds (what every `--out` check asks)."""

from __future__ import annotations

import os
from pathlib import Path

from cocomix.atomic import atomic_write_text, atomic_writer


def test_atomically_written_files_get_the_permissions_open_would_give(tmp_path: Path) -> None:
    """What `open` gives under the umask (0644 under the usual 022, 0600 under a private 077; not mkstemp's 0600
    always, which would hide checkpoints and configs from a group sharing run folders), and a file replaced keeps
    its own."""
    old = os.umask(0o022)
    try:
        for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
            os.umask(mask)
            with atomic_writer(tmp_path / f"a{mask}.bin") as handle:
                handle.write(b"\x00\x01")
            atomic_write_text(tmp_path / f"b{mask}.txt", "text\n")
            assert {(tmp_path / n).stat().st_mode & 0o777 for n in (f"a{mask}.bin", f"b{mask}.txt")} == {mode}
        (tmp_path / "c.txt").write_text("old")
        os.chmod(tmp_path / "c.txt", 0o640)
        atomic_write_text(tmp_path / "c.txt", "new")
        assert (tmp_path / "c.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert (tmp_path / "a18.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b18.txt").read_text() == "text\n"
    assert len(list(tmp_path.iterdir())) == 5  # no temp file left


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


def test_a_relative_out_inside_a_runs_checkpoints_folder_is_refused(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """`new` or `.` from a working folder inside run/checkpoints: its parents are the run's too."""
    import pytest

    from cocomix.atomic import check_out_folder
    from cocomix.errors import ConfigError

    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000002").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    monkeypatch.chdir(run / "checkpoints")
    for out in ("new", ".", "step_0000002/x"):
        with pytest.raises(ConfigError, match="inside the checkpoints folder of the run"):
            check_out_folder(out)
    monkeypatch.chdir(run / "checkpoints" / "step_0000002")
    assert check_out_folder("../../../exported") == Path("../../../exported")  # `..` leaves the run
    monkeypatch.chdir(tmp_path)
    assert check_out_folder("elsewhere") == Path("elsewhere")
