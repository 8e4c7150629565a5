"""Training loop end to end on CPU: loss falls, determinism, exact resume after SIGKILL, interval-mean logging, CLI,
errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cocomix.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cocomix.errors import CheckpointError, CocomixError
from cocomix.train import train
from cocomix.train.checkpoint import resolve_checkpoint
from tests.cli import run_cli


def small_run(store: Path, **train_kw) -> RunConfig:
    t = dict(steps=20, micro_batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=2, eval_every=10,
             eval_batches=2, save_every=10, log_every=5, device="cpu", seed=1)
    t.update(train_kw)
    return RunConfig(method="ntp",
                     model=ModelConfig(vocab_size=320, n_layer=2, n_head=2, d_model=32, context_length=32,
                                       dropout=0.1),
                     data=DataConfig(path=str(store), seq_len=32), train=TrainConfig(**t))


def _record_micro_batch_losses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A list that grows by the loss of every NTP training micro-batch from now on: what the method returned (a
    resumed run must train only the steps after its checkpoint: one restarted from step 0 ends with the same
    weights, so equality alone cannot tell)."""
    from cocomix.methods.ntp import NTP

    losses: list[float] = []
    original = NTP.loss

    def recorded(self: NTP, model: torch.nn.Module, batch: object) -> tuple:
        out = original(self, model, batch)
        losses.append(float(out[0].detach()))
        return out

    monkeypatch.setattr(NTP, "loss", recorded)
    return losses


def _record_optimizer_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[set[float], float]]:
    """A list that grows by (the learning rates of the param groups, the global gradient norm) at every AdamW
    step from now on: what the optimizer is actually given, whatever the loop logs."""
    seen: list[tuple[set[float], float]] = []
    real = torch.optim.AdamW.step

    def step(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(({group["lr"] for group in self.param_groups}, float(torch.nn.utils.get_total_norm(grads))))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    name = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / name / "model.safetensors"))


def test_loss_falls_and_same_seed_is_bit_identical(store_dir: Path, tmp_path: Path) -> None:
    run = small_run(store_dir, steps=30)
    a = train(run, tmp_path / "a", quiet=True)
    train(run, tmp_path / "b", quiet=True)
    events = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["kind"] == "train"]
    assert losses[-1] < losses[0] - 0.5
    assert a.val_loss is not None and a.val_loss < 5.0  # log(320) = 5.77
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    r = run_cli("export", "--run", str(tmp_path / "a"), "--out", str(tmp_path / "hf"), "--no-tokenizer")
    assert r.returncode == 0 and not (tmp_path / "hf" / "tokenizer.json").exists()
    c = train(small_run(store_dir, steps=30, seed=2), tmp_path / "c", quiet=True)
    assert not torch.equal(_weights(tmp_path / "c")["wte.weight"], wa["wte.weight"])
    assert c.train_loss != a.train_loss


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cocomix", *args]


def test_sigkill_then_resume_equals_uninterrupted(store_dir: Path, tmp_path: Path) -> None:
    run = small_run(store_dir, steps=80, save_every=10, eval_every=20, keep_checkpoints=3)
    cfg = tmp_path / "run.json"
    cfg.write_text(run.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli("train", "--config", str(cfg), "--out", str(tmp_path / "full")), check=True, env=env,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", "--config", str(cfg), "--out", str(killed)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step_0000020":
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "run finished before it could be killed; make it longer"
    resumed_from = latest.read_text().strip()
    assert resumed_from != "step_0000080"
    r = subprocess.run(_cli("train", "--out", str(killed), "--resume"), check=True, env=env, capture_output=True,
                       text=True)
    assert f"steps {int(resumed_from[5:])}->80 |" in r.stderr, r.stderr[-2000:]  # it went on, not started over

    full, res = _weights(tmp_path / "full"), _weights(killed)
    assert full.keys() == res.keys()
    for k in full:
        assert torch.equal(full[k], res[k]), f"{k} differs after resume from {resumed_from}"
    for name in sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("step_*")):
        a, b = (json.loads((d / "checkpoints" / name / "state.json").read_text()) for d in (tmp_path / "full", killed))
        a.pop("train_s"), b.pop("train_s")  # wall-clock, the one field allowed to differ
        same = [a == b, (tmp_path / "full" / "checkpoints" / name / "rng.pt").read_bytes()
                == (killed / "checkpoints" / name / "rng.pt").read_bytes()]
        assert all(same), f"{name}: state.json / RNG state differ after resume"
    opt_full = torch.load(tmp_path / "full" / "checkpoints" / "step_0000080" / "optimizer.pt", weights_only=True)
    opt_res = torch.load(killed / "checkpoints" / "step_0000080" / "optimizer.pt", weights_only=True)
    for i, st in opt_full["state"].items():
        assert all(torch.equal(st[k], opt_res["state"][i][k]) for k in st)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == list(range(5, 81, 5)), "metrics.jsonl has gaps or duplicates after resume"


def _train_events(run_dir: Path) -> list[dict]:
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in ("tok_per_s", "train_s")} for e in events if e["kind"] == "train"]


