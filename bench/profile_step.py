"""Where one training step's time goes: `torch.profiler` over the steps of `step_cost.py` (same models, same
shapes), split into the teacher's work (`targets`: CoCoMix's concept targets, teacher and SAE, in the optimised or
the naive mode; KD's teacher forward), the student's forward and losses, the backward, and the optimizer step
(gradient clipping and AdamW), with the ops that take the most time.

Made for the question the 2026-11-30 GPU lease left open (online CoCoMix 3.38× NTP's step time side by side, against a
FLOPs ratio of 2.49; the teacher path at ~69 TFLOP/s): run it there and read which ops, launches or host-side waits
fill the target path. On CPU it tells the same story for this machine.

    PYTHONPATH=src python bench/profile_step.py --shape 69m --seq-len 128 --batch 4            # CPU
    PYTHONPATH=src python bench/profile_step.py --device cuda --seq-len 1024 --batch 8 --out bench/results/prof

Prints one JSON object: per region the mean wall seconds per step (a GPU synchronised at each region's edges), the
model FLOPs of the step as `cocomix.flops` counts them and the rate they ran at, overall and for the targets and
the student apart, the top ops by self time (device time on a GPU) and, on a GPU, the kernels launched per step.
`--out DIR` also writes the Chrome trace of the profiled steps (`trace.json`, for chrome://tracing or Perfetto)
and the op table (`ops.txt`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_cost import ALL, Step, runs_for  # noqa: E402

REGIONS = ("targets", "student_loss", "backward", "optimizer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("69m", "tiny"), default="69m")
    p.add_argument("--method", default="cocomix", choices=[m for m in ALL if m != "cocomix-cached"],
                   help="the step to profile (step_cost.py's names; cached targets need a prefill: not here)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels, first-use checks)")
    p.add_argument("--steps", type=int, default=2, help="profiled steps")
    p.add_argument("--rows", type=int, default=20, help="top ops listed")
    p.add_argument("--teacher-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--out", default="", help="folder for trace.json and ops.txt (none by default)")
    p.add_argument("--chunk-elements", type=int, default=0,
                   help="logits per row chunk of the fused concept head and the chunked NLLs (the SAE encode's "
                        "pre-activations per chunk too), instead of the library's 2^23: fewer, larger chunks for "
                        "a GPU")
    args = p.parse_args(argv)
    if args.chunk_elements < 0:
        p.error(f"--chunk-elements: expected a positive count (0: the library's), got {args.chunk_elements}")
    for name in ("warmup", "steps", "rows", "seq_len", "batch"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')}: expected a positive count, got {getattr(args, name)}")
    return args


class Regions:
    """Marks a step's parts for the profiler and times them on the wall clock (synchronising a GPU at each
    boundary, so that a region's time is its own work)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = dict.fromkeys(REGIONS, 0.0)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        with record_function(name):
            yield
            self._sync()
        self.seconds[name] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@contextmanager
def teacher_timed(step: Step, regions: Regions) -> Iterator[None]:
    """Inside: the step's teacher work runs in the `targets` region (CoCoMix's concept targets, teacher and SAE;
    the naive mode's official-style targets; KD's teacher forward); restored after."""
    method = step.method
    if step.name == "cocomix-naive":
        from naive import naive_loss

        loss, targets_fn = method.loss, step.naive_targets

        def timed_naive(ids: torch.Tensor) -> torch.Tensor:
            with regions("targets"):
                return targets_fn(ids)

        method.loss = naive_loss(method, timed_naive)
        try:
            yield
        finally:
            method.loss = loss
        return
    if step.online_targets is not None:
        name, owner = "targets", method
    elif getattr(method, "teacher", None) is not None:  # KD: the teacher's logits
        name, owner = "logits", method.teacher
    else:
        yield
        return
    original = getattr(owner, name)

    def timed(*args: Any) -> Any:
        with regions("targets"):
            return original(*args)

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def profiled_step(step: Step, ids: torch.Tensor, regions: Regions) -> None:
    """One step of `step_cost.Step`, its parts inside profiler regions (the same calls as `Step.__call__`)."""
    from cocomix.methods import Batch
    from cocomix.train.loop import autocast_for

    cast = autocast_for(step.run.train.precision, ids.device)  # train.precision, as `Step.__call__`
    with teacher_timed(step, regions), cast, regions("student_loss"):  # targets nest inside: subtracted later
        loss, _ = step.method.loss(step.model, Batch(ids, None))
    with regions("backward"):
        loss.backward()
    with regions("optimizer"):
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), 1.0)
        step.optimizer.step()
        step.optimizer.zero_grad(set_to_none=True)


