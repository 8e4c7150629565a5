"""What keeps a training run safe on a shared cluster (no paper equation): one writer per run directory, a clean
stop on SIGTERM / SIGINT, and the non-finite-step policy. `train`, `train-sae` and `extract-concepts` use the lock
and the signal handling; `prepare` and `prepare --adopt` use the lock (a kill leaves the folder consistent, see
`data/store.py`).

- `RunLock`: an exclusive `flock` on RUN_DIR/.lock for the whole run; a second `cocomix train` into the same
  directory fails at once with a one-line error instead of interleaving checkpoints. The lock dies with the
  process (also on SIGKILL), so a crashed run never leaves a stale lock.
- `StopSignals`: SIGTERM and SIGINT set a flag instead of killing the process; the training loop checks it after
  each optimizer step, writes a checkpoint and returns (`TrainResult.stopped`). A second signal of the same kind
  falls back to the default behaviour (kill), for a user who insists; under torchrun, where one request arrives twice
  (SLURM or Ctrl-C and torchrun both signal), repeats are ignored (see `StopSignals`).
- `cocomix.errors.Stopped`: how `train-sae` and `extract-concepts`, which share the lock and the signals, report a
  clean stop (their progress saved) to the CLI, which exits 128 + signal.
- `BadSteps`: a step whose loss or gradient norm is not finite is skipped (no optimizer update, gradients
  dropped) and counted; `max_bad_steps` in a row stop the run with an error naming the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from cocomix.errors import CocomixError

LOCK_NAME = ".lock"


class RunLock:
    """Exclusive lock on a run directory, held until `release` (or process exit)."""

    def __init__(self, run_dir: Path, instead: str = "choose another --out") -> None:
        """`instead`: what the error of a folder locked by another process tells the user to do besides waiting."""
        self.path = run_dir / LOCK_NAME
        existed = run_dir.exists()
        for _ in range(3):  # a holder that removes its empty folder on release unlinks the lock file it held
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise CocomixError(f"{run_dir}: cannot create its lock file {LOCK_NAME} ({e.strerror})") from None
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                raise CocomixError(f"{run_dir}: another cocomix process is writing this directory "
                                   f"(it holds {self.path}); wait for it or {instead}") from None
            except OSError as e:  # a filesystem without flock (ENOLCK: Lustre mounted without it, some NFS)
                os.close(self._fd)
                self._fd = -1
                if not existed:  # the folder this call made holds only the lock file: leave nothing behind
                    with contextlib.suppress(OSError):
                        self.path.unlink()
                        run_dir.rmdir()
                raise CocomixError(f"{self.path}: cannot lock it ({e.strerror or e}); cocomix needs a filesystem "
                                   "with flock for its output folders (Lustre: mounted with -o flock)") from None
            if self._holds_the_file_on_disk():
                break
            os.close(self._fd)  # locked a file that was unlinked meanwhile: lock the one there now
        else:
            self._fd = -1
            raise CocomixError(f"{run_dir}: its lock file {LOCK_NAME} keeps being removed; is another process "
                               "deleting this directory?")
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def _holds_the_file_on_disk(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def release(self, *, remove_empty_dir: bool = False) -> None:
        """Unlock. With `remove_empty_dir` (for a directory this command created), a directory that holds nothing
        but the lock file is removed first, while still locked: a start that failed before writing anything
        leaves no empty folder behind."""
        if self._fd < 0:
            return
        if remove_empty_dir:
            try:
                if [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
                    self.path.unlink()
                    self.path.parent.rmdir()
            except OSError:  # something appeared meanwhile, or no permission: keep the folder
                pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


class StopSignals:
    """Turn SIGTERM / SIGINT into a stop request for the loop while installed (main thread only).

    A second signal of the same kind insists: it does what the signal would have done. Under torchrun a worker
    is signalled twice for one request: SLURM (time limit, scancel) or a terminal's Ctrl-C signals every process
    of the job, and torchrun forwards its own copy; there repeats are ignored, and torchrun's shutdown timeout
    (`--shutdown-timeout`, TORCH_ELASTIC_SHUTDOWN_TIMEOUT) is what ends a worker that takes too long.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signum and not self._under_torchrun:  # asked twice: do what the signal would have done
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum

    def __enter__(self) -> StopSignals:
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""


class BadSteps:
    """Counts skipped (non-finite) steps; raises after `limit` in a row."""

    def __init__(self, limit: int, total: int = 0, in_a_row: int = 0) -> None:
        self.limit, self.total, self.in_a_row = limit, total, in_a_row  # both restored on resume

    def check(self, grad_norm: float) -> bool:
        """True when the step may be applied; False (counted) when it must be skipped. The gradient norm is
        global (the same on every rank) and non-finite whenever the loss is."""
        if math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.total += 1
        self.in_a_row += 1
        return False

    def stop_if_persistent(self, step: int, last_checkpoint: Path | None) -> None:
        if self.in_a_row >= self.limit:
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
            raise CocomixError(f"training stopped at step {step}: {self.in_a_row} steps in a row had a non-finite "
                               f"loss or gradient (train.max_bad_steps = {self.limit}); {where}. To continue from "
                               "it with a lower learning rate or tighter clipping, run the same command with "
                               "--resume and --set train.lr=... (or train.grad_clip=...)")
