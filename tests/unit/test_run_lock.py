"""`RunLock`: one writer per directory; a folder the command created and left holding only the lock is removed on
release, and a process that locked the lock file just as it was removed locks the new one instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cocomix.train.guard as guard
from cocomix.errors import CocomixError
from cocomix.train.guard import LOCK_NAME, RunLock


def test_release_removes_only_a_folder_that_holds_nothing_but_the_lock(tmp_path: Path) -> None:
    empty, used = tmp_path / "empty", tmp_path / "used"
    for folder in (empty, used):
        folder.mkdir()
    a, b = RunLock(empty), RunLock(used)
    (used / "config.json").write_text("{}")
    a.release(remove_empty_dir=True)
    b.release(remove_empty_dir=True)
    assert not empty.exists() and sorted(p.name for p in used.iterdir()) == [LOCK_NAME, "config.json"]
    c = RunLock(used)  # released: the next writer gets it
    with pytest.raises(CocomixError, match="another cocomix process is writing this directory"):
        RunLock(used)
    c.release()


def test_a_lock_taken_on_a_file_removed_meanwhile_is_taken_again_on_the_new_one(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    run = tmp_path / "run"
    run.mkdir()
    first = RunLock(run)
    stale = os.open(run / LOCK_NAME, os.O_RDWR)  # another process opened the lock file before it was removed ...
    first.release(remove_empty_dir=True)  # ... and the holder removed it with its folder
    assert not run.exists()
    real_open, calls = os.open, []

    def open_stale_first(path, flags, mode=0o777):  # noqa: ANN001, ANN202
        calls.append(path)
        return stale if len(calls) == 1 else real_open(path, flags, mode)

    monkeypatch.setattr(guard.os, "open", open_stale_first)
    second = RunLock(run)  # locks the orphaned file first, sees it is not on disk, locks a new one
    assert len(calls) == 2 and os.fstat(second._fd).st_ino == os.stat(run / LOCK_NAME).st_ino
    assert (run / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    second.release()
