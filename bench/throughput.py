"""NTP training throughput of cocomix's Transformer versus a plain nanoGPT-style reference, side by side.

For each shape (a preset, optionally overridden from the command line) the script builds

- ours: `cocomix.model.Transformer(ModelConfig(flavour=..., bias=True, dropout=0, tie_embeddings=True))`, and
- the reference: `bench/nanogpt_reference.GPT` with the same shapes (gpt2 flavour only),

checks that both have the same number of parameters, copies our weights into the reference and records the
largest difference of the two models' logits (expected 0), then gives each an AdamW optimizer with the same
hyperparameters. One training step is: forward, shifted next-token cross-entropy
(`cocomix.methods.next_token_loss`, the same function for both), backward, `clip_grad_norm_(1.0)`,
`optimizer.step()`, `zero_grad(set_to_none=True)`; both models see the same random token batches. Everything runs
on the CPU.

After `--warmup` untimed steps each, timing alternates between the two models in ABBA order (ours, ref, ref,
ours, ...) for `--repeats` rounds of `--steps` steps, so that machine load drifting during the run affects
both alike. The median per-step time of each model gives its tokens/s; `ratio` = ours / reference tokens/s.
One JSON object is printed on stdout (progress goes to stderr); `--min-ratio` makes the exit status 1 when
a gpt2 ratio falls below it.

    PYTHONPATH=src python bench/throughput.py                     # default: preset `small`, ~1 minute
    PYTHONPATH=src python bench/throughput.py --preset all --min-ratio 0.95
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nanogpt_reference import GPT, GPTConfig  # noqa: E402

from cocomix.config import ModelConfig  # noqa: E402
from cocomix.methods.base import next_token_loss  # noqa: E402
from cocomix.model import Transformer  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """One benchmarked configuration."""

    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    seq_len: int
    batch: int


PRESETS: dict[str, Shape] = {
    # Default: a small GPT-2-like model; matmuls dominate, ~0.3-0.6 s per step on 2 cores.
    "small": Shape(vocab_size=4096, d_model=256, n_layer=4, n_head=4, seq_len=256, batch=8),
    # GPT-2 tokenizer vocabulary: the LM head, cross-entropy and tied-embedding gradient dominate.
    "gpt2vocab": Shape(vocab_size=50257, d_model=384, n_layer=6, n_head=6, seq_len=256, batch=4),
    # Many thin layers on few tokens: per-module Python and dispatch overhead is a large share of a step.
    "tiny": Shape(vocab_size=512, d_model=128, n_layer=8, n_head=4, seq_len=128, batch=8),
}

# AdamW settings of cocomix's TrainConfig defaults (one parameter group, decay on everything).
ADAMW = {"lr": 6e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
GRAD_CLIP = 1.0
CONTENDED = 1.3
"""A round slower than this multiple of its model's fastest round is taken to have shared the CPU."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=[*PRESETS, "all"],
                   help="shape preset (default: small); `all` runs every preset in turn")
    p.add_argument("--vocab", type=int, help="override the preset's vocabulary size")
    p.add_argument("--d-model", type=int, help="override the residual width")
    p.add_argument("--n-layer", type=int, help="override the number of blocks")
    p.add_argument("--n-head", type=int, help="override the number of attention heads")
    p.add_argument("--seq-len", type=int, help="override tokens per window T (also the context length)")
    p.add_argument("--batch", type=int, help="override windows per step B")
    p.add_argument("--flavour", default="gpt2", choices=["gpt2", "llama"],
                   help="our model's flavour; only gpt2 is compared with the reference (default: gpt2)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round (default: 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model before timing (default: 3)")
    p.add_argument("--repeats", type=int, default=28,
                   help="timed rounds per model, in ABBA order (default: 28)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (warm-up compiles)")
    p.add_argument("--seed", type=int, default=0, help="seed for init and batches (default: 0)")
    p.add_argument("--min-ratio", type=float,
                   help="exit with status 1 if ours/reference tokens/s is below this for any gpt2 shape")
    args = p.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be non-negative")
    return args


def shapes_from_args(args: argparse.Namespace) -> list[tuple[str, Shape]]:
    """The presets to run, with any command-line overrides applied to each."""
    names = list(PRESETS) if args.preset == "all" else [args.preset]
    overrides = {field: getattr(args, arg) for field, arg in (
        ("vocab_size", "vocab"), ("d_model", "d_model"), ("n_layer", "n_layer"), ("n_head", "n_head"),
        ("seq_len", "seq_len"), ("batch", "batch")) if getattr(args, arg) is not None}
    return [(name, replace(PRESETS[name], **overrides)) for name in names]


