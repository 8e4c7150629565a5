"""`run_cli`: the `cocomix` command line run inside the test process, its output and exit code captured.

Starting `python -m cocomix` costs seconds per call on 2 cores (importing torch and transformers, first-call
set-up), most of a short integration test's time; this calls `cocomix.cli.main` directly instead, with the same
argv and exit codes (argparse's `SystemExit` included). What the command prints is captured: stdout, stderr,
Python warnings under a fresh interpreter's filters (each call shows them anew) and records of loggers whose
handlers write to a stream (transformers', lm-eval's), as a subprocess's stderr would hold them. A call that runs
longer than `timeout` seconds fails the test. Tests that need a real process (signals, SIGKILL, torchrun, thread
counts set through the environment, the `python -m cocomix` entry point itself) still start one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from cocomix.cli import main

# a fresh interpreter's warning filters (no -W options): what `python -m cocomix` would show
_DEFAULT_FILTERS = (("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                    ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                    ("ignore", ResourceWarning, ""))


@dataclass
class CliResult:
    """What `subprocess.run(..., capture_output=True, text=True)` would have returned."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _log_streams_to(stream: io.StringIO) -> Iterator[None]:
    """Every logging handler that writes to a stream (not a file, not pytest's own capture, not a lazy handler
    that has opened no stream yet, such as torch's trace-log handler) writes to `stream` meanwhile."""
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    handlers = {h for lg in loggers for h in lg.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                and not type(h).__module__.startswith("_pytest") and h.stream is not None}
    saved = []
    for h in handlers:
        if not isinstance(h, logging._StderrHandler):  # the last-resort handler already follows sys.stderr
            try:
                old = h.setStream(stream)
            except ValueError:  # bound to a stream closed since (a pytest capture of an earlier test): no flush
                old, h.stream = h.stream, stream
            if old is not None:  # None: it already wrote to `stream`
                saved.append((h, old))
    try:
        yield
    finally:
        for h, old in saved:
            h.stream = old  # as it was, closed or not (setStream would flush `stream` only)


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum, frame):  # noqa: ANN001, ANN202
        raise TimeoutError(f"cocomix command still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> CliResult:
    """`cocomix *args` in this process; `env` entries are set for the call only."""
    out, err = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    with (_environment(env or {}), _time_limit(timeout), warnings.catch_warnings(), contextlib.redirect_stdout(out),
          contextlib.redirect_stderr(err), _log_streams_to(err)):
        warnings.resetwarnings()  # also forgets which warnings were shown: each call starts fresh
        for action, category, module in reversed(_DEFAULT_FILTERS):
            warnings.filterwarnings(action, category=category, module=module)
        warnings.showwarning = show
        formatwarning = warnings.formatwarning  # main() sets cocomix's one-line format; restored after the call
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse: --help (0) and usage errors (2)
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                err.write(f"{e.code}\n")
                code = 1
        finally:
            warnings.formatwarning = formatwarning
    return CliResult(list(args), code, out.getvalue(), err.getvalue())
