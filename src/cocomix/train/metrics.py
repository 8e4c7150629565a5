"""Metric sinks: metrics.jsonl (always), a readable progress line, and optional TensorBoard / wandb; and the
running means of the train metrics over a logging interval (as the official trainer logs them).

No paper equation.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cocomix import json_text
from cocomix.atomic import atomic_write_text
from cocomix.errors import ConfigError


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line, or None for a blank or damaged line (e.g. cut by a crash)."""
    try:
        event = json_text.loads(line)
    except ValueError:
        return None
    step = event.get("step", 0) if isinstance(event, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None  # ("5", 2.5: an edited line)


# what a run logs into its folder, cleared when the run starts again from step 0
RUN_LOGS = ("metrics.jsonl", "tensorboard", "wandb_run_id")


def clear_run_logs(run_dir: Path) -> None:
    """Remove RUN_LOGS from `run_dir` (a file, or TensorBoard's folder)."""
    import shutil

    for name in RUN_LOGS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class MetricsLogger:
    """Appends events to run_dir/metrics.jsonl and mirrors scalars to the configured backends."""

    def __init__(self, run_dir: Path, backends: tuple[str, ...] = (), resume_step: int | None = None,
                 config: dict | None = None, quiet: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.quiet = quiet
        if resume_step is not None and self.path.exists():  # drop events past the checkpoint we resume from
            kept = [ln for ln in self.path.read_text(errors="replace").splitlines()
                    if _step_of(ln) is not None and _step_of(ln) <= resume_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        elif resume_step is None:  # a run (re)starting from step 0: nothing an earlier attempt logged is its own
            clear_run_logs(run_dir)  # (wandb_run_id too: a new wandb run, not the failed attempt's)
        self.sinks: list[Any] = []
        try:
            self._open_sinks(run_dir, backends, resume_step, config)
        except BaseException:  # a backend that cannot start (wandb without a key), Ctrl-C during wandb.init
            self.close()
            if resume_step is None:  # what this start made is its own: gone, so that the fixed rerun starts clean
                clear_run_logs(run_dir)  # (`check_run_folder` refuses these names in a folder without a run)
            raise

    def _open_sinks(self, run_dir: Path, backends: tuple[str, ...], resume_step: int | None,
                    config: dict | None) -> None:
        """Start the TensorBoard writer / wandb run of `backends` (see `__init__`)."""
        for name in backends:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ConfigError("train.log_backends: tensorboard requested but not installed "
                                      "(pip install tensorboard)") from None
                # a resume drops the events a crashed process wrote past the checkpoint, as metrics.jsonl does
                purge = None if resume_step is None else resume_step + 1
                self.sinks.append(("tensorboard", SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)))
            elif name == "wandb":
                try:
                    import wandb
                except ImportError:
                    raise ConfigError("train.log_backends: wandb requested but not installed "
                                      "(pip install wandb)") from None
                id_file = run_dir / "wandb_run_id"  # the same wandb run across resumes (resume needs its id)
                run_id = id_file.read_text().strip() if id_file.is_file() else ""
                fresh = not run_id
                run_id = run_id or secrets.token_hex(4)  # wandb's id alphabet; its generator moved between versions
                if resume_step is not None:  # wandb keeps what it already received for a step
                    self.print(f"cocomix: note: wandb keeps the values the interrupted attempt logged after step "
                               f"{resume_step}; metrics.jsonl and TensorBoard hold the resumed run's")
                try:
                    sink = wandb.init(project="cocomix", dir=str(run_dir), config=config, name=run_dir.name,
                                      id=run_id, resume="allow")
                except Exception as e:  # no API key, no network, a bad WANDB_* setting: wandb raises many types
                    first = (str(e).strip().splitlines() or [""])[0]
                    raise ConfigError(f"train.log_backends: wandb could not start ({type(e).__name__}: {first}); "
                                      "log in with `wandb login`, or set WANDB_MODE=offline") from None
                if fresh:  # only once the run exists: a failed start leaves nothing behind
                    atomic_write_text(id_file, run_id + "\n")
                self.sinks.append(("wandb", sink))

    def log(self, event: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
        step = event.get("step", 0)
        scalars = {k: v for k, v in event.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, sink in self.sinks:
            if kind == "tensorboard":
                for k, v in scalars.items():
                    sink.add_scalar(f"{event.get('kind', 'train')}/{k}", v, step)
            else:
                sink.log({f"{event.get('kind', 'train')}/{k}": v for k, v in scalars.items()}, step=step)

    def print(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Flush and close the backends (once: a second call, e.g. from `FailFast`'s watcher, does nothing)."""
        sinks, self.sinks = self.sinks, []
        for kind, sink in sinks:
            sink.close() if kind == "tensorboard" else sink.finish()


class SilentLogger:
    """What ranks other than 0 log under torchrun: nothing."""

    def log(self, record: dict) -> None:
        pass

    def print(self, msg: str) -> None:
        pass

    def close(self) -> None:
        pass


class Throughput:
    """Training tokens/s over the last logging interval (evaluations and checkpoint saves left out) and the ETA
    from the mean step time since (re)start (those included: they recur)."""

    def __init__(self, start_step: int, total_steps: int) -> None:
        self.t0 = self.t_last = time.perf_counter()
        self.start, self.total, self.last_step = start_step, total_steps, start_step
        self.tokens = 0

    def add_tokens(self, n: int) -> None:
        self.tokens += n

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation, a checkpoint save) out of the current interval's tokens/s."""
        self.t_last += seconds

    def report(self, step: int) -> tuple[float, float]:
        """(tokens/s since the last report, seconds left) after finishing `step` (1-based count)."""
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t_last, 1e-9)
        per_step = (now - self.t0) / max(1, step - self.start)
        self.t_last, self.tokens, self.last_step = now, 0, step
        return rate, per_step * (self.total - step)


class IntervalMeans:
    """Train metrics summed over the applied steps since the last log, kept on the device (no host sync per step).

    The official trainer logs loss, concept loss and gradient norm as means over its `log_step_freq` steps; so do
    we, over `train.log_every` steps (skipped steps excluded). The partial sums travel in checkpoints, so a run
    resumed mid-interval logs what an uninterrupted run logs.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # name -> 0-dim fp32 tensor
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def take(self) -> dict[str, torch.Tensor]:
        """The means since the last `take` (or the resumed checkpoint), and a fresh interval."""
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means

    def state(self, sums: dict[str, torch.Tensor]) -> dict:
        """JSON-able state; `sums` are this interval's sums as they are to be saved (e.g. averaged over ranks).
        fp32 -> Python float -> fp32 is exact, so a resumed 1-process interval continues bit for bit (saved
        averaged over ranks, a multi-process interval's logged mean continues up to the rounding of the sum's new
        order; the weights are unaffected)."""
        return {"count": self.count, "sums": {k: float(v) for k, v in sums.items()}}

    def load(self, state: dict | None, device: torch.device) -> None:
        state = state or {"count": 0, "sums": {}}
        self.count = int(state["count"])
        self.sums = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in state["sums"].items()}
