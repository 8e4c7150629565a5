"""`make experiment` on a small corpus and a few steps: every variant × seed trains, the report states the findings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cocomix.experiment import VARIANTS, run_experiment
from tests.integration.conftest import LINES


@pytest.mark.slow  # ~100 s on 2 cores: every variant twice (`make test-slow`)
def test_experiment_runs_every_variant_and_reports(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"doc{i:02d}.txt").write_text("\n".join(f"{LINES[(i + j) % len(LINES)]} {i * j % 11}"
                                                       for j in range(80)))
    result = run_experiment(tmp_path / "data", tmp_path / "exp", seeds=2,
                            steps={"teacher": 10, "sae": 10, "student": 10}, source=f"text:{docs}")
    assert set(result["final"]) == set(VARIANTS)
    assert all(v["seeds"] == 2 for v in result["final"].values())
    final = {k: v["mean"] for k, v in result["final"].items()}
    assert all(math.isfinite(v) for v in final.values())
    assert final["ntp-flops"] < final["ntp"] - 0.1  # twice the steps (CoCoMix's FLOPs) at 10 steps: far lower
    flops_cfg = json.loads((tmp_path / "exp" / "ntp-flops-seed0" / "config.json").read_text())
    assert flops_cfg["train"]["steps"] > 10  # the FLOPs-matched NTP trains longer
    report = (tmp_path / "exp" / "experiment.md").read_text()
    assert "CoCoMix vs NTP at equal tokens" in report and "activation selection" in report
    assert "NTP given CoCoMix's FLOPs" in report and (tmp_path / "exp" / "compare" / "loss_vs_flops.png").is_file()


def test_seed_zero_reuses_the_demo_run_only_when_its_config_matches(tmp_path: Path) -> None:
    from cocomix.experiment import run_dir, with_seed
    from cocomix.presets import get_preset

    run = get_preset("tiny")
    (tmp_path / "ntp").mkdir()
    (tmp_path / "ntp" / "config.json").write_text(json.dumps(run.to_dict()))
    assert run_dir(tmp_path, "ntp", 0, with_seed(run, 0)) == tmp_path / "ntp"
    assert run_dir(tmp_path, "ntp", 1, with_seed(run, 1)) == tmp_path / "ntp-seed1"
    assert run_dir(tmp_path, "cocomix", 0, run) == tmp_path / "cocomix-seed0"
