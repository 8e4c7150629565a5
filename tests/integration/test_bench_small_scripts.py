"""The smaller bench scripts run at tiny shapes and check what they exist to measure: throughput.py's two models are
the same model (identical logits and losses, same parameter count), eq1_gradient.py's fast Eq. 1 gradient equals the
per-position one, eval_memory.py's chunked evaluation equals the whole one, concept_cost.py times both sides."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def test_throughput_compares_two_identical_models_and_refuses_a_ratio_it_cannot_measure() -> None:
    r = _bench("throughput.py", "--preset", "tiny", "--repeats", "2", "--warmup", "1", "--steps", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    (res,) = json.loads(r.stdout)["results"]
    assert res["max_abs_logit_diff"] == 0.0 and res["params_ours"] == res["params_reference"]
    assert res["ours"]["final_loss"] == res["reference"]["final_loss"]  # the same steps on the same batches
    assert res["ratio"] > 0 and res["ours"]["tokens_per_s"] > 0
    r = _bench("throughput.py", "--preset", "tiny", "--flavour", "llama", "--min-ratio", "0.95")
    assert r.returncode == 2 and "--min-ratio: only the gpt2 flavour" in r.stderr, r.stderr[-2000:]


def test_eq1_gradient_own_position_pass_equals_per_position_passes() -> None:
    r = _bench("eq1_gradient.py", "--vocab", "320", "--d-model", "32", "--n-layer", "2", "--n-head", "2",
               "--layer", "1", "--batch", "2", "--seq-len", "64", "--repeats", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["relative_difference_of_the_gradients"] < 1e-5
    assert all(v > 0 for v in out["ms"].values())


def test_eval_memory_chunked_and_whole_forwards_give_the_same_loss() -> None:
    r = _bench("eval_memory.py", "--shape", "tiny", "--seq-len", "32", "--batch", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["loss_rel_diff"] < 1e-6 and set(out["results"]) == {"chunked", "whole"}
    assert all(v["transient_mib"] > 0 for v in out["results"].values())


def test_concept_cost_times_the_targets_against_the_forward() -> None:
    r = _bench("concept_cost.py", "--vocab", "320", "--d-model", "32", "--n-layer", "2", "--n-head", "2",
               "--layer", "1", "--latents", "256", "--k", "8", "--k-attr", "4", "--batch", "2", "--seq-len", "32",
               "--repeats", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert len(out["forward_ms_all"]) == len(out["targets_ms_all"]) == 2
    assert math.isfinite(out["ratio_targets_over_forward"]) and out["ratio_targets_over_forward"] > 0



def test_arguments_that_would_fail_after_the_work_are_refused_before_it(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """A count of 0 (an empty median at the end), reversed lengths, a method given twice (stepped twice a round,
    its pairing failing after every round was timed), a negative thread count: one line, no traceback (the
    scripts run in this process: refused before any work)."""
    import runpy

    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # (step_cost imports its neighbours)
    for script, args, said in (
            ("eq1_gradient.py", ("--repeats", "0"), "expected repeats >= 1"),
            ("concept_cost.py", ("--threads", "-1"), "threads >= 0"),
            ("generate_batched.py", ("--min-len", "20", "--max-len", "10"), "--max-len 10: expected at least"),
            ("generate_batched.py", ("--preset", "tiny-cocomx"), "unknown preset 'tiny-cocomx'"),
            ("step_cost.py", ("--shape", "tiny", "--methods", "ntp,cocomix,ntp", "--no-memory"),
             "--methods: each method once"),
            ("step_cost.py", ("--shape", "tiny", "--threads", "-1"), "--threads: expected a thread count >= 1")):
        monkeypatch.setattr(sys, "argv", [script, *args])
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(ROOT / "bench" / script), run_name="__main__")
        code = exc.value.code  # argparse's usage and error on stderr, or SystemExit(message) (printed at exit)
        text = capsys.readouterr().err + (code if isinstance(code, str) else "")
        assert code not in (0, None) and said in text.strip().splitlines()[-1], (script, text)  # (after usage)
