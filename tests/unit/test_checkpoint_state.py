"""`read_state`: a checkpoint's state.json is read only when it holds what a checkpoint records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocomix.errors import CheckpointError
from cocomix.train.checkpoint import read_state

GOOD = {"step": 2, "train_loss": 5.1, "val_loss": None, "tokens": 512, "train_s": 0.4, "global_batch": 8,
        "world_size": 1, "cpu_threads": 2, "skipped_steps": 0, "bad_steps_in_a_row": 0,
        "log_interval": {"count": 0, "sums": {}}, "store": {"train_tokens": 100}}


def _state(tmp_path: Path, name: str = "step_0000002", **changes: object) -> Path:
    ckpt = tmp_path / name
    ckpt.mkdir(exist_ok=True)
    (ckpt / "state.json").write_text(json.dumps({**GOOD, **changes}))
    return ckpt


def test_a_state_of_the_recorded_types_is_read(tmp_path: Path) -> None:
    assert read_state(_state(tmp_path)) == GOOD
    assert read_state(_state(tmp_path, train_loss=float("nan"), val_loss=-0.5))["val_loss"] == -0.5  # a plugin's
    assert read_state(_state(tmp_path, "best", step=7))["step"] == 7  # a folder of another name: not compared


@pytest.mark.parametrize("changes,said", [
    ({"step": 99}, "holds step 99, but its folder is step_0000002"),
    ({"train_s": "x"}, "train_s is 'x'"),
    ({"train_loss": "abc"}, "train_loss is 'abc'"),
    ({"bad_steps_in_a_row": [0]}, r"bad_steps_in_a_row is \[0\]"),
    ({"tokens": -1}, "tokens is -1"),
    ({"world_size": "1"}, "world_size is '1'"),
    ({"global_batch": True}, "global_batch is True"),
    ({"log_interval": 5}, "log_interval is 5"),
    ({"log_interval": {"count": 1, "sums": [1]}}, "log_interval is"),
    ({"store": 7}, "store is 7"),
])
def test_a_damaged_state_is_a_checkpoint_error_naming_the_record(tmp_path: Path, changes: dict, said: str) -> None:
    with pytest.raises(CheckpointError, match=f"state.json: {said}"):
        read_state(_state(tmp_path, **changes))


def test_a_recorded_teacher_or_sae_is_compared_by_content_and_a_missing_one_said_so(tmp_path: Path) -> None:
    """`resume.check_same_inputs`: what the checkpoint recorded must be what the config names now; a teacher that
    is no local path any more (a hub name's model would load instead) is said as such, not as other weights."""
    from cocomix.presets import get_preset
    from cocomix.train.resume import check_same_inputs

    run = get_preset("tiny-cocomix")
    state = {"step": 2, "inputs": {"concept.teacher": "aa", "concept.sae": "bb"}}
    check_same_inputs(state, {"concept.teacher": "aa", "concept.sae": "bb"}, run, tmp_path)
    check_same_inputs({"step": 2}, {"concept.teacher": "zz"}, run, tmp_path)  # a checkpoint from before records
    with pytest.raises(CheckpointError, match=r"^concept\.sae: .* holds another sae than the one"):
        check_same_inputs(state, {"concept.teacher": "aa", "concept.sae": "cc"}, run, tmp_path)
    with pytest.raises(CheckpointError, match=r"^concept\.teacher: .* is no local teacher from here, but"):
        check_same_inputs(state, {"concept.sae": "bb"}, run, tmp_path)
