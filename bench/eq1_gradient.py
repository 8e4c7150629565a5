"""The paper's Eq. 1 gradient (each position's own next-token loss): one own-position pass vs per-position passes.

`Teacher.residual_and_grad(ids, loss="next_token")` computes ∂NLL_t/∂h_t at `teacher_layer` for every t. It runs
one backward pass through own-position attention (`cocomix.model.own_position`) where the teacher allows it, and
otherwise one backward per position, batched `GRAD_CHUNK` at a time with `is_grads_batched`. This script times
both on the same Hugging Face GPT-2 teacher (random weights of the configured shape: nothing is downloaded) and
the window-mean gradient (the official attribution) as the floor, in alternating rounds in one run, and checks that
the two Eq. 1 gradients agree. On CPU it also times the own-position pass with the own attention weights formed by
a second, chunked pass over the scores (`_own_weight`, what CUDA uses) instead of read from the flash kernel's
log-sum-exp (`_flash_cpu`). One JSON object goes to stdout.

    PYTHONPATH=src python bench/eq1_gradient.py                      # GPT-2 small's shape, 2 x 128 tokens
    PYTHONPATH=src python bench/eq1_gradient.py --seq-len 256 --repeats 3
    PYTHONPATH=src python bench/eq1_gradient.py --batch 1 --seq-len 1024 --no-per-position   # long windows
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from cocomix.model import own_position
from cocomix.teacher import Teacher


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--layer", type=int, default=5, help="teacher_layer (block whose output the SAE reads)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-per-position", action="store_true",
                   help="skip the per-position passes (T/32 backward passes: minutes on long windows)")
    args = p.parse_args()
    if args.repeats < 1 or args.threads < 0:
        p.error(f"--repeats / --threads: expected repeats >= 1 and threads >= 0, got {args.repeats} and "
                f"{args.threads}")
    return args


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=args.vocab, n_embd=args.d_model, n_layer=args.n_layer, n_head=args.n_head,
                     n_positions=max(1024, args.seq_len), bos_token_id=0, eos_token_id=0)
    teacher = Teacher(GPT2LMHeadModel(cfg).eval(), layer=args.layer)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    one = teacher.residual_and_grad(ids, loss="next_token")  # decides the mode (the first window's check)
    if teacher.next_token_mode != "own_position":
        raise SystemExit(f"the teacher fell back to {teacher.next_token_mode}; nothing to compare")
    rel = None
    if not args.no_per_position:
        per = teacher._per_position_pass(ids)
        rel = float(f"{float((one.grad - per.grad).norm() / per.grad.norm()):.3g}")

    def chunked() -> object:  # own weights from a second pass over the scores, as on CUDA
        real, own_position._flash_cpu = own_position._flash_cpu, lambda *a: None
        try:
            return teacher.residual_and_grad(ids, loss="next_token")
        finally:
            own_position._flash_cpu = real

    runs = {"own_position": lambda: teacher.residual_and_grad(ids, loss="next_token"),
            "per_position": lambda: teacher._per_position_pass(ids),
            "window_mean": lambda: teacher.residual_and_grad(ids)}
    if args.no_per_position:
        del runs["per_position"]
    if not torch.cuda.is_available():
        runs["own_position_chunked_own_weights"] = chunked
    for name in runs:  # one untimed call each (the first call of a path pays its allocations)
        if name not in ("own_position", "per_position"):  # those two ran above, for the mode and the check
            runs[name]()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            times[name].append(timed(runs[name]))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "eq1_gradient_cpu" if not torch.cuda.is_available() else "eq1_gradient",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": {k: getattr(args, k) for k in ("vocab", "d_model", "n_layer", "n_head", "layer", "batch",
                                                "seq_len")},
        "relative_difference_of_the_gradients": rel,
        "ms": {k: round(1e3 * v, 1) for k, v in med.items()},
        "per_position_over_own_position": (round(med["per_position"] / med["own_position"], 2)
                                           if "per_position" in med else None),
        "own_position_over_window_mean": round(med["own_position"] / med["window_mean"], 2),
        "chunked_own_weights_over_own_position": (round(med["own_position_chunked_own_weights"]
                                                        / med["own_position"], 2)
                                                  if "own_position_chunked_own_weights" in med else None),
        "ms_all": {k: [round(1e3 * x, 1) for x in v] for k, v in times.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
