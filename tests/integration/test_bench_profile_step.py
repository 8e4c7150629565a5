"""bench/profile_step.py (prepared for the next GPU lease): one profiled CoCoMix step at the tiny shape splits into
its regions, with the teacher's work inside the targets, and writes a trace; an NTP step has no targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _profile(*args: str) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "profile_step.py"), "--shape", "tiny", "--warmup", "1",
                        "--steps", "1", *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_a_profiled_cocomix_step_is_split_into_targets_student_backward_and_optimizer(tmp_path: Path) -> None:
    out = _profile("--out", str(tmp_path / "prof"))
    seconds = out["seconds_per_step"]
    assert set(seconds) == {"targets", "student_loss", "backward", "optimizer"} and min(seconds.values()) > 0
    assert abs(sum(out["share"].values()) - 1) < 1e-3 and out["flops_per_token"]["teacher"] > 0
    assert out["region_tflops"]["targets"] > 0 and out["region_tflops"]["student"] > 0
    ops = [row["op"] for row in out["top_ops"]]
    assert {"aten::mm", "aten::addmm"} & set(ops)
    assert (tmp_path / "prof" / "trace.json").stat().st_size > 1000 and "aten::mm" in (
        tmp_path / "prof" / "ops.txt").read_text()
    ntp = _profile("--method", "ntp")
    assert ntp["seconds_per_step"]["targets"] == 0 and ntp["region_tflops"]["targets"] is None
