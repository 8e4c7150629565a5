"""`tests/cli.py`'s in-process `run_cli` reports what a `python -m cocomix` subprocess would: exit codes (argparse's
included), stdout, stderr with logging output, and leaves the environment and logging as it found them."""

from __future__ import annotations

import logging
import os
import sys

from tests.cli import run_cli


def test_exit_codes_and_streams_are_a_subprocess_s(monkeypatch) -> None:  # noqa: ANN001
    r = run_cli("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: cocomix") and r.stderr == ""
    r = run_cli("no-such-command")
    assert r.returncode == 2 and "invalid choice" in r.stderr and r.stdout == ""
    r = run_cli("eval", "--run", "/nonexistent/run")
    assert r.returncode == 2 and r.stderr.startswith("cocomix: error: ") and r.stderr.count("\n") == 1

    logger = logging.getLogger("cocomix-test-library")  # a library logger bound to stderr when it was set up
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        import cocomix.cli

        def noisy(args):  # noqa: ANN001, ANN202
            logger.warning("loaded")
            return 0 if os.environ.get("COCOMIX_RUNNER_TEST") == "1" else 3  # set for the call's duration

        monkeypatch.setattr(cocomix.cli, "main", lambda argv: noisy(argv))
        monkeypatch.setattr("tests.cli.main", cocomix.cli.main)
        assert "COCOMIX_RUNNER_TEST" not in os.environ
        r = run_cli("anything", env={"COCOMIX_RUNNER_TEST": "1"})
        assert r.returncode == 0 and r.stderr == "loaded\n" and "COCOMIX_RUNNER_TEST" not in os.environ
        assert handler.stream is sys.stderr
    finally:
        logger.removeHandler(handler)


def test_version_is_printed() -> None:
    from cocomix import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cocomix {__version__}"
