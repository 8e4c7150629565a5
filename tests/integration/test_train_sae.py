"""`cocomix train-sae`: it learns, its SAELens output loads back, an interrupted run resumes bit-identically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cocomix.sae.training as training
from cocomix.config import ModelConfig
from cocomix.data import TokenStore
from cocomix.export import export_hf
from cocomix.model import Transformer
from cocomix.sae import load_sae
from cocomix.sae.fit import sae_fvu
from cocomix.sae.train_config import SAETrainConfig
from cocomix.sae.training import train_sae
from cocomix.teacher import Teacher
from tests.cli import run_cli

SMALL = dict(seq_len=32, n_latents=128, k=4, steps=60, lr=1e-2, batch_tokens=256, chunk_tokens=1024, warmup_steps=5,
             teacher_batch=8, eval_tokens=512, checkpoint_every=20, log_every=10)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=320, n_layer=3, n_head=2, d_model=32, context_length=64))
    return export_hf(model, tmp_path_factory.mktemp("teacher") / "hf")


def _cfg(store: Path, teacher: Path, **kw) -> SAETrainConfig:
    return SAETrainConfig(teacher=str(teacher), teacher_layer=1, data=str(store), **{**SMALL, **kw})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "sae" / "sae_weights.safetensors"))


def test_train_sae_learns_and_writes_a_loadable_saelens_folder(store_dir: Path, teacher_dir: Path,
                                                               tmp_path: Path) -> None:
    cfg = _cfg(store_dir, teacher_dir)
    teacher = Teacher.from_pretrained(teacher_dir, 1)
    report = train_sae(cfg, tmp_path / "run", teacher, quiet=True)
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fvus = [e["fvu"] for e in events if e["kind"] == "train"]
    assert fvus[-1] < 0.6 * fvus[0] and report.fvu < 0.35
    assert 0 < report.l0 <= 4 and 0 <= report.dead_fraction <= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["fvu"] == pytest.approx(report.fvu)

    sae = load_sae(str(tmp_path / "run" / "sae"))
    assert (sae.d_in, sae.n_latents, sae.k, sae.normalize) == (32, 128, 4, True)
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(128), atol=1e-5)
    meta = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.1.hook_resid_post" and meta["context_size"] == 32
    # the reported FVU is what the saved SAE gives on the held-out windows
    x = teacher.hidden(TokenStore.open(store_dir).batch("val", list(range(16)), 32)).flatten(0, 1)
    with torch.no_grad():
        err = (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        values, indices, _ = sae.encode(x)  # (N, 4)
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)  # OpenAI's LN: Bessel-corrected, eps on the std
        x_n, recon_n = (x - mu) / (std + 1e-5), (sae(x) - mu) / std  # the loss's space: x_n against D(c)
        err_n = (x_n - recon_n).pow(2).sum() / (x_n - x_n.mean(0)).pow(2).sum()
    assert float(err) == pytest.approx(report.fvu, rel=1e-4)
    assert float(err_n) == pytest.approx(report.fvu_normalized, rel=1e-4) and report.eval_tokens == x.shape[0]
    assert report.l0 == pytest.approx(float((values > 0).sum(-1).float().mean()), rel=1e-6)
    # leaving out each window's position 0: the fit check's (and describe-concepts') figure
    later = torch.arange(x.shape[0]) % 32 != 0
    assert report.fvu_normalized_excl_first == pytest.approx(sae_fvu(sae, x[later]), rel=1e-6)
    assert report.fvu_normalized_excl_first != pytest.approx(report.fvu_normalized, rel=1e-3)
    fired = torch.zeros(128, dtype=torch.bool)
    fired[indices[values > 0]] = True
    assert report.unseen_fraction == pytest.approx(1 - float(fired.float().mean()))


def test_interrupted_run_resumes_to_identical_weights(store_dir: Path, teacher_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(store_dir, teacher_dir, steps=50)
    train_sae(cfg, tmp_path / "straight", Teacher.from_pretrained(teacher_dir, 1), quiet=True)

    real_save = training.save_checkpoint

    def save_then_crash(out, step, *args, **kwargs):
        real_save(out, step, *args, **kwargs)
        if step == 20:
            raise KeyboardInterrupt  # stands in for a kill right after the step-20 checkpoint

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_sae(cfg, tmp_path / "resumed", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    assert not (tmp_path / "resumed" / "sae").exists()
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    computed, real_chunk = [], training.ActivationChunks.chunk

    def chunk(self, c: int) -> torch.Tensor:  # noqa: ANN001
        computed.append(c)
        return real_chunk(self, c)

    monkeypatch.setattr(training.ActivationChunks, "chunk", chunk)
    train_sae(cfg, tmp_path / "resumed", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert computed[0] == 20 // 4  # the resumed run starts at step 20's chunk (4 steps a chunk), never chunk 0


def test_other_settings_in_the_same_directory_are_refused(store_dir: Path, teacher_dir: Path,
                                                          tmp_path: Path) -> None:
    cfg = _cfg(store_dir, teacher_dir, steps=10, checkpoint_every=0)
    train_sae(cfg, tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    r = run_cli("train-sae", "--teacher", str(teacher_dir),
                "--teacher-layer", "1", "--data", str(store_dir), "--out", str(tmp_path / "run"),
                "--seq-len", "32", "--k", "8", "--n-latents", "128", "--batch-tokens", "256",
                "--chunk-tokens", "1024", "--steps", "10", "--warmup-steps", "5", "--device", "cpu")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "other settings (k" in r.stderr, r.stderr
    # said before the teacher is loaded (a hub teacher can take minutes): a teacher that does not exist is not
    # even looked at
    r = run_cli(*r.args[:1], "--teacher", str(tmp_path / "absent"), *r.args[3:])
    assert r.returncode == 2 and "other settings" in r.stderr and "absent" not in r.stderr, r.stderr
    import dataclasses

    before = _weights(tmp_path / "run")  # settings that leave the SAE as it is may change on a resume
    train_sae(dataclasses.replace(cfg, device="auto", log_every=3, checkpoint_every=4, teacher_batch=2,
                                  eval_tokens=64), tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1),
              quiet=True)
    after = _weights(tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(training.CocomixError, match="unreadable SAE training config"):
        train_sae(cfg, tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)


@pytest.mark.parametrize("args,message", [
    (["--k", "0"], "k: expected a positive integer"),
    (["--chunk-tokens", "1000"], "--chunk-tokens: must be a multiple of --batch-tokens 256"),
    (["--teacher-layer", "7"], "--teacher-layer: expected a block index in [0, 2]"),
    (["--n-latents", "16", "--k", "32"], "--k: must not exceed --n-latents 16"),
    (["--seq-len", "128", "--chunk-tokens", "1024"], "exceed the teacher's 64 positions"),
])
def test_cli_bad_arguments_are_one_line_errors(store_dir: Path, teacher_dir: Path, tmp_path: Path,
                                               args: list[str], message: str) -> None:
    base = {"--teacher": str(teacher_dir), "--teacher-layer": "1", "--data": str(store_dir),
            "--out": str(tmp_path / "o"), "--seq-len": "32", "--batch-tokens": "256", "--chunk-tokens": "1024",
            "--device": "cpu", "--steps": "10", "--warmup-steps": "2"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [x for kv in base.items() for x in kv]
    r = run_cli("train-sae", *argv)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "o" / "sae").exists()


def test_a_finished_run_rerun_returns_its_report_without_recomputing(store_dir: Path, teacher_dir: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(store_dir, teacher_dir, steps=10, checkpoint_every=0)
    first = train_sae(cfg, tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    monkeypatch.setattr(training.ActivationChunks, "chunk", lambda *a: pytest.fail("recomputed activations"))
    again = train_sae(cfg, tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    assert again.fvu == first.fvu and again.l0 == first.l0
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # one eval event, not two
    import shutil  # its checkpoints deleted (several times the SAE's size): still finished, not trained again

    shutil.rmtree(tmp_path / "run" / "checkpoints")
    again = train_sae(cfg, tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    assert again.fvu == first.fvu and (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_an_evaluation_cut_short_is_done_again_and_logged_once(store_dir: Path, teacher_dir: Path,
                                                               tmp_path: Path) -> None:
    """Stopped after the final eval event was logged but before summary.json: the rerun evaluates from the final
    checkpoint and metrics.jsonl holds one eval event, as an uninterrupted run's."""
    cfg = _cfg(store_dir, teacher_dir, steps=10, checkpoint_every=0)
    first = train_sae(cfg, tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    (tmp_path / "run" / "summary.json").unlink()
    again = train_sae(cfg, tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    assert again.fvu == first.fvu and (tmp_path / "run" / "summary.json").is_file()
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("eval") == 1
    assert [e for e in events if e["kind"] != "eval"] == [json.loads(x) for x in metrics.splitlines()
                                                          if json.loads(x)["kind"] != "eval"]


def test_a_rerun_compares_the_store_and_teacher_by_content_not_by_the_path_given(
        store_dir: Path, teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import numpy as np

    for where in ("a", "b"):
        shutil.copytree(store_dir, tmp_path / where / "store")
        shutil.copytree(teacher_dir, tmp_path / where / "teacher")
    ids = tmp_path / "b" / "store" / "train.bin"  # b/store: the same tokenizer and sizes, other windows
    dtype = json.loads((tmp_path / "b" / "store" / "meta.json").read_text())["dtype"]
    np.roll(np.fromfile(ids, dtype=dtype), 7).tofile(ids)
    torch.manual_seed(1)  # b/teacher: another teacher of the same shape
    export_hf(Transformer(ModelConfig(vocab_size=320, n_layer=3, n_head=2, d_model=32, context_length=64)),
              tmp_path / "other_teacher")
    shutil.rmtree(tmp_path / "b" / "teacher")
    shutil.copytree(tmp_path / "other_teacher", tmp_path / "b" / "teacher")
    out = tmp_path / "run"
    cfg = SAETrainConfig(teacher="teacher", teacher_layer=1, data="store", **{**SMALL, "steps": 10,
                                                                              "checkpoint_every": 0})
    monkeypatch.chdir(tmp_path / "a")
    first = train_sae(cfg, out, Teacher.from_pretrained("./teacher", 1), quiet=True)
    # the same store and teacher by their absolute paths, from another folder: the finished run stands
    monkeypatch.chdir(tmp_path)
    absolute = SAETrainConfig(**{**cfg.to_dict(), "teacher": str(tmp_path / "a" / "teacher"),
                                 "data": str(tmp_path / "a" / "store")})
    assert train_sae(absolute, out, Teacher.from_pretrained(absolute.teacher, 1), quiet=True).fvu == first.fvu
    # the same relative paths from b/ name another store, then another teacher: refused, not mixed in
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(training.CocomixError, match="trained on another token store than --data store"):
        train_sae(cfg, out, Teacher.from_pretrained("./teacher", 1), quiet=True)
    shutil.rmtree(tmp_path / "b" / "store")
    shutil.copytree(store_dir, tmp_path / "b" / "store")
    with pytest.raises(training.CocomixError, match="trained on another teacher than --teacher teacher"):
        train_sae(cfg, out, Teacher.from_pretrained("./teacher", 1), quiet=True)
    inputs = json.loads((out / "inputs.json").read_text())  # as if trained from the hub's "teacher"
    (out / "inputs.json").write_text(json.dumps({**inputs, "teacher_fingerprint": None}))
    with pytest.raises(training.CocomixError, match="trained on the hub's 'teacher', but --teacher teacher now "
                                                    "names a local path"):
        train_sae(cfg, out, Teacher.from_pretrained("./teacher", 1), quiet=True)


def test_a_diverged_step_is_never_checkpointed(store_dir: Path, teacher_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-finite loss at a checkpoint step between logging steps stops the run before the checkpoint: the last
    checkpoint on disk is the one before, so a rerun does not resume from NaN weights."""
    real = training.ActivationChunks.batch

    def poisoned(self, step: int) -> torch.Tensor:
        x = real(self, step)
        return x * float("inf") if step == 5 else x  # the loss of step 6 (1-based) is not finite

    monkeypatch.setattr(training.ActivationChunks, "batch", poisoned)
    cfg = _cfg(store_dir, teacher_dir, steps=20, checkpoint_every=3, log_every=10)
    with pytest.raises(training.CocomixError, match="diverged at step 6"):
        train_sae(cfg, tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000003"


def test_a_store_without_val_windows_is_refused_before_training(tmp_path: Path, teacher_dir: Path) -> None:
    from cocomix.data import prepare
    from tests.integration.conftest import LINES

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("\n".join(LINES * 20))
    prepare(f"text:{tmp_path / 'docs'}", tmp_path / "store", tokenizer="bpe:320", val_fraction=0.0, progress=False)
    with pytest.raises(training.CocomixError, match="the val split holds fewer than seq_len=32"):
        train_sae(_cfg(tmp_path / "store", teacher_dir, steps=10), tmp_path / "run",
                  Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_warm_up_longer_than_the_run_is_a_note_as_in_train(store_dir: Path, teacher_dir: Path,
                                                             tmp_path: Path) -> None:
    """A smoke test's few steps under the default 100-step warm-up: trained, with a note (lr_at takes the lower of
    the warm-up and decay lines), as `train` does for its own warm-up."""
    r = run_cli("train-sae", "--teacher", str(teacher_dir), "--teacher-layer", "1", "--data", str(store_dir), "--out",
                str(tmp_path / "o"), "--seq-len", "32", "--batch-tokens", "256", "--chunk-tokens", "1024", "--device",
                "cpu", "--steps", "4", "--n-latents", "64", "--k", "4", "--eval-tokens", "256")
    assert r.returncode == 0, r.stderr
    assert "warmup_steps 100 > steps 4: the learning rate never reaches its peak" in r.stdout + r.stderr
    assert (tmp_path / "o" / "sae" / "sae_weights.safetensors").is_file()


SIGNALLED_UNDER_TORCHRUN = """
import os, signal, sys
import torch
import cocomix.sae.training as training
from cocomix.errors import Stopped
from cocomix.sae.train_config import SAETrainConfig
from cocomix.teacher import Teacher
from cocomix.train import distributed as dd

config, out = sys.argv[1:]
ctx = dd.context_from_env()
dd.setup(ctx, torch.device("cpu"))
if ctx.rank == 1:  # SIGTERM to rank 1 alone, while it reads step 10's rows
    real = training.ActivationChunks.batch

    def batch(self, step):
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, step)

    training.ActivationChunks.batch = batch
cfg = SAETrainConfig.from_dict(__import__("json").loads(open(config).read()))
try:
    training.train_sae(cfg, out, Teacher.from_pretrained(cfg.teacher, 1), quiet=ctx.rank != 0, ctx=ctx)
except Stopped as e:
    print(f"rank {ctx.rank} stopped: {e.detail}")
dd.teardown(ctx)
"""


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _sae_flags(store_dir: Path, teacher_dir: Path) -> list[str]:
    settings = {**SMALL, "steps": 24, "checkpoint_every": 8, "log_every": 4, "teacher": teacher_dir,
                "teacher_layer": 1, "data": store_dir, "device": "cpu"}
    return [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _train_fvu(out: Path) -> list[float]:
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [e["fvu"] for e in events if e["kind"] == "train"]


def _close_to(one: Path, out: Path) -> None:
    """`out` followed the run in `one`: the logged FVU, the weights (up to the order of float sums) and summary."""
    assert _train_fvu(out) == pytest.approx(_train_fvu(one), rel=1e-5)
    a, b = _weights(one), _weights(out)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
    summaries = [json.loads((p / "summary.json").read_text()) for p in (one, out)]
    assert summaries[1]["fvu"] == pytest.approx(summaries[0]["fvu"], rel=1e-5)
    assert summaries[1]["dead_fraction"] == summaries[0]["dead_fraction"]


def test_two_processes_take_the_one_process_steps(store_dir: Path, teacher_dir: Path, tmp_path: Path) -> None:
    """train-sae under torchrun (2 gloo processes): the ranks share each chunk's teacher batches and each step's
    rows and sum their gradients, so they follow the one-process run (equal up to the order of float sums: the
    logged FVU within 1e-5, weights within 1e-5); rank 0 alone writes and prints."""
    flags = _sae_flags(store_dir, teacher_dir)
    one = run_cli("train-sae", *flags, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    r = subprocess.run([*TORCHRUN, "-m", "cocomix", "train-sae", *flags, "--out", str(tmp_path / "two")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"fvu"') == 1 and r.stderr.count("train-sae done") == 1  # rank 0 alone reports
    assert "× 2 processes" in r.stderr
    assert len(_train_fvu(tmp_path / "two")) == 6
    _close_to(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow  # ~30 s on 2 cores: two torchrun launches and two runs (`make test-slow`)
def test_a_stopped_two_process_run_resumes_on_one(store_dir: Path, teacher_dir: Path, tmp_path: Path) -> None:
    """A SIGTERM on rank 1 alone stops both ranks after a checkpoint, which one process resumes to the SAE of an
    uninterrupted one-process run; what rank 0 alone reads can fail there alone: every rank stops with one line."""
    flags = _sae_flags(store_dir, teacher_dir)
    one = run_cli("train-sae", *flags, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    config = tmp_path / "cfg.json"
    config.write_text(_cfg(store_dir, teacher_dir, steps=24, checkpoint_every=8, log_every=4).to_json())
    script = tmp_path / "signalled.py"
    script.write_text(SIGNALLED_UNDER_TORCHRUN)
    r = subprocess.run([*TORCHRUN, str(script), str(config), str(tmp_path / "stopped")], capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("stopped: SAE checkpoint at step 11") == 2, r.stdout  # both ranks, after step 11
    assert not (tmp_path / "stopped" / "sae").exists()
    resumed = run_cli("train-sae", *flags, "--out", str(tmp_path / "stopped"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _close_to(tmp_path / "one", tmp_path / "stopped")
    r = subprocess.run([*TORCHRUN, "-m", "cocomix", "train-sae", *flags, "--k", "8", "--out", str(tmp_path / "one")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "holds an SAE training run with other settings (k" in r.stderr, r.stderr[-3000:]
    assert "rank 1: rank 0 stopped with an error" in r.stderr


def test_a_batch_that_does_not_divide_among_the_processes_is_refused(store_dir: Path, teacher_dir: Path,
                                                                     tmp_path: Path) -> None:
    from cocomix.train.distributed import DistContext

    with pytest.raises(training.ConfigError, match="batch_tokens: must divide among the 3 processes, got 256"):
        train_sae(_cfg(store_dir, teacher_dir), tmp_path / "o", Teacher.from_pretrained(teacher_dir, 1),
                  ctx=DistContext(0, 3))
    assert not (tmp_path / "o").exists()


def test_dead_latents_are_those_that_did_not_fire_in_the_last_dead_tokens(store_dir: Path, teacher_dir: Path,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's firing bookkeeping, recomputed from each step's TopK code: latent j is dead at a step when it
    has not fired (a positive value) in the last `dead_tokens` training tokens; AuxK is 0 exactly when none is."""
    real_init, real_losses = training.initialize, training.sae_losses
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, float]] = []

    def init_with_a_silent_latent(sae, sample, gen) -> None:  # latent 0 never wins the TopK
        real_init(sae, sample, gen)
        sae.latent_bias.data[0] = -1e4

    def recorded(sae, x, dead, k_aux, rows=None):
        fvu, auxk, values, indices = real_losses(sae, x, dead, k_aux, rows=rows)
        seen.append((dead.clone(), values.detach().clone(), indices.clone(), x.shape[0], float(auxk.detach())))
        return fvu, auxk, values, indices

    monkeypatch.setattr(training, "initialize", init_with_a_silent_latent)
    monkeypatch.setattr(training, "sae_losses", recorded)
    report = train_sae(_cfg(store_dir, teacher_dir, steps=12, dead_tokens=512, checkpoint_every=0),
                       tmp_path / "run", Teacher.from_pretrained(teacher_dir, 1), quiet=True)
    since = torch.zeros(128)  # tokens since each latent last fired, as the trainer should count them
    for step, (dead, values, indices, n, auxk) in enumerate(seen):
        assert torch.equal(dead, since >= 512), step
        assert (auxk == 0) == (not dead.any()), step
        fired = torch.zeros(128, dtype=torch.bool)
        fired[indices[values > 0]] = True
        since = (since + n).masked_fill(fired, 0)
    assert len(seen) == 12 and not seen[1][0].any() and seen[2][0][0]  # 256 tokens a step: dead from step 3 on
    assert report.dead_fraction == pytest.approx(float((since >= 512).float().mean())) and report.dead_fraction > 0
