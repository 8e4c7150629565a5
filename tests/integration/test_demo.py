"""The `make demo` pipeline end to end (slow: the full run) and the same code path on a few steps."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from cocomix.demo import run_demo
from cocomix.errors import CocomixError
from tests.integration.conftest import LINES


@pytest.mark.slow
def test_full_demo_writes_the_report(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "data", tmp_path / "run")
    assert set(result["val_loss"]) == {"ntp", "cocomix"}
    assert all(v < 6.0 for v in result["val_loss"].values())  # far below the ~6.18 unigram entropy


def test_demo_pipeline_runs_on_a_few_steps_and_reuses_finished_stages(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage of `make demo` (prepare, teacher, SAE, targets, both students, report), 15 or 20 steps, on a
    small text corpus instead of the 1.3M-token Shakespeare one, and a steering metric of 2 concepts × 4 prompts
    × 8 tokens instead of 5 × 24 × 32."""
    import cocomix.demo

    monkeypatch.setattr(cocomix.demo, "STEER_EVAL", {"n_prompts": 4, "prompt_len": 16, "max_new_tokens": 8,
                                                     "n_concepts": 2})
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"doc{i:02d}.txt").write_text("\n".join(f"{LINES[(i + j) % len(LINES)]} {i * j % 11}"
                                                        for j in range(80)))
    steps = {"teacher": 15, "sae": 15, "student": 20}
    result = run_demo(tmp_path / "data", tmp_path / "run", steps=steps, source=f"text:{docs}")
    out = tmp_path / "run"
    for f in ("report.md", "loss_vs_tokens.png", "loss_vs_flops.png", "compare.md", "concepts/concepts.md",
              "teacher-sae/sae/cfg.json", "targets/meta.json", "demo_result.json"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "| ntp | ntp | 1 |" in report and "| cocomix | cocomix | 1 |" in report and "α = 10" in report
    assert "### Steering metric" in report and (out / "steering" / "steering.png").is_file()
    # the corpus and the shapes it names are this run's (a text corpus, the tiny teacher, a 1-step batch)
    assert report.startswith(f"# cocomix demo: CoCoMix vs NTP on `text:{docs}` (CPU)") and "Shakespeare" not in report
    teacher = json.loads((out / "teacher" / "config.json").read_text())["model"]
    coco = json.loads((out / "cocomix" / "config.json").read_text())
    assert f"({teacher['n_layer']} blocks × {teacher['d_model']})" in report
    assert f"{coco['train']['micro_batch_size'] * coco['train']['grad_accum'] * coco['data']['seq_len']} tokens): " \
        f"CoCoMix d={coco['model']['d_model']} " in report
    assert set(result["steering"]["mean"]) == {"-10.0", "-5.0", "0.0", "1.0", "5.0", "10.0"}
    assert set(result["stage_seconds"]) >= {"data", "teacher", "sae", "targets", "ntp", "cocomix"}
    vocab = json.loads((tmp_path / "data" / "meta.json").read_text())["vocab_size"]
    assert all(math.isfinite(v) and v < math.log(vocab) for v in result["val_loss"].values())  # learnt something
    # everything reused (the report, which is rebuilt from the runs every time, is replaced by a recorder here)
    real_report, seen = cocomix.demo.write_report, {}

    def report(data, out, runs, seconds, reused, steps, source):  # noqa: ANN001, ANN202
        seen.update(seconds=dict(seconds), reused=list(reused), runs=runs)
        return {"table": "", "val_loss": result["val_loss"]}

    monkeypatch.setattr(cocomix.demo, "write_report", report)
    again = run_demo(tmp_path / "data", tmp_path / "run", steps=steps, source=f"text:{docs}")
    trained = ("teacher", "sae", "targets", "ntp", "cocomix")
    assert set(again["reused_stages"]) == set(seen["reused"]) == {"data", *trained}
    # a reused stage's time is the one measured when it ran
    assert all(seen["seconds"][k] == again["stage_seconds"][k] == result["stage_seconds"][k] for k in trained)
    assert json.loads((out / "demo_result.json").read_text())["reused_stages"] == again["reused_stages"]
    monkeypatch.setattr(cocomix.demo, "write_report", real_report)
    # a longer teacher into the same folder would sit next to the SAE and targets of the short one: refused
    with pytest.raises(CocomixError, match="teacher_steps 15 -> 40"):
        run_demo(tmp_path / "data", out, steps={**steps, "teacher": 40}, source=f"text:{docs}")
    # a finished student with other settings is not reported as this one
    with pytest.raises(CocomixError, match="ntp: holds a finished run this demo cannot reuse"):
        run_demo(tmp_path / "data", out, steps={**steps, "student": 10}, source=f"text:{docs}")
    # nor is a token store prepared from another corpus trained on
    with pytest.raises(CocomixError, match="holds a token store prepared from"):
        run_demo(tmp_path / "data", tmp_path / "other", steps=steps, source="shakespeare")
    assert not (tmp_path / "other" / "stages.json").exists()  # refused before anything was written
    (tmp_path / "nano").mkdir()  # nanoGPT's streams without a meta.json: not the demo's to replace
    (tmp_path / "nano" / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(CocomixError, match=f"^--data {tmp_path / 'nano'}: holds train.bin but no meta.json, so not "
                                           "a cocomix token store; give another --data$"):
        run_demo(tmp_path / "nano", tmp_path / "other", steps=steps, source=f"text:{docs}")
    assert not (tmp_path / "other" / "stages.json").exists() and (tmp_path / "nano" / "train.bin").stat().st_size == 2
    # a teacher trained again to other weights (another machine or thread count) would sit beside an SAE and
    # targets made from the old one: refused, by content (as if they recorded another teacher)
    inputs, meta = out / "teacher-sae" / "inputs.json", out / "targets" / "meta.json"
    saved = inputs.read_text(), meta.read_text()
    for path in (inputs, meta):
        path.write_text(json.dumps({**json.loads(path.read_text()), "teacher_fingerprint": "0" * 64}))
    with pytest.raises(CocomixError, match=r"teacher-sae, targets were made from another teacher than the one "
                                           r"there now \(the weights differ\); remove them"):
        run_demo(tmp_path / "data", out, steps=steps, source=f"text:{docs}")
    inputs.write_text(saved[0])
    meta.write_text(json.dumps({**json.loads(saved[1]), "sae_sha256": "0" * 64}))  # targets of another SAE
    with pytest.raises(CocomixError, match=r"targets was made from another teacher or SAE than the one there now"):
        run_demo(tmp_path / "data", out, steps=steps, source=f"text:{docs}")
    meta.write_text(saved[1])
    shutil.rmtree(out / "teacher")  # trained again to the same weights (same machine, same threads): all reused
    again = run_demo(tmp_path / "data", out, steps=steps, source=f"text:{docs}")
    assert again["val_loss"] == result["val_loss"] and "teacher" not in again["reused_stages"]


def test_a_training_stage_stopped_by_a_signal_stops_the_pipeline(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """`train` returns (checkpoint written) when SIGTERM arrives; the pipeline must not build the next stage on the
    unfinished model but stop with the signal's exit status; a signal during a stage's last step (the run then
    finishes) stops the pipeline too, before the next stage."""
    import cocomix.train
    from cocomix.demo import train_stage
    from cocomix.errors import Stopped
    from cocomix.presets import get_preset
    from cocomix.train.loop import TrainResult

    hints = []

    def stopped(run, run_dir, resume, stop_hint):  # noqa: ANN001, ANN202
        hints.append(stop_hint)
        return TrainResult(Path(run_dir), 3, 5.0, None, stopped="SIGTERM (on another rank)")

    monkeypatch.setattr(cocomix.train, "train", stopped)
    with pytest.raises(Stopped, match="stopped by SIGTERM") as stop:
        train_stage(get_preset("tiny"), tmp_path / "teacher")
    assert stop.value.signum == 15
    assert hints == ["run the same command again to resume"]  # the loop's line, not "continue with --resume"

    def finished_under_a_signal(run, run_dir, resume, stop_hint):  # noqa: ANN001, ANN202
        return TrainResult(Path(run_dir), 5, 5.0, 5.1, late_signal="SIGINT")  # during its last step

    monkeypatch.setattr(cocomix.train, "train", finished_under_a_signal)
    with pytest.raises(Stopped, match="finished, but SIGINT arrived during its last step") as stop:
        train_stage(get_preset("tiny"), tmp_path / "teacher")
    assert stop.value.signum == 2


def test_an_out_or_data_folder_holding_other_output_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from cocomix.errors import ConfigError
    from cocomix.experiment import run_experiment

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "targets_train.bin").write_bytes(b"")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for call, match in ((lambda: run_demo(tmp_path / "data", run), "--out .*run: holds a cocomix run"),
                        (lambda: run_experiment(tmp_path / "data", run), "--out .*run: holds a cocomix run"),
                        (lambda: run_demo(cache, tmp_path / "new"), "--data .*cache: holds a concept cache")):
        with pytest.raises(ConfigError, match=match):
            call()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no stages.json, no new folder


def test_a_call_that_failed_before_making_a_stage_does_not_pin_its_settings(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """OUT/stages.json pins the settings the teacher, SAE and targets were made with; a call whose data stage
    failed made none of them, so the corrected call (other --steps) is not refused for its stamp."""
    missing = f"text:{tmp_path / 'no-such-docs'}"
    small = {"teacher": 5, "sae": 5, "student": 5}
    for steps in (small, {**small, "teacher": 9}):
        with pytest.raises(CocomixError, match="no-such-docs") as failed:
            run_demo(tmp_path / "data", tmp_path / "out", steps=steps, source=missing)
        assert "other settings" not in str(failed.value)
        (tmp_path / "out" / "slurm-1.out").write_text("a job's log in OUT is no stage\n")
    assert json.loads((tmp_path / "out" / "stages.json").read_text())["teacher_steps"] == 9
    (tmp_path / "out" / "teacher").mkdir()  # once a stage is made, its settings hold
    with pytest.raises(CocomixError, match="teacher_steps 9 -> 5"):
        run_demo(tmp_path / "data", tmp_path / "out", steps=small, source=missing)
    (tmp_path / "out" / "teacher").rmdir()  # a student built on it, its teacher deleted: still pinned
    (tmp_path / "out" / "ntp").mkdir()
    with pytest.raises(CocomixError, match="teacher_steps 9 -> 5"):
        run_demo(tmp_path / "data", tmp_path / "out", steps=small, source=missing)
    # `--out=~/demo` reaches the demo unexpanded: its folders are made in the home folder, not in ./~
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CocomixError, match="no-such-docs"):
        run_demo("~/data", "~/demo", steps=small, source=missing)
    assert (tmp_path / "home" / "demo" / "stages.json").is_file() and not (tmp_path / "~").exists()
    # --data = --out: refused before anything is written (the store would land in the demo's folder)
    with pytest.raises(CocomixError, match="the same folder as --out"):
        run_demo(tmp_path / "same", tmp_path / "same", steps=small, source=missing)
    with pytest.raises(CocomixError, match=r"--data .*same/teacher: inside --out .*same, whose folders are the demo"):
        run_demo(tmp_path / "same" / "teacher", tmp_path / "same", steps=small, source=missing)
    assert not (tmp_path / "same").exists()
