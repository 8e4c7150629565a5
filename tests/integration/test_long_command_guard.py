"""`train-sae` and `extract-concepts` under SIGTERM and a second writer: the signal saves progress and stops with
128 + signal, a rerun finishes with the same files as an uninterrupted run, and a locked directory is refused."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cocomix.concepts.cache as cache
import cocomix.sae.training as training
from cocomix.cli import main
from cocomix.errors import CocomixError, Stopped
from cocomix.sae import load_sae
from cocomix.teacher import Teacher
from cocomix.train.checkpoint import latest_checkpoint
from cocomix.train.guard import RunLock
from tests.integration.test_train_sae import _cfg, _weights, teacher_dir  # noqa: F401 - fixture


def _signal_on_call(monkeypatch: pytest.MonkeyPatch, module: object, name: str, call: int,
                    signum: int = signal.SIGTERM) -> None:
    """module.name raises `signum` in this process on its `call`-th call (as `kill` would, mid-work)."""
    real, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        if calls[0] == call:
            signal.raise_signal(signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_sigterm_in_train_sae_checkpoints_and_resume_is_identical(store_dir: Path, teacher_dir: Path,  # noqa: F811
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(store_dir, teacher_dir, steps=40)
    training.train_sae(cfg, tmp_path / "straight", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    _signal_on_call(monkeypatch, training, "sae_losses", 13)
    with pytest.raises(Stopped) as stop:
        training.train_sae(cfg, tmp_path / "stopped", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    assert stop.value.signum == signal.SIGTERM and "step 13" in stop.value.detail
    assert latest_checkpoint(tmp_path / "stopped").name == "step_0000013"  # off the every-20 schedule
    assert not (tmp_path / "stopped" / "sae").exists()
    RunLock(tmp_path / "stopped").release()  # the lock was released
    monkeypatch.undo()
    training.train_sae(cfg, tmp_path / "stopped", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_in_extract_concepts_keeps_the_batch_and_resume_is_identical(store_dir: Path, tmp_path: Path,
                                                                            concept_parts: tuple[Path, Path],
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture) -> None:
    teacher, sae = concept_parts
    argv = ["extract-concepts", "--data", str(store_dir), "--teacher", str(teacher), "--teacher-layer", "1",
            "--sae", str(sae), "--seq-len", "32", "--batch-size", "4", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    _signal_on_call(monkeypatch, cache, "compute_targets", 3, signal.SIGINT)
    assert main([*argv, "--out", str(tmp_path / "stopped")]) == 128 + signal.SIGINT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("cocomix: stopped by SIGINT; 12/") and "rerun the same command" in last, last
    assert (tmp_path / "stopped" / "progress.json").read_text() == '{"train": 12, "val": 0}'
    monkeypatch.undo()
    assert main([*argv, "--out", str(tmp_path / "stopped")]) == 0
    for split in ("train", "val"):
        name = f"targets_{split}.bin"
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "stopped" / name).read_bytes()


def test_a_second_writer_is_locked_out_of_sae_and_cache_directories(store_dir: Path, teacher_dir: Path,  # noqa: F811
                                                                    tmp_path: Path,
                                                                    concept_parts: tuple[Path, Path]) -> None:
    for out in (tmp_path / "sae", tmp_path / "cache"):
        out.mkdir()
    locks = [RunLock(tmp_path / "sae"), RunLock(tmp_path / "cache")]  # other processes at work
    try:
        with pytest.raises(CocomixError, match="another cocomix process is writing"):
            training.train_sae(_cfg(store_dir, teacher_dir, steps=2, warmup_steps=2), tmp_path / "sae",
                               Teacher.from_pretrained(teacher_dir, 1), quiet=True)
        teacher, sae = concept_parts
        with pytest.raises(CocomixError, match="another cocomix process is writing"):
            cache.extract_concepts(store_dir, tmp_path / "cache", Teacher.from_pretrained(teacher, 1),
                                   load_sae(str(sae)), teacher_spec=str(teacher), sae_spec=str(sae), seq_len=32,
                                   progress=False)
    finally:
        for lock in locks:
            lock.release()
    assert not (tmp_path / "cache" / "meta.json").exists() and not (tmp_path / "sae" / "config.json").exists()
    training.train_sae(_cfg(store_dir, teacher_dir, steps=2, warmup_steps=2, checkpoint_every=0), tmp_path / "sae",
                       Teacher.from_pretrained(teacher_dir, 1), quiet=True)  # released: it goes ahead
    assert set(load_file(str(tmp_path / "sae" / "sae" / "sae_weights.safetensors"))) == {"W_enc", "b_enc", "W_dec",
                                                                                         "b_dec"}
