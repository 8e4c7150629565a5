"""How steerable is a teacher through its own SAE latents? The reference the student's steering is judged against.

For the latents active at a given share of validation positions (`--min-freq` … `--max-freq`, most frequent
first), the teacher continues the same validation prompts with latent c × α in its residual stream at `--layer`
for α in {0, 1, α, −α} (`cocomix.interpret.steer.steer_teacher`, the same random stream for every α), and the
continuation is read back unsteered by the teacher + SAE (`steer_eval.read_continuations`): the share of generated
positions where c is active, and the teacher NLL per token. Prints one JSON line per latent and a summary line.

Used for the README's steering section: whether an SAE at another teacher block would make the demo's concepts
steerable enough to reach the 3× bar (it does not: see the README).

    PYTHONPATH=src python examples/teacher_steerability.py --teacher runs/demo/teacher --layer 1 \
        --sae runs/demo/teacher-sae/sae --data data/shakespeare
"""

from __future__ import annotations

import argparse
import json

import torch

from cocomix.data import TokenStore
from cocomix.interpret.steer import steer_teacher
from cocomix.interpret.steer_eval import prompts_from, read_continuations
from cocomix.sae import load_sae
from cocomix.teacher import Teacher


def latent_frequencies(teacher: Teacher, sae: torch.nn.Module, store: TokenStore, windows: int,
                       seq_len: int) -> torch.Tensor:
    """Share of positions (C,) where each latent is active, over the first `windows` validation windows."""
    counts = torch.zeros(sae.n_latents)
    with torch.no_grad():
        for start in range(0, windows, 16):
            ids = store.batch("val", list(range(start, min(windows, start + 16))), seq_len)  # (b, T)
            values, indices, _ = sae.encode(teacher.hidden(ids))  # (b, T, k)
            counts += torch.bincount(indices[values > 0].flatten(), minlength=sae.n_latents).float()
    return counts / (windows * seq_len)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="HF causal LM folder or cocomix run")
    p.add_argument("--layer", type=int, required=True, help="teacher block the SAE reads")
    p.add_argument("--sae", required=True)
    p.add_argument("--data", required=True, help="prepared token store (its val split)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--windows", type=int, default=64, help="val windows for the latent frequencies")
    p.add_argument("--min-freq", type=float, default=0.01)
    p.add_argument("--max-freq", type=float, default=0.15)
    p.add_argument("--latents", type=int, default=12)
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--alpha", type=float, default=10.0)
    args = p.parse_args()

    store = TokenStore.open(args.data)
    teacher = Teacher.from_pretrained(args.teacher, args.layer)
    sae = load_sae(args.sae, teacher_layer=args.layer)
    freq = latent_frequencies(teacher, sae, store, args.windows, args.seq_len)
    chosen = [int(c) for c in torch.argsort(freq, descending=True)
              if args.min_freq <= freq[c] <= args.max_freq][:args.latents]
    prompts = prompts_from(store, "val", args.prompts, args.prompt_len, args.seq_len)
    rows = []
    for c in chosen:
        row: dict[str, float] = {"latent": c, "frequency": float(freq[c])}
        for alpha in (0.0, 1.0, args.alpha, -args.alpha):  # 0 removes the latent, 1 leaves it (the bar
            # compares α = 10 with α = 0)
            gen = torch.Generator().manual_seed(0)
            out = steer_teacher(teacher, sae, prompts, [c], [alpha], args.new_tokens, 1.0, 50, generator=gen)
            rate, nll = read_continuations(teacher, sae, out, args.prompt_len, [c])
            row[f"rate@{alpha:g}"], row[f"nll@{alpha:g}"] = float(rate[0]), nll
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not rows:
        raise SystemExit(f"no latent is active at {args.min_freq}–{args.max_freq} of the positions")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k.startswith("rate@")}
    print(json.dumps({"layer": args.layer, "latents": len(rows), "mean_rate": mean,
                      "ratio_alpha_over_alpha0": mean[f"rate@{args.alpha:g}"] / max(mean["rate@0"], 1e-12)}))


if __name__ == "__main__":
    main()
