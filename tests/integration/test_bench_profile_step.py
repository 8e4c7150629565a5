"""bench/profile_step.py (prepared for the next GPU lease): profiled steps at the tiny shape split into their
regions, the teacher's work in the targets region for every method that has one, and a trace is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _profile(*args: str) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "profile_step.py"), "--shape", "tiny", "--warmup", "1",
                        "--steps", "2", *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.slow  # ~30 s on 2 cores (`make test-slow`)
def test_a_profiled_cocomix_step_is_split_into_targets_student_backward_and_optimizer(tmp_path: Path) -> None:
    out = _profile("--out", str(tmp_path / "prof"), "--chunk-elements", str(1 << 12))  # many small chunks
    assert out["chunk_elements"] == 1 << 12
    seconds = out["seconds_per_step"]
    assert set(seconds) == {"targets", "student_loss", "backward", "optimizer"} and min(seconds.values()) > 0
    assert abs(sum(out["share"].values()) - 1) < 1e-3 and out["flops_per_token"]["teacher"] > 0
    assert out["region_tflops"]["targets"] > 0 and out["region_tflops"]["student"] > 0
    ops = [row["op"] for row in out["top_ops"]]
    assert {"aten::mm", "aten::addmm"} & set(ops) and not {"targets", "student_loss", "backward"} & set(ops)
    assert sum(row["self_seconds"] for row in out["top_ops"]) <= out["step_seconds"]  # per step, in seconds
    assert (tmp_path / "prof" / "trace.json").stat().st_size > 1000 and "aten::mm" in (
        tmp_path / "prof" / "ops.txt").read_text()


@pytest.mark.parametrize("method", ["cocomix-naive", "kd", "ntp"])
def test_the_teachers_work_is_timed_in_every_method_that_has_one(method: str) -> None:
    out = _profile("--method", method, "--rows", "3")
    has_teacher = out["flops_per_token"]["teacher"] > 0
    assert has_teacher == (method != "ntp")
    assert (out["seconds_per_step"]["targets"] > 0) == has_teacher
    assert (out["region_tflops"]["targets"] is not None) == has_teacher
