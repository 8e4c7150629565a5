"""Training-step cost of every method, side by side in one run: step time, tokens/s, analytic FLOPs per token,
achieved FLOP/s and peak memory; plus CoCoMix's naive mode (`naive.py`, the official code's way) as the
baseline of the optimised path. One JSON object goes to stdout.

A step is what `cocomix.train` does per optimizer update: the method's loss, backward, gradient clipping, AdamW,
zero_grad. Methods:

    ntp              NTP at the CoCoMix student's width (the FLOPs-ratio comparison)
    ntp-matched      the parameter-matched NTP preset (wider)
    cocomix          CoCoMix, targets online (teacher + SAE every step), optimised
    cocomix-naive    the same step with the official code's target computation, dense compression, full CE
    cocomix-cached   CoCoMix with precomputed targets (read from memory: the disk read is not timed)
    kd               knowledge distillation (teacher forward, KL)
    pause            pause slots

A name may carry options as suffixes, so their cost is timed side by side with the plain step:
`+ckpt` (train.activation_checkpointing), `+chunked` (train.chunked_lm_loss; not for cocomix-naive) and `+bf16`
(train.precision=bf16: the student under bf16 autocast, also on a CPU; the teacher stays fp32 as
concept.teacher_precision=fp32 says), e.g. `ntp-matched,ntp-matched+ckpt+chunked` or `cocomix,cocomix+bf16`; the
JSON then holds each variant's step-time and peak-memory ratio to its plain method. The flags
`--activation-checkpointing` / `--chunked-lm-loss` / `--precision` apply to every method instead (`--precision
auto`, the default: bf16 autocast on CUDA, fp32 on CPU, as training does).

Shapes: `--shape 69m` is the paper's 69M configuration (student d 512, 8 layers, vocab 50257, 32768 concepts,
mix_k 32, GPT-2-small teacher at block 5 — a randomly initialised `transformers` GPT-2, nothing is downloaded)
at a short context for CPU; `--shape tiny` the demo's shapes. Timing alternates the methods round by round
(rotating the order) and reports medians. Peak memory: each method is run in a fresh subprocess; on CUDA
`torch.cuda.max_memory_allocated`, on CPU the process's peak resident set (VmHWM) minus its size before the
model was built, after one tiny step of the same method was built, run and freed there first (so the runtime's
own start-up — thread pools, kernel libraries — is not counted) — weights, optimizer state, teacher and the step's
transient memory together — and, separately, the rise of VmHWM during the steps over the resident size before
them (the step's own transient memory). The subprocess runs with MALLOC_MMAP_THRESHOLD_=131072, so freed tensors
return to the OS and the resident size follows live memory rather than glibc's heap retention. The cached method
never builds the teacher there (a run from a cache does not load it); its targets are random valid labels.

    PYTHONPATH=src python bench/step_cost.py --shape 69m --seq-len 128 --batch 4
    PYTHONPATH=src python bench/step_cost.py --shape tiny --methods ntp,cocomix,cocomix-naive
    PYTHONPATH=src python bench/step_cost.py --shape 69m --seq-len 1024 --batch 1 --memory-only \
        --methods ntp-matched,cocomix,cocomix-cached      # memory at the paper's context, no timing
    PYTHONPATH=src python bench/step_cost.py --shape 69m --seq-len 512 --batch 2 \
        --methods ntp-matched,ntp-matched+ckpt+chunked,cocomix,cocomix+ckpt+chunked   # what the options cost
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from naive import NaiveTargets, dense_compression, naive_flops, naive_loss, same_function  # noqa: E402
from step_report import print_summary, ratios  # noqa: E402

from cocomix.flops import LMShape, ntp_width_for, run_flops  # noqa: E402
from cocomix.methods import METHODS, Batch  # noqa: E402
from cocomix.presets import get_preset  # noqa: E402
from cocomix.train.loop import autocast_for, flops_per_token  # noqa: E402
from cocomix.train.optim import build_optimizer  # noqa: E402

ALL = ("ntp", "ntp-matched", "cocomix", "cocomix-naive", "cocomix-cached", "kd", "pause")
# name suffixes (+ckpt, +chunked, +bf16): the train setting each switches on
OPTIONS = {"ckpt": ("activation_checkpointing", True), "chunked": ("chunked_lm_loss", True),
           "bf16": ("precision", "bf16")}


def split_name(name: str) -> tuple[str, tuple[str, ...]]:
    """"cocomix+ckpt+chunked" -> ("cocomix", ("ckpt", "chunked"))."""
    base, *options = name.split("+")
    return base, tuple(options)


def check_name(name: str) -> str | None:
    """Why `name` is not a benchmark method, or None."""
    base, options = split_name(name)
    if base not in ALL:
        return f"unknown method {base!r}; expected names from {ALL}"
    bad = [o for o in options if o not in OPTIONS]
    if bad:
        return f"{name}: unknown option +{bad[0]}; expected +{' / +'.join(OPTIONS)}"
    if "chunked" in options and base == "cocomix-naive":
        return f"{name}: +chunked does not apply to {base} (the official code's whole logits)"
    return None


def run_of(name: str, runs: dict[str, Any]) -> Any:
    """The RunConfig a method name stands for, with its +options switched on."""
    base, options = split_name(name)
    run = runs[{"cocomix-naive": "cocomix", "cocomix-cached": "cocomix"}.get(base, base)]
    flags = dict(OPTIONS[o] for o in options)
    return dataclasses.replace(run, train=dataclasses.replace(run.train, **flags)) if flags else run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=("69m", "tiny"), default="69m")
    p.add_argument("--methods", default=",".join(ALL))
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=4, help="micro-batch (windows per step)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of every method per round)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--teacher-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="concept.teacher_dtype of the teacher-using steps (the naive step's teacher too)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the student's compute precision, as train.precision: auto = bf16 autocast on CUDA, fp32 on "
                        "CPU; bf16 = bf16 autocast on either (the teacher stays fp32: concept.teacher_precision)")
    p.add_argument("--chunked-lm-loss", action="store_true",
                   help="train.chunked_lm_loss for every method but the naive mode (student LM loss in chunks)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="train.activation_checkpointing for every method (blocks recomputed in the backward)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--memory-only", action="store_true", help="only the per-method memory subprocesses, no timing")
    p.add_argument("--summary", action="store_true", help="also print a readable summary to stderr")
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: one method's memory
    return p.parse_args()


def runs_for(shape: str, seq_len: int, batch: int, teacher_dtype: str = "float32",
             chunked_lm_loss: bool = False, activation_checkpointing: bool = False,
             precision: str = "auto") -> dict[str, Any]:
    """RunConfigs of every method at the shape, dropout off (it is noise in a timing); `chunked_lm_loss` and
    `activation_checkpointing` for every method (the naive step ignores the first: the official whole logits)."""
    names = {"69m": {"ntp-matched": "gpt2-69m-ntp", "cocomix": "gpt2-69m-cocomix", "kd": "gpt2-69m-kd",
                     "pause": "gpt2-69m-pause"},
             "tiny": {"ntp-matched": "tiny", "cocomix": "tiny-cocomix", "kd": "tiny-kd", "pause": "tiny-pause"}}[shape]
    out = {}
    for method, preset in names.items():
        run = get_preset(preset)
        # the preset's position table (its parameter count), longer where --seq-len asks for more
        model = dataclasses.replace(run.model, dropout=0.0, context_length=max(run.model.context_length, seq_len))
        out[method] = dataclasses.replace(run, model=model, data=dataclasses.replace(run.data, seq_len=seq_len),
                                          train=dataclasses.replace(run.train, micro_batch_size=batch, device="cpu",
                                                                    chunked_lm_loss=chunked_lm_loss,
                                                                    precision=precision,
                                                                    activation_checkpointing=activation_checkpointing),
                                          concept=dataclasses.replace(run.concept, teacher_dtype=teacher_dtype))
    coco = out["cocomix"]
    if shape == "tiny":  # the tiny NTP preset has CoCoMix's width: match the parameters as the demo does
        out["ntp-matched"] = dataclasses.replace(out["ntp-matched"], model=dataclasses.replace(
            out["ntp-matched"].model, d_model=ntp_width_for(coco)))
    out["ntp"] = dataclasses.replace(out["ntp-matched"], model=dataclasses.replace(out["ntp-matched"].model,
                                                                                   d_model=coco.model.d_model))
    return out


def build_teacher(shape: str, run: Any) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised teacher of the preset's shape and a random TopK SAE on its residual."""
    from cocomix.sae import TopKSAE

    torch.manual_seed(1)
    if shape == "69m":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(n_positions=1024))
        d = 768
    else:
        from cocomix.config import ModelConfig
        from cocomix.model import Transformer

        model = Transformer(ModelConfig(vocab_size=run.model.vocab_size, n_layer=4, n_head=4, d_model=128,
                                        context_length=run.model.context_length))
        d = 128
    sae = TopKSAE(d, run.concept.n_latents, 32)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.05)
    return model, sae


