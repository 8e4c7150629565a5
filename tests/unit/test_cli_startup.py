"""The command line starts without importing torch: `--help`, `presets` and argument errors answer at once (and
the import that a command needs runs inside `main`, under its Ctrl-C handler)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def test_help_presets_and_an_argument_error_do_not_import_torch() -> None:
    probe = (
        "import contextlib, io, sys\n"
        "from cocomix.cli import main\n"
        "for argv in (['--help'], ['presets'], ['train', '--help'], ['train-sae', '--help'], ['eval', '--nope']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
