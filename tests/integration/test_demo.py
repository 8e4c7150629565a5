"""The `make demo` job end to end (slow: ~3 minutes on 2 cores) and the cheap parts of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocomix.demo import run_demo


@pytest.mark.slow
def test_demo_beats_the_unigram_baseline(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "data", tmp_path / "run")
    assert result["val_loss_nats"] < result["unigram_entropy_nats"] - 0.5
    stored = json.loads((tmp_path / "run" / "demo_result.json").read_text())
    assert stored["val_loss_nats"] == result["val_loss_nats"]


def test_demo_runs_end_to_end_on_a_few_steps(tmp_path: Path) -> None:
    """Same code path as `make demo` (prepare Shakespeare, train, eval, sample), shortened to 10 steps."""
    result = run_demo(tmp_path / "data", tmp_path / "run",
                      overrides={"train.steps": 10, "train.eval_every": 0, "train.save_every": 0})
    assert result["train_tokens"] == 10 * 16 * 128
    assert 5.0 < result["unigram_entropy_nats"] < 7.0
    assert result["sample"].startswith("ROMEO:")
    assert (tmp_path / "data" / "meta.json").is_file()
