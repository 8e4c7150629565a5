"""`cli_parser.as_flag`: a library error that names a setting names the command's flag instead, but a path the user
gave that happens to be called like a flag (a run directory `data`) stays as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocomix.cli import build_parser
from cocomix.cli_parser import as_flag
from tests.cli import run_cli


def test_a_setting_becomes_the_flag_and_a_given_path_stays() -> None:
    parser = build_parser()
    assert as_flag("max_new_tokens: too many", parser, "generate") == "--max-new-tokens: too many"
    assert as_flag("data: not a cocomix run", parser, "eval") == "--data: not a cocomix run"
    assert as_flag("data: not a cocomix run", parser, "eval", given=["data"]) == "data: not a cocomix run"
    assert as_flag("k_attr=4 is too many", parser, "extract-concepts", given=["k_attr"]) == "--k-attr 4 is too many"


def test_a_run_folder_named_like_a_flag_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    for given in ("data", "data/", "./data"):  # (the library names the path as Path() writes it: data)
        r = run_cli("eval", given)
        assert r.returncode == 2 and r.stderr.startswith("cocomix: error: data: not a cocomix run"), r.stderr


def test_a_path_that_holds_a_setting_and_a_listed_run_stay_as_given(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep folder called `expansion=16` or a run `seed=1` is no `--expansion 16` / `--seed 1`; nor is a run
    folder `out` of compare's list of runs compare's `--out`."""
    parser = build_parser()
    assert (as_flag("expansion=16: not empty; use another --out", parser, "train-sae", given=["expansion=16"])
            == "expansion=16: not empty; use another --out")
    assert (as_flag("sweep/seed=1: no such run; seed=1 is asked", parser, "generate", given=["sweep/seed=1"])
            == "sweep/seed=1: no such run; --seed 1 is asked")  # the path stays, the setting outside it does not
    monkeypatch.chdir(tmp_path)
    r = run_cli("generate", "seed=1", "--prompt", "x")
    assert r.returncode == 2 and r.stderr.startswith("cocomix: error: seed=1: no such run"), r.stderr
    (tmp_path / "out").mkdir()
    r = run_cli("compare", "out")
    assert r.returncode == 2 and r.stderr.startswith("cocomix: error: out: "), r.stderr
