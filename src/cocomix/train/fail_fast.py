"""One rank's failure stops every rank within seconds instead of after the collective timeout (no paper equation).

Under torchrun on several nodes, a process that raises (rank 0 finding the disk full while it writes a checkpoint,
one GPU out of memory, a file one node cannot read) exits, and its node's agent stops that node's processes. The
agents of the other nodes are not told: their processes wait in the next collective until it times out
(`distributed.COLLECTIVE_TIMEOUT`, 30 minutes), holding the whole allocation.

`FailFast` closes that gap through the process group's key-value store (the TCP store every rank already talks
to). A rank leaving it with an exception writes its rank under a key of the store; every rank runs a watcher
thread that polls the key and, when another rank has failed, says so on stderr and ends its process at once
(exit code `EXIT_CODE`): its main thread may be blocked inside a collective, where no exception can reach it.
Each watcher that acts adds one to a counter, and the failing rank waits (at most `2 · poll` seconds) until every
other rank has seen the failure before it goes on raising, because when rank 0 hosts the store its exit takes the
store away.

A store that no poll can reach `LOST_STORE_POLLS` times in a row stops the rank the same way: its host has ended
(under env:// rank 0, which may have been killed outright without announcing anything; under torchrun the agent
of the rendezvous host).

Leaving the guard stops the watcher and waits for it (at most `poll + JOIN_SECONDS`): a watcher thread still
inside a store call while the process group is destroyed, or the interpreter exits, can abort the process.

Before it ends its process the watcher runs the callbacks registered with `on_stop` (the metrics logger's close,
which flushes TensorBoard and finishes wandb; a fresh run's undo of what it wrote when the other rank failed on bad
input), last registered first, each in a thread given at most `CLEANUP_SECONDS`: the main thread is blocked, so a
sink that needs it must not hold the exit up. The failing rank announces its exception's class names (its class
and bases) with its rank, in one value, which the stopped ranks' callbacks read as `failed_errors`; a stopped rank
ends `GRACE_SECONDS` after its callbacks, so that the failing rank has printed its error when torchrun's agent,
seeing one worker exit, ends the others.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, NoReturn

import torch.distributed as dist

from cocomix.errors import Stopped
from cocomix.train.distributed import DistContext

EXIT_CODE = 1
POLL_SECONDS = 3.0
CLEANUP_SECONDS = 10.0
LOST_STORE_POLLS = 3  # polls in a row that cannot reach the store before a rank takes it for its host's end
JOIN_SECONDS = 5.0  # how long leaving the guard waits, past one poll, for the watcher's store call to return
GRACE_SECONDS = 1.0  # how long a stopped rank lets the failing one (which saw its ack) print its error before it ends:
# torchrun's agent ends every worker once one has exited, and the reason is in the failing rank's output


def _keys() -> tuple[str, str]:
    """Per torchrun attempt (`--max-restarts`), so that a restarted group does not read the last one's failure."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"cocomix/attempt_{attempt}/failed_rank", f"cocomix/attempt_{attempt}/acks"


def _default_store() -> Any | None:
    """The default process group's store, or None where this torch does not expose it (no watcher then)."""
    getter = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return getter() if getter is not None and dist.is_initialized() else None
    except (RuntimeError, ValueError):
        return None


def _quietly(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception as e:  # the process is ending anyway; say what was not flushed
        print(f"cocomix: note: while stopping: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


class FailFast:
    """Context manager around a distributed job's work (the training and its final barrier); a no-op for one
    process. See the module docstring."""

    def __init__(self, ctx: DistContext, poll: float = POLL_SECONDS) -> None:
        self.ctx, self.poll = ctx, poll
        self.store: Any | None = None
        self._done = threading.Event()
        self._failed_here = False  # this rank announced a failure: its own watcher leaves it to the raise
        self._thread: threading.Thread | None = None
        self._on_stop: list[Callable[[], object]] = []
        self.failed_errors: tuple[str, ...] = ()
        """On a rank the watcher stops: the class names of the failing rank's exception and its bases (e.g.
        ("DataError", "CocomixError", "Exception", ...)); empty when none was announced."""

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Run `callback` (in a bounded thread) if the watcher ends this process because another rank failed;
        callbacks run last registered first (as an exit stack unwinds)."""
        self._on_stop.append(callback)

    def _cleanup(self) -> None:
        for callback in reversed(self._on_stop):
            worker = threading.Thread(target=_quietly, args=(callback,), name="cocomix-fail-fast-cleanup",
                                      daemon=True)
            worker.start()
            worker.join(CLEANUP_SECONDS)

    def __enter__(self) -> FailFast:
        if self.ctx.active:
            self.store = _default_store()
        if self.store is not None:
            key, acks = _keys()
            self._thread = threading.Thread(target=self._watch, args=(key, acks), name="cocomix-fail-fast",
                                            daemon=True)
            self._thread.start()
        return self

    def _watch(self, key: str, acks: str) -> None:
        store, lost = self.store, 0
        while not self._done.wait(self.poll):
            try:
                if not store.check([key]):
                    lost = 0
                    continue
                failed, _, errors = store.get(key).decode().partition(":")  # "RANK:Class,Base,..."
                self.failed_errors = tuple(e for e in errors.split(",") if e)
            except Exception:  # the store is unreachable: its host (rank 0 under env://, else the agent) is gone
                lost += 1
                if lost < LOST_STORE_POLLS or self._failed_here or self._done.is_set():
                    continue
                self._stop("the process group's store is gone (its host, rank 0 or the torchrun agent that "
                           "started the job, has ended)")
            if self._failed_here or self._done.is_set():
                return
            try:
                store.add(acks, 1)
            except Exception:
                pass
            self._stop(f"rank {failed} failed (its output has the reason)")

    def _stop(self, why: str) -> NoReturn:
        print(f"cocomix: rank {self.ctx.rank}: stopping because {why}; no checkpoint is written for the unfinished "
              "step", file=sys.stderr, flush=True)
        self._cleanup()
        time.sleep(GRACE_SECONDS)
        os._exit(EXIT_CODE)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        # a stop signal that every rank obeys (`Stopped`, raised on each after its progress is saved) is no failure
        if exc is not None and self.store is not None and not isinstance(exc, (KeyboardInterrupt, GeneratorExit,
                                                                               Stopped)):
            self._failed_here = True
            self._announce(",".join(c.__name__ for c in type(exc).__mro__))
        self._done.set()
        if self._thread is not None:  # a watcher still inside a store call when the process ends (or the group is
            self._thread.join(self.poll + JOIN_SECONDS)  # destroyed) can abort it ("terminate called ...")
        return False

    def _announce(self, error: str) -> None:
        key, acks = _keys()
        try:
            if not self.store.check([key]):  # the first failure names the rank and its error; later ones keep it
                self.store.set(key, f"{self.ctx.rank}:{error}")
            deadline = time.monotonic() + 2 * self.poll
            while time.monotonic() < deadline and self.store.add(acks, 0) < self.ctx.world_size - 1:
                time.sleep(0.1)
        except Exception:  # the store is gone: the agents end the job themselves
            pass
