"""torchrun data parallelism on CPU (gloo): 2 processes with DDP or FSDP2 give the per-step losses of 1 process with
the same global batch (and the same validation loss, its windows split between them), and a checkpoint written by
2 processes resumes on 1 (issue 7, acceptance 1)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli import CliResult, run_cli
from tests.conftest import needs_cpu_fsdp

STEPS = 6


def _sets(store: Path, parts: tuple[Path, Path], mbs: int, accum: int, parallel: str = "ddp", log_every: int = 1,
          ) -> list[str]:
    kv = ["model.vocab_size=320", "model.context_length=64", f"data.path={store}", "data.seq_len=32",
          f"train.steps={STEPS}", f"train.micro_batch_size={mbs}", f"train.grad_accum={accum}",
          f"train.log_every={log_every}",
          "train.eval_every=3", "train.eval_batches=1", "train.save_every=3", "train.warmup_steps=2",
          "train.device=cpu", f"train.parallel={parallel}", f"concept.teacher={parts[0]}", f"concept.sae={parts[1]}",
          "concept.n_latents=256", "concept.teacher_layer=1", "concept.d_teacher=32", "concept.mix_k=8"]
    return [x for s in kv for x in ("--set", s)]


def _train(preset: str, sets: list[str], out: Path, procs: int = 1, resume: bool = False,
           ) -> subprocess.CompletedProcess | CliResult:
    """`cocomix train` under torchrun with `procs` processes, or (1) in this process."""
    args = ["train", "--preset", preset, *sets, "--out", str(out)] + (["--resume"] * resume)
    if procs == 1:
        return run_cli(*args)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m"]
    return subprocess.run([*launcher, "cocomix", *args], capture_output=True, text=True, timeout=300)


def _losses(run: Path) -> list[dict[str, float]]:
    """Logged training losses and pre-clip gradient norms (a gradient summed instead of averaged over micro-batches
    shows in the norm only: clipping and AdamW's normalisation hide its scale from the losses)."""
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: e[k] for k in ("loss", "concept_loss", "grad_norm") if k in e} for e in events if e["kind"] == "train"]


def _val_losses(run: Path) -> list[dict[str, float]]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{"val_loss": e["val_loss"]} for e in events if e["kind"] == "eval"]


def _close(a: list[dict[str, float]], b: list[dict[str, float]], rel: float = 1e-5) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(abs(x[k] - y[k]) <= rel * abs(y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))


PRESETS = {"ntp": "tiny", "cocomix": "tiny-cocomix"}


@pytest.fixture(scope="module")
def single(store_dir: Path, concept_parts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
           ) -> dict[str, Path]:
    """One-process reference runs, micro-batch 4 (the global batch of every 2-process run below)."""
    root = tmp_path_factory.mktemp("single")
    for method, preset in PRESETS.items():
        r = _train(preset, _sets(store_dir, concept_parts, 4, 1), root / method)
        assert r.returncode == 0, r.stderr[-2000:]
    return {m: root / m for m in PRESETS}


# (method, parallel, micro-batch, grad_accum, extra settings) with 2 processes: 2 · mbs · accum = 4 windows per
# step; three cases also use the memory options (chunked LM loss, activation checkpointing), against the 1-process
# run without them
CASES = [("ntp", "ddp", 2, 1, ()),
         pytest.param("ntp", "fsdp", 1, 2, ("train.chunked_lm_loss=true",), marks=needs_cpu_fsdp),
         ("cocomix", "ddp", 1, 2, ("train.chunked_lm_loss=true",)),
         pytest.param("cocomix", "fsdp", 2, 1, ("train.activation_checkpointing=true",), marks=needs_cpu_fsdp)]


