"""bench/preset_throughput.py (issue 7's GPU check) runs end to end on CPU: offline data, teacher and SAE, the real
`cocomix train`, and tokens/s, FLOPs and MFU read back from the runs' metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_preset_throughput_trains_each_preset_and_reports_mfu(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "preset_throughput.py"), "--presets", "tiny,tiny-cocomix",
           "--device", "cpu", "--steps", "4", "--log-every", "2", "--words", "8000", "--peak-tflops", "2",
           "--work", str(tmp_path / "work"), "--set", "train.micro_batch_size=2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out == json.loads((tmp_path / "work" / "throughput.json").read_text())
    ntp, coco = out["presets"]["tiny"], out["presets"]["tiny-cocomix"]
    for res in (ntp, coco):
        assert res["steps"] == 4 and res["log_intervals_timed"] == 1 and res["tokens_per_s"] > 0
        assert res["mfu"] == res["achieved_tflops"] / 2 and res["gpu_peak_gib"] is None  # CPU: no GPU memory
        assert res["achieved_tflops"] == pytest.approx(res["tokens_per_s"] * res["model_flops_per_token"] / 1e12)
    # online CoCoMix counts the frozen teacher and SAE on top of its student
    assert coco["model_flops_per_token"] > coco["student_flops_per_token"]
    assert ntp["model_flops_per_token"] == ntp["student_flops_per_token"]
    config = json.loads((tmp_path / "work" / "tiny-cocomix" / "config.json").read_text())
    assert config["concept"]["teacher"].endswith("teacher") and config["train"]["steps"] == 4
    assert out["set"] == ["train.micro_batch_size=2"] and out["steps"] == 4 and out["grad_accum"] == 1
    # a rerun into the same --work with other settings is refused: it would re-read these runs' figures as its own
    r = subprocess.run([*cmd, "--set", "train.compile=true"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode != 0 and "give another --work" in r.stderr and not r.stdout
    # ... and so is one with another corpus size, whose store it would otherwise train on and report as its own
    r = subprocess.run([*cmd[:cmd.index("--words") + 1], "9000", *cmd[cmd.index("--words") + 2:]],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "a token store of 8000 words, not --words 9000" in r.stderr, r.stderr[-2000:]
    # a preset name that does not exist is refused before anything is made or trained
    bad = [*cmd[:cmd.index("--presets") + 1], "tiny,tiny-cocomx", *cmd[cmd.index("--presets") + 2:]]
    bad[bad.index("--work") + 1] = str(tmp_path / "other")
    r = subprocess.run(bad, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "unknown preset 'tiny-cocomx'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "other").exists()
