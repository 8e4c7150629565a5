"""`concept.teacher_dtype` / `--teacher-dtype bfloat16`: the teacher's weights load in bf16 (half the memory, for
large teachers), training and target extraction run with an fp32 SAE, the cache records the dtype and a run
expecting another refuses it; caches written before the field existed count as float32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cocomix.concepts import compute_targets
from cocomix.concepts.cache import TargetCache, extract_concepts
from cocomix.config import ConceptConfig
from cocomix.config_io import apply_overrides, run_config
from cocomix.data import TokenStore
from cocomix.errors import ConfigError
from cocomix.methods import CoCoMix
from cocomix.presets import get_preset
from cocomix.sae import load_sae
from cocomix.teacher import Teacher
from cocomix.train import train
from tests.integration.test_methods_cli import _overrides


def test_bf16_teacher_targets_agree_with_fp32_ones(store_dir: Path, concept_parts: tuple[Path, Path]) -> None:
    ids = TokenStore.open(store_dir).batch("train", list(range(8)), 32)
    sae = load_sae(str(concept_parts[1]))
    fp32 = compute_targets(Teacher.from_pretrained(concept_parts[0], 1), sae, ids)
    half = Teacher.from_pretrained(concept_parts[0], 1, dtype=torch.bfloat16)
    assert half.dtype_name == "bfloat16" and next(half.model.parameters()).dtype == torch.bfloat16
    bf16 = compute_targets(half, sae, ids)
    assert bf16.shape == fp32.shape and torch.equal(bf16[:, -1], fp32[:, -1])  # final position invalid in both
    same = (bf16[:, :-1].sort(-1).values == fp32[:, :-1].sort(-1).values).all(-1).float().mean()
    assert same > 0.9, f"only {same:.0%} of positions keep the same 4 labels in bf16"  # measured: 97.6%


def test_cocomix_trains_with_a_bf16_teacher(store_dir: Path, concept_parts: tuple[Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = CoCoMix.prepare
    monkeypatch.setattr(CoCoMix, "prepare", lambda self, d, s: (real(self, d, s), seen.append(self))[0])
    overrides = [s.replace("train.steps=30", "train.steps=4") for s in _overrides(store_dir, concept_parts)]
    run = run_config(apply_overrides(get_preset("tiny-cocomix").to_dict(),
                                     [*overrides, "concept.teacher_dtype=bfloat16"]))
    res = train(run, tmp_path / "run", quiet=True)
    assert seen[0].teacher.dtype_name == "bfloat16" and torch.isfinite(torch.tensor(res.train_loss))
    assert seen[0].sae.W_enc.dtype == seen[0].sae.W_dec.dtype == torch.float32  # the SAE stays fp32


def test_the_cache_records_the_teacher_dtype(store_dir: Path, concept_parts: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    teacher = Teacher.from_pretrained(concept_parts[0], 1, dtype=torch.bfloat16)
    meta = extract_concepts(store_dir, tmp_path / "c", teacher, load_sae(str(concept_parts[1])),
                            teacher_spec=str(concept_parts[0]), sae_spec=str(concept_parts[1]), seq_len=32,
                            progress=False)
    assert meta["teacher_dtype"] == "bfloat16"
    with pytest.raises(ConfigError, match="teacher_dtype='bfloat16'"):
        TargetCache.open(tmp_path / "c", expect={"teacher_dtype": "float32"})
    old = json.loads((tmp_path / "c" / "meta.json").read_text())
    del old["teacher_dtype"]  # a cache from before the field: made by a float32 teacher
    (tmp_path / "c" / "meta.json").write_text(json.dumps(old))
    TargetCache.open(tmp_path / "c", expect={"teacher_dtype": "float32"})


def test_an_unknown_dtype_is_refused() -> None:
    with pytest.raises(ConfigError, match="concept.teacher_dtype"):
        ConceptConfig(teacher_dtype="float16")


def test_cli_flags_load_the_teacher_in_bf16(store_dir: Path, concept_parts: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    from cocomix.cli import main

    teacher, sae = (str(p) for p in concept_parts)
    assert main(["extract-concepts", "--data", str(store_dir), "--teacher", teacher, "--teacher-layer", "1", "--sae",
                 sae, "--seq-len", "32", "--device", "cpu", "--teacher-dtype", "bfloat16", "--splits", "val",
                 "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["teacher_dtype"] == "bfloat16"
    assert main(["train-sae", "--teacher", teacher, "--teacher-layer", "1", "--data", str(store_dir), "--seq-len",
                 "32", "--n-latents", "64", "--k", "4", "--steps", "3", "--warmup-steps", "1", "--batch-tokens", "256",
                 "--chunk-tokens", "1024", "--eval-tokens", "256", "--device", "cpu", "--teacher-dtype", "bfloat16",
                 "--out", str(tmp_path / "sae")]) == 0
    assert json.loads((tmp_path / "sae" / "config.json").read_text())["teacher_dtype"] == "bfloat16"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # refused by the parser, as extract-concepts' and describe-concepts'
        main(["train-sae", "--teacher", teacher, "--teacher-layer", "1", "--data", str(store_dir),
              "--teacher-dtype", "float16", "--out", str(tmp_path / "bad")])
    assert stop.value.code == 2
    assert "--teacher-dtype: invalid choice: 'float16' (choose from 'float32', 'bfloat16')" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
