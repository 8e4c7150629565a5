"""Cost of one concept-target computation relative to the teacher's forward pass alone (CPU, side by side).

A target computation (`cocomix.concepts.compute_targets`) is: teacher forward with a capture leaf at
`teacher_layer`, backward from the mean next-token NLL down to that layer only (the teacher is frozen), SAE
encode, attribution over the active latents' decoder columns, and signed top-k_attr selection. The reference is
the same teacher's forward pass under `torch.no_grad()`. Both are timed in alternating ABBA rounds in one run;
the median of each gives `ratio = targets / forward`. One JSON object goes to stdout.

    PYTHONPATH=src python bench/concept_cost.py                       # GPT-2-small-like shape scaled for CPU
    PYTHONPATH=src python bench/concept_cost.py --d-model 768 --n-layer 12 --layer 5 --latents 32768 --k 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cocomix.concepts import compute_targets
from cocomix.config import ModelConfig
from cocomix.model import Transformer
from cocomix.sae import TopKSAE
from cocomix.teacher import Teacher


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--layer", type=int, default=2, help="teacher_layer (block whose output the SAE reads)")
    p.add_argument("--latents", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k-attr", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args()
    if args.repeats < 1 or args.threads < 0:
        p.error(f"--repeats / --threads: expected repeats >= 1 and threads >= 0, got {args.repeats} and "
                f"{args.threads}")
    return args


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(flavour="gpt2", vocab_size=args.vocab, n_layer=args.n_layer, n_head=args.n_head,
                      d_model=args.d_model, context_length=args.seq_len)
    model = Transformer(cfg).eval()
    teacher = Teacher(model, layer=args.layer)
    sae = TopKSAE(args.d_model, args.latents, args.k)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.05)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len))

    def forward() -> None:
        with torch.no_grad():
            model(ids)

    def targets() -> None:
        compute_targets(teacher, sae, ids, k_attr=args.k_attr)

    for _ in range(2):  # warm-up
        forward()
        targets()
    t_fwd, t_tgt = [], []
    for r in range(args.repeats):
        order = (forward, targets) if r % 2 == 0 else (targets, forward)
        for fn in order:
            (t_fwd if fn is forward else t_tgt).append(timed(fn))
    fwd, tgt = statistics.median(t_fwd), statistics.median(t_tgt)
    tokens = args.batch * args.seq_len
    print(json.dumps({
        "benchmark": "concept_target_cost_cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": {k: getattr(args, k) for k in ("vocab", "d_model", "n_layer", "layer", "latents", "k", "k_attr",
                                                "batch", "seq_len")},
        "teacher_forward_ms": round(1e3 * fwd, 2),
        "targets_ms": round(1e3 * tgt, 2),
        "ratio_targets_over_forward": round(tgt / fwd, 3),
        "targets_tokens_per_s": round(tokens / tgt, 1),
        "forward_ms_all": [round(1e3 * x, 2) for x in t_fwd],
        "targets_ms_all": [round(1e3 * x, 2) for x in t_tgt],
    }, indent=2))


if __name__ == "__main__":
    main()
