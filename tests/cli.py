"""`run_cli`: the `cocomix` command line run inside the test process, its output and exit code captured.

Starting `python -m cocomix` costs ~3 s per call on 2 cores (importing torch and transformers), most of an
integration test's time; this calls `cocomix.cli.main` directly instead, with the same argv, the same exit codes
(argparse's `SystemExit` included) and the warnings a fresh interpreter would print on stderr. Tests that need a
real process (signals, SIGKILL, torchrun, the `python -m cocomix` entry point itself) still start one.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
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


def run_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """`cocomix *args` in this process; `env` entries are set for the call only."""
    out, err = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.resetwarnings()  # also forgets which warnings were shown: each call starts fresh
            for action, category, module in reversed(_DEFAULT_FILTERS):
                warnings.filterwarnings(action, category=category, module=module)
            warnings.showwarning = show
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --help (0) and usage errors (2)
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    err.write(f"{e.code}\n")
                    code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return CliResult(list(args), code, out.getvalue(), err.getvalue())
