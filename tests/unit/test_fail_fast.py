"""`FailFast`: a rank that fails stops the other ranks through the process group's store, instead of leaving them
in a collective until it times out; a run whose ranks all finish is left alone. Two plain processes join a gloo
group through env:// (rank 0 hosts the store, as without torchrun's agent); a sleep stands in for a collective
that never returns (what NCCL does when a peer is gone)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cocomix.train import fail_fast
from cocomix.train.distributed import DistContext
from cocomix.train.fail_fast import EXIT_CODE, FailFast

WORKER = textwrap.dedent("""
    import os, sys, time
    import torch.distributed as dist
    from cocomix.train import fail_fast
    from cocomix.train.distributed import DistContext
    from cocomix.train.fail_fast import FailFast

    from cocomix.errors import Stopped

    rank, fail = int(os.environ["RANK"]), os.environ["FAIL_RANK"]
    dist.init_process_group("gloo")
    fail_fast.CLEANUP_SECONDS = 1.0
    guard = FailFast(DistContext(rank, 2, rank), poll=0.2).__enter__()  # (left by hand below, to see the exit)
    try:
        guard.on_stop(lambda: open(os.environ["FLUSHED"] + str(rank), "w").write(
            "closed " + ",".join(guard.failed_errors[:2])))
        guard.on_stop(lambda: time.sleep(600))  # a sink that hangs (wandb waiting on the blocked main thread)
        if fail == "stop":  # a stop signal: every rank saves and raises Stopped, rank 1 a few polls after rank 0
            time.sleep(0.6 * rank)
            raise Stopped(15, "checkpoint written")
        if str(rank) == fail:
            raise RuntimeError("no space left on device")
        if f"kill{rank}" == fail:  # killed outright (the OOM killer): no announcement, the store's host is gone
            time.sleep(0.5)
            os.kill(os.getpid(), 9)
        time.sleep(float(os.environ["WORK_S"]) if rank == 1 else 0.0)
        dist.barrier()  # as train() ends its guarded work: rank 0 (the store's host) cannot leave before the others
    except BaseException as e:
        if not guard.__exit__(type(e), e, e.__traceback__):
            if isinstance(e, Stopped):  # rank 0 (the store's host) stays a while, as a process finishing up does
                print("STOPPED", file=sys.stderr, flush=True)
                time.sleep(1.5 if rank == 0 else 0.0)
                sys.exit(128 + 15)
            raise
    else:
        guard.__exit__(None, None, None)
    print("WORK-DONE", file=sys.stderr)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_pair(tmp_path: Path, fail_rank: str, work_s: float) -> tuple[list[int], list[str], float]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    src = str(Path(__file__).resolve().parents[2] / "src")
    procs = []
    t0 = time.monotonic()
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "FAIL_RANK": fail_rank, "WORK_S": str(work_s),
               "FLUSHED": str(tmp_path / "flushed"),
               "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120)[1] for p in procs]
    return [p.returncode for p in procs], outs, time.monotonic() - t0


def test_a_failing_rank_stops_a_rank_that_waits(tmp_path: Path) -> None:
    codes, errs, took = _run_pair(tmp_path, fail_rank="0", work_s=60.0)
    assert codes[0] != 0 and "no space left on device" in errs[0]  # the failing rank raises its own error
    assert codes[1] == EXIT_CODE, errs[1]
    assert "rank 1: stopping because rank 0 failed" in errs[1] and "WORK-DONE" not in errs[1]
    assert took < 45, f"the waiting rank was not stopped in time ({took:.0f} s)"
    # the stopped rank ran its cleanups, last registered first, past one that hangs, knowing what failed; the
    # failing rank leaves that to its own exit path
    assert (tmp_path / "flushed1").read_text() == "closed RuntimeError,Exception"
    assert not (tmp_path / "flushed0").exists()


def test_ranks_that_finish_at_different_times_are_left_alone(tmp_path: Path) -> None:
    """Rank 0 (the store's host) finishes its work first and waits in the final barrier while rank 1 still works
    for a while (longer than `LOST_STORE_POLLS` polls); both then leave normally."""
    codes, errs, _ = _run_pair(tmp_path, fail_rank="none", work_s=2.0)
    assert codes == [0, 0], errs
    assert all("WORK-DONE" in e and "stopping because" not in e for e in errs)
    assert not list(tmp_path.glob("flushed*"))  # the cleanups are only for a rank stopped by another's failure


def test_a_stop_signal_that_every_rank_obeys_is_no_failure(tmp_path: Path) -> None:
    """`train-sae` and `extract-concepts` end a signalled run by raising `Stopped` on every rank, not at the same
    instant: the first is not announced as a failure, so the later ones finish their own orderly stop."""
    codes, errs, _ = _run_pair(tmp_path, fail_rank="stop", work_s=0.0)
    assert codes == [143, 143], errs
    assert all("STOPPED" in e and "stopping because" not in e for e in errs), errs


def test_a_rank_killed_outright_that_hosts_the_store_stops_the_others(tmp_path: Path) -> None:
    """Under env:// rank 0 hosts the store: when it dies without a word (SIGKILL), the store is gone, and the
    waiting rank stops after `LOST_STORE_POLLS` polls instead of waiting out the collective timeout."""
    codes, errs, took = _run_pair(tmp_path, fail_rank="kill0", work_s=60.0)
    assert codes[0] == -9, errs[0]
    assert codes[1] == EXIT_CODE, errs[1]
    assert "rank 1: stopping because the process group's store is gone" in errs[1] and "WORK-DONE" not in errs[1]
    assert took < 45, f"the waiting rank was not stopped in time ({took:.0f} s)"
    assert (tmp_path / "flushed1").read_text() == "closed "  # nothing was announced


class _SlowStore:
    """A store whose every call takes `delay` seconds (a busy or distant TCP store)."""

    def __init__(self, delay: float) -> None:
        self.delay, self.calls = delay, 0

    def check(self, keys: list[str]) -> bool:
        self.calls += 1
        time.sleep(self.delay)
        return False


def test_leaving_the_guard_waits_for_its_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher is no longer running when the guard is left, even from inside a slow store call: the process
    group is destroyed, or the interpreter ends, only after it (a thread still inside the store then can abort the
    process)."""
    store = _SlowStore(delay=0.5)
    monkeypatch.setattr(fail_fast, "_default_store", lambda: store)
    guard = FailFast(DistContext(0, 2, 0), poll=0.05)
    with guard:
        while store.calls == 0:  # the watcher is inside its first store call
            time.sleep(0.01)
    assert guard._thread is not None and not guard._thread.is_alive()