def _rate(flops: float, seconds: float) -> float | None:
    """TFLOP/s, None where nothing was timed."""
    return round(flops / seconds / 1e12, 4) if seconds > 0 and flops > 0 else None


def set_chunk_elements(n: int) -> int:
    """Row chunks of n logits in the fused concept head and the chunked NLLs, and of n pre-activations in the SAE
    encode of the default target path (SAE_CHUNK_ELEMENTS = 2n: that path divides it by 2·C, the pre-activation
    and reconstruction paths by C; the library's module constants, read at every call); returns the concept head's
    chunk size in force."""
    from cocomix.concepts import attribution
    from cocomix.model import chunked_nll, concept_head

    if n:
        concept_head.CHUNK_ELEMENTS = chunked_nll.CHUNK_ELEMENTS = n
        attribution.SAE_CHUNK_ELEMENTS = 2 * n
    return concept_head.CHUNK_ELEMENTS


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    chunk = set_chunk_elements(args.chunk_elements)
    runs = runs_for(args.shape, args.seq_len, args.batch, args.teacher_dtype)
    step = Step(args.method, runs, args.shape, device)
    gen = torch.Generator().manual_seed(0)
    vocab = runs["ntp"].model.vocab_size
    batches = [torch.randint(0, vocab, (args.batch, args.seq_len), generator=gen).to(device)
               for _ in range(args.warmup + args.steps)]
    for ids in batches[:args.warmup]:
        step(ids, 0)
    regions = Regions(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for ids in batches[args.warmup:]:
            profiled_step(step, ids, regions)
    n = args.steps
    seconds = {k: v / n for k, v in regions.seconds.items()}
    seconds["student_loss"] -= seconds["targets"]  # the targets run inside the loss call
    total = sum(seconds.values())
    flops = step.flops
    tokens = args.batch * args.seq_len
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"  # microseconds
    events = prof.key_averages()
    table = events.table(sort_by=sort, row_limit=args.rows)
    # ranked: on a GPU the kernels (device rows), on a CPU the ops; never the regions' own annotations
    ranked = [e for e in events if e.key not in REGIONS and not getattr(e, "is_user_annotation", False)
              and (e.device_type == DeviceType.CUDA) == (device.type == "cuda")]
    top = sorted(ranked, key=lambda e: getattr(e, sort, 0.0), reverse=True)[:args.rows]
    out = {
        "method": args.method, "shape": args.shape, "device": str(device), "seq_len": args.seq_len,
        "batch": args.batch, "steps_profiled": n, "torch": torch.__version__, "chunk_elements": chunk,
        "seconds_per_step": {k: round(v, 5) for k, v in seconds.items()},
        "step_seconds": round(total, 5),
        "share": {k: round(v / total, 4) for k, v in seconds.items()} if total > 0 else {},
        "flops_per_token": {k: round(v) for k, v in flops.items()},
        "achieved_tflops": round(flops.get("total", 0.0) * tokens / total / 1e12, 4) if total > 0 else None,
        # the teacher and SAE's FLOPs run in the targets region, the student's in its loss and backward
        "region_tflops": {
            "targets": _rate((flops.get("teacher", 0.0) + flops.get("sae", 0.0)) * tokens, seconds["targets"]),
            "student": _rate(flops.get("student", 0.0) * tokens, seconds["student_loss"] + seconds["backward"])},
        "top_ops": [{"op": e.key, "calls": round(e.count / n, 2), "self_seconds": round(getattr(e, sort) / 1e6 / n, 5)}
                    for e in top],
    }
    if device.type == "cuda":  # many small kernels point at launch overhead rather than arithmetic
        out["cuda_kernels_per_step"] = round(sum(e.count for e in ranked) / n, 1)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(folder / "trace.json"))
        (folder / "ops.txt").write_text(table + "\n")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