@pytest.mark.parametrize("method,parallel,mbs,accum,extra", CASES)
def test_two_processes_match_one_process_step_by_step(method: str, parallel: str, mbs: int, accum: int,
                                                      extra: tuple[str, ...], single: dict[str, Path],
                                                      store_dir: Path, concept_parts: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    sets = _sets(store_dir, concept_parts, mbs, accum, parallel) + [x for kv in extra for x in ("--set", kv)]
    r = _train(PRESETS[method], sets, tmp_path / "run", procs=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "× 2 processes" in r.stderr and r.stdout.count('"run_dir"') == 1  # rank 0 alone reports
    assert r.stderr.count("the SAE leaves") == (method == "cocomix")  # ... and warns (the random test SAE)
    two, one = _losses(tmp_path / "run"), _losses(single[method])
    assert len(two) == STEPS and _close(two, one), (two, one)
    # validation over one global batch of val windows (whatever the split into processes and micro-batches),
    # shared between the processes (and FSDP's lockstep forwards)
    val_two, val_one = _val_losses(tmp_path / "run"), _val_losses(single[method])
    assert len(val_two) == 2 and _close(val_two, val_one), (val_two, val_one)
    if method == "cocomix":
        assert all("concept_loss" in x for x in two)
    a = load_file(str(tmp_path / "run" / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    b = load_file(str(single[method] / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all((a[k] - b[k]).abs().max() < 1e-4 for k in a)


@needs_cpu_fsdp
def test_checkpoint_from_two_processes_resumes_on_one(single: dict[str, Path], store_dir: Path,
                                                      concept_parts: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "fsdp"  # logged every 2 steps, so the step-3 checkpoint is mid-interval
    r = _train("tiny-cocomix", _sets(store_dir, concept_parts, 2, 1, "fsdp", log_every=2), run, procs=2)
    assert r.returncode == 0, r.stderr[-3000:]
    per_step = _losses(single["cocomix"])  # logged: means over the interval of the per-step values
    means = [{k: (a[k] + b[k]) / 2 for k in a} for a, b in zip(per_step[::2], per_step[1::2], strict=True)]
    assert _close(_losses(run), means), (_losses(run), means)
    resumed = tmp_path / "resumed"  # the same run, rolled back to its step-3 checkpoint
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step_{STEPS:07d}")
    (resumed / "checkpoints" / "latest").write_text("step_0000003\n")
    r = _train("tiny-cocomix", _sets(store_dir, concept_parts, 2, 1, log_every=2), resumed, resume=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "global batch of 2 windows" in r.stderr and "saved with 4" in r.stderr
    r = _train("tiny-cocomix", _sets(store_dir, concept_parts, 2, 2, log_every=2), resumed, resume=True)  # 1 × 2 × 2
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"steps 3->{STEPS} |" in r.stderr, r.stderr[-3000:]  # it went on from step 3, not from step 0
    assert _close(_losses(resumed), _losses(run)) and _close(_losses(resumed), means)
    a = load_file(str(resumed / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    b = load_file(str(run / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


@needs_cpu_fsdp
def test_fsdp_bf16_parameters_train_close_to_fp32_and_keep_fp32_weights(single: dict[str, Path], store_dir: Path,
                                                                       concept_parts: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    """`train.fsdp_param_dtype=bfloat16` (the official FSDP runs' mixed precision): parameters are gathered and
    computed in bf16, so the losses move by bf16 rounding only, while the saved weights stay fp32 (sharded master
    weights, fp32 gradient reduction)."""
    sets = _sets(store_dir, concept_parts, 2, 1, "fsdp") + ["--set", "train.fsdp_param_dtype=bfloat16"]
    r = _train("tiny-cocomix", sets, tmp_path / "run", procs=2)
    assert r.returncode == 0, r.stderr[-3000:]
    bf16, fp32 = _losses(tmp_path / "run"), _losses(single["cocomix"])
    assert len(bf16) == STEPS and _close(bf16, fp32, rel=2e-2), (bf16, fp32)
    assert not _close(bf16, fp32, rel=1e-6)  # the parameters really were bf16
    weights = load_file(str(tmp_path / "run" / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}


def _worker_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=`rank` (Linux /proc), None until it has started."""
    for task in Path(f"/proc/{launcher.pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_signal_on_one_rank_stops_every_rank_with_a_checkpoint(store_dir: Path, concept_parts: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    """SIGTERM delivered to rank 1 alone (a node's pre-emption notice, a stray kill): every rank stops after the
    same step, rank 0 writes an off-schedule checkpoint and says the signal came from another rank."""
    run, steps = tmp_path / "run", 5000
    sets = _sets(store_dir, concept_parts, 2, 1) + ["--set", f"train.steps={steps}", "--set", "train.eval_every=0",
                                                    "--set", "train.save_every=1000"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cocomix",
           "train", "--preset", "tiny", *sets, "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline, pid = run / "metrics.jsonl", time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        pid = pid or _worker_pid(proc, 1)
        if pid and metrics.is_file() and metrics.read_text().count('"kind": "train"') >= 3:
            break
        time.sleep(0.01)
    assert pid is not None and proc.poll() is None, "the run ended before rank 1 could be signalled"
    os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "stopped by SIGTERM (on another rank) after step" in err, err[-3000:]  # rank 0's report
    latest = (run / "checkpoints" / "latest").read_text().strip()
    step = int(latest.split("_")[1])
    assert 3 <= step < 1000, latest  # written at the stop, not by the schedule
    logged = [e["step"] for e in map(json.loads, metrics.read_text().splitlines()) if e["kind"] == "train"]
    assert logged[-1] == step  # no rank went on past the step the signal was seen after


@needs_cpu_fsdp
def test_fsdp_checkpoint_of_an_optimizer_no_step_has_touched_resumes_exactly(store_dir: Path,
                                                                             concept_parts: tuple[Path, Path],
                                                                             tmp_path: Path) -> None:
    """The first two steps of a 2-process FSDP run skipped (non-finite loss): its step-2 checkpoint holds an empty
    optimizer state, not one that torch's state-dict gathering initialised with a step, so resuming from it (on 1
    process) takes the same updates as the uninterrupted run."""
    sets = _sets(store_dir, concept_parts, 2, 1, "fsdp") + ["--set", "train.save_every=2", "--set", "train.steps=4"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cocomix",
           "train", "--preset", "tiny", *sets, "--out", str(tmp_path / "two")]
    r = subprocess.run(cmd, env={**os.environ, "COCOMIX_INJECT_NAN_STEPS": "1,2"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    optim = torch.load(tmp_path / "two" / "checkpoints" / "step_0000002" / "optimizer.pt", weights_only=True)
    assert optim["state"] == {}, "an optimizer no update touched was saved with a state"
    resumed = tmp_path / "resumed"  # the same run, rolled back to its step-2 checkpoint
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    (resumed / "checkpoints" / "latest").write_text("step_0000002\n")
    one = _sets(store_dir, concept_parts, 4, 1) + ["--set", "train.save_every=2", "--set", "train.steps=4"]
    r = _train("tiny", one, resumed, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = _losses(tmp_path / "two")
    assert len(losses) == 2 and _close(_losses(resumed), losses), (_losses(resumed), losses)
    a = load_file(str(tmp_path / "two" / "checkpoints" / "step_0000004" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_0000004" / "model.safetensors"))
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    # and on 2 FSDP processes again: each rank cuts its shards of the saved state (no AdamW step is invented)
    again = tmp_path / "again"
    shutil.copytree(resumed, again)
    shutil.rmtree(again / "checkpoints" / "step_0000004")
    (again / "checkpoints" / "latest").write_text("step_0000002\n")
    r = subprocess.run([*cmd[:-1], str(again), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "steps 2->4 |" in r.stderr, r.stderr[-3000:]
    assert _losses(again) == losses, (_losses(again), losses)
    c = load_file(str(again / "checkpoints" / "step_0000004" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_two_processes_with_dropout_resume_exactly(single: dict[str, Path], store_dir: Path,
                                                   concept_parts: tuple[Path, Path], tmp_path: Path) -> None:
    """A 2-process run with dropout, resumed from its step-3 checkpoint (on 2 processes, the same split), takes
    exactly the uninterrupted run's steps: each rank's masks are a pure function of the position in the run
    (`dropout_seed`, whose independence across ranks is unit-tested). Dropout really is on (the losses differ
    from the dropout-free run's)."""
    sets = _sets(store_dir, concept_parts, 1, 2) + ["--set", "model.dropout=0.1"]
    run = tmp_path / "run"
    r = _train("tiny", sets, run, procs=2)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = _losses(run)
    assert len(losses) == STEPS and not _close(losses, _losses(single["ntp"]), rel=1e-3)
    resumed = tmp_path / "resumed"  # rolled back to step 3: the last checkpoint is damaged, which rank 0 alone
    shutil.copytree(run, resumed)      # finds (and says so once); every rank resumes from the step it chose
    weights = resumed / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = _train("tiny", sets, resumed, procs=2, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("does not match its checksum") == 1 and "resuming from" in r.stderr, r.stderr[-3000:]
    assert f"steps 3->{STEPS} |" in r.stderr, r.stderr[-3000:]
    assert _losses(resumed) == losses, (_losses(resumed), losses)
    a = load_file(str(run / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_perplexity_eval_under_torchrun_splits_the_windows_and_prints_once(single: dict[str, Path]) -> None:
    """`cocomix eval RUN` under torchrun: each rank evaluates every 2nd batch of windows and the sums are reduced,
    so the loss is the one-process loss over the same windows, printed by rank 0 alone."""
    args = ["eval", str(single["cocomix"]), "--batch-size", "3", "--device", "cpu"]  # RUN positionally (torchrun)
    one = run_cli(*args)
    assert one.returncode == 0, one.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "cocomix", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    want = json.loads(one.stdout)
    assert len(lines) == 1 and lines[0]["windows"] == want["windows"] > 3, (lines, want)
    assert abs(lines[0]["loss"] - want["loss"]) <= 1e-6 * want["loss"]


def test_bad_input_that_only_another_rank_reads_leaves_no_run_behind(store_dir: Path, tmp_path: Path) -> None:
    """A token id beyond the vocabulary in the windows rank 1 reads first: rank 1 fails with the store's one-line
    error, rank 0 (which holds the run folder) is stopped by its watcher and undoes what the fresh run wrote, as
    one process failing on it does, so the same --out starts once the store is fixed."""
    import numpy as np

    from cocomix.data.sampler import WindowSampler

    store, out, T = tmp_path / "store", tmp_path / "run", 32
    shutil.copytree(store_dir, store)
    dtype = json.loads((store / "meta.json").read_text())["dtype"]
    clean = np.fromfile(store / "train.bin", dtype=dtype)
    chunks = clean.size // T
    first = set(WindowSampler(chunks, 1, 2, 1, world_size=2, rank=0).indices(0, 0))  # rank 0's first windows
    poisoned = clean.copy()
    for c in set(range(chunks)) - first:
        poisoned[c * T + T // 2] = 999
    poisoned.tofile(store / "train.bin")
    kv = ["model.vocab_size=320", "model.context_length=64", f"data.path={store}", f"data.seq_len={T}",
          "data.window_offset=fixed", "train.steps=2", "train.micro_batch_size=2", "train.eval_every=0",
          "train.save_every=2", "train.warmup_steps=1", "train.device=cpu", "train.seed=1"]
    sets = [x for s in kv for x in ("--set", s)]
    r = _train("tiny", sets, out, procs=2)
    assert r.returncode != 0 and "token id 999" in r.stderr and "stopping because rank 1 failed" in r.stderr, \
        r.stderr[-3000:]
    assert not (out / "config.json").exists() and not (out / "metrics.jsonl").exists(), sorted(os.listdir(out))
    clean.tofile(store / "train.bin")
    r = _train("tiny", sets, out)
    assert r.returncode == 0, r.stderr[-2000:]
