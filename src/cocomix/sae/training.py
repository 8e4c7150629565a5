"""`train_sae`: train a TopK SAE on a frozen teacher's residual stream (the `cocomix train-sae` command).

The objective and constraints are in `objective.py` (Gao et al. 2024), the data order in `activations.py`. The
output directory holds:

    config.json        the SAETrainConfig
    metrics.jsonl      train events (loss, fvu, auxk, dead fraction, lr, tok/s) and the final eval event
    checkpoints/       resumable state (SAE weights, Adam state, tokens since each latent fired), written atomically
    sae/               the trained SAE as a SAELens folder (cfg.json + sae_weights.safetensors)
    summary.json       FVU and L0 on held-out tokens, dead latents (no activation in `dead_after` training
                       tokens, Gao et al.'s definition), latents unseen on the held-out tokens, wall-clock
    inputs.json        the token store's identity and the teacher's weight fingerprint (`run_inputs.py`)

Re-running with the same settings resumes from the latest checkpoint; other settings are refused (the store and
the teacher are compared by content, so they may be named by another path). The directory is locked while training
(a second writer fails at once); SIGTERM / SIGINT write a checkpoint after the current step and stop
(`cocomix.errors.Stopped`). The result is a pure function of the config: a resumed run ends with the same weights
as an uninterrupted one.

Under torchrun (`ctx`) the ranks share each chunk's teacher work and each step's rows (`batch_tokens` must divide
by the number of processes); their gradients are summed, so they all take the one-process step (up to the order
of the sums) and stay equal. Rank 0 alone holds the lock, reads and writes the directory (`ranks.py`).

Trains the SAE of paper §2.1 (c = TopK(E(h)), ĥ = D(c)), not one of CoCoMix's equations.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cocomix import json_text
from cocomix.atomic import atomic_write_text
from cocomix.data import TokenStore
from cocomix.errors import CheckpointError, CocomixError, ConfigError, Stopped
from cocomix.progress import format_duration
from cocomix.sae import ranks
from cocomix.sae.activations import ActivationChunks
from cocomix.sae.fit import FVUSums
from cocomix.sae.objective import initialize, normalize_decoder, remove_parallel_decoder_grad, sae_losses
from cocomix.sae.run_inputs import INPUTS, RELOCATABLE, check_rerun_inputs, read_inputs, run_inputs
from cocomix.sae.saelens import save_saelens
from cocomix.sae.topk import TopKSAE
from cocomix.sae.train_config import SAETrainConfig
from cocomix.seeding import torch_seed
from cocomix.train import distributed as dd
from cocomix.train.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from cocomix.train.distributed import DistContext
from cocomix.train.guard import LOCK_NAME, RunLock, StopSignals
from cocomix.train.metrics import MetricsLogger, SilentLogger, Throughput

if TYPE_CHECKING:
    from cocomix.teacher import Teacher

ADAM_EPS = 6.25e-10  # OpenAI sparse_autoencoder
INIT_SAMPLE = 32768  # activations used for the geometric-median init of pre_bias


class _TrainState(nn.Module):
    """The SAE plus the per-latent count of training tokens since it last fired (saved with the checkpoint)."""

    def __init__(self, sae: TopKSAE) -> None:
        super().__init__()
        self.sae = sae
        self.register_buffer("since_fired", torch.zeros(sae.n_latents, dtype=torch.int64, device=sae.W_enc.device))


@dataclass
class SAEReport:
    out_dir: Path
    fvu: float
    """Fraction of variance unexplained of the raw residual stream on held-out tokens."""
    fvu_normalized: float
    """The same in the SAE's input space (after its layer norm), the quantity the loss minimises."""
    l0: float
    """Mean number of non-zero latents per token."""
    dead_fraction: float
    """Dead latents as Gao et al. define them: no activation in the last `dead_after` training tokens."""
    unseen_fraction: float
    """Latents that never fired on the (much shorter) held-out evaluation tokens: dead or merely rare."""
    eval_tokens: int
    wall_clock_s: float
    """Seconds of the process that finished the run (a resumed run's last part only)."""
    fvu_normalized_excl_first: float = float("nan")
    """`fvu_normalized` with each window's position 0 left out: the figure `describe-concepts` reports and the SAE
    fit check compares with FVU_WARN (a GPT-2-like teacher's first position has a far larger norm); NaN in a
    summary.json written before it was recorded."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def lr_at(step: int, cfg: SAETrainConfig, peak: float) -> float:
    """Linear warm-up, constant, then linear decay to 0 over the last `decay_fraction` of the steps; where the
    warm-up runs into the decay, the lower of the two lines (no jump from the warm-up's top down to the decay)."""
    lr = peak * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else peak
    decay_start = cfg.steps * (1 - cfg.decay_fraction)
    if cfg.decay_fraction > 0 and step >= decay_start:
        lr = min(lr, peak * max(0.0, (cfg.steps - step) / (cfg.steps - decay_start)))
    return lr


def _prepare_out(cfg: SAETrainConfig, out: Path) -> tuple[RunLock, bool]:
    """Create or reopen `out`, hold its lock, and refuse a directory that holds something else; returns the lock
    and whether this call created `out`."""
    if out.exists() and not out.is_dir():
        raise CocomixError(f"{out}: --out exists and is not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    try:
        check_out(cfg, out)
    except BaseException:
        lock.release(remove_empty_dir=created)
        raise
    return lock, created


OPERATIONAL = ("device", "log_every", "checkpoint_every", "teacher_batch", "eval_tokens")
"""Settings a resume may change: they leave the trained SAE as it is (up to the device's float rounding)."""


def check_out(cfg: SAETrainConfig, out: Path) -> None:
    """CocomixError when `out` holds an SAE run of other settings, or something that is not an SAE run."""
    from cocomix.atomic import check_utf8_path

    check_utf8_path(out)
    path = out / "config.json"
    if path.is_file():
        from cocomix.outputs import RUN, output_kind

        kind = output_kind(out)  # (an SAE run not finished yet looks like a model run: config, checkpoints, log)
        text = path.read_bytes().decode("utf-8", errors="replace")  # (bytes not UTF-8: not JSON, said below)
        if kind not in (None, RUN, "a train-sae output") or (kind == RUN and '"auxk_alpha"' not in text):
            raise CocomixError(f"{out}: holds {kind}, not an SAE training run; use another --out")
        try:
            stored = SAETrainConfig.from_dict(json_text.loads(text))
        except (ValueError, TypeError, AttributeError, ConfigError) as e:
            raise CocomixError(f"{path}: unreadable SAE training config ({e})") from None
        recorded = read_inputs(out)  # None for a run from before inputs.json: its paths are compared as given
        moved = RELOCATABLE if recorded is not None else ()
        diff = [k for k, v in cfg.to_dict().items() if stored.to_dict().get(k) != v and k not in OPERATIONAL + moved]
        if diff:
            raise CocomixError(f"{out}: holds an SAE training run with other settings ({', '.join(diff[:3])}); "
                               "use another --out")
        if recorded is not None:
            check_rerun_inputs(cfg, stored, out, recorded)
    elif any(p.name != LOCK_NAME for p in out.iterdir()):
        raise CocomixError(f"{out}: not empty and not an SAE training run; use another --out")


def _finished_report(cfg: SAETrainConfig, out: Path) -> SAEReport | None:
    """The stored report of a run in `out` that already trained all `cfg.steps` and wrote its SAE, else None.
    summary.json is written last, so it and `sae/` say so on their own: its checkpoints may have been deleted
    since (they are several times the SAE's size), which must not start the training again."""
    from cocomix.train.checkpoint import read_state

    if not (out / "sae").is_dir() or not (out / "summary.json").is_file():
        return None
    try:
        ckpt = latest_checkpoint(out)
    except CheckpointError:  # `latest` naming a deleted step folder: the summary stands
        ckpt = None
    if ckpt is not None and read_state(ckpt)["step"] < cfg.steps:
        return None
    try:
        stored = json_text.loads((out / "summary.json").read_text(encoding="utf-8"))
        return SAEReport(**{**stored, "out_dir": out})
    except (OSError, ValueError, TypeError):
        return None  # no usable summary: evaluate again


@torch.no_grad()
def fired_latents(values: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """(C,) bool: the latents with a positive value in a TopK code values, indices (N, k). A scatter, not boolean
    indexing, so a GPU step does not wait for the host to learn how many there are."""
    slots = torch.where(values > 0, indices, n_latents)  # (N, k); a zero-valued slot points past the end
    hit = torch.zeros(n_latents + 1, dtype=torch.bool, device=values.device)
    return hit.scatter_(0, slots.flatten(), True)[:n_latents]


def evaluate_sae(sae: TopKSAE, chunks: ActivationChunks, eval_tokens: int) -> dict[str, float | int]:
    """FVU (raw and normalised space), L0 and never-fired fraction on the first validation windows (under torchrun
    rank r takes every world_size-th batch of them and the sums are combined: the same figures on every rank)."""
    store, T, ctx = chunks.store, chunks.seq_len, chunks.ctx
    n_windows = min(store.num_chunks("val", T), max(1, eval_tokens // T))
    if n_windows == 0:
        raise CocomixError(f"{store.path}: the val split holds fewer than seq_len={T} tokens; nothing to evaluate")
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=sae.W_enc.device)
    fvu, fvu_n, fvu_later = FVUSums(raw=True), FVUSums(), FVUSums()
    nnz = 0
    for s in range(ctx.rank * chunks.teacher_batch, n_windows, ctx.world_size * chunks.teacher_batch):
        x = chunks.hidden("val", list(range(s, min(n_windows, s + chunks.teacher_batch)))).to(sae.W_enc.dtype)
        values, indices, info = sae.encode(x)  # (N, k)
        fvu.add(sae, x, values, indices, info)
        fvu_n.add(sae, x, values, indices, info)
        later = torch.arange(x.shape[0], device=x.device) % T != 0  # (N,): each window's position 0 left out
        fvu_later.add(sae, x[later], values[later], indices[later], {k: v[later] for k, v in info.items()})
        fired |= fired_latents(values, indices, sae.n_latents)
        nnz += int((values > 0).sum())
    if ctx.active:
        for sums in (fvu, fvu_n, fvu_later):
            sums.reduce(lambda t: dd.sum_over_ranks(t.to(sae.W_enc.device), ctx).cpu(), sae.d_in)
        nnz = int(dd.sum_over_ranks(torch.tensor(nnz, device=sae.W_enc.device), ctx))
        fired = dd.sum_over_ranks(fired.int(), ctx) > 0  # fired on any rank's windows
    return {"fvu": fvu.value(), "fvu_normalized": fvu_n.value(), "fvu_normalized_excl_first": fvu_later.value(),
            "l0": nnz / fvu.rows,
            "unseen_fraction": 1.0 - float(fired.float().mean()), "eval_tokens": fvu.rows}


def train_sae(cfg: SAETrainConfig, out_dir: str | Path, teacher: Teacher, quiet: bool = False,
              ctx: DistContext | None = None) -> SAEReport:
    """Train (or resume) an SAE for `teacher` (a cocomix.teacher.Teacher) as `cfg` says; returns the eval report.
    Under torchrun every rank calls this with its `ctx` (see the module docstring) and gets the report."""
    ctx = ctx or DistContext()
    out = Path(out_dir)
    t_start = time.perf_counter()
    store = TokenStore.open(cfg.data)
    teacher.check_store(store, cfg.seq_len)
    for split in ("train", "val"):  # the val split is read at the end: a run that cannot finish must not start
        if store.num_chunks(split, cfg.seq_len) == 0:
            raise CocomixError(f"{store.path}: the {split} split holds fewer than seq_len={cfg.seq_len} tokens")
    if cfg.k > cfg.width(teacher.width):
        raise ConfigError(f"k: must not exceed the SAE width {cfg.width(teacher.width)}, got {cfg.k}")
    check_world_size(cfg, ctx.world_size)
    held: list[tuple[RunLock, bool]] = []

    def take_lock() -> list[int]:  # rank 0 alone writes the run directory
        held.append(_prepare_out(cfg, out))
        return []

    try:
        dd.on_main_rank(take_lock, 0, ctx, teacher.device)
        return _train(cfg, out, teacher, store, quiet or not ctx.is_main, t_start, ctx)
    finally:
        for lock, created in held:
            lock.release(remove_empty_dir=created)


def check_world_size(cfg: SAETrainConfig, world_size: int) -> None:
    """ConfigError unless every step's rows divide among the processes of a torchrun job."""
    if cfg.batch_tokens % world_size:
        raise ConfigError(f"batch_tokens: must divide among the {world_size} processes, got {cfg.batch_tokens}")


def _train(cfg: SAETrainConfig, out: Path, teacher: Teacher, store: TokenStore, quiet: bool,
           t_start: float, ctx: DistContext) -> SAEReport:
    device = teacher.device
    found: list[SAEReport | None] = [None]

    def look() -> list[int]:  # rank 0 reads the directory; should that fail, every rank stops (none waits)
        found[0] = _finished_report(cfg, out)
        return [int(found[0] is not None)]

    if dd.on_main_rank(look, 1, ctx, device)[0]:  # a rerun of a finished run: its SAE and report stand
        done_before = ranks.from_main(found[0], ctx)  # (nothing recomputed)
        if not quiet:
            print(f"train-sae: {out} already finished ({cfg.steps} steps); its SAE is {out / 'sae'}",
                  file=sys.stderr)
        return done_before
    chunks = ActivationChunks(store, teacher, cfg.seq_len, cfg.chunk_tokens, cfg.batch_tokens, cfg.teacher_batch,
                              cfg.seed, ctx)
    d_in = teacher.width  # the width of teacher.hidden's activations
    C, k_aux, peak = cfg.width(d_in), cfg.aux_latents(d_in), cfg.learning_rate(d_in)
    sae = TopKSAE(d_in, C, cfg.k, normalize=cfg.normalize).to(device)
    state = _TrainState(sae)
    optimizer = torch.optim.Adam(sae.parameters(), lr=peak, betas=(0.9, 0.999), eps=ADAM_EPS)

    def load() -> list[int]:  # (rank 0) whether a checkpoint was loaded, and its step
        ckpt = latest_checkpoint(out)
        return [0, 0] if ckpt is None else [1, load_training_state(ckpt, state, optimizer)["step"]]

    resumed, start = dd.on_main_rank(load, 2, ctx, device)
    if not resumed:  # a fresh run: chunk 0 initialises the SAE (a resumed one computes no chunk before its own)
        gen = torch.Generator().manual_seed(torch_seed(cfg.seed))
        initialize(sae, chunks.chunk(0)[:INIT_SAMPLE].to(sae.W_enc.dtype), gen)  # (INIT_SAMPLE, d)
    ranks.broadcast_state(state, optimizer, resumed, ctx)  # every rank starts from rank 0's state
    share = None  # this rank's rows of every step's batch (torchrun)
    if ctx.active:
        n = cfg.batch_tokens // ctx.world_size
        share = slice(ctx.rank * n, (ctx.rank + 1) * n)
    loggers: list[MetricsLogger | SilentLogger] = [SilentLogger()]

    def open_log() -> None:
        atomic_write_text(out / "config.json", cfg.to_json())
        atomic_write_text(out / INPUTS, json.dumps(run_inputs(cfg), indent=2) + "\n")  # (checked by a rerun)
        log = out / "metrics.jsonl"
        if resumed and start >= cfg.steps and log.is_file():  # evaluating again: an earlier attempt's eval goes
            lines = log.read_text(errors="replace").splitlines()
            atomic_write_text(log, "".join(ln + "\n" for ln in lines if '"kind": "eval"' not in ln))
        loggers[0] = MetricsLogger(out, resume_step=start if resumed else None, quiet=quiet)

    dd.main_rank_does(open_log, ctx, device)
    logger = loggers[0]
    if cfg.warmup_steps > cfg.steps:  # (a smoke test's few steps under the default warm-up): said, as train does
        logger.print(f"train-sae: note: warmup_steps {cfg.warmup_steps} > steps {cfg.steps}: the learning rate "
                     f"never reaches its peak {peak:.2e}")
    procs = f" × {ctx.world_size} processes" if ctx.active else ""
    logger.print(f"train-sae: d_in {d_in} -> {C} latents, k {cfg.k} | {cfg.batch_tokens} tokens/step | "
                 f"steps {start}->{cfg.steps} | lr {peak:.2e} | dead after {cfg.dead_after} tokens | {device}{procs}")
    meter = Throughput(start, cfg.steps)
    dead_after = cfg.dead_after
    with StopSignals() as signals:
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg, peak)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = chunks.batch(step).to(sae.W_enc.dtype)  # (N, d)
            dead = state.since_fired >= dead_after  # (C,)
            fvu, auxk, values, indices = sae_losses(sae, x, dead, k_aux, rows=share)  # (this rank's share)
            loss = fvu + cfg.auxk_alpha * auxk
            loss.backward()
            ranks.sum_grads(sae, ctx)  # the whole batch's gradient, on every rank
            remove_parallel_decoder_grad(sae)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            normalize_decoder(sae)
            with torch.no_grad():
                fired = fired_latents(values, indices, C)  # (C,) on this rank's rows
                anywhere = dd.sum_over_ranks(fired.int(), ctx) > 0  # (C,) fired on any rank's rows
                state.since_fired.add_(x.shape[0]).masked_fill_(anywhere, 0)
            meter.add_tokens(x.shape[0])
            done = step + 1
            saved = (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps
            signum = dd.max_over_ranks(signals.received or 0, ctx, device)  # any rank's SIGTERM / SIGINT stops all
            stopping = signum != 0
            if done % cfg.log_every == 0 or saved or stopping:  # never log or save a diverged SAE
                loss, fvu, auxk = dd.sum_over_ranks(torch.stack((loss.detach(), fvu.detach(), auxk.detach())), ctx)
                loss_value = float(loss)
                if not math.isfinite(loss_value):
                    raise CocomixError(f"SAE training diverged at step {done}: loss is {loss_value}; the last "
                                       "checkpoint is from before it — train again into a new --out with a lower "
                                       "--lr")
            if done % cfg.log_every == 0 or done == cfg.steps:
                rate, eta = meter.report(done)
                dead_frac, fvu_value, auxk_value = float(dead.float().mean()), float(fvu.detach()), float(auxk.detach())
                logger.log({"kind": "train", "step": done, "loss": loss_value, "fvu": fvu_value, "auxk": auxk_value,
                            "dead_fraction": dead_frac, "lr": lr, "tokens": done * cfg.batch_tokens, "tok_per_s": rate})
                logger.print(f"step {done:>6}/{cfg.steps} | fvu {fvu_value:.4f} | auxk {auxk_value:.4f} | "
                             f"dead {100 * dead_frac:.1f}% | lr {lr:.2e} | {rate / 1e3:.1f}k tok/s | "
                             f"eta {format_duration(eta)}")
            if saved or stopping:  # SIGTERM / SIGINT: save this step, release the lock, exit 128 + sig
                dd.main_rank_does(partial(save_checkpoint, out, done, state, optimizer,
                                   {"tokens": done * cfg.batch_tokens}, keep=2), ctx, device)
            if stopping:
                logger.print(f"stopped by {signal.Signals(signum).name} after step {done}: checkpoint written")
                logger.close()
                raise Stopped(signum, f"SAE checkpoint at step {done} in {out}; rerun the same command to resume")
    sae.eval()
    metrics = evaluate_sae(sae, chunks, cfg.eval_tokens)
    dead_train = float((state.since_fired >= dead_after).float().mean())
    report = SAEReport(out_dir=out, fvu=metrics["fvu"], fvu_normalized=metrics["fvu_normalized"], l0=metrics["l0"],
                       dead_fraction=dead_train, unseen_fraction=metrics["unseen_fraction"],
                       eval_tokens=metrics["eval_tokens"], wall_clock_s=time.perf_counter() - t_start,
                       fvu_normalized_excl_first=metrics["fvu_normalized_excl_first"])

    def write_sae() -> None:
        save_saelens(sae, out / "sae", metadata={
            "model_name": cfg.teacher, "hook_name": f"blocks.{teacher.layer}.hook_resid_post",
            "hook_layer": teacher.layer, "context_size": cfg.seq_len, "dataset_path": str(store.path),
            "prepend_bos": False, "training_tokens": cfg.steps * cfg.batch_tokens,
            "eval": {k: v for k, v in report.to_dict().items() if k != "out_dir"}})
        logger.log({"kind": "eval", "step": cfg.steps, **{k: v for k, v in report.to_dict().items()
                                                          if k != "out_dir"}})
        atomic_write_text(out / "summary.json", json.dumps(report.to_dict(), indent=2) + "\n")  # (last: "finished")

    dd.main_rank_does(write_sae, ctx, device)
    logger.print(f"train-sae done: FVU {report.fvu:.4f} (normalised {report.fvu_normalized:.4f}; "
                 f"{report.fvu_normalized_excl_first:.4f} leaving out each window's position 0, as the fit check "
                 "does) | "
                 f"L0 {report.l0:.1f} | dead {100 * dead_train:.2f}% (no activation in {dead_after} training tokens) | "
                 f"{100 * report.unseen_fraction:.2f}% not seen on {report.eval_tokens} held-out tokens | "
                 f"{format_duration(report.wall_clock_s)}")
    logger.close()
    return report

