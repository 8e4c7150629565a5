"""The training loop. It knows no method by name: a `Method` builds the model and turns windows into a loss
(the optimisation of paper App. A; no paper equation).

Per optimizer step: lr from the schedule, `grad_accum` micro-batches (loss / grad_accum, backward), clip,
AdamW step. Windows come from a `WindowSampler`, a pure function of (seed, step, micro, rank), so together with
the saved weights, optimizer and RNG state a resumed run is bit-identical to an uninterrupted one on CPU.
Under torchrun the same loop runs data-parallel (`distributed.py`: DDP or FSDP2); rank 0 logs and writes
checkpoints, and a run may resume on a different number of processes with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cocomix.atomic import atomic_write_text
from cocomix.config import RunConfig, TrainConfig
from cocomix.data import TokenStore, WindowSampler
from cocomix.data.store import check_vocab
from cocomix.errors import CheckpointError, CheckpointWriteError, ConfigError, DataError
from cocomix.eval.perplexity import evaluate_loss
from cocomix.methods import METHODS, Batch, Method
from cocomix.progress import format_duration
from cocomix.seeding import torch_seed
from cocomix.teacher_precision import cuda_matmul_precision
from cocomix.train import distributed as dd
from cocomix.train.checkpoint import CKPT_DIR, load_model_weights, load_optimizer_and_rng, read_state, save_checkpoint
from cocomix.train.device import autocast_for, resolve_device
from cocomix.train.fail_fast import FailFast
from cocomix.train.guard import BadSteps, RunLock, StopSignals
from cocomix.train.metrics import IntervalMeans, MetricsLogger, SilentLogger, Throughput
from cocomix.train.optim import build_optimizer, lr_at, set_lr
from cocomix.train.resume import (
    check_run_folder,
    check_same_inputs,
    check_same_store,
    prepare_run_dir,
    record_adjustments,
    store_identity,
    undo_unsaved_start,
)
from cocomix.train.setup import build_student, flops_per_token


def _bad_input(classes: tuple[str, ...]) -> bool:
    """Whether another rank failed on bad input, which a fresh run undoes (a full disk is none), by the class names
    (its exception's and their bases) it announced through `FailFast`."""
    return bool({DataError.__name__, CheckpointError.__name__} & set(classes)) and \
        CheckpointWriteError.__name__ not in classes


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    """Optimizer steps done: `train.steps`, or the step a signal stopped the run after."""
    train_loss: float
    val_loss: float | None
    stopped: str = ""
    """The signal (SIGTERM / SIGINT) that stopped the run early, after writing a checkpoint; '' when it finished."""
    skipped_steps: int = 0
    """Steps skipped for a non-finite gradient norm, over the whole run."""
    late_signal: str = ""
    """A SIGTERM / SIGINT that arrived during the final step (its evaluation, its checkpoint): the run finished and
    is saved, so `stopped` stays ''; a pipeline of runs (`demo`, `experiment`) stops before its next stage."""

    @property
    def signum(self) -> int:
        """The number of the signal in `stopped` (0 when the run finished)."""
        return int(signal.Signals[self.stopped.split()[0]]) if self.stopped else 0

    @property
    def exit_code(self) -> int:
        """What `cocomix train` exits with: 0, or 128 + the signal when one stopped the run (a script run under a
        scheduler should exit with it too, so a pre-empted job is seen as stopped and requeued)."""
        return 128 + self.signum if self.signum else 0


def dropout_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The RNG seed of one rank's micro-batch in a multi-process run with dropout: independent masks across ranks,
    a pure function of (seed, step, micro, rank), so a resume with the same processes and split draws the same
    masks (a single process keeps one RNG stream, saved in its checkpoints)."""
    return (((seed * 1_000_003 + step) * 1_000_033 + micro) * 65_537 + rank) % (2**63)


def train(run: RunConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False,
          stop_hint: str = "continue with --resume") -> TrainResult:
    """Train `run` into run_dir (config.json, metrics.jsonl, checkpoints/); resume from its latest checkpoint.
    Under torchrun every process calls this; see `distributed.py`. `stop_hint` ends the line printed when a
    signal stops the run (how the caller's user resumes it). The caller's torch RNG state (CPU, and the run's
    GPU) and fp32 matmul precision (TF32 during training on CUDA) are restored afterwards. A SIGTERM / SIGINT
    stops the run after a checkpoint and returns: see `TrainResult.stopped` and `exit_code`."""
    ctx = dd.context_from_env()
    device = dd.setup(ctx, resolve_device(run.train.device))
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])  # restored on the way out
    matmul_precision = torch.get_float32_matmul_precision()  # the caller's, restored on the way out too
    cuda_matmul_precision(device)  # TF32 on CUDA from the start: the method's set-up checks run as training does
    try:
        # a rank that fails stops the others at once, not after the collective timeout
        with rng, FailFast(ctx) as fail_fast:
            result = _train(run, Path(run_dir), resume, quiet, ctx, device, stop_hint, fail_fast)
            dd.barrier(ctx)  # every rank has finished (a rank failing before it still stops the others)
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
    dd.teardown(ctx)
    return result


def _injected_nan_steps() -> set[int]:
    """Fault injection for the reliability tests: COCOMIX_INJECT_NAN_STEPS="3,4" makes the loss of optimizer
    steps 3 and 4 (1-based, as logged) NaN."""
    raw = os.environ.get("COCOMIX_INJECT_NAN_STEPS", "")
    try:
        return {int(x) for x in raw.split(",") if x.strip()}
    except ValueError:
        raise ConfigError(f"environment COCOMIX_INJECT_NAN_STEPS: expected comma-separated integers, "
                          f"got {raw!r}") from None


def _train(run: RunConfig, run_dir: Path, resume: bool, quiet: bool, ctx: dd.DistContext,
           device: torch.device, stop_hint: str, fail_fast: FailFast) -> TrainResult:
    tc = run.train
    dd.check_support(ctx, tc.parallel, device, tc.fsdp_param_dtype)  # before the run folder is made
    try:
        store = TokenStore.open(run.data.path)
    except DataError as e:
        if Path(run.data.path).is_absolute() or Path(run.data.path).exists():  # a damaged store: its own message
            raise
        raise DataError(f"{e} (data.path {run.data.path!r} is read from {Path.cwd()}; run from the folder it is "
                        "relative to, or --set data.path=DIR: a resume accepts a moved store)") from None
    check_vocab(store, run.model.vocab_size)
    store.tokenizer()  # a damaged tokenizer.json is said now, not when the run is first used (generate, export)
    if store.num_chunks("val", run.data.seq_len) == 0:  # the final evaluation would fail after all the training
        raise DataError(f"{store.path}: the val split holds {store.num_tokens('val')} tokens, fewer than one window "
                        f"of data.seq_len={run.data.seq_len}; training evaluates on it: prepare the store with a "
                        "larger --val-fraction (or more data)")
    T, chunks = run.data.seq_len, store.num_chunks("train", run.data.seq_len)
    random_offsets = run.data.window_offset == "random"
    sampler = WindowSampler(chunks, tc.seed, tc.micro_batch_size, tc.grad_accum, ctx.world_size, ctx.rank,
                            seq_len=T if random_offsets else 0,
                            spare=store.num_tokens("train") - chunks * T if random_offsets else 0)
    created = not run_dir.exists()  # removed again if the run fails before writing anything into it
    check_run_folder(run_dir)  # a file, or a folder of something else: refused before it is locked (touched)
    # one writer per run directory, locked before its checkpoints are read: a second job on the same --out fails
    # here, before it could take a checkpoint the first is writing for a damaged one
    lock = RunLock(run_dir) if ctx.is_main else None
    try:
        notes: list[str] = []
        ckpt = prepare_run_dir(run, run_dir, resume, ctx.world_size,
                               from_rank0=(lambda v: dd.from_rank0(v, ctx, device)) if ctx.active else None,
                               notes=notes, device_type=device.type)
        fresh_note = ""  # e.g. the first submission of a job always launched with --resume, or one killed before
        if resume and ckpt is None and ctx.is_main:  # its first checkpoint (said once the run has set up and starts)
            fresh_note = notes[0] if notes else f"cocomix: note: nothing to resume in {run_dir}; starting the run " \
                                                "from step 0"
        # a fresh run's own files, removed again if it fails on bad input before its first checkpoint (also bad
        # input only another rank read: this rank's watcher then ends it)
        before = ({p.name for p in run_dir.iterdir()} if ckpt is None and ctx.is_main
                  and not (run_dir / "config.json").exists() else None)
        save_gate = threading.Lock()  # no undo during a checkpoint save (within the 10 s the watcher waits), none after
        if before is not None:
            fail_fast.on_stop(lambda: _bad_input(fail_fast.failed_errors) and save_gate.acquire()
                              and undo_unsaved_start(run_dir, before))  # (the gate stays held: the process ends)
        try:
            return _train_locked(run, run_dir, quiet, ctx, device, tc, store, sampler, ckpt, fresh_note,
                                 stop_hint, fail_fast.on_stop, save_gate)
        except (DataError, CheckpointError) as e:  # bad input, not a divergence (its metrics show what happened)
            if before is not None and not isinstance(e, CheckpointWriteError):  # a full disk: the logs are kept
                undo_unsaved_start(run_dir, before)
            raise
    finally:
        if lock is not None:
            lock.release(remove_empty_dir=created)


def _train_locked(run: RunConfig, run_dir: Path, quiet: bool, ctx: dd.DistContext, device: torch.device,
                  tc: TrainConfig, store: TokenStore, sampler: WindowSampler, ckpt: Path | None,
                  fresh_note: str = "", stop_hint: str = "continue with --resume",
                  on_stop: Callable[[Callable[[], object]], None] | None = None,
                  save_gate: threading.Lock | None = None) -> TrainResult:

    torch.manual_seed(torch_seed(tc.seed))
    method: Method = METHODS[run.method](run)
    model = build_student(method, run, device)
    model.checkpoint_blocks = tc.activation_checkpointing
    method.prepare(device, store)
    state: dict = {}
    identity = store_identity(store)  # recorded in every checkpoint, checked on resume
    inputs = method.input_fingerprints() if ctx.is_main else {}  # teacher / SAE content: rank 0 saves and checks
    if ckpt is not None:  # weights before wrapping (FSDP shards what is loaded), optimizer after
        state = read_state(ckpt)  # (verified against its manifest by usable_checkpoint, on rank 0)
        check_same_store(state, identity, store, ckpt)
        if ctx.is_main:
            check_same_inputs(state, inputs, run, ckpt)
        load_model_weights(model, ckpt / "model.safetensors")
    dd.check_same_step(state.get("step", 0), ctx, device)  # before any collective a disagreement would hang
    module = dd.wrap(model, ctx, tc.parallel, device, unused_parameters=method.unused_parameters,
                     param_dtype=tc.fsdp_param_dtype)
    optimizer = build_optimizer(model, tc, device)
    if ckpt is not None:
        # under FSDP or on a GPU the saved state is copied into shards / device memory: the file is memory-mapped,
        # so the ranks of a node share its pages instead of each holding the whole optimizer state in RAM
        load_optimizer_and_rng(ckpt, lambda saved: dd.load_optimizer(model, optimizer, saved, ctx, tc.parallel),
                               mmap=device.type == "cuda" or (ctx.active and tc.parallel == "fsdp"))
    start, val_loss = state.get("step", 0), state.get("val_loss")
    train_s0 = float(state.get("train_s", 0.0))
    resume_step = start if ckpt is not None else None
    logger = (MetricsLogger(run_dir, tc.log_backends, resume_step=resume_step, config=run.to_dict(), quiet=quiet)
              if ctx.is_main else SilentLogger())
    if on_stop is not None:  # stopped by another rank's failure: flush TensorBoard / finish wandb on the way out
        on_stop(logger.close)
    if ctx.is_main:  # only once everything above has succeeded; a resume's changed lr etc. recorded first
        record_adjustments(run_dir, run, resume_step)
        atomic_write_text(run_dir / "config.json", run.to_json())
    if fresh_note:
        print(fresh_note, file=sys.stderr)
    threads = state.get("cpu_threads")
    if device.type == "cpu" and threads is not None and threads != torch.get_num_threads():
        logger.print(f"cocomix: note: resuming with {torch.get_num_threads()} CPU threads where {ckpt} was written "
                     f"with {threads}: the matmuls sum in another order, so the run equals an uninterrupted one up "
                     f"to rounding, not bit for bit (OMP_NUM_THREADS={threads} restores that)")
    flops, flops_note = flops_per_token(run, method)
    if flops_note and ckpt is None:
        logger.print(flops_note)
    if ckpt is None:
        logger.log({"kind": "flops", "step": 0, **{f"flops_per_token_{k}": v for k, v in flops.items()}})
    forward_model = torch.compile(module) if tc.compile else module
    cast = autocast_for(tc.precision, device)
    tokens_per_step = sampler.global_batch * run.data.seq_len
    procs = f" × {ctx.world_size} processes ({tc.parallel})" if ctx.active else ""
    if start >= tc.steps > 0:  # `--resume` of a finished run: its final evaluation and summary only
        logger.print(f"cocomix: note: {run_dir}: already finished (step {start} of {tc.steps}); nothing to train")
    if tc.warmup >= tc.steps > 0:
        logger.print(f"cocomix: note: train.warmup_steps {tc.warmup} >= train.steps {tc.steps}: the learning rate "
                     f"never reaches train.lr {tc.lr:g}")
    logger.print(f"cocomix: {run.method} | {model.num_params() / 1e6:.2f}M params | {device}{procs} | "
                 f"{store.num_chunks('train', run.data.seq_len)} train windows of {run.data.seq_len} | "
                 f"{tokens_per_step} tokens/step | steps {start}->{tc.steps} | "
                 f"{flops['total'] / 1e6:.1f} MFLOP/token (student {flops['student'] / 1e6:.1f})")

    clock = {"start": time.perf_counter(), "eval": 0.0}

    def train_seconds() -> float:
        """Wall-clock spent training (evaluation excluded), accumulated over resumes."""
        return train_s0 + time.perf_counter() - clock["start"] - clock["eval"]

    def run_eval(step: int) -> float:
        t0 = time.perf_counter()
        # eval_batches counts global batches: how a step's batch is split over processes and micro-batches
        # (which a resume may change) leaves the validation windows as they are
        res = evaluate_loss(method, model, store, "val", run.data.seq_len, tc.micro_batch_size, 0, device,
                            max_windows=tc.eval_batches * sampler.global_batch,
                            autocast=cast if isinstance(cast, torch.autocast) else None,
                            shard=(ctx.rank, ctx.world_size), sum_over_shards=lambda t: dd.sum_over_ranks(t, ctx))
        clock["eval"] += time.perf_counter() - t0
        meter.exclude(time.perf_counter() - t0)
        logger.log({"kind": "eval", "step": step, "val_loss": res["loss"], "val_ppl": res["ppl"],
                    "tokens": step * tokens_per_step, "flops": step * tokens_per_step * flops["total"],
                    "train_s": train_seconds()})
        logger.print(f"eval  step {step:>6} | val_loss {res['loss']:.4f} | val_ppl {res['ppl']:.2f}")
        return res["loss"]

    meter = Throughput(start, tc.steps)
    # every rank starts from the same seed (identical initial weights); without reseeding, each would then draw
    # rank 0's dropout masks for its own shard of the batch
    per_rank_dropout = ctx.world_size > 1 and run.model.dropout > 0
    train_loss = float(state.get("train_loss", math.nan))
    bad = BadSteps(tc.max_bad_steps, int(state.get("skipped_steps", 0)), int(state.get("bad_steps_in_a_row", 0)))
    interval = IntervalMeans()  # logged metrics are means over the logging interval, as the official trainer's
    interval.load(state.get("log_interval"), device)
    inject, stopped, last_ckpt, done, signum = _injected_nan_steps(), "", ckpt, start, 0
    model.train()
    try:  # the loggers are closed (TensorBoard flushed, the wandb run finished) however the loop ends
        with StopSignals() as signals:
            for step in range(start, tc.steps):
                lr = lr_at(step, tc)
                set_lr(optimizer, lr)
                sums: dict[str, torch.Tensor] = {}  # this step's metrics, micro-batch means; read on log steps only
                for micro in range(tc.grad_accum):
                    chunk_ids, offsets = sampler.windows(step, micro)
                    ids = store.batch("train", chunk_ids, run.data.seq_len, offsets)
                    ids = ids.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else ids
                    if per_rank_dropout:  # each rank its own masks, a pure function of the position in the run
                        torch.manual_seed(dropout_seed(torch_seed(tc.seed), step, micro, ctx.rank))
                    # a cached target belongs to a fixed chunk: shifted windows have none (the config refuses both)
                    window = None if sampler.seq_len else chunk_ids
                    with dd.grad_sync(module, ctx, tc.parallel, sync=micro == tc.grad_accum - 1):
                        with cast:
                            loss, metrics = method.loss(forward_model, Batch(ids, window))
                        if step + 1 in inject:
                            loss = loss * float("nan")
                        (loss / tc.grad_accum).backward()
                    for k, v in {"loss": loss, **metrics}.items():  # a method's own "loss" metric wins
                        v = torch.as_tensor(v, device=device).detach() / tc.grad_accum  # (a float metric too)
                        sums[k] = sums[k] + v if k in sums else v
                if tc.grad_clip > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                else:
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()
                                                               if p.grad is not None])
                grad_norm = dd.local(grad_norm)  # FSDP2: a DTensor, made whole once
                applied = bad.check(float(grad_norm))  # one host sync per step
                if applied:
                    optimizer.step()
                    interval.add({**sums, "grad_norm": grad_norm})
                optimizer.zero_grad(set_to_none=True)
                meter.add_tokens(tokens_per_step)
                done = step + 1
                if not applied:
                    logger.log({"kind": "skip", "step": done, "skipped_steps": bad.total})
                    logger.print(f"step {done:>6}/{tc.steps} | skipped: non-finite loss or gradient "
                                 f"({bad.in_a_row} in a row, {bad.total} in all; the weights are unchanged)")
                    bad.stop_if_persistent(done, last_ckpt)
                # a skipped step at a log step still logs its interval's applied steps (none: nothing to log)
                log_now = interval.count > 0 and (done % tc.log_every == 0 or done == tc.steps)
                save_now = (tc.save_every and done % tc.save_every == 0) or done == tc.steps
                if log_now:  # the only place metrics leave the device (averaged over the processes)
                    values = {k: float(v) for k, v in dd.mean_over_ranks(interval.take(), ctx).items()}
                    train_loss = values.get("loss", math.nan)
                    rate, eta = meter.report(done)
                    memory = ({"gpu_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}
                              if device.type == "cuda" else {})  # this process's peak since it started
                    logger.log({"kind": "train", "step": done, "lr": lr, "tokens": done * tokens_per_step,
                                "flops": done * tokens_per_step * flops["total"], "tok_per_s": rate,
                                "train_s": train_seconds(), **memory, **values})
                    others = "".join(f" | {k} {v:.4f}" for k, v in values.items()
                                     if k not in ("loss", "total_loss", "grad_norm"))
                    logger.print(f"step {done:>6}/{tc.steps} | loss {train_loss:.4f}{others} | lr {lr:.2e} | "
                                 f"gnorm {values['grad_norm']:.3f} | {rate / 1e3:.1f}k tok/s | "
                                 f"eta {format_duration(eta)}")
                if (tc.eval_every and done % tc.eval_every == 0) or done == tc.steps:
                    val_loss = run_eval(done)
                # a signal during the final step: the run is complete, saved below, and not reported as stopped
                signum = dd.max_over_ranks(signals.received or 0, ctx, device)  # a signal any rank received
                stop_now = signum > 0 and done < tc.steps
                if save_now or stop_now:
                    t_save = time.perf_counter()
                    weights, optim_state = dd.full_state(model, optimizer, ctx, tc.parallel)  # collective under FSDP
                    # every rank resumes the interval from the ranks' mean sums: the logged mean over ranks is linear
                    log_interval = interval.state(dd.mean_over_ranks(interval.sums, ctx))
                    if ctx.is_main:
                        with save_gate or contextlib.nullcontext():
                            last_ckpt = save_checkpoint(
                                run_dir, done, weights, optim_state,
                                {"train_loss": train_loss, "val_loss": val_loss, "tokens": done * tokens_per_step,
                                 "train_s": train_seconds(), "global_batch": sampler.global_batch,
                                 "world_size": ctx.world_size, "cpu_threads": torch.get_num_threads(),
                                 "split": [tc.micro_batch_size, tc.grad_accum], "compile": tc.compile,
                                 "device_type": device.type,
                                 "skipped_steps": bad.total, "bad_steps_in_a_row": bad.in_a_row,
                                 "log_interval": log_interval, "store": identity, "inputs": inputs},
                                tc.keep_checkpoints)
                    else:  # the folder rank 0 wrote: what every rank names as the last good checkpoint
                        last_ckpt = run_dir / CKPT_DIR / f"step_{done:07d}"
                    meter.exclude(time.perf_counter() - t_save)
                if stop_now:
                    stopped = signal.Signals(signum).name + ("" if signals.received else " (on another rank)")
                    logger.print(f"stopped by {stopped} after step {done}: checkpoint written to {last_ckpt}; "
                                 + stop_hint)
                    break
            late = 0 if stopped else signum or signals.received or 0  # (also one during the final save)
    finally:
        logger.close()
    return TrainResult(run_dir=run_dir, steps=done if stopped else tc.steps, train_loss=train_loss,
                       val_loss=val_loss, stopped=stopped, skipped_steps=bad.total,
                       late_signal=signal.Signals(late).name if late else "")
