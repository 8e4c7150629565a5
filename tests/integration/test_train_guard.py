"""Training under faults: non-finite steps are skipped and counted (persistent ones stop the run with a good
checkpoint), SIGTERM writes a checkpoint and exits so that a resume equals an uninterrupted run, a second writer
is locked out, and a malicious pickle in a checkpoint is refused without being executed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocomix.train.guard import RunLock
from tests.cli import CliResult, run_cli
from tests.integration.test_train import small_run


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cocomix", *args]


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(cfg: Path, out: Path, *extra: str, env: dict | None = None) -> CliResult:
    return run_cli("train", "--config", str(cfg), "--out", str(out), *extra, env=env)


def test_injected_nan_steps_are_skipped_reported_and_the_run_finishes(store_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(small_run(store_dir, steps=8, save_every=1, keep_checkpoints=10, log_every=1).to_json())
    r = _run(cfg, tmp_path / "run", env={"COCOMIX_INJECT_NAN_STEPS": "3,4"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped: non-finite loss or gradient" in r.stderr
    ev = _events(tmp_path / "run")
    assert [e["step"] for e in ev if e["kind"] == "skip"] == [3, 4]
    assert [e["step"] for e in ev if e["kind"] == "train"] == [1, 2, 5, 6, 7, 8]
    ckpts = tmp_path / "run" / "checkpoints"
    w2, w4 = (load_file(str(ckpts / f"step_000000{s}" / "model.safetensors")) for s in (2, 4))
    assert all(torch.equal(w2[k], w4[k]) for k in w2)  # skipped steps leave the weights alone
    final = load_file(str(ckpts / "step_0000008" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in final.values())
    assert json.loads((ckpts / "step_0000008" / "state.json").read_text())["skipped_steps"] == 2
    # the streak is saved too, so a resume at step 4 still counts steps 3 and 4 towards max_bad_steps
    assert [json.loads((ckpts / f"step_000000{s}" / "state.json").read_text())["bad_steps_in_a_row"]
            for s in (2, 3, 4, 5)] == [0, 1, 2, 0]
    # logged every 3 steps: each interval's mean over its applied steps, also when the log step itself is skipped
    per_step = {e["step"]: e["loss"] for e in ev if e["kind"] == "train"}
    cfg.write_text(small_run(store_dir, steps=8, save_every=0, log_every=3).to_json())
    r = _run(cfg, tmp_path / "every3", env={"COCOMIX_INJECT_NAN_STEPS": "3,4"})
    assert r.returncode == 0, r.stderr[-2000:]
    logged = {e["step"]: e["loss"] for e in _events(tmp_path / "every3") if e["kind"] == "train"}
    want = {3: (per_step[1] + per_step[2]) / 2, 6: (per_step[5] + per_step[6]) / 2, 8: (per_step[7] + per_step[8]) / 2}
    assert logged.keys() == want.keys() and all(abs(logged[s] - want[s]) < 1e-6 * want[s] for s in want), logged


def test_persistent_nans_stop_with_the_last_good_checkpoint_loadable(store_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    run = small_run(store_dir, steps=20, save_every=2, keep_checkpoints=5, log_every=1, max_bad_steps=3)
    cfg.write_text(run.to_json())
    r = _run(cfg, tmp_path / "run", env={"COCOMIX_INJECT_NAN_STEPS": ",".join(str(s) for s in range(5, 21))})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()[-1:]) == 1
    last = r.stderr.strip().splitlines()[-1]
    assert "training stopped at step 7: 3 steps in a row" in last and "step_0000006" in last, last
    from cocomix.runs import load_run

    _, _, model, ckpt = load_run(tmp_path / "run")
    assert ckpt.name == "step_0000006" and all(torch.isfinite(p).all() for p in model.parameters())


def test_sigterm_writes_a_checkpoint_and_resume_equals_an_uninterrupted_run(store_dir: Path, tmp_path: Path) -> None:
    run = small_run(store_dir, steps=60, save_every=25, eval_every=0, log_every=1, keep_checkpoints=5)
    cfg = tmp_path / "run.json"
    cfg.write_text(run.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs in processes of their own, with the same threads
    full = subprocess.run(_cli("train", "--config", str(cfg), "--out", str(tmp_path / "full")), env=env,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(_cli("train", "--config", str(cfg), "--out", str(stopped)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = stopped / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"kind": "train"') >= 7:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "checkpoint written to" in err and "; continue with --resume" in err
    name = (stopped / "checkpoints" / "latest").read_text().strip()
    step = int(name.split("_")[1])
    assert 7 <= step < 60 and step != 25, f"stopped at {name}: not an off-schedule checkpoint"
    r = subprocess.run(_cli("train", "--out", str(stopped), "--resume"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"steps {step}->60 |" in r.stderr, r.stderr[-2000:]  # it went on from the checkpoint, not from step 0
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000060" / "model.safetensors"))
    b = load_file(str(stopped / "checkpoints" / "step_0000060" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), f"resume from {name} differs"
    assert [e["step"] for e in _events(stopped) if e["kind"] == "train"] == list(range(1, 61))


def test_a_second_writer_is_locked_out(store_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(small_run(store_dir, steps=2).to_json())
    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out)  # another process would hold this while training
    try:
        r = _run(cfg, out, "--resume")
    finally:
        lock.release()
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "another cocomix process is writing this directory" in r.stderr
    assert _run(cfg, out, "--resume").returncode == 0  # released: the run goes ahead


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))  # what unpickling would execute


def test_a_malicious_pickle_is_refused_and_never_executed(store_dir: Path, tmp_path: Path) -> None:
    from cocomix.errors import CocomixError
    from cocomix.sae import load_sae

    cfg = tmp_path / "run.json"
    cfg.write_text(small_run(store_dir, steps=4, save_every=2, keep_checkpoints=3).to_json())
    out = tmp_path / "run"
    assert _run(cfg, out).returncode == 0
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, evil)
    ckpt = out / "checkpoints" / "step_0000002"
    for name in ("optimizer.pt", "rng.pt"):  # a checkpoint from a stranger, resumed
        (ckpt / name).write_bytes(evil.read_bytes())
    manifest = json.loads((ckpt / "manifest.json").read_text())  # the stranger fixed the checksums too
    for name in ("optimizer.pt", "rng.pt"):
        data = (ckpt / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": __import__("hashlib").sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    (out / "checkpoints" / "latest").write_text("step_0000002\n")
    r = _run(cfg, out, "--resume")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "step_0000002/optimizer.pt: unreadable or not a cocomix checkpoint file" in r.stderr
    with __import__("pytest").raises(CocomixError, match="sae.pt"):  # an SAE file from a stranger
        load_sae(str(evil.rename(tmp_path / "sae.pt")))
    assert not marker.exists()


def test_a_checkpoint_damaged_after_writing_is_caught_by_its_manifest(store_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(small_run(store_dir, steps=4, save_every=2, keep_checkpoints=3).to_json())
    out = tmp_path / "run"
    assert _run(cfg, out).returncode == 0
    weights = out / "checkpoints" / "step_0000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one flipped bit in a tensor: still a valid safetensors file
    weights.write_bytes(bytes(data))
    r = run_cli("eval", "--run", str(out))
    assert r.returncode == 2 and "does not match its checksum in manifest.json" in r.stderr, r.stderr


def test_a_repeated_signal_insists_except_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone, a second SIGTERM does what SIGTERM does (here: the previous handler, standing in for dying); under
    torchrun (TORCHELASTIC_RUN_ID set), where SLURM or a terminal signals the worker and torchrun forwards its own
    copy, the repeat is the same request and the stop stays graceful."""
    from cocomix.train.guard import StopSignals

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        for torchrun, died in ((False, [signal.SIGTERM]), (True, [])):
            if torchrun:
                monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
            else:
                monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
            seen.clear()
            with StopSignals() as stop:
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
                assert stop.received == signal.SIGTERM
            assert seen == died
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_checkpoint_file_moved_away_while_it_is_verified_is_a_checkpoint_error(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                                  ) -> None:
    """Rank 0 may set a damaged checkpoint aside while another rank still hashes its files: that rank sees a
    missing file (CheckpointError, which resume handles), not a raw FileNotFoundError."""
    import cocomix.train.checkpoint as checkpoint
    from cocomix.errors import CheckpointError

    ckpt = tmp_path / "step_0000001"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    (ckpt / "manifest.json").write_text(json.dumps({"files": {"model.safetensors": {"bytes": 7, "sha256": "x"}}}))

    def vanished(path: Path) -> str:
        path.unlink()  # renamed away between the existence check and the read
        raise FileNotFoundError(path)

    monkeypatch.setattr(checkpoint, "file_sha256", vanished)
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        checkpoint.verify_checkpoint(ckpt)
