"""Which folders are checkpoints: `latest` as a shell completes a name (`step_0000004/`), pruning that counts only
`step_N` folders, by step number, and a lock on a filesystem without flock (a one-line error, nothing left)."""

from __future__ import annotations

import errno
import fcntl
import shutil
from pathlib import Path

import pytest
import torch

from cocomix.errors import CocomixError
from cocomix.train.checkpoint import CKPT_DIR, latest_checkpoint, save_checkpoint, step_folders
from cocomix.train.resume import usable_checkpoint
from tests.unit.test_checkpoint_state import GOOD


def _save(run: Path, step: int, keep: int = 2) -> Path:
    return save_checkpoint(run, step, {"w": torch.full((2,), float(step))}, {"state": {}, "param_groups": []},
                           {**GOOD, "step": step}, keep=keep)


def test_a_pointer_with_a_trailing_slash_names_its_checkpoint_and_sets_nothing_aside(tmp_path: Path) -> None:
    """`echo step_0000002/ > latest` (rewinding by hand, the name tab-completed) resumes from step 2; a pointer
    that is no plain name (`step_0000004/.`) is refused as a pointer, yet the healthy folder it names is not set
    aside as damaged: the newest checkpoint that verifies is taken."""
    for step in (2, 4):
        _save(tmp_path, step)
    root = tmp_path / CKPT_DIR
    (root / "latest").write_text("step_0000002/\n")
    assert latest_checkpoint(tmp_path) == usable_checkpoint(tmp_path) == root / "step_0000002"
    (root / "latest").write_text("step_0000004/.\n")
    assert usable_checkpoint(tmp_path) == root / "step_0000004"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002", "step_0000004"]
    assert (root / "latest").read_text() == "step_0000004\n"


def test_pruning_counts_step_folders_only_and_by_step_number(tmp_path: Path) -> None:
    """A user's copy `step_0000004.good` is neither counted nor pruned; an 8-digit step is the newest."""
    root = tmp_path / CKPT_DIR
    for step in (2, 4):
        _save(tmp_path, step)
    shutil.copytree(root / "step_0000004", root / "step_0000004.good")
    _save(tmp_path, 6)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000004", "step_0000004.good", "step_0000006"]
    for step in (9_999_999, 10_000_000, 10_000_001):
        _save(tmp_path, step, keep=1)
    assert [p.name for p in step_folders(root)] == ["step_10000001"]
    (root / "latest").unlink()  # lost pointer: the newest by step is resumed
    _save(tmp_path, 9_999_998, keep=5)
    (root / "latest").unlink()
    assert usable_checkpoint(tmp_path) == root / "step_10000001"


def test_a_filesystem_without_flock_is_a_one_line_error_that_leaves_no_folder(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.train.guard import RunLock

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(CocomixError, match=r"new/\.lock: cannot lock it \(No locks available\); cocomix needs a "
                                           r"filesystem with flock"):
        RunLock(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()  # a folder that was there: kept
    with pytest.raises(CocomixError, match="cannot lock it"):
        RunLock(tmp_path / "old")
    assert (tmp_path / "old").is_dir()