def _lm_shape(model: torch.nn.Module) -> LMShape:
    """The teacher's shape for the FLOPs count, read from the model itself."""
    from cocomix.teacher import find_blocks

    width = model.config.n_embd if hasattr(model, "config") else model.cfg.d_model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else model.lm_head
    return LMShape.from_module(model, find_blocks(model), int(width), int(head.weight.shape[0]))


class Step:
    """One method's model, optimizer and loss; `__call__` runs one training step on the batch."""

    def __init__(self, name: str, runs: dict[str, Any], shape: str, device: torch.device,
                 with_teacher: bool = True) -> None:
        from cocomix.teacher import Teacher
        from cocomix.teacher_precision import cuda_matmul_precision, teacher_dtype

        cuda_matmul_precision(device)  # TF32 on CUDA, as training sets it
        self.run = run_of(name, runs)
        self.name, _ = split_name(name)  # the plain method: what the step does
        torch.manual_seed(0)
        self.method = METHODS[self.run.method](self.run)
        self.model = self.method.build_model().to(device)
        self.model.checkpoint_blocks = self.run.train.activation_checkpointing
        self.flops: dict[str, float] = {}
        if self.run.method in ("cocomix", "kd") and not (self.name == "cocomix-cached" and not with_teacher):
            # one teacher per step, built in place (no transient copies in the memory high-water mark)
            hf, sae = build_teacher(shape, self.run)
            c = self.run.concept
            if self.name == "cocomix-naive":  # its own hook-free teacher and SAE; the library's are never built
                naive = NaiveTargets(hf.to(device, teacher_dtype(c.teacher_dtype)), c.teacher_layer, sae.to(device),
                                     c.k_attr)
                self.naive_targets = naive
                self.method.loss = naive_loss(self.method, naive)
                dense_compression(self.model.seam)
                shape_ = _lm_shape(hf)
                self.flops = naive_flops(self.run, run_flops(self.run, shape_, sae.k), shape_, sae.k)
            else:
                self.method.teacher = Teacher(hf.to(device, teacher_dtype(c.teacher_dtype)), c.teacher_layer)
                if self.run.train.activation_checkpointing and self.run.method == "cocomix":
                    self.method.teacher.checkpoint_blocks()  # as CoCoMix.prepare does
                if self.run.method == "cocomix":
                    self.method.sae = sae.to(device)
            del hf
        self.optimizer = build_optimizer(self.model, self.run.train, device)
        self.flops = self.flops or flops_per_token(self.run, self.method)[0]
        self.cached: dict[int, torch.Tensor] = {}
        self.online_targets = self.method.targets if self.run.method == "cocomix" else None

    def prefill(self, batches: list[torch.Tensor]) -> None:
        """cocomix-cached: the targets of every batch, computed before any timing; then the teacher and SAE
        are dropped, as a run with cached targets never loads them."""
        for key, ids in enumerate(batches):
            self.cached[key] = self.online_targets(Batch(ids, None))
        self.method.teacher = self.method.sae = self.online_targets = None

    def __call__(self, ids: torch.Tensor, key: int) -> float:
        batch = Batch(ids, None)
        if self.name == "cocomix-cached":
            target = self.cached[key]
            self.method.targets = lambda b: target
        with autocast_for(self.run.train.precision, ids.device):  # what training does (train.precision)
            loss, self.metrics = self.method.loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def _vm(field: str) -> float:
    """A /proc/self/status field in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_of(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Peak memory of one method's steps, in this (fresh) process."""
    device = torch.device(args.device)

    def first_step(seq_len: int, batch: int) -> tuple[Step, torch.Tensor]:
        """The method built at this shape and one step taken (its optimizer state exists from here on)."""
        runs = runs_for(args.shape, seq_len, batch, args.teacher_dtype, args.chunked_lm_loss,
                        args.activation_checkpointing, args.precision)
        ids = torch.randint(0, runs["ntp"].model.vocab_size, (batch, seq_len),
                            generator=torch.Generator().manual_seed(0)).to(device)
        step = Step(name, runs, args.shape, device, with_teacher=False)  # cached: as a run from a cache
        if step.name == "cocomix-cached":  # a step's memory does not depend on the label values: random targets
            c = step.run.concept
            targets = torch.randint(0, c.n_latents, (batch, seq_len, c.k_attr),
                                    generator=torch.Generator().manual_seed(1)).to(device)
            targets[:, -1] = -1
            step.cached[0] = targets
        step(ids, 0)
        return step, ids

    # the runtime's own start-up (thread pools, kernel libraries, lazily imported modules: ~100 MiB on CPU) is not
    # the method's memory: one tiny step of the same method first, freed, then the baseline
    warm, _ = first_step(8, 1)
    del warm
    gc.collect()
    base = _vm("VmRSS")
    step, ids = first_step(args.seq_len, args.batch)
    if device.type == "cuda":  # (the --device given, not the current one: cuda:1 is not cuda:0)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        step(ids, 0)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mib": peak / 2**20, "step_transient_mib": (peak - resident) / 2**20}
    resident = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step(ids, 0)
    peak = _vm("VmHWM")
    return {"peak_mib": peak - base, "step_transient_mib": peak - resident}