def build_ours(shape: Shape, flavour: str, seed: int) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(flavour=flavour, vocab_size=shape.vocab_size, n_layer=shape.n_layer,
                      n_head=shape.n_head, d_model=shape.d_model, context_length=shape.seq_len, dropout=0.0,
                      bias=True if flavour == "gpt2" else None, tie_embeddings=True)
    return Transformer(cfg)


def build_reference(shape: Shape, seed: int) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=shape.vocab_size, context_length=shape.seq_len, n_layer=shape.n_layer,
                    n_head=shape.n_head, d_model=shape.d_model, dropout=0.0, bias=True)
    return GPT(cfg)


def reference_name(our_name: str) -> str:
    """Our parameter name -> the reference's, e.g. blocks.0.attn.qkv.weight -> h.0.attn.c_attn.weight."""
    name = our_name.replace("blocks.", "h.", 1) if our_name.startswith("blocks.") else our_name
    for ours, ref in ((".attn.qkv.", ".attn.c_attn."), (".attn.proj.", ".attn.c_proj."),
                      (".mlp.fc.", ".mlp.c_fc."), (".mlp.proj.", ".mlp.c_proj.")):
        name = name.replace(ours, ref)
    return name


@torch.no_grad()
def copy_and_compare(ours: Transformer, ref: GPT, ids: torch.Tensor) -> float:
    """Load our weights into the reference (same names up to renaming, same shapes); max |logit diff|."""
    ref_params = dict(ref.state_dict())
    ours_params = ours.state_dict()
    mapped = {reference_name(k): v for k, v in ours_params.items()}
    if set(mapped) != set(ref_params):
        raise AssertionError(f"parameter names differ: ours-only {sorted(set(mapped) - set(ref_params))}, "
                             f"reference-only {sorted(set(ref_params) - set(mapped))}")
    for k, v in mapped.items():
        if v.shape != ref_params[k].shape:
            raise AssertionError(f"{k}: ours {tuple(v.shape)} vs reference {tuple(ref_params[k].shape)}")
    ref.load_state_dict(mapped)
    assert ref.lm_head.weight is ref.wte.weight, "loading must keep the reference's tied embedding"
    return (ours(ids).logits - ref(ids)).abs().max().item()


