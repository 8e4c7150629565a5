"""Batched generation of prompts of different lengths (`generate_ragged`, what the lm-eval adapter's
`generate_until` runs) against one prompt at a time (`generate`, what it ran before), side by side in one run.

A preset's student (random weights: the ids do not change the cost) continues `--prompts` prompts whose lengths
are spread over [`--min-len`, `--max-len`], `--new` greedy tokens each. The one-at-a-time side calls `generate`
per prompt; the batched side sorts the prompts longest first and calls `generate_ragged` on `--batch-size` at a
time, as the adapter does. Each side runs `--repeats` times, alternating; the medians are compared. The script
also counts the prompts whose greedy continuations agree between the two sides (fp32: all of them, barring a
near-tie that the different rounding flips).

    PYTHONPATH=src python bench/generate_batched.py                               # gpt2-69m-cocomix on CPU
    PYTHONPATH=src python bench/generate_batched.py --preset tiny-cocomix --prompts 8 --new 8 --repeats 1
    PYTHONPATH=src python bench/generate_batched.py --device cuda --batch-size 32 --prompts 128

Prints JSON: seconds per side, new tokens/s, the speed-up (one-at-a-time seconds / batched seconds) and the
agreement count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from cocomix.errors import ConfigError
from cocomix.methods import METHODS
from cocomix.model import generate, generate_ragged
from cocomix.presets import get_preset


def one_at_a_time(model: torch.nn.Module, prompts: list[list[int]], new: int) -> list[list[int]]:
    out = []
    for p in prompts:
        tokens, _ = generate(model, torch.tensor([p], device=model.lm_head.weight.device), new, temperature=0.0)
        out.append(tokens[0, len(p):].tolist())
    return out


def batched(model: torch.nn.Module, prompts: list[list[int]], new: int, batch_size: int) -> list[list[int]]:
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        for i, answer in zip(rows, generate_ragged(model, [prompts[i] for i in rows], new, temperature=0.0),
                             strict=True):
            out[i] = answer
    return out


def timed(fn: Any, device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt2-69m-cocomix")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for flag in ("prompts", "min_len", "new", "batch_size", "repeats"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')}: expected an integer >= 1, got {getattr(args, flag)}")
    if args.max_len < args.min_len:
        ap.error(f"--max-len {args.max_len}: expected at least --min-len {args.min_len}")
    try:
        run = get_preset(args.preset)
    except ConfigError as e:
        ap.error(str(e))

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = METHODS[run.method](run).build_model().to(device).eval()
    if args.max_len + args.new > model.cfg.context_length:
        raise SystemExit(f"--max-len + --new exceed the preset's context_length {model.cfg.context_length}")
    gen = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.prompts,), generator=gen).tolist()
    prompts = [torch.randint(0, model.cfg.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    batched(model, prompts[:2], 2, 2)  # warm-up (allocator, kernels)
    one_at_a_time(model, prompts[:2], 2)
    times: dict[str, list[float]] = {"one_at_a_time": [], "batched": []}
    answers: dict[str, Any] = {}
    for r in range(args.repeats):
        sides = ("one_at_a_time", "batched") if r % 2 == 0 else ("batched", "one_at_a_time")
        for side in sides:
            fn = (lambda: one_at_a_time(model, prompts, args.new)) if side == "one_at_a_time" else (
                lambda: batched(model, prompts, args.new, args.batch_size))
            seconds, answers[side] = timed(fn, device)
            times[side].append(seconds)
    med = {side: statistics.median(t) for side, t in times.items()}
    n_new = args.prompts * args.new
    print(json.dumps({
        "preset": args.preset, "method": run.method, "device": str(device), "threads": torch.get_num_threads(),
        "prompts": args.prompts, "prompt_lengths": [min(lengths), max(lengths)], "new_tokens": args.new,
        "batch_size": args.batch_size, "repeats": args.repeats,
        "seconds": {side: round(s, 3) for side, s in med.items()},
        "new_tokens_per_s": {side: round(n_new / s, 1) for side, s in med.items()},
        "speedup": round(med["one_at_a_time"] / med["batched"], 2),
        "greedy_agree": sum(a == b for a, b in zip(answers["one_at_a_time"], answers["batched"], strict=True)),
    }, indent=1))


if __name__ == "__main__":
    main()
