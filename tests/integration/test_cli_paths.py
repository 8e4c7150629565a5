"""Paths on the command line: `--opt=~/x` (which the shell leaves unexpanded) means the home folder, as `--opt ~/x`
does, for every path option, and a run's own `data.path` of `~/...` is read as such by `export`; a stdout that
cannot encode the commands' non-ASCII output (a Latin-1 locale) gets escapes instead of a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.integration.test_train import small_run


def test_tilde_in_an_option_given_with_equals_is_the_home_folder(store_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    shutil.copytree(store_dir, home / "store")
    config = json.loads(small_run(home / "store", steps=2, eval_every=0, save_every=2).to_json())
    config["data"]["path"] = "~/store"  # as a user writes it in a config file
    (home / "run.json").write_text(json.dumps(config))
    r = run_cli("train", "--config=~/run.json", "--out=~/run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (home / "run" / "checkpoints").is_dir() and not (work / "~").exists()
    r = run_cli("eval", "--run=~/run", "--data=~/store", "--batches", "1")
    assert r.returncode == 0 and json.loads(r.stdout)["windows"] > 0, r.stderr[-2000:]
    r = run_cli("export", "~/run", "--out=~/exported")  # the tokenizer from the run's data.path, "~/store"
    assert r.returncode == 0, r.stderr[-2000:]
    assert (home / "exported" / "config.json").is_file() and not (work / "~").exists()


def test_a_latin1_stdout_gets_escapes_not_a_traceback() -> None:
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    r = subprocess.run([sys.executable, "-m", "cocomix", "presets"], capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert b"\\u03bb" in r.stdout  # λ, escaped