class Trainer:
    """A model, its AdamW optimizer and one NTP training step."""

    def __init__(self, name: str, model: nn.Module,
                 logits_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name = name
        self.model = model
        self.logits_of = logits_of
        self.optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)
        self.last_loss = float("nan")

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        loss = next_token_loss(self.logits_of(ids), ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def run(self, batches: list[torch.Tensor], steps: int, offset: int) -> float:
        """Run `steps` training steps on the batches (cycling from `offset`); seconds per step."""
        gc.collect()
        t0 = time.perf_counter()
        loss = None
        for i in range(steps):
            loss = self.step(batches[(offset + i) % len(batches)])
        elapsed = time.perf_counter() - t0
        if loss is not None:
            self.last_loss = loss.item()
        return elapsed / steps


def make_trainers(shape: Shape, args: argparse.Namespace,
                  probe: torch.Tensor) -> tuple[list[Trainer], dict[str, object]]:
    """Ours (and, for gpt2, the reference) ready to train; facts checked on the way."""
    ours = build_ours(shape, args.flavour, args.seed)
    facts: dict[str, object] = {"params_ours": ours.num_params()}
    models: list[tuple[str, nn.Module, bool]] = [("ours", ours, True)]
    if args.flavour == "gpt2":
        ref = build_reference(shape, args.seed + 1)
        assert ours.num_params() == ref.num_params(), (
            f"parameter counts differ: ours {ours.num_params()} vs reference {ref.num_params()}")
        facts["params_reference"] = ref.num_params()
        facts["max_abs_logit_diff"] = copy_and_compare(ours, ref, probe)
        models.append(("reference", ref, False))
    trainers = []
    for name, model, is_ours in models:
        model.train()
        fwd: nn.Module = torch.compile(model) if args.compile else model  # type: ignore[assignment]
        if is_ours:
            trainers.append(Trainer(name, model, lambda ids, f=fwd: f(ids).logits))
        else:
            trainers.append(Trainer(name, model, fwd))
    return trainers, facts


def bench_shape(name: str, shape: Shape, args: argparse.Namespace) -> dict[str, object]:
    gen = torch.Generator().manual_seed(args.seed)
    n_batches = max(args.steps, 2)
    batches = [torch.randint(0, shape.vocab_size, (shape.batch, shape.seq_len), generator=gen)
               for _ in range(n_batches)]
    trainers, facts = make_trainers(shape, args, batches[0])
    tokens_per_step = shape.batch * shape.seq_len

    log(f"[{name}] {asdict(shape)} flavour={args.flavour}: warm-up {args.warmup} steps each")
    for t in trainers:
        for i in range(args.warmup):
            t.step(batches[i % n_batches])

    times: dict[str, list[float]] = {t.name: [] for t in trainers}
    for r in range(args.repeats):
        order = trainers if r % 2 == 0 else trainers[::-1]  # ABBA: ours, ref | ref, ours | ...
        for t in order:
            times[t.name].append(t.run(batches, args.steps, offset=r * args.steps))
        log(f"[{name}] round {r + 1}/{args.repeats}: "
            + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms/step" for k, v in times.items()))

    result: dict[str, object] = {"preset": name, "shape": asdict(shape), "flavour": args.flavour,
                                 "tokens_per_step": tokens_per_step, **facts}
    for t in trainers:
        med = statistics.median(times[t.name])
        result[t.name] = {"tokens_per_s": round(tokens_per_step / med, 1),
                          "median_step_ms": round(med * 1e3, 2),
                          "min_step_ms": round(min(times[t.name]) * 1e3, 2),
                          "repeat_step_ms": [round(x * 1e3, 2) for x in times[t.name]],
                          "final_loss": round(t.last_loss, 5)}
    if "reference" in times:
        result.update(compare(times["ours"], times["reference"]))
    else:
        result["ratio"] = None
    return result


def compare(ours_t: list[float], ref_t: list[float]) -> dict[str, object]:
    """Ratios ours/reference tokens/s (= reference time / our time) from per-round step times.

    Round r of ours and round r of the reference ran back to back, so their quotient cancels slow changes in
    machine load. `quiet_pairs` counts the pairs in which neither round took over CONTENDED x its model's
    fastest round (a slower round shared the CPU with other work).
    """
    pairs = [r / o for o, r in zip(ours_t, ref_t, strict=True)]
    fast_o, fast_r = min(ours_t), min(ref_t)
    quiet = sum(o <= CONTENDED * fast_o and r <= CONTENDED * fast_r
                for o, r in zip(ours_t, ref_t, strict=True))
    return {
        "ratio": round(statistics.median(ref_t) / statistics.median(ours_t), 4),
        "ratio_paired_median": round(statistics.median(pairs), 4),
        "ratio_best": round(fast_r / fast_o, 4),
        "quiet_pairs": quiet,
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.min_ratio is not None and args.flavour != "gpt2":
        log(f"--min-ratio: only the gpt2 flavour is compared with the reference (a ratio), not {args.flavour}")
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_start = os.getloadavg()
    results = [bench_shape(name, shape, args) for name, shape in shapes_from_args(args)]
    ratios = [r["ratio"] for r in results if isinstance(r["ratio"], float)]
    report = {
        "benchmark": "ntp_train_throughput_cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "compile": args.compile,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "seed": args.seed,
        "optimizer": {"name": "AdamW", **ADAMW, "grad_clip": GRAD_CLIP},
        "results": results,
        "min_ratio_measured": min(ratios) if ratios else None,
        "min_ratio_required": args.min_ratio,
        "wall_s": round(time.perf_counter() - start, 1),
        "loadavg_1m_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(report, indent=2))
    contended = [r["preset"] for r in results if isinstance(r.get("quiet_pairs"), int)
                 and r["quiet_pairs"] < args.repeats / 2]
    if contended:
        log(f"WARNING: most rounds of {', '.join(contended)} ran over {CONTENDED}x the fastest round: other "
            "work shared the CPU and the ratios are noisier than usual; rerun on a quieter machine")
    if args.min_ratio is not None and any(r < args.min_ratio for r in ratios):
        log(f"FAIL: ours/reference tokens/s {min(ratios):.3f} < {args.min_ratio}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