def test_logged_metrics_are_interval_means_and_survive_a_mid_interval_resume(store_dir: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    every = train(small_run(store_dir, steps=7, log_every=1, save_every=3, eval_every=0), tmp_path / "every",
                  quiet=True)
    per_step = _train_events(tmp_path / "every")
    assert [e["step"] for e in per_step] == list(range(1, 8)) and every.train_loss == per_step[-1]["loss"]
    run = small_run(store_dir, steps=7, log_every=5, save_every=3, eval_every=0, keep_checkpoints=3)
    train(run, tmp_path / "five", quiet=True)
    logged = _train_events(tmp_path / "five")
    assert [e["step"] for e in logged] == [5, 7]
    for e, steps in zip(logged, ([1, 2, 3, 4, 5], [6, 7]), strict=True):
        for key in ("loss", "grad_norm"):  # means over the interval (official: averaged over log_step_freq)
            mean = sum(per_step[s - 1][key] for s in steps) / len(steps)
            assert e[key] == pytest.approx(mean, rel=1e-6), (key, e["step"])
            assert e[key] != pytest.approx(per_step[e["step"] - 1][key], rel=1e-6)  # not the log step's own value
    state = json.loads((tmp_path / "five" / "checkpoints" / "step_0000003" / "state.json").read_text())
    assert state["log_interval"]["count"] == 3  # step 3 is mid-interval: its partial sums are saved
    resumed = tmp_path / "resumed"  # resumed from step 3, it must log exactly what the uninterrupted run logged
    shutil.copytree(tmp_path / "five", resumed)
    for name in ("step_0000006", "step_0000007"):
        shutil.rmtree(resumed / "checkpoints" / name)
    (resumed / "checkpoints" / "latest").write_text("step_0000003\n")
    micro_batches = _record_micro_batch_losses(monkeypatch)
    train(run, resumed, resume=True, quiet=True)
    assert len(micro_batches) == (7 - 3) * 2  # steps 4 … 7, grad_accum 2
    assert _train_events(resumed) == logged


def test_each_step_follows_the_schedule_clips_and_logs_what_it_trained_on(store_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every optimizer step runs at lr_at(step) (linear warm-up, then cosine), on gradients clipped to
    train.grad_clip; the logged grad_norm is the norm before clipping, and the logged loss the mean of the losses
    the method returned for the step's micro-batches."""
    from cocomix.train.optim import lr_at

    run = small_run(store_dir, steps=6, warmup_steps=2, log_every=1, eval_every=0, save_every=0, grad_clip=0.05)
    steps = _record_optimizer_steps(monkeypatch)
    returned = _record_micro_batch_losses(monkeypatch)
    train(run, tmp_path / "r", quiet=True)
    want = [lr_at(s, run.train) for s in range(6)]
    assert [lrs for lrs, _ in steps] == [{lr} for lr in want] and want[1] < want[2] > want[5] > 0
    assert all(norm <= 0.05 * (1 + 1e-5) for _, norm in steps)
    logged = _train_events(tmp_path / "r")
    assert [e["step"] for e in logged] == list(range(1, 7)) and all(e["grad_norm"] > 0.05 for e in logged)
    for e in logged:  # grad_accum 2: micro-batches 2(s−1) and 2(s−1)+1 of step s
        assert e["loss"] == pytest.approx(sum(returned[2 * e["step"] - 2:2 * e["step"]]) / 2, rel=1e-6)


def test_a_resume_may_switch_the_chunked_lm_loss_on(store_dir: Path, tmp_path: Path) -> None:
    """train.chunked_lm_loss computes the same loss through the head in row chunks: a run resumed with it on is
    accepted (no "config differs") and ends where the uninterrupted run ends, up to fp32 rounding."""
    run = small_run(store_dir, steps=4, eval_every=0, save_every=2)
    train(run, tmp_path / "straight", quiet=True)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    (resumed / "checkpoints" / "latest").write_text("step_0000002\n")
    with pytest.raises(CocomixError, match="config differs"):  # a setting that changes the result is refused
        train(dataclasses.replace(run, train=dataclasses.replace(run.train, seed=2)), resumed, resume=True,
              quiet=True)
    chunked = dataclasses.replace(run, train=dataclasses.replace(run.train, chunked_lm_loss=True))
    train(chunked, resumed, resume=True, quiet=True)
    a, b = _weights(tmp_path / "straight"), _weights(resumed)
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the chunked loss did run: its rounding differs


def test_refuses_to_overwrite_an_existing_run(store_dir: Path, tmp_path: Path) -> None:
    run = small_run(store_dir, steps=2, eval_every=0, save_every=0)
    train(run, tmp_path / "r", quiet=True)
    before = _weights(tmp_path / "r")
    with pytest.raises(CocomixError, match="already holds a run"):
        train(run, tmp_path / "r", quiet=True)
    with pytest.raises(CocomixError, match="config differs"):
        train(small_run(store_dir, steps=3), tmp_path / "r", resume=True, quiet=True)
    after = _weights(tmp_path / "r")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_run_that_never_reached_a_checkpoint_starts_again_with_resume_and_a_new_config(
        store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """What a run killed (or failed) before its first checkpoint leaves, config.json and some metrics, holds nothing
    to continue: --resume starts it again even with a corrected config, and equals a fresh run of that config."""
    wrong, right = small_run(store_dir, steps=40, eval_every=0), small_run(store_dir, steps=3, eval_every=0)
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.json").write_text(wrong.to_json())
    (folder / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.0}\n')
    with pytest.raises(CocomixError, match=r"already holds a run, which never reached a checkpoint; pass --resume to "
                                           r"start it again \(with this config\)"):
        train(right, folder, quiet=True)
    capsys.readouterr()
    train(right, folder, resume=True, quiet=True)
    err = capsys.readouterr().err
    assert err.count("cocomix: note:") == 1, err
    assert (f"no checkpoint yet in {folder}; starting the run from step 0 with the config given now (train.steps "
            "40 -> 3") in err
    from cocomix.train.checkpoint import read_run_config

    assert read_run_config(folder) == right
    assert all(e.get("loss") != 9.0 for e in _train_events(folder))  # the dead attempt's metrics are gone
    train(right, tmp_path / "fresh", quiet=True)
    a, b = _weights(folder), _weights(tmp_path / "fresh")
    assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(CocomixError, match="config differs"):  # once it has a checkpoint, the config is the run's
        train(wrong, folder, resume=True, quiet=True)
    # killed while writing its first checkpoint: only the temporary folder is there, still nothing to continue
    again = tmp_path / "again"
    (again / "checkpoints" / ".tmp_step_0000001_123").mkdir(parents=True)
    (again / "config.json").write_text(wrong.to_json())
    train(right, again, resume=True, quiet=True)
    assert read_run_config(again) == right


def test_a_resume_on_another_cpu_thread_count_says_it_is_not_bit_identical(
        store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    run = small_run(store_dir, steps=2, eval_every=0, save_every=1)
    real = torch.get_num_threads()
    with monkeypatch.context() as m:
        m.setattr(torch, "get_num_threads", lambda: real + 5)  # what state.json records
        train(small_run(store_dir, steps=1, eval_every=0, save_every=1), tmp_path / "r", quiet=True)
    assert json.loads((tmp_path / "r" / "checkpoints" / "step_0000001" / "state.json").read_text())[
        "cpu_threads"] == real + 5
    (tmp_path / "r" / "config.json").write_text(run.to_json())  # as if a 2-step run had stopped after step 1
    capsys.readouterr()
    train(run, tmp_path / "r", resume=True)
    assert (f"resuming with {real} CPU threads where {tmp_path / 'r' / 'checkpoints' / 'step_0000001'} was written "
            f"with {real + 5}: the matmuls sum in another order") in capsys.readouterr().err


def test_vocab_too_small_for_data_is_an_error(store_dir: Path, tmp_path: Path) -> None:
    base = small_run(store_dir)
    run = RunConfig(method="ntp", model=ModelConfig(vocab_size=100, n_layer=1, n_head=2, d_model=16,
                                                    context_length=32), data=base.data, train=base.train)
    with pytest.raises(CocomixError, match="vocab_size is 320 but model.vocab_size is 100; set model.vocab_size >= 3"):
        train(run, tmp_path / "v", quiet=True)


def test_cli_eval_generate_export_and_errors(store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(small_run(store_dir, steps=4, eval_every=0, save_every=0).to_json())
    out = tmp_path / "cli"
    # the real entry point (`python -m cocomix`); the other calls run `cocomix.cli.main` in this process
    r = subprocess.run(_cli("train", "--config", str(cfg), "--out", str(out)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "tok/s" in r.stderr and "eta" in r.stderr
    r = run_cli("eval", "--run", str(out), "--batches", "2")
    res = json.loads(r.stdout)
    assert r.returncode == 0 and res["windows"] == 16 and 0 < res["loss"] < 6.0
    assert "eval: 16/16 windows (" in r.stderr  # progress on stderr (a log gets the last line at least)
    # what the commands print is what the library gives for the run's last checkpoint
    from cocomix.eval import evaluate_loss
    from cocomix.model import generate
    from cocomix.runs import load_run, run_store

    run, method, model, ckpt = load_run(str(out), device=torch.device("cpu"))
    store = run_store(run, None, ckpt)
    tok = store.tokenizer()
    assert res["loss"] == pytest.approx(evaluate_loss(method, model, store, "val", run.data.seq_len, 8, 2)["loss"],
                                        rel=1e-6)  # the command's default --batch-size 8, 2 batches
    greedy, _ = generate(model, torch.tensor([tok.encode("the king")]), 5, temperature=0.0, eos_id=tok.eos_id,
                         vocab_limit=tok.vocab_size)
    r = run_cli("generate", "--run", str(out), "--prompt", "the king", "--max-new-tokens", "5", "--temperature", "0")
    assert r.returncode == 0 and r.stdout == tok.decode(greedy[0].tolist()) + "\n"
    sampled = ["generate", "--run", str(out), "--prompt", "the king", "--max-new-tokens", "20", "--temperature", "1"]
    r1, r2 = run_cli(*sampled, "--seed", "1"), run_cli(*sampled, "--seed", "1")
    assert r1.returncode == 0 and r1.stdout == r2.stdout != run_cli(*sampled, "--seed", "2").stdout
    r = run_cli(*sampled, "--num-samples", "3", "--top-k", "5", "--top-p", "0.9")
    samples = r.stdout.split("-" * 40 + "\n")
    assert r.returncode == 0 and len(samples) == 3 and all(x.startswith("the king") for x in samples)
    r = run_cli("export", "--run", str(out), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    (tmp_path / "file").write_text("x")

    bad = [
        (["train", "--preset", "tiny", "--set", "train.lr=-1", "--out", str(tmp_path / "x")], "train.lr"),
        (["train", "--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")], "nope.json"),
        (["eval", "--run", str(tmp_path / "missing")], "missing"),
        (["train", "--config", str(cfg), "--out", str(out)], "already holds a run"),
        (["train", "--config", str(cfg), "--out", str(tmp_path / "file")], "not a directory"),
        (["export", "--run", str(out), "--out", str(tmp_path / "hf")], f"--out {tmp_path / 'hf'}: export target "
                                                                       "exists and is not an empty directory"),
        (["export", "--run", str(out), "--out", str(cfg)], "run.json: export target exists and is a file"),
        (["eval", "--run", str(tmp_path / "hf")], "hf: a transformers model folder (cocomix export), not a cocomix "
                                                  "run"),
        (["export", "--run", str(out), "--out", "/dev/null/hf"], "/dev/null exists and is not a directory"),
        (["export", "--run", str(out), "--out", str(tmp_path / "hf2"), "--data", str(tmp_path)],
         "tokenizer not found"),
        (["eval", "--run", str(out), "--seq-len", "33"], "context_length"),
        (["eval", "--run", str(out), "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
        (["eval", "--run", str(out), "--seq-len", "31", "--split", "val", "--data", str(store_dir),
          "--batches", "-1"], "--batches: expected an integer >= 0"),
        (["generate", "--run", str(out), "--prompt", "the king", "--max-new-tokens", "40"], "context_length"),
        (["generate", "--run", str(out), "--prompt", "the king", "--max-new-tokens", "0"], "--max-new-tokens:"),
        (["generate", "--run", str(out), "--prompt", "the king", "--top-k", "0"], "--top-k:"),
        (["generate", "--run", str(out), "--prompt", "the king", "--temperature", "-1"], "temperature"),
        (["train", "--config", str(cfg), "--set", "train.lr=Infinity", "--out", str(tmp_path / "z")], "finite"),
        (["train", "--config", str(cfg), "--set", "data.path=/nonexistent", "--out", str(tmp_path / "y")],
         "/nonexistent"),
    ]
    if not torch.cuda.is_available():
        bad.append((["generate", "--run", str(out), "--prompt", "a", "--device", "cuda"], "CUDA is not available"))
    from cocomix.cli import main  # in-process (the subprocess run above checks the real entry point)

    assert main(["eval", "--run", str(out / "checkpoints" / "latest"), "--batches", "1"]) == 0  # the pointer file
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoints"), "--batches", "2"]) == 0  # the checkpoints folder: the latest
    assert json.loads(capsys.readouterr().out) == res
    # RUN is positional or --run in every command that reads one (the same run given both ways is accepted)
    assert main(["eval", str(out), "--batches", "2"]) == 0 and json.loads(capsys.readouterr().out) == res
    assert main(["generate", "--prompt", "the king", str(out), "--max-new-tokens", "5", "--temperature", "0",
                 "--run", str(out) + "/"]) == 0  # the same folder written another way
    assert capsys.readouterr().out.startswith("the king")
    bad += [(["eval", str(out), "--run", str(tmp_path / "missing")], "differ; give the run once"),
            (["generate", "--prompt", "the king"], "the following arguments are required: RUN (or --run RUN)")]

    for args, needle in bad:
        capsys.readouterr()
        try:
            code = main(args)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err


def test_corrupt_checkpoint_is_a_clear_error(store_dir: Path, tmp_path: Path) -> None:
    run = small_run(store_dir, steps=2, eval_every=0, save_every=0)
    train(run, tmp_path / "r", quiet=True)
    weights = tmp_path / "r" / "checkpoints" / "step_0000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    r = run_cli("eval", "--run", str(tmp_path / "r"))
    assert r.returncode == 2 and "model.safetensors" in r.stderr and "Traceback" not in r.stderr
    manifest = weights.parent / "manifest.json"
    for path, content in ((manifest, b'{"files": ["model.safetensors"]}'), (manifest, b'{"files": {"a": 1}}'),
                          (tmp_path / "r" / "checkpoints" / "latest", b"\xff\xfe step")):
        path.write_bytes(content)
        r = run_cli("eval", "--run", str(tmp_path / "r"))
        assert r.returncode == 2 and path.name in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_trained_checkpoint_exports_with_identical_logits(store_dir: Path, tmp_path: Path, flavour: str) -> None:
    """A trained checkpoint exported by the CLI loads in transformers and gives our logits (fp32, < 1e-4)."""
    import transformers

    from cocomix.runs import load_run

    base = small_run(store_dir, steps=6, eval_every=0, save_every=0)
    model_cfg = ModelConfig(**{**base.model.__dict__, "flavour": flavour, "dropout": 0.0})
    run = RunConfig(method="ntp", model=model_cfg, data=base.data, train=base.train)
    train(run, tmp_path / "run", quiet=True)
    r = run_cli("export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    cls = transformers.GPT2LMHeadModel if flavour == "gpt2" else transformers.LlamaForCausalLM
    hf = cls.from_pretrained(tmp_path / "hf").eval()
    _, _, ours, _ = load_run(tmp_path / "run")
    ids = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids).logits).abs().max().item()
    assert diff < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.decode(tok("the king is dead")["input_ids"]) == "the king is dead"


def test_val_split_shorter_than_a_window_is_an_error(store_dir: Path, tmp_path: Path) -> None:
    from cocomix.data import TokenStore

    val_tokens = TokenStore.open(store_dir).num_tokens("val")
    base = small_run(store_dir)
    model = ModelConfig(**{**base.model.__dict__, "context_length": val_tokens + 1})
    run = RunConfig(method="ntp", model=model, data=DataConfig(path=str(store_dir), seq_len=val_tokens + 1),
                    train=TrainConfig(steps=1, micro_batch_size=1, device="cpu"))
    with pytest.raises(CocomixError, match="fewer than one window"):
        train(run, tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()  # refused before any training, not at the final evaluation


def test_resume_refuses_a_token_store_changed_since_the_checkpoint(store_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    run = small_run(store, steps=4, eval_every=0, save_every=2)
    (tmp_path / "run.json").write_text(run.to_json())
    r = run_cli("train", "--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    tokenizer = store / "tokenizer" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text() + "\n")  # re-prepared with another tokenizer (same vocabulary)
    r = run_cli("train", "--out", str(tmp_path / "r"), "--resume")
    assert r.returncode == 2 and "tokenizer_sha256" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_corrupt_training_state_is_a_clear_error_on_resume(store_dir: Path, tmp_path: Path) -> None:
    run = small_run(store_dir, steps=2, eval_every=0, save_every=0)
    cfg = tmp_path / "run.json"
    cfg.write_text(run.to_json())
    train(run, tmp_path / "r", quiet=True)
    ckpt = tmp_path / "r" / "checkpoints" / "step_0000002"
    for name, content in (("optimizer.pt", b"\x80\x04garbage"), ("rng.pt", b""), ("state.json", b"[1, 2]")):
        original = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(content)
        r = run_cli("train", "--out", str(tmp_path / "r"), "--resume")
        assert r.returncode == 2 and name in r.stderr and "Traceback" not in r.stderr, r.stderr
        (ckpt / name).write_bytes(original)


def test_failed_start_leaves_no_run_behind(store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that fails after the run directory was created and locked (a teacher that cannot be loaded, a
    missing logger) removes the directory it created; a directory that existed before is kept."""
    from cocomix.methods.ntp import NTP

    def fail(self, device, store):  # noqa: ANN001, ANN202 - what a method that cannot load its teacher does
        raise CocomixError("cannot load the teacher")

    with monkeypatch.context() as m:
        m.setattr(NTP, "prepare", fail)
        with pytest.raises(CocomixError, match="cannot load the teacher"):
            train(small_run(store_dir, steps=2), tmp_path / "runs" / "r", quiet=True)
        assert not (tmp_path / "runs" / "r").exists() and (tmp_path / "runs").is_dir()
        (tmp_path / "mine").mkdir()
        with pytest.raises(CocomixError, match="cannot load the teacher"):
            train(small_run(store_dir, steps=2), tmp_path / "mine", quiet=True)
        assert [p.name for p in (tmp_path / "mine").iterdir()] == [".lock"]  # the user's own folder stays
    train(small_run(store_dir, steps=2, eval_every=0), tmp_path / "runs" / "r", quiet=True)  # the same out works


def test_a_signal_during_the_final_step_leaves_a_finished_run(store_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM that arrives while the last step runs: the run is complete (saved at its final step), not
    reported as stopped (a scheduler requeueing on exit 143 would rerun it)."""
    from cocomix.train import guard

    class AlreadySignalled(guard.StopSignals):
        def __enter__(self) -> guard.StopSignals:
            self.received = signal.SIGTERM
            return self

    monkeypatch.setattr("cocomix.train.loop.StopSignals", AlreadySignalled)
    res = train(small_run(store_dir, steps=1, eval_every=0, save_every=0), tmp_path / "r", quiet=True)
    assert res.stopped == "" and (tmp_path / "r" / "checkpoints" / "latest").read_text().strip() == "step_0000001"
    assert (res.late_signal, res.exit_code) == ("SIGTERM", 0)  # said, for a pipeline to stop before what is next
    res = train(small_run(store_dir, steps=3, eval_every=0, save_every=0), tmp_path / "s", quiet=True)
    assert res.stopped == "SIGTERM"  # before the end: stopped at step 1, with a whole checkpoint
    assert set(_weights(tmp_path / "s")) == set(_weights(tmp_path / "r"))
    assert (tmp_path / "s" / "checkpoints" / "latest").read_text().strip() == "step_0000001"
    assert (res.steps, res.signum, res.exit_code) == (1, signal.SIGTERM, 143)  # the steps done, not the 3 planned
    assert res.late_signal == ""


def test_train_and_load_run_leave_the_callers_rng_alone(store_dir: Path, tmp_path: Path) -> None:
    from cocomix.runs import load_run

    torch.manual_seed(123)
    expected = torch.rand(3)
    for call in (lambda: train(small_run(store_dir, steps=2, eval_every=0), tmp_path / "r", quiet=True),
                 lambda: load_run(tmp_path / "r")):
        torch.manual_seed(123)
        call()
        assert torch.equal(torch.rand(3), expected)


def test_a_relative_store_path_missing_says_where_it_was_read_from(store_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    run = small_run(store_dir, steps=2)
    monkeypatch.chdir(store_dir.parent)
    relative = dataclasses.replace(run, data=dataclasses.replace(run.data, path=store_dir.name))
    train(relative, tmp_path / "r", quiet=True)  # trained where the path means the store
    monkeypatch.chdir(tmp_path)  # a resume from elsewhere
    with pytest.raises(CocomixError, match=f"data.path '{store_dir.name}' is read from {tmp_path}; run from the "
                                           "folder it is relative to, or --set data.path=DIR"):
        train(relative, tmp_path / "r", resume=True, quiet=True)


def test_a_student_too_large_for_memory_is_one_line_naming_its_shape(store_dir: Path, tmp_path: Path) -> None:
    """5.1e17 bytes of embedding: beyond any address space, so refused whatever the overcommit policy."""
    r = run_cli("train", "--preset", "tiny", "--set", f"data.path={store_dir}", "--set",
                "model.vocab_size=1000000000000000", "--out", str(tmp_path / "huge"))
    err = r.stderr
    assert r.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("cocomix: error: model: the student does not fit in cpu memory (d_model 128, n_layer 4, "
                          "vocab_size 1000000000000000, context_length 128): ")
    assert not (tmp_path / "huge").exists()


def test_resume_accepts_settings_the_weights_do_not_depend_on(store_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run = small_run(store_dir, steps=4, eval_every=0, save_every=2)
    stopped = small_run(store_dir, steps=2, eval_every=0, save_every=2)
    train(run, tmp_path / "straight", quiet=True)
    train(stopped, tmp_path / "resumed", quiet=True)
    (tmp_path / "resumed" / "config.json").write_text(run.to_json())  # as if stopped after step 2 of 4
    other = small_run(store_dir, steps=4, eval_every=1, save_every=1, keep_checkpoints=5, log_every=1,
                      eval_batches=1)
    micro_batches = _record_micro_batch_losses(monkeypatch)
    train(other, tmp_path / "resumed", resume=True, quiet=True)
    assert len(micro_batches) == (4 - 2) * 2  # steps 3 and 4, grad_accum 2
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CocomixError, match=r"config differs from the stored one: train.seed 1 -> 2"):
        train(small_run(store_dir, steps=4, seed=2), tmp_path / "resumed", resume=True, quiet=True)


@pytest.mark.parametrize("section,field,value,shown", [
    ("train", "weight_decay", 0.01, "train.weight_decay 0.1 -> 0.01"),
    ("train", "warmup_steps", 3, "train.warmup_steps 2 -> 3"),
    ("model", "dropout", 0.0, "model.dropout 0.1 -> 0.0"),
    ("train", "beta2", 0.99, "train.beta2 0.95 -> 0.99"),
])
def test_resume_refuses_settings_the_trained_weights_depend_on(store_dir: Path, tmp_path: Path, section: str,
                                                              field: str, value: float, shown: str) -> None:
    """Unlike train.lr (a deliberate rewind after a divergence), these change what the run optimises or how: a
    resume with any of them changed is refused, naming the field, before a step is trained."""
    import dataclasses

    run = small_run(store_dir, steps=4, eval_every=0, save_every=2)
    train(small_run(store_dir, steps=2, eval_every=0, save_every=2), tmp_path / "r", quiet=True)
    (tmp_path / "r" / "config.json").write_text(run.to_json())  # as if stopped after step 2 of 4
    changed = dataclasses.replace(run, **{section: dataclasses.replace(getattr(run, section), **{field: value})})
    with pytest.raises(CocomixError, match=rf"config differs from the stored one: {re.escape(shown)}$"):
        train(changed, tmp_path / "r", resume=True, quiet=True)
    assert (tmp_path / "r" / "checkpoints" / "latest").read_text().strip() == "step_0000002"  # nothing trained


def test_resume_accepts_a_concept_setting_the_method_does_not_read(store_dir: Path, tmp_path: Path) -> None:
    """An NTP run reads no concept.* setting (`train --set` warns that one changes nothing): a resume with one
    changed is not refused over it, and ends with the uninterrupted run's weights."""
    import dataclasses

    run = small_run(store_dir, steps=4, eval_every=0, save_every=2)
    train(run, tmp_path / "straight", quiet=True)
    train(small_run(store_dir, steps=2, eval_every=0, save_every=2), tmp_path / "r", quiet=True)
    (tmp_path / "r" / "config.json").write_text(run.to_json())  # as if stopped after step 2 of 4
    changed = dataclasses.replace(run, concept=dataclasses.replace(run.concept, lambda_concept=0.5, k_attr=8))
    train(changed, tmp_path / "r", resume=True, quiet=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "r")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_may_lower_the_learning_rate_and_move_the_store(store_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """After a divergence the run continues from its checkpoint with a lower train.lr (said, and used); a store
    copied elsewhere (node-local scratch) is accepted at its new data.path, its identity still checked."""
    train(small_run(store_dir, steps=2, eval_every=0, save_every=2), tmp_path / "r", quiet=True)
    (tmp_path / "r" / "config.json").write_text(small_run(store_dir, steps=4, eval_every=0, save_every=2).to_json())
    moved = tmp_path / "scratch"
    shutil.copytree(store_dir, moved)
    steps = _record_optimizer_steps(monkeypatch)
    train(small_run(moved, steps=4, eval_every=0, save_every=2, lr=1e-3, log_every=1), tmp_path / "r", resume=True,
          quiet=True)
    assert "resuming with train.lr 0.003 -> 0.001" in capsys.readouterr().err
    assert len(steps) == 2 and all(0 < lr <= 1e-3 for lrs, _ in steps for lr in lrs)  # what AdamW was given
    lrs = [e["lr"] for e in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines())
           if e.get("kind") == "train" and e["step"] > 2]
    assert lrs and all(lr <= 1e-3 for lr in lrs)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data"]["path"] == str(moved)
    # config.json now holds the lower rate: the rate it started with is kept in adjusted.jsonl, and a new run
    # configured from this one is told
    assert [json.loads(x) for x in (tmp_path / "r" / "adjusted.jsonl").read_text().splitlines()] == [
        {"step": 2, "train.lr": [0.003, 0.001]}]
    r = run_cli("train", "--config", str(tmp_path / "r"), "--print-config")
    assert r.returncode == 0 and json.loads(r.stdout)["train"]["lr"] == 1e-3
    assert "resumed with adjusted settings" in r.stderr and "not what it started with" in r.stderr, r.stderr
    with pytest.raises(CocomixError, match="the run is finished .*train.lr would change nothing"):
        train(small_run(moved, steps=4, eval_every=0, save_every=2, lr=5e-4), tmp_path / "r", resume=True, quiet=True)
    other = tmp_path / "reordered"  # the same sizes and tokenizer, other windows: not the store it trained on
    shutil.copytree(store_dir, other)
    ids = np.fromfile(other / "train.bin", dtype=np.uint16)
    np.roll(ids, ids.size // 2).tofile(other / "train.bin")  # the two halves swapped
    (tmp_path / "r" / "config.json").write_text(small_run(moved, steps=6, eval_every=0, save_every=2,
                                                          lr=1e-3).to_json())
    with pytest.raises(CocomixError, match="train_sampled_sha256"):
        train(small_run(other, steps=6, eval_every=0, save_every=2, lr=1e-3), tmp_path / "r", resume=True,
              quiet=True)


def test_resume_takes_a_moved_teacher_and_sae_by_their_content(store_dir: Path, concept_parts: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    """CoCoMix with online targets: every checkpoint records the teacher's and SAE's content, so a resume may name
    them by another path (copied to node-local scratch), and one whose path now holds other weights is refused."""
    from cocomix.config_io import apply_overrides, run_config
    from cocomix.presets import get_preset

    for where in ("a", "b"):
        shutil.copytree(concept_parts[0], tmp_path / where / "teacher")
        shutil.copytree(concept_parts[1], tmp_path / where / "sae")

    def cocomix(where: str, steps: int) -> RunConfig:
        return run_config(apply_overrides(get_preset("tiny-cocomix").to_dict(), [
            "model.vocab_size=320", "model.context_length=64", f"data.path={store_dir}", "data.seq_len=32",
            f"train.steps={steps}", "train.micro_batch_size=4", "train.eval_every=0", "train.save_every=2",
            "train.warmup_steps=1", "train.device=cpu", f"concept.teacher={tmp_path / where / 'teacher'}",
            f"concept.sae={tmp_path / where / 'sae'}", "concept.n_latents=256", "concept.teacher_layer=1",
            "concept.d_teacher=32", "concept.mix_k=8"]))

    train(cocomix("a", 4), tmp_path / "straight", quiet=True)
    train(cocomix("a", 2), tmp_path / "r", quiet=True)
    (tmp_path / "r" / "config.json").write_text(cocomix("a", 4).to_json())  # (a run of 4 steps, cut at step 2)
    recorded = json.loads((tmp_path / "r" / "checkpoints" / "step_0000002" / "state.json").read_text())["inputs"]
    assert set(recorded) == {"concept.teacher", "concept.sae"}
    train(cocomix("b", 4), tmp_path / "r", resume=True, quiet=True)  # the same files at other paths
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "r")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "r" / "config.json").write_text(cocomix("b", 6).to_json())
    sae_file = tmp_path / "b" / "sae" / "sae_weights.safetensors"  # the path the run names now: other weights
    weights = load_file(str(sae_file))
    save_file({k: v * 1.5 if k == "W_dec" else v for k, v in weights.items()}, str(sae_file))
    with pytest.raises(CocomixError, match="concept.sae: .* holds another sae than the one .* was trained with"):
        train(cocomix("b", 6), tmp_path / "r", resume=True, quiet=True)


def test_resume_skips_a_damaged_latest_checkpoint_for_the_newest_that_verifies(store_dir: Path, tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    run = small_run(store_dir, steps=4, eval_every=0, save_every=2, keep_checkpoints=3)
    train(run, tmp_path / "r", quiet=True)
    want = {k: v.clone() for k, v in _weights(tmp_path / "r").items()}  # (not views of the file changed below)
    weights = tmp_path / "r" / "checkpoints" / "step_0000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # a bit flipped on disk
    weights.write_bytes(bytes(data))
    train(run, tmp_path / "r", resume=True, quiet=True)  # from step 2 again: the same steps 3 and 4
    err = capsys.readouterr().err
    assert "does not match its checksum" in err and "resuming from" in err and "step_0000002 instead" in err
    got = _weights(tmp_path / "r")
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert (tmp_path / "r" / "checkpoints" / ".damaged_step_0000004" / "model.safetensors").is_file()  # kept aside
    pointer = tmp_path / "r" / "checkpoints" / "latest"
    for text in ("", "../../elsewhere/step_0000004\n", ".."):  # never followed out of the run's checkpoints
        pointer.write_text(text)
        with pytest.raises(CocomixError, match="latest: expected the name of a checkpoint folder beside it"):
            resolve_checkpoint(tmp_path / "r")
    pointer.unlink()  # as after a crash before the first pointer was written
    with pytest.raises(CocomixError, match=r"latest is missing, .*give one \(.*step_0000004\), or `cocomix train "
                                           r"--resume` restores the pointer"):
        resolve_checkpoint(tmp_path / "r")  # (eval, generate, export): not "no checkpoint yet"
    train(run, tmp_path / "r", resume=True, quiet=True)  # finished at step 4: found again, nothing to train
    err = capsys.readouterr().err
    assert "latest is missing; resuming from" in err and "step_0000004 instead" in err, err
    assert pointer.read_text() == "step_0000004\n" and resolve_checkpoint(tmp_path / "r")[1].name == "step_0000004"
    pointer.unlink()
    for name in ("step_0000002", "step_0000004"):  # now nothing verifies
        (tmp_path / "r" / "checkpoints" / name / "rng.pt").write_bytes(b"")
    with pytest.raises(CocomixError, match="no checkpoint verifies"):
        train(run, tmp_path / "r", resume=True, quiet=True)
    (tmp_path / "r" / "checkpoints" / "latest").write_text("step_0000004\n")
    with pytest.raises(CocomixError, match="rng.pt.*and no earlier checkpoint in .* verifies"):
        train(run, tmp_path / "r", resume=True, quiet=True)


def test_every_damaged_checkpoint_a_resume_passes_over_is_said_and_kept_aside(store_dir: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """`latest` (step 6) and the checkpoint before it (step 4) are both damaged: the resume starts from step 2,
    names both, and moves both out of the `step_*` names (numbered when an earlier resume took the name)."""
    run = small_run(store_dir, steps=6, eval_every=0, save_every=2, keep_checkpoints=3)
    train(run, tmp_path / "r", quiet=True)
    want = {k: v.clone() for k, v in _weights(tmp_path / "r").items()}
    root = tmp_path / "r" / "checkpoints"
    for step in (4, 6):
        weights = root / f"step_{step:07d}" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x01
        weights.write_bytes(bytes(data))
    train(run, tmp_path / "r", resume=True, quiet=True)
    err = capsys.readouterr().err
    assert "step_0000006/model.safetensors" in err and "step_0000004/model.safetensors" in err, err
    assert "step_0000002 instead" in err and err.count("does not match its checksum") == 2, err
    assert all(torch.equal(want[k], v) for k, v in _weights(tmp_path / "r").items())
    assert sorted(p.name for p in root.iterdir() if "damaged" in p.name) == [".damaged_step_0000004",
                                                                            ".damaged_step_0000006"]
    # damaged again, their .damaged_ names taken by the last resume's: numbered
    weights = root / "step_0000006" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    (root / "step_0000004" / "rng.pt").write_bytes(b"")
    train(run, tmp_path / "r", resume=True, quiet=True)
    err = capsys.readouterr().err
    assert "rng.pt: does not match its checksum" in err and "step_0000002 instead" in err, err
    assert sorted(p.name for p in root.iterdir() if "damaged" in p.name) == [
        ".damaged_step_0000004", ".damaged_step_0000004.2", ".damaged_step_0000006", ".damaged_step_0000006.2"]
    assert (root / ".damaged_step_0000004.2" / "rng.pt").read_bytes() == b""  # the newest damage, kept as it is


def test_resume_skips_a_latest_checkpoint_missing_a_file_its_manifest_lists(store_dir: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """A checkpoint whose optimizer.pt is gone (a partial copy between clusters) does not verify, by name; a resume
    takes the one before it and trains the same steps again."""
    from cocomix.train.checkpoint import verify_checkpoint

    run = small_run(store_dir, steps=4, eval_every=0, save_every=2, keep_checkpoints=3)
    train(run, tmp_path / "r", quiet=True)
    want = {k: v.clone() for k, v in _weights(tmp_path / "r").items()}
    latest = tmp_path / "r" / "checkpoints" / "step_0000004"
    (latest / "optimizer.pt").unlink()
    missing = f"{latest / 'optimizer.pt'}: missing (listed in manifest.json)"
    with pytest.raises(CheckpointError, match=f"^{re.escape(missing)}$"):
        verify_checkpoint(latest)
    manifest = (latest / "manifest.json").read_bytes()  # the manifest lost too: not taken for an old checkpoint
    (latest / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing, though .*state\.json says the checkpoint "
                                              r"was written with one"):
        verify_checkpoint(latest)
    (latest / "manifest.json").write_bytes(manifest)
    train(run, tmp_path / "r", resume=True, quiet=True)
    err = capsys.readouterr().err
    assert missing in err and "step_0000002 instead" in err, err
    got = _weights(tmp_path / "r")
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_resume_skips_an_old_checkpoint_without_manifest_whose_rng_or_weights_do_not_read(
        store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Checkpoints written before manifests have no checksums; a damaged rng.pt or a weights file whose header does
    not parse is still found before the resume, which takes the checkpoint before it."""
    from cocomix.train.checkpoint import verify_checkpoint

    run = small_run(store_dir, steps=4, eval_every=0, save_every=2, keep_checkpoints=3)
    train(run, tmp_path / "r", quiet=True)
    want = {k: v.clone() for k, v in _weights(tmp_path / "r").items()}
    snapshot = tmp_path / "snapshot"
    shutil.copytree(tmp_path / "r", snapshot)
    for damaged, message in (("rng.pt", "rng.pt: unreadable ("), ("model.safetensors", "model.safetensors: "
                                                                                        "unreadable (")):
        shutil.rmtree(tmp_path / "r")
        shutil.copytree(snapshot, tmp_path / "r")
        for ckpt in (tmp_path / "r" / "checkpoints").glob("step_*"):  # as an old checkpoint
            (ckpt / "manifest.json").unlink()
            state = json.loads((ckpt / "state.json").read_text())
            (ckpt / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "manifest"}))
        latest = tmp_path / "r" / "checkpoints" / "step_0000004"
        verify_checkpoint(latest)  # readable as it is
        (latest / damaged).write_bytes((latest / damaged).read_bytes()[:5])
        with pytest.raises(CheckpointError, match=re.escape(message) + r".*written before manifests$"):
            verify_checkpoint(latest)
        capsys.readouterr()
        train(run, tmp_path / "r", resume=True, quiet=True)
        err = capsys.readouterr().err
        assert message in err and "step_0000002 instead" in err, err
        got = _weights(tmp_path / "r")
        assert all(torch.equal(want[k], got[k]) for k in want)


def test_damage_past_the_first_mebibyte_of_a_checkpoint_file_is_found(tmp_path: Path) -> None:
    """verify_checkpoint hashes all of a file, not its first 1 MiB block: a bit flipped at 1.5 MiB of a 2 MiB
    model.safetensors (same size) is a checksum error."""
    from cocomix.train.checkpoint import save_checkpoint, verify_checkpoint

    weights = {"w": torch.arange(512 * 1024, dtype=torch.float32)}  # 2 MiB of tensor data
    ckpt = save_checkpoint(tmp_path / "r", 1, weights, {"state": {}, "param_groups": []}, {}, keep=1)
    verify_checkpoint(ckpt)  # as written: fine
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    assert len(data) > 2 * (1 << 20)
    data[3 * (1 << 19)] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not match its checksum in manifest\.json"):
        verify_checkpoint(ckpt)


def test_loading_a_run_for_inference_checks_its_weights_not_its_optimizer_state(store_dir: Path,
                                                                                tmp_path: Path) -> None:
    """`load_run` (eval, generate, export, steer, a run as teacher) verifies model.safetensors and state.json
    against the manifest and leaves optimizer.pt — twice the weights, never read there — to resume."""
    from cocomix.runs import load_run

    train(small_run(store_dir, steps=2, eval_every=0, save_every=0), tmp_path / "r", quiet=True)
    ckpt = tmp_path / "r" / "checkpoints" / "step_0000002"
    for name, refused in (("optimizer.pt", False), ("model.safetensors", True), ("state.json", True)):
        original = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
        if refused:
            with pytest.raises(CheckpointError, match=f"{name}: does not match its checksum"):
                load_run(tmp_path / "r")
        else:
            assert load_run(tmp_path / "r")[3] == ckpt
            r = run_cli("train", "--out", str(tmp_path / "r"), "--resume")  # resuming reads it: refused there
            assert r.returncode == 2 and "optimizer.pt: does not match its checksum" in r.stderr, r.stderr
        (ckpt / name).write_bytes(original)


def test_resume_of_an_empty_out_starts_the_run_and_says_so(store_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    train(small_run(store_dir, steps=1, eval_every=0, eval_batches=1), tmp_path / "new", resume=True, quiet=True)
    assert "nothing to resume in" in capsys.readouterr().err and (tmp_path / "new" / "config.json").is_file()
    train(small_run(store_dir, steps=1, eval_every=0, eval_batches=1), tmp_path / "new", resume=True, quiet=True)
    assert "nothing to resume" not in capsys.readouterr().err  # a finished run is there now


def test_a_checkpoint_that_cannot_be_written_leaves_nothing_behind(store_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while saving: a one-line CheckpointError, the half-written folder removed (a full disk must
    not stay full), the previous checkpoint intact; a later save also clears another process's leftovers and an
    interrupted prune's, and a prune never leaves a `step_*` folder half deleted."""
    import cocomix.train.checkpoint as ck
    from cocomix.errors import CheckpointError

    run = small_run(store_dir, steps=20, save_every=10, eval_every=0, keep_checkpoints=1)
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(f)
        if len(calls) > 2:  # the step-10 checkpoint's optimizer and RNG files are written, then the disk is full
            raise RuntimeError(f"[enforce fail at inline_container.cc:672] . unexpected pos ({os.strerror(28)})")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"step_0000020: cannot write the checkpoint .*previous checkpoint is "
                                              r"intact: free space and rerun with --resume"):
        train(run, out, quiet=True)
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000010"]
    monkeypatch.setattr(ck.torch, "save", real_save)
    (root / ".tmp_step_0000020_99999").mkdir()  # a killed process's half checkpoint
    (root / ".deleting_step_0000005").mkdir()  # a prune killed half-way
    renamed = []
    real_rename = ck.os.rename
    monkeypatch.setattr(ck.os, "rename", lambda a, b: renamed.append(Path(b).name) or real_rename(a, b))
    train(run, out, resume=True, quiet=True)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000020"]
    assert ".deleting_step_0000010" in renamed  # pruned out of the step_* names before its files went


def test_a_first_checkpoint_that_cannot_be_written_keeps_the_runs_logs(store_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at the first save is no bad input: the run's config.json and the metrics of the steps it trained
    stay (hours of them on a real run), and --resume, once there is space, starts it again."""
    import cocomix.train.checkpoint as ck
    from cocomix.errors import CheckpointWriteError

    run = small_run(store_dir, steps=6, save_every=3, eval_every=0, log_every=1)
    out = tmp_path / "run"

    def full_disk(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(ck, "_write_files", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"step_0000003: cannot write the checkpoint"):
        train(run, out, quiet=True)
    assert (out / "config.json").is_file() and [e["step"] for e in _train_events(out)] == [1, 2, 3]
    monkeypatch.undo()
    assert train(run, out, resume=True, quiet=True).steps == 6


def test_a_second_job_on_a_locked_run_never_reads_its_checkpoints(store_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's lock is taken before its checkpoints are verified: a duplicate `--resume` job fails at once and
    cannot take a checkpoint the first is writing for a damaged one; checkpoints without the run's config.json
    are refused, not trained on under another config."""
    import cocomix.train.resume as rs
    from cocomix.train.guard import RunLock

    run = small_run(store_dir, steps=10, save_every=10, eval_every=0)
    out = tmp_path / "run"
    train(run, out, quiet=True)
    read = []
    monkeypatch.setattr(rs, "usable_checkpoint", lambda d: read.append(d))
    lock = RunLock(out)  # the first job, still running
    try:
        with pytest.raises(CocomixError, match="another cocomix process is writing this directory"):
            train(small_run(store_dir, steps=20, save_every=10, eval_every=0), out, resume=True, quiet=True)
    finally:
        lock.release()
    assert read == []
    monkeypatch.undo()
    (out / "config.json").unlink()
    with pytest.raises(CocomixError, match="holds checkpoints but no config.json"):
        train(small_run(store_dir, steps=20, save_every=10, eval_every=0, seed=7), out, resume=True, quiet=True)


def test_a_train_sae_output_given_as_a_run_says_what_it_is(tmp_path: Path) -> None:
    from cocomix.train.checkpoint import read_run_config

    (tmp_path / "config.json").write_text(json.dumps({"auxk_alpha": 1 / 32, "k": 32, "steps": 500}))
    with pytest.raises(CocomixError, match=r"a train-sae output \(its SAE is .*/sae\), not a model run"):
        read_run_config(tmp_path)


def test_a_job_log_in_the_out_folder_does_not_stop_the_run(store_dir: Path, tmp_path: Path) -> None:
    """A scheduler writes its log (or `tee` its output) into --out before the run starts, and an interrupted
    atomic write leaves a dot-file: the run starts there all the same."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "slurm-123.out").write_text("starting\n")
    (out / ".config.json.x1y2.tmp").write_text("{")
    train(small_run(store_dir, steps=2, save_every=2, eval_every=0), out, resume=True, quiet=True)
    assert (out / "checkpoints" / "step_0000002").is_dir() and (out / "slurm-123.out").is_file()


def test_under_torchrun_rank_0_alone_verifies_the_checkpoint(store_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`prepare_run_dir(from_rank0=…)`: rank 0 hashes the checkpoints and broadcasts the step it chose; another
    rank takes that step without reading the files (a 2-process resume from a damaged checkpoint runs end to end
    in test_distributed)."""
    import cocomix.train.resume as rs

    run = small_run(store_dir, steps=10, save_every=5, eval_every=0)
    out = tmp_path / "run"
    train(run, out, quiet=True)
    sent: list[int] = []
    monkeypatch.setenv("RANK", "0")
    ckpt = rs.prepare_run_dir(run, out, resume=True, world_size=1, from_rank0=lambda v: sent.append(v) or v)
    assert sent == [10] and ckpt == out / "checkpoints" / "step_0000010"

    def refuse(d: Path) -> None:
        raise AssertionError("a rank other than 0 verified the checkpoints")

    monkeypatch.setattr(rs, "usable_checkpoint", refuse)
    monkeypatch.setenv("RANK", "1")
    assert rs.prepare_run_dir(run, out, resume=True, world_size=1, from_rank0=lambda v: 5) == (
        out / "checkpoints" / "step_0000005")
    assert rs.prepare_run_dir(run, out, resume=True, world_size=1, from_rank0=lambda v: -1) is None
    with pytest.raises(CheckpointError, match="which this rank does not find; every node must see the same run"):
        rs.prepare_run_dir(run, out, resume=True, world_size=1, from_rank0=lambda v: 7)  # another node's view
    monkeypatch.undo()
    monkeypatch.setenv("RANK", "0")
    (out / "checkpoints" / "step_0000010").rename(out / "checkpoints" / "final")
    (out / "checkpoints" / "latest").write_text("final\n")
    with pytest.raises(CheckpointError, match="holds step 10, so under torchrun it must be named step_0000010"):
        rs.prepare_run_dir(run, out, resume=True, world_size=1, from_rank0=lambda v: v)


@pytest.mark.slow
def test_compiled_training_takes_the_eager_steps(store_dir: Path, concept_parts: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    """`train.compile=true` (torch.compile of the student, inductor's CPU backend here) on CoCoMix with online
    targets: the fused concept head (a custom autograd Function), the gather compression and the interleaving
    compile, and the losses equal the eager run's to float rounding. ~1 min on 2 CPU cores (compilation)."""
    sets = ["model.vocab_size=320", "model.context_length=64", f"data.path={store_dir}", "data.seq_len=32",
            "train.steps=4", "train.micro_batch_size=4", "train.eval_every=0", "train.log_every=1",
            "train.warmup_steps=1", "train.device=cpu", f"concept.teacher={concept_parts[0]}",
            f"concept.sae={concept_parts[1]}", "concept.n_latents=256", "concept.teacher_layer=1",
            "concept.d_teacher=32", "concept.mix_k=8"]
    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        # a real process: inductor's compile workers need the standard streams' file descriptors
        r = subprocess.run([sys.executable, "-m", "cocomix", "train", "--preset", "tiny-cocomix",
                            *[x for kv in sets for x in ("--set", kv)], "--set",
                            f"train.compile={str(compiled).lower()}", "--out", str(out)],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = [(e["loss"], e["concept_loss"]) for e in events if e["kind"] == "train"]
    assert len(losses[True]) == 4
    for (a, ca), (b, cb) in zip(losses[True], losses[False], strict=True):
        assert abs(a - b) <= 1e-4 * abs(b) and abs(ca - cb) <= 1e-4 * abs(cb), losses


def test_resuming_a_finished_run_says_so_and_a_longer_one_is_pointed_to_a_new_run(
        store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(small_run(store_dir, steps=2, eval_every=0, save_every=2), tmp_path / "r", quiet=True)
    capsys.readouterr()
    train(small_run(store_dir, steps=2, eval_every=0, save_every=2), tmp_path / "r", resume=True)
    seen = capsys.readouterr()
    assert "already finished (step 2 of 2); nothing to train" in seen.out + seen.err
    with pytest.raises(CocomixError, match=r"train.steps 2 -> 5; train.steps also sets the learning-rate "
                                           r"schedule, so a run with other steps is a new run \(--config .*r --set "
                                           r"train.steps=N"):
        train(small_run(store_dir, steps=5, eval_every=0, save_every=2), tmp_path / "r", resume=True, quiet=True)


def test_training_sets_tf32_before_the_method_set_up_and_restores_the_callers_precision(
        store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA training lets fp32 matmuls use TF32 (`cuda_matmul_precision`); simulated here by a helper that sets
    it on any device: the method's set-up (the teacher checks of CoCoMix) already runs so, and the caller gets its
    own precision back."""
    import cocomix.train.loop as loop
    from cocomix.methods.ntp import NTP

    monkeypatch.setattr(loop, "cuda_matmul_precision", lambda device: torch.set_float32_matmul_precision("high"))
    seen: list[str] = []
    real_prepare = NTP.prepare
    monkeypatch.setattr(NTP, "prepare", lambda self, *a: (seen.append(torch.get_float32_matmul_precision()),
                                                          real_prepare(self, *a))[1])
    before = torch.get_float32_matmul_precision()
    assert before == "highest"  # the default, so that "high" below can be told from it
    train(small_run(store_dir, steps=2, eval_every=0, save_every=0), tmp_path / "run", quiet=True)
    assert seen == ["high"] and torch.get_float32_matmul_precision() == before


def test_the_demo_does_not_take_a_run_whose_final_checkpoint_is_damaged_for_finished(store_dir: Path,
                                                                                    tmp_path: Path) -> None:
    """`make demo` / `make experiment` skip a finished stage: one whose final checkpoint no longer matches its
    manifest is set aside for the one before, and the stage resumes from there instead of reporting that one."""
    from cocomix.demo import _finished

    run = small_run(store_dir, steps=4, save_every=2, eval_every=0, keep_checkpoints=2)
    train(run, tmp_path / "r", quiet=True)
    assert _finished(tmp_path / "r", run)
    weights = tmp_path / "r" / "checkpoints" / "step_0000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert not _finished(tmp_path / "r", run)
    assert resolve_checkpoint(tmp_path / "r")[1].name == "step_0000002"


def test_seeds_that_differ_above_32_bits_start_from_other_weights(store_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's CPU generator keeps the low 32 bits of a seed: 1 and 2**32 + 1 drew the same initial weights (and
    dropout masks). A seed below 2**32 keeps the weights it always had."""
    import cocomix.train.loop as loop
    from cocomix.seeding import torch_seed

    built: list[dict[str, torch.Tensor]] = []
    real = loop.build_student

    def recorded(*args: object, **kwargs: object) -> torch.nn.Module:
        model = real(*args, **kwargs)
        built.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(loop, "build_student", recorded)
    for i, seed in enumerate((1, 2**32 + 1, 2**40 + 1)):
        train(small_run(store_dir, steps=1, save_every=1, eval_every=0, seed=seed), tmp_path / f"s{i}", quiet=True)
    assert [torch_seed(s) for s in (0, 1, 2**32 - 1)] == [0, 1, 2**32 - 1]
    assert all(0 <= torch_seed(s) < 2**32 for s in (2**32, 2**63, 2**64 - 1))
    torch.manual_seed(1)  # seed 1 draws what it drew before
    run = small_run(store_dir)
    reference = real(loop.METHODS["ntp"](run), run, torch.device("cpu"))
    assert all(torch.equal(v, built[0][k]) for k, v in reference.state_dict().items())
    for other in built[1:]:
        assert not torch.equal(other["wte.weight"], built[0]["wte.weight"])
    assert not torch.equal(built[1]["wte.weight"], built[2]["wte.weight"])


def test_fsdp_bf16_parameters_on_one_process_are_refused_not_ignored(store_dir: Path, tmp_path: Path) -> None:
    """One process trains the model unwrapped: `fsdp_param_dtype=bfloat16` would silently train fp32 (a 2-process
    bf16 FSDP run resumed on one process, say) while its config.json said bfloat16."""
    from cocomix.errors import ConfigError

    run = small_run(store_dir, steps=2, save_every=2, eval_every=0, parallel="fsdp", fsdp_param_dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"^train\.fsdp_param_dtype=bfloat16: FSDP shards across 2 or more "
                                          r"processes.*set train\.fsdp_param_dtype=float32"):
        train(run, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    train(dataclasses.replace(run, train=dataclasses.replace(run.train, fsdp_param_dtype="float32")),
          tmp_path / "run", quiet=True)  # fp32 FSDP on one process: the plain model, as before


@pytest.mark.parametrize("name", ["metrics.jsonl", "tensorboard", "wandb_run_id"])
def test_a_fresh_run_never_deletes_log_files_that_are_not_its_own(store_dir: Path, tmp_path: Path,
                                                                  name: str) -> None:
    """A run starting from step 0 clears metrics.jsonl, tensorboard/ and wandb_run_id (an earlier attempt's); in
    a folder that holds no run they are someone else's: refused, and left as they were."""
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True) if name == "tensorboard" else out.mkdir()
    mine = out / "tensorboard" / "events.other" if name == "tensorboard" else out / name
    mine.write_text("not cocomix's\n")
    for resume in (False, True):
        with pytest.raises(CocomixError, match=rf"{re.escape(str(out / name))}: a new run writes its own there"):
            train(small_run(store_dir, steps=2, save_every=2, eval_every=0), out, resume=resume, quiet=True)
        assert mine.read_text() == "not cocomix's\n" and not (out / "config.json").exists()
    # a run that never reached a checkpoint (config.json written) starts again and clears its own logs
    shutil.rmtree(out)
    run = small_run(store_dir, steps=2, save_every=2, eval_every=0)
    train(run, out, quiet=True)
    shutil.rmtree(out / "checkpoints")
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 99}\n')
    train(run, out, resume=True, quiet=True)
    assert '"step": 99' not in (out / "metrics.jsonl").read_text()


def test_a_resume_compares_the_split_compile_and_device_with_the_checkpoint_not_config_json(
        store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.json holds the last attempt's settings, also one killed before it saved: the checkpoint's own split
    (4 × 2) decides whether a dropout run continues on another random path; so do train.compile and the device."""
    from cocomix.train.resume import prepare_run_dir

    out = tmp_path / "run"
    saved = small_run(store_dir, steps=4, save_every=2, eval_every=0)  # micro 4 × accumulation 2, dropout 0.1
    train(dataclasses.replace(saved, train=dataclasses.replace(saved.train, steps=2)), out, quiet=True)
    state = json.loads(next((out / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["split"] == [4, 2] and state["compile"] is False and state["device_type"] == "cpu"
    resplit = dataclasses.replace(saved, train=dataclasses.replace(saved.train, micro_batch_size=2, grad_accum=4))
    (out / "config.json").write_text(resplit.to_json())  # as a 2 × 4 attempt killed before its first checkpoint
    capsys.readouterr()
    prepare_run_dir(resplit, out, resume=True, device_type="cpu")
    assert "another split of the global batch (micro-batch × accumulation × processes 4 × 2 × 1 -> 2 × 4 × 1)" \
        in capsys.readouterr().err
    (out / "config.json").write_text(resplit.to_json())
    prepare_run_dir(saved, out, resume=True, device_type="cpu")  # back to the checkpoint's own split: no note
    assert "cocomix: note" not in capsys.readouterr().err
    compiled = dataclasses.replace(saved, train=dataclasses.replace(saved.train, compile=True))
    prepare_run_dir(compiled, out, resume=True, device_type="cuda")
    err = capsys.readouterr().err
    assert "train.compile False -> True and model.dropout 0.1: compiled and eager code draw other dropout" in err
    assert "resuming on cuda where" in err and "was written on cpu" in err and "other dropout masks" in err


def test_eval_prints_json_that_strict_readers_take_for_a_diverged_run(store_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's json writes NaN / Infinity bare, which jq and JavaScript refuse: a diverged checkpoint's loss, or
    lm-eval's standard error of a one-example task, is printed as the string "NaN" / "Infinity" instead."""
    import cocomix.eval
    import cocomix.eval.tasks
    from cocomix.strict_json import dumps

    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text}"))

    assert strict(dumps({"a": [float("nan"), (float("-inf"), 1.5)], "b": float("inf")})) == {
        "a": ["NaN", ["-Infinity", 1.5]], "b": "Infinity"}
    out = tmp_path / "run"
    train(small_run(store_dir, steps=2, save_every=2, eval_every=0), out, quiet=True)
    real = cocomix.eval.evaluate_loss

    def diverged(*args: object, **kwargs: object) -> dict:
        return {**real(*args, **kwargs), "loss": float("nan"), "ppl": float("inf")}

    monkeypatch.setattr(cocomix.eval, "evaluate_loss", diverged)
    r = run_cli("eval", "--run", str(out), "--batches", "1")
    assert r.returncode == 0 and strict(r.stdout)["loss"] == "NaN" and strict(r.stdout)["ppl"] == "Infinity"
    monkeypatch.setattr(cocomix.eval.tasks, "run_tasks", lambda *a, **k: {
        "checkpoint": "c", "results": {"t": {"acc,none": 1.0, "acc_stderr,none": float("nan")}}})
    r = run_cli("eval", "--run", str(out), "--tasks", "t")
    assert r.returncode == 0 and strict(r.stdout)["results"]["t"]["acc_stderr,none"] == "NaN"


def test_a_start_whose_logging_backend_fails_leaves_no_logs_that_block_the_rerun(
        store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorBoard makes its folder at once; wandb failing after it (no API key, Ctrl-C during wandb.init) ended the
    start with `tensorboard/` left and no config.json, and the rerun the error advises was refused for a log folder
    that is no run's: the failed start removes what it made."""
    import types

    class Writer:  # as torch's SummaryWriter: its folder and an events file at construction
        def __init__(self, logdir: str, purge_step: int | None = None) -> None:
            Path(logdir).mkdir(parents=True, exist_ok=True)
            (Path(logdir) / "events.out.tfevents.0").write_text("")

        def add_scalar(self, *args: object) -> None:
            pass

        def close(self) -> None:
            pass

    def no_key(**kwargs: object) -> None:
        raise RuntimeError("api_key not configured (no-tty)")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=no_key))
    from cocomix.errors import ConfigError

    run = small_run(store_dir, steps=2, save_every=2, eval_every=0, log_backends=("tensorboard", "wandb"))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="wandb could not start"):
        train(run, out, quiet=True)
    assert not (out / "tensorboard").exists() and not (out / "wandb_run_id").exists()
    fixed = dataclasses.replace(run, train=dataclasses.replace(run.train, log_backends=("tensorboard",)))
    train(fixed, out, quiet=True)
    assert (out / "tensorboard" / "events.out.tfevents.0").is_file() and (out / "checkpoints").is_dir()
