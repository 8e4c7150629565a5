"""Peak memory of a CoCoMix evaluation forward (no gradients) with the concept TopK over row chunks — what
`cocomix eval`, generation and lm-eval run — against the same forward holding the whole (B, T, C) concept logits
(`Transformer(ids, concept_logits=True)`, what every forward did before, and what `inspect` still asks for).

Each variant runs in a fresh subprocess (MALLOC_MMAP_THRESHOLD_=131072, as `step_cost.py`): the model is built,
one tiny forward warms the runtime, then the rise of the process's peak resident set (VmHWM) during one forward
of (batch, seq_len) over the resident size before it is that forward's transient memory. Both variants' losses
are printed and must agree (the chunks are the same rows of the same matmul). One JSON object goes to stdout.

    PYTHONPATH=src python bench/eval_memory.py                           # 69M shapes, T 512, batch 4
    PYTHONPATH=src python bench/eval_memory.py --seq-len 1024 --batch 8  # the paper's context
    PYTHONPATH=src python bench/eval_memory.py --chunked-lm-loss         # the LM head's logits in chunks too

Without `--chunked-lm-loss` (the 69M preset's setting) the (B, T, V) LM logits and the cross-entropy's copies of
them are most of what remains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_cost import _vm, memory_subprocess, runs_for  # noqa: E402

VARIANTS = ("chunked", "whole")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=("69m", "tiny"), default="69m")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--chunked-lm-loss", action="store_true",
                   help="train.chunked_lm_loss: the next-token loss through the LM head in row chunks too")
    p.add_argument("--variant-of", choices=VARIANTS, default=None, help=argparse.SUPPRESS)  # internal
    return p.parse_args()


def variant_of(name: str, args: argparse.Namespace) -> dict[str, float]:
    """One eval forward's transient memory (MiB) and loss, in this (fresh) process."""
    from cocomix.methods import METHODS, next_token_loss

    run = runs_for(args.shape, args.seq_len, args.batch, chunked_lm_loss=args.chunked_lm_loss)["cocomix"]
    torch.manual_seed(0)
    method = METHODS[run.method](run)
    model = method.build_model().eval()

    def forward(ids: torch.Tensor) -> float:
        with torch.no_grad():
            if name == "chunked":
                return float(method.eval_loss(model, ids))
            if run.train.chunked_lm_loss:
                return float(model(ids, lm_loss=True, concept_logits=True).loss)  # (B, T, C) logits in aux
            out = model(ids, concept_logits=True)  # (B, T, C) concept logits in out.aux
            return float(next_token_loss(out.logits, ids))

    vocab = run.model.vocab_size
    forward(torch.randint(0, vocab, (1, 8)))
    ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    resident = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    loss = forward(ids)
    return {"transient_mib": _vm("VmHWM") - resident, "loss": loss}


def main() -> None:
    args = parse_args()
    if args.variant_of:  # the measuring process (the only one that computes)
        torch.set_num_threads(args.threads or torch.get_num_threads())
        print(json.dumps(variant_of(args.variant_of, args)))
        return
    results = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant-of", name, "--shape", args.shape, "--seq-len",
               str(args.seq_len), "--batch", str(args.batch), "--threads", str(args.threads)]
        cmd += ["--chunked-lm-loss"] if args.chunked_lm_loss else []
        results[name] = memory_subprocess(cmd, name)
        print(f"{name}: {results[name]}", file=sys.stderr)
    run = runs_for(args.shape, args.seq_len, args.batch, chunked_lm_loss=args.chunked_lm_loss)["cocomix"]
    logits_mib = args.batch * args.seq_len * run.concept.n_latents * 4 / 2**20
    a, b = results["chunked"], results["whole"]
    print(json.dumps({"shape": args.shape, "seq_len": args.seq_len, "batch": args.batch,
                      "n_latents": run.concept.n_latents, "concept_logits_mib": logits_mib,
                      "chunked_lm_loss": run.train.chunked_lm_loss, "results": results,
                      "transient_ratio_chunked_over_whole": a["transient_mib"] / b["transient_mib"],
                      "loss_rel_diff": abs(a["loss"] - b["loss"]) / abs(b["loss"])}, indent=1))


if __name__ == "__main__":
    main()
