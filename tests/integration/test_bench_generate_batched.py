"""bench/generate_batched.py: batched and one-at-a-time generation side by side give the same greedy answers,
and the JSON reports both sides' speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_batched_and_one_at_a_time_generation_agree_and_are_timed() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "generate_batched.py"), "--preset", "tiny-cocomix",
                        "--prompts", "6", "--new", "6", "--min-len", "3", "--max-len", "20", "--batch-size", "4",
                        "--repeats", "2"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["greedy_agree"] == 6 and out["method"] == "cocomix"
    assert 3 <= out["prompt_lengths"][0] < out["prompt_lengths"][1] <= 20
    assert set(out["seconds"]) == {"one_at_a_time", "batched"} and min(out["seconds"].values()) > 0
