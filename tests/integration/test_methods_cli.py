"""Every method and ablation trains from the CLI on the tiny preset shapes (30 CPU steps, finite and decreasing
loss); the teacher gets no gradient; FLOPs are logged with the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cocomix.methods import CoCoMix
from cocomix.presets import get_preset
from cocomix.train import train
from tests.cli import run_cli

VARIANTS = {
    "ntp": ("tiny", []),
    "cocomix": ("tiny-cocomix", []),
    "cocomix-activation-selection": ("tiny-cocomix", ["concept.selection=activation"]),
    "cocomix-prediction-only": ("tiny-cocomix", ["concept.mixing=none"]),
    "cocomix-mixing-only": ("tiny-cocomix", ["concept.lambda_concept=0"]),
    "cocomix-addition": ("tiny-cocomix", ["concept.mixing=add"]),
    "cocomix-hidden-l2": ("tiny-cocomix", ["concept.target=hidden", "concept.hidden_loss=l2"]),
    "cocomix-hidden-l1": ("tiny-cocomix", ["concept.target=hidden", "concept.hidden_loss=l1"]),
    "cocomix-hidden-cosine": ("tiny-cocomix", ["concept.target=hidden", "concept.hidden_loss=cosine"]),
    "cocomix-eq1-variants": ("tiny-cocomix", ["concept.multiplier=pre_activation",
                                              "concept.attribution_loss=next_token",
                                              "concept.gradient_at=reconstruction"]),
    "cocomix-llama": ("tiny-cocomix", ["model.flavour=llama"]),
    "kd": ("tiny-kd", []),
    "pause": ("tiny-pause", []),
    "kd-pause": ("tiny-kd", ["method=kd-pause", "concept.pause_slot=token"]),
}

WITH_SAE = {"cocomix", "cocomix-activation-selection", "cocomix-prediction-only", "cocomix-addition",
            "cocomix-eq1-variants", "cocomix-llama"}  # the variants that load the SAE (concept targets, λ > 0)


def _overrides(store: Path, parts: tuple[Path, Path]) -> list[str]:
    """The tiny preset on the test store (vocab 320), shortened windows, and the test teacher / SAE."""
    return ["model.vocab_size=320", "model.context_length=64", f"data.path={store}", "data.seq_len=32",
            "train.steps=30", "train.micro_batch_size=8", "train.log_every=1", "train.eval_every=0",
            "train.save_every=0", "train.warmup_steps=3", f"concept.teacher={parts[0]}", f"concept.sae={parts[1]}",
            "concept.n_latents=256", "concept.teacher_layer=1", "concept.d_teacher=32", "concept.mix_k=8"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_method_and_ablation_trains_from_the_cli(variant: str, store_dir: Path, tmp_path: Path,
                                                       concept_parts: tuple[Path, Path]) -> None:
    preset, extra = VARIANTS[variant]
    sets = [x for kv in _overrides(store_dir, concept_parts) + extra for x in ("--set", kv)]
    r = run_cli("train", "--preset", preset, *sets, "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["kind"] == "train"]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    flops = next(e for e in events if e["kind"] == "flops")
    assert flops["flops_per_token_total"] >= flops["flops_per_token_student"] > 0
    if variant in ("cocomix", "kd", "kd-pause"):
        assert flops["flops_per_token_teacher"] > 0
    # the test SAE is random: it does not reconstruct the teacher, and training says so (once) before it starts
    head = "cocomix: warning: concept.sae: the SAE leaves"  # once, as one line
    said = [line[:len(head)] for line in r.stderr.splitlines() if "the SAE leaves" in line]
    assert said == ([head] if variant in WITH_SAE else []), r.stderr[-2000:]
    if variant == "ntp" or variant == "cocomix-mixing-only":
        assert flops["flops_per_token_teacher"] == 0
    if variant in ("cocomix", "kd"):  # `cocomix flops` of the run counts what training counted (the SAE's k is 8)
        _assert_flops_command_counts_as_training(tmp_path / "run", flops)


def _assert_flops_command_counts_as_training(run_dir: Path, logged: dict) -> None:
    r = run_cli("flops", "--config", str(run_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    counted = json.loads(r.stdout)["flops_per_token"]
    assert {k: logged[f"flops_per_token_{k}"] for k in counted} == counted


def test_cocomix_with_cached_targets_trains_and_never_runs_the_teacher(store_dir: Path, tmp_path: Path,
                                                                      concept_parts: tuple[Path, Path]) -> None:
    teacher = tmp_path / "teacher"  # the cache's teacher (same path), then moved away: it cannot be loaded
    shutil.copytree(concept_parts[0], teacher)
    r = run_cli("extract-concepts", "--data", str(store_dir), "--teacher",
                str(teacher), "--teacher-layer", "1", "--sae", str(concept_parts[1]), "--seq-len",
                "32", "--device", "cpu", "--out", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    online = [x for kv in _overrides(store_dir, concept_parts) + [f"concept.teacher={teacher}"]
              for x in ("--set", kv)]  # the same run with its targets computed at every step
    r = run_cli("train", "--preset", "tiny-cocomix", *online, "--out", str(tmp_path / "online"))
    assert r.returncode == 0, r.stderr[-2000:]
    teacher.rename(tmp_path / "moved-away")
    sets = [x for kv in _overrides(store_dir, concept_parts) + [f"concept.cache={tmp_path / 'cache'}",
                                                                 f"concept.teacher={teacher}"]
            for x in ("--set", kv)]
    r = run_cli("train", "--preset", "tiny-cocomix", *sets, "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the cache's targets are the online ones, read for the windows each step trains on: the same run
    online_events = [json.loads(line) for line in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    steps = [(e["step"], e["loss"], e["concept_loss"]) for e in events if e["kind"] == "train"]
    assert len(steps) == 30
    assert steps == [(e["step"], e["loss"], e["concept_loss"]) for e in online_events if e["kind"] == "train"]
    flops = next(e for e in events if e["kind"] == "flops")
    assert flops["flops_per_token_teacher"] == 0
    # the moved-away teacher is counted by the shape the cache recorded, its SAE by the cache's k
    assert flops["flops_per_token_cached_targets"] > 0
    _assert_flops_command_counts_as_training(tmp_path / "run", flops)
    losses = [e["concept_loss"] for e in events if e["kind"] == "train"]
    assert sum(losses[-5:]) < sum(losses[:5])
    # a cache made with other settings is named by the setting that gave it
    r = run_cli("train", "--preset", "tiny-cocomix", *sets, "--set", "data.seq_len=16", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith(f"cocomix: error: concept.cache: {tmp_path / 'cache'}/meta.json: "
                                                     "concept cache was made with seq_len=32, not 16"), r.stderr


@pytest.mark.parametrize("preset", ["tiny-cocomix", "tiny-kd"])
def test_teacher_receives_no_gradient_during_training(preset: str, store_dir: Path, tmp_path: Path,
                                                      concept_parts: tuple[Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.config_io import apply_overrides, run_config
    from cocomix.methods import KD

    seen = []
    for cls in (CoCoMix, KD):
        real = cls.prepare

        def spy(self, device, store, real=real):
            real(self, device, store)
            seen.append(self)

        monkeypatch.setattr(cls, "prepare", spy)
    overrides = [s.replace("train.steps=30", "train.steps=5") for s in _overrides(store_dir, concept_parts)]
    run = run_config(apply_overrides(get_preset(preset).to_dict(), overrides))
    train(run, tmp_path / "run", quiet=True)
    teacher = seen[0].teacher
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())


def test_kd_refuses_a_teacher_with_another_vocabulary(store_dir: Path, tmp_path: Path,
                                                     concept_parts: tuple[Path, Path]) -> None:
    kd = [kv for kv in _overrides(store_dir, concept_parts)
          if not kv.startswith("concept.") or kv.startswith("concept.teacher=")]  # KD reads no SAE setting
    sets = [x for kv in kd + ["model.vocab_size=400"] for x in ("--set", kv)]
    r = run_cli("train", "--preset", "tiny-kd", *sets, "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "KD needs the student's tokenizer" in r.stderr, r.stderr
    assert "padded vocabulary needs --set model.vocab_size=320" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