def memory_subprocess(cmd: list[str], what: str) -> dict[str, Any]:
    """The JSON object a fresh measuring process prints last. Freed memory goes back to the OS at once
    (MALLOC_MMAP_THRESHOLD_), so the resident size follows live allocations (as torch.cuda.max_memory_allocated
    does on GPUs) rather than what glibc's heap happens to keep."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"memory subprocess for {what} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.threads < 0:
        sys.exit(f"--threads: expected a thread count >= 1 (0: torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(memory_of(args.memory_of, args)))
        return
    names = [m for m in args.methods.split(",") if m]
    if not names:
        sys.exit(f"--methods: expected comma-separated names from {ALL}")
    for why in filter(None, map(check_name, names)):
        sys.exit(f"--methods: {why}")
    if len(set(names)) < len(names):  # (a repeat would be stepped twice a round, and its pairing fail at the end)
        sys.exit(f"--methods: each method once, got {args.methods}")
    if args.warmup < 0 or args.rounds < (0 if args.memory_only else 1):
        sys.exit(f"--rounds / --warmup: expected rounds >= 1 and warmup >= 0, got {args.rounds} and {args.warmup}")
    device = torch.device(args.device)
    runs = runs_for(args.shape, args.seq_len, args.batch, args.teacher_dtype, args.chunked_lm_loss,
                    args.activation_checkpointing, args.precision)
    if args.memory_only:
        args.rounds = args.warmup = 0
        names_timed: list[str] = []
    else:
        names_timed = names
    steps = {n: Step(n, runs, args.shape, device) for n in names_timed}
    vocab = runs["ntp"].model.vocab_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (args.batch, args.seq_len), generator=gen).to(device)
               for _ in range(args.warmup + args.rounds)]
    for step in steps.values():
        if step.name == "cocomix-cached":
            step.prefill(batches)
    check = {}
    pair = next(((n, "cocomix-naive" + n[len("cocomix"):]) for n in names_timed if split_name(n)[0] == "cocomix"
                 and "cocomix-naive" + n[len("cocomix"):] in steps), None)  # the same options on both sides
    if pair is not None:
        autocast = isinstance(autocast_for(steps[pair[0]].run.train.precision, device), torch.autocast)
        check = {"pair": list(pair), **same_function(steps[pair[0]], steps[pair[1]], batches[0],
                                                     args.chunked_lm_loss, autocast)}
    for i in range(args.warmup):
        for n in names_timed:
            steps[n](batches[i], i)
    times: dict[str, list[float]] = {n: [] for n in names_timed}
    for r in range(args.rounds):
        order = names_timed[r % len(names_timed):] + names_timed[:r % len(names_timed)]
        for n in order:
            b = args.warmup + r
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[n](batches[b], b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[n].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq_len
    result: dict[str, Any] = {"shape": args.shape, "seq_len": args.seq_len, "batch": args.batch,
                              "rounds": args.rounds, "threads": torch.get_num_threads(), "device": str(device),
                              "torch": torch.__version__, "teacher_dtype": args.teacher_dtype,
                              "precision": args.precision,
                              "chunked_lm_loss": args.chunked_lm_loss,
                              "activation_checkpointing": args.activation_checkpointing, "methods": {},
                              "naive_check": check}
    for n in names:
        if n not in steps:  # --memory-only
            result["methods"][n] = {}
            continue
        med = statistics.median(times[n])
        f = steps[n].flops
        cached = steps[n].name == "cocomix-cached"
        per_token = f["student"] + (0.0 if cached else f.get("teacher", 0.0) + f.get("sae", 0.0))
        result["methods"][n] = {"step_s": med, "tokens_per_s": tokens / med, "flops_per_token": per_token,
                                "achieved_flops_per_s": per_token * tokens / med,
                                "params_m": steps[n].model.num_params() / 1e6}
    del steps
    if not args.no_memory:
        for n in names:
            cmd = [sys.executable, __file__, "--memory-of", n, "--shape", args.shape, "--seq-len",
                   str(args.seq_len), "--batch", str(args.batch), "--device", args.device]
            cmd += ["--teacher-dtype", args.teacher_dtype, "--precision", args.precision]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--chunked-lm-loss"] * args.chunked_lm_loss
            cmd += ["--activation-checkpointing"] * args.activation_checkpointing
            result["methods"][n].update(memory_subprocess(cmd, n))
    m = result["methods"]
    variants = {n: split_name(n)[0] for n in names if "+" in n and split_name(n)[0] in m}
    result["ratios"] = ratios(m, times, variants)
    print(json.dumps(result, indent=1))
    if args.summary:
        print_summary(m, result["ratios"])

if __name__ == "__main__":
    main()
