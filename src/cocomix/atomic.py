"""Atomic file writes: write to a temporary name in the same folder, flush and fsync, then `os.replace`.

A reader therefore sees either the old file or the complete new one, never a partial write. `check_out_folder`
refuses, before a command does its work, an output folder that a file stands in the way of, whose path is not
UTF-8 (`check_utf8_path`), or (`own=`) that holds another command's output. `reserve_file` allocates a file to be
written through a memory map, so that a full disk is an error rather than a SIGBUS (no paper equation).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    """The process's umask: read from /proc where Linux shows it (reading it through `os.umask` means setting it,
    which another thread creating a file at that moment would see), else that way."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(folder: bool = False) -> int:
    """The permissions a plain `open` / `mkdir` gives under the process's umask (files written through a temporary
    name — mkstemp, mkdtemp, safetensors — are created 0600 / 0700)."""
    return (0o777 if folder else 0o666) & ~_umask()


def shown_path(path: str | Path) -> str:
    """`path` as text every writer accepts (a report, a plot label): bytes that are not UTF-8 as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_utf8_path(path: str | Path, flag: str = "--out") -> None:
    """ConfigError for a path whose bytes are not UTF-8 (they reach Python as lone surrogates): safetensors and
    tokenizers open only UTF-8 paths, so what a command wrote there could not be read back."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        from cocomix.errors import ConfigError

        raise ConfigError(f"{flag} {shown_path(path)}: the path is not valid UTF-8 (safetensors and tokenizers open "
                          "only UTF-8 paths); choose another name") from None


def check_out_folder(path: str | Path, flag: str = "--out", own: tuple[str, ...] | None = None,
                     replaces: bool = False) -> Path:
    """The output folder `path`; ConfigError (before any work) when a file, or a folder inside one, is in the way,
    or (`own` given: the kinds of `cocomix.outputs` this command writes) when it holds another kind of output.
    With `replaces` (a command that rewrites its output rather than resuming it), a note on stderr when the folder
    already holds one of `own`."""
    from cocomix.errors import ConfigError

    check_utf8_path(path, flag)
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{flag} {out}: {p} exists and is not a directory (a file)")
            break
    from cocomix.outputs import RUN, output_kind

    where = Path(os.path.abspath(out))  # (`new` or `.` with the working folder inside checkpoints/; `..` resolved)
    for p in (where, *where.parents):  # a run's checkpoints/ folder holds its checkpoints only (pruned, resumed from)
        if p.name == "checkpoints" and output_kind(p.parent) == RUN:
            raise ConfigError(f"{flag} {out}: inside the checkpoints folder of the run {p.parent}; choose a folder "
                              "outside it")
    if own is not None:
        kind = output_kind(out)
        if kind is not None and kind not in own:
            raise ConfigError(f"{flag} {out}: holds {kind}; choose a new or empty folder")
        if kind is not None and replaces:
            print(f"cocomix: note: {flag} {out} holds {kind}; this run will replace it", file=sys.stderr)
    return out


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's written data to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_folder(directory: Path) -> None:
    """Flush every file directly in `directory`, then the folder itself: before renaming a folder built under a
    temporary name into place, so a crash never leaves a complete-looking folder of truncated files."""
    for f in directory.iterdir():
        if f.is_file():
            fsync_file(f)
    fsync_dir(directory)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` on a clean exit; on an exception the temp file is removed."""
    path = Path(path)
    try:  # the file it replaces keeps its permissions; a new one gets those the umask gives (mkstemp makes 0600)
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = ordinary_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(tmp, mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def reserve_file(path: str | Path, nbytes: int) -> None:
    """Create `path` (if need be) with `nbytes` of disk allocated. A memory-mapped file made by truncating is
    sparse: a disk that fills while it is written through the map kills the process with SIGBUS, no message,
    where allocating up front makes a full disk an OSError (ENOSPC, naming `path`) before any work."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if os.fstat(fd).st_size < nbytes:
            os.ftruncate(fd, nbytes)
        if hasattr(os, "posix_fallocate"):  # (not on macOS or Windows: the file stays sparse there)
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # (a file system that cannot reserve: sparse)
                    raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove `folders` (give them deepest first) where they are empty: the ones a failed command created."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass
