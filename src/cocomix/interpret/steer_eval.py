"""The steering metric (beyond the paper, whose steering evidence is qualitative): does multiplying a concept's
predicted logit by α make the student write text where the teacher sees that concept, and at what cost?

For each steered concept c and each α, the student continues the same prompts with the same random stream
(`steer.steer_student`); the continuation is then read by the frozen teacher + SAE:

    activation rate(c, α) = share of generated positions where SAE latent c is active (in the TopK, > 0)
    fluency cost(α)       = teacher NLL per generated token (nats; the teacher judges the student's text)

With `teacher_check`, the teacher itself also continues the prompts with its SAE latent c × α
(`steer.steer_teacher`, the paper's cross-check) and its text is read the same way: the activation rate the
concept reaches when the model that defines it is steered — the reference the student's rate is judged against.
A latent that fires on a token (most latents of a small teacher's early layer) describes the context *so far*:
steering it changes what comes next, not whether the latent fires on the next tokens, in the teacher as in
the student (the README's steering results measure this).

Concepts are chosen automatically when not given: the student's most frequent top-1 predictions on the split,
keeping those whose describe-concepts label is consistent (`labels.ConceptLabel.consistency` ≥ 0.5).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cocomix.atomic import atomic_write_text, atomic_writer
from cocomix.data import TokenStore
from cocomix.errors import CocomixError
from cocomix.interpret.inspect import eval_mode, mixing_seam
from cocomix.interpret.labels import ConceptBook
from cocomix.interpret.steer import active_rate, as_list, check_steering, steer_student, steer_teacher
from cocomix.model import Transformer
from cocomix.model.generate import check_sampling
from cocomix.progress import ProgressLine
from cocomix.sae.fit import check_sae_fit
from cocomix.seeding import torch_seed

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher

FIT_POSITIONS = 256  # teacher positions the SAE-fit check reads at least (the demo's 48-token texts: 6 windows)


@dataclass(frozen=True)
class SteerEvalConfig:
    alphas: tuple[float, ...] = (-10.0, -5.0, 0.0, 1.0, 5.0, 10.0)
    n_prompts: int = 24
    prompt_len: int = 16
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = 50
    n_concepts: int = 5
    split: str = "val"
    seed: int = 0
    teacher_check: bool = False

    def check(self, context_length: int) -> None:
        for flag, value in (("--prompts", self.n_prompts), ("--prompt-len", self.prompt_len),
                            ("--max-new-tokens", self.max_new_tokens), ("--n-concepts", self.n_concepts)):
            if value < 1:
                raise CocomixError(f"{flag}: expected an integer >= 1, got {value}")
        check_sampling(self.max_new_tokens, self.temperature, self.top_k, None)
        if self.prompt_len + self.max_new_tokens > context_length:
            raise CocomixError(f"steer-eval: --prompt-len + --max-new-tokens must be at most the context length "
                               f"{context_length}, got {self.prompt_len + self.max_new_tokens}")
        if 1.0 not in self.alphas or 0.0 not in self.alphas:
            raise CocomixError("--alphas: include 1 (unsteered) and 0 (the baseline the ratio is against)")


def prompts_from(store: TokenStore, split: str, n: int, length: int, seq_len: int) -> torch.Tensor:
    """(n, length): the first `length` tokens of n windows spread evenly over the split."""
    windows = store.num_chunks(split, seq_len)
    if windows < n:
        raise CocomixError(f"{store.path}: split {split!r} has {windows} windows of {seq_len}, need {n} prompts")
    picks = torch.linspace(0, windows - 1, n).round().long().tolist()
    return store.batch(split, picks, seq_len)[:, :length]


@torch.no_grad()
def choose_concepts(model: Transformer, store: TokenStore, book: ConceptBook, n: int, split: str, seq_len: int,
                    windows: int = 32, min_consistency: float = 0.5) -> list[int]:
    """The n concepts the student most often predicts top-1 on `windows` windows, among well-described ones
    (label consistency ≥ min_consistency); when fewer qualify, the most frequent others that fired in the teacher
    fill the list (their consistency is shown in every report)."""
    device = next(model.parameters()).device
    counts = torch.zeros(len(book), dtype=torch.long)
    if store.num_chunks(split, seq_len) == 0:  # (said here: "no concept fired" would blame the report)
        raise CocomixError(f"{store.path}: its {split} split holds no window of the run's seq_len {seq_len} tokens "
                           "to choose concepts on; give a store with one (--data)")
    for w in range(min(windows, store.num_chunks(split, seq_len))):  # one window at a time: (T, C) logits at most
        ids = store.batch(split, [w], seq_len).to(device)                                    # (1, T)
        with eval_mode(model):
            top1 = model(ids, concept_logits=True).aux["concept_logits"].argmax(dim=-1).flatten()  # (T,)
        counts += torch.bincount(top1.cpu(), minlength=len(book))
    ranked = [int(c) for c in torch.argsort(counts, descending=True, stable=True) if counts[c] > 0]
    fired = [c for c in ranked if book[c].frequency > 0]
    chosen = [c for c in fired if book[c].consistency >= min_consistency][:n]
    chosen += [c for c in fired if c not in chosen][:n - len(chosen)]
    if not chosen:
        raise CocomixError("steer-eval: none of the student's predicted concepts ever fired in the describe-concepts "
                           "report; pass --concept explicitly")
    return chosen


@torch.no_grad()
def read_continuations(teacher: Teacher, sae: TopKSAE, tokens: torch.Tensor, start: int, concepts: Sequence[int],
                       ) -> tuple[torch.Tensor, float]:
    """(activation rate (n,) of each latent over positions ≥ start, teacher NLL per token of tokens[:, start:])."""
    logits, hidden = teacher.forward_pass(tokens)                                          # (B,S,V), (B,S,d)
    logits = logits.float()
    values, indices, _ = sae.encode(hidden.to(sae.W_dec.dtype))                            # (B, S, k)
    nll = torch.nn.functional.cross_entropy(logits[:, start - 1:-1].reshape(-1, logits.shape[-1]),
                                            tokens[:, start:].reshape(-1))
    return active_rate(values[:, start:], indices[:, start:], concepts), float(nll)


def check_teacher_and_sae(n_latents: int, teacher: Teacher, sae: TopKSAE) -> None:
    """CocomixError unless the SAE has the student's `n_latents` concepts (a concept index means the same latent on
    both sides) and reads activations of the teacher's residual width."""
    if n_latents != sae.n_latents:
        raise CocomixError(f"--sae: {sae.n_latents} latents, the student predicts {n_latents}")
    if sae.d_in != teacher.width:
        raise CocomixError(f"--teacher: its residual width at teacher_layer {teacher.layer} is {teacher.width}, the "
                           f"SAE reads {sae.d_in}-wide activations (give the teacher the SAE was trained on)")


def check_fit_on_store(teacher: Teacher, sae: TopKSAE, store: TokenStore, split: str, seq_len: int,
                       window: int) -> float:
    """`check_sae_fit` (warns as `--sae` when the SAE does not describe the teacher's block) on the first windows
    of `split`, cut to `window` tokens: at least FIT_POSITIONS positions (short texts: more windows), so that the
    FVU is no small-sample figure. A split shorter than one window of seq_len (a small `--data`) is read in windows
    of `window` tokens; one shorter than that is not checked (a note says so). Returns the FVU (NaN unchecked)."""
    window = min(window, seq_len)
    per_window = max(1, window - 1)  # (position 0 of each is left out)
    stride = seq_len if store.num_chunks(split, seq_len) else window
    available = store.num_chunks(split, stride)
    if not available:
        print(f"steer: note: split {split!r} of {store.path} holds {store.num_tokens(split)} tokens, fewer than "
              f"{window}; the SAE's fit to the teacher is not checked", file=sys.stderr)
        return float("nan")
    fit_windows = min(available, -(-FIT_POSITIONS // per_window))
    ids = store.batch(split, list(range(fit_windows)), stride)[:, :window]  # (fit_windows, window)
    return check_sae_fit(teacher, sae, ids.to(teacher.device), "--sae")


def steering_eval(model: Transformer, teacher: Teacher, sae: TopKSAE, store: TokenStore, book: ConceptBook,
                  cfg: SteerEvalConfig, seq_len: int, concepts: Sequence[int] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Every (concept, α): activation rate, share of positions where the concept was mixed, teacher NLL."""

    seam = mixing_seam(model, "steering")
    cfg.check(model.cfg.context_length)
    check_teacher_and_sae(seam.n_latents, teacher, sae)
    if cfg.prompt_len > seq_len:
        raise CocomixError(f"--prompt-len: prompts are cut from windows of the run's seq_len {seq_len}; expected at "
                           f"most {seq_len}, got {cfg.prompt_len}")
    teacher.check_store(store, cfg.prompt_len + cfg.max_new_tokens, "--prompt-len + --max-new-tokens")
    concepts = as_list(concepts) if concepts is not None else []  # (a numpy array of indices too)
    if not concepts:
        concepts = choose_concepts(model, store, book, cfg.n_concepts, cfg.split, seq_len)
        if len(concepts) < cfg.n_concepts:
            print(f"steer-eval: note: {len(concepts)} of the {cfg.n_concepts} concepts asked for: the student "
                  "predicts no other concept (top-1) that fired in the describe-concepts report", file=sys.stderr)
    concepts = list(concepts)
    check_steering(seam.n_latents, concepts, [1.0] * len(concepts))
    device = next(model.parameters()).device
    prompts = prompts_from(store, cfg.split, cfg.n_prompts, cfg.prompt_len, seq_len).to(device)
    # as long as the texts the teacher reads back (checked above)
    check_fit_on_store(teacher, sae, store, cfg.split, seq_len, cfg.prompt_len + cfg.max_new_tokens)
    rows = []
    line = ProgressLine("steer-eval", len(concepts), unit="concepts", enabled=progress)
    for i, c in enumerate(concepts):
        for alpha in cfg.alphas:
            gen = torch.Generator(device=device).manual_seed(torch_seed(cfg.seed))  # same random stream for every α
            out = steer_student(model, prompts, [c], [alpha], cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                generator=gen, vocab_limit=store.vocab_size)
            rate, nll = read_continuations(teacher, sae, out.tokens, cfg.prompt_len, [c])
            row = {"concept": c, "alpha": alpha, "activation_rate": float(rate[0]), "mixed": float(out.mixed[0]),
                   "teacher_nll": nll}
            if cfg.teacher_check:
                gen = torch.Generator(device=device).manual_seed(torch_seed(cfg.seed))
                t_out = steer_teacher(teacher, sae, prompts, [c], [alpha], cfg.max_new_tokens, cfg.temperature,
                                      cfg.top_k, generator=gen, vocab_limit=store.vocab_size)
                t_rate, t_nll = read_continuations(teacher, sae, t_out, cfg.prompt_len, [c])
                row |= {"teacher_steered_rate": float(t_rate[0]), "teacher_steered_nll": t_nll}
            rows.append(row)
        line.update(i + 1)
    line.close()
    return {"config": asdict(cfg), "concepts": concepts, "rows": rows,
            "labels": {c: {"label": book[c].short(), "context": book[c].context, "frequency": book[c].frequency}
                       for c in concepts},
            "summary": summarize(rows, cfg.alphas)}


def summarize(rows: list[dict[str, Any]], alphas: Sequence[float]) -> dict[str, Any]:
    """Mean over concepts per α, and the ratios the acceptance asks for (α = max vs 0, α = min vs 0; also against
    the unsteered α = 1); with the teacher check, the same for the teacher steered through its SAE latent.

    Two averages of "how much α raises a concept": the ratio of the mean rates (`ratio_*`: concepts weighted by
    their rate, so one already active at most positions weighs most) and the geometric mean of the per-concept
    ratios (`geomean_ratio_*`: each concept one vote; concepts never active at α = 0 left out, their count in
    `concepts_without_base`)."""
    keys = [k for k in ("activation_rate", "mixed", "teacher_nll", "teacher_steered_rate", "teacher_steered_nll")
            if rows and k in rows[0]]
    mean = {a: {k: sum(r[k] for r in rows if r["alpha"] == a) / max(1, sum(r["alpha"] == a for r in rows))
                for k in keys} for a in alphas}
    hi, lo = max(alphas), min(alphas)

    def ratio(a: float, key: str = "activation_rate", over: float = 0.0) -> float | None:
        base = mean[over][key]
        return mean[a][key] / base if base > 0 else None

    def per_concept(a: float) -> dict[str, float | None]:
        rate = {(r["concept"], r["alpha"]): r["activation_rate"] for r in rows}
        return {str(c): (rate[c, a] / rate[c, 0.0] if rate[c, 0.0] > 0 else None)
                for c in dict.fromkeys(r["concept"] for r in rows)}

    def geomean(ratios: dict[str, float | None]) -> float | None:
        known = [v for v in ratios.values() if v is not None]
        if not known or min(known) <= 0:  # a concept never active at that α: no finite mean of logs
            return 0.0 if known else None
        return math.exp(sum(math.log(v) for v in known) / len(known))

    by_hi, by_lo = per_concept(hi), per_concept(lo)
    out = {"per_concept_ratio_max_alpha_over_zero": by_hi, "per_concept_ratio_min_alpha_over_zero": by_lo,
           "geomean_ratio_max_alpha_over_zero": geomean(by_hi), "geomean_ratio_min_alpha_over_zero": geomean(by_lo),
           "concepts_without_base": sum(v is None for v in by_hi.values())}
    out |= {"mean": {str(a): v for a, v in mean.items()}, "ratio_max_alpha_over_zero": ratio(hi),
           "ratio_min_alpha_over_zero": ratio(lo), "ratio_max_alpha_over_one": ratio(hi, over=1.0),
           "ratio_min_alpha_over_one": ratio(lo, over=1.0), "max_alpha": hi, "min_alpha": lo,
           "fluency_cost_max_alpha": mean[hi]["teacher_nll"] - mean[1.0]["teacher_nll"]}
    if "teacher_steered_rate" in keys:
        out |= {"teacher_ratio_max_alpha_over_zero": ratio(hi, "teacher_steered_rate"),
                "teacher_ratio_min_alpha_over_zero": ratio(lo, "teacher_steered_rate")}
    return out


def write_steering_report(result: dict[str, Any], out_dir: str | Path) -> Path:
    """steering.json, steering.md (table) and steering.png (activation rate and teacher NLL against α)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "steering.json", json.dumps(result, indent=1, default=str))
    alphas = result["config"]["alphas"]
    head = "| concept | label | " + " | ".join(f"α = {a:g}" for a in alphas) + " |"
    lines = ["# Steering: activation rate of the steered concept in the continuations (teacher + SAE)", "",
             f"{result['config']['n_prompts']} prompts × {result['config']['max_new_tokens']} generated tokens, "
             f"temperature {result['config']['temperature']}, top-k {result['config']['top_k']}; the same random "
             "stream for every α. Cell: activation rate (share of positions the concept was mixed); with the teacher "
             "check, a row with the rate in the teacher's own steered text (and the teacher's NLL of it).", "",
             head, "|---|---|" + "---|" * len(alphas)]
    for c in result["concepts"]:
        cells = [next(r for r in result["rows"] if r["concept"] == c and r["alpha"] == a) for a in alphas]
        label = result["labels"][c]["label"].replace("|", "¦")
        lines.append(f"| #{c} | {label} | " + " | ".join(f"{r['activation_rate']:.3f} ({r['mixed']:.2f})"
                                                           for r in cells) + " |")
        if "teacher_steered_rate" in cells[0]:
            lines.append(f"| #{c}, teacher steered | | " + " | ".join(
                f"{r['teacher_steered_rate']:.3f} (NLL {r['teacher_steered_nll']:.2f})" for r in cells) + " |")
    s = result["summary"]
    lines += ["| mean | | " + " | ".join(f"{s['mean'][str(a)]['activation_rate']:.3f}" for a in alphas) + " |",
              "| teacher NLL / token | | " + " | ".join(f"{s['mean'][str(a)]['teacher_nll']:.3f}" for a in alphas)
              + " |"]
    teacher = "teacher_ratio_max_alpha_over_zero" in s
    if teacher:
        lines.append("| mean, teacher steered (reference) | | " + " | ".join(
            f"{s['mean'][str(a)]['teacher_steered_rate']:.3f}" for a in alphas) + " |")
    lines.append("")
    fmt = (lambda v, base=0: f"n/a (rate 0 at α = {base})" if v is None else f"{v:.2f}×")  # noqa: E731
    negative = s["min_alpha"] < 0  # without a negative α there is no "lowered" comparison to state
    geo = s.get("geomean_ratio_max_alpha_over_zero")
    lines += [f"- α = {s['max_alpha']:g} vs α = 0: mean activation rate {fmt(s['ratio_max_alpha_over_zero'])}"
              + (f"; α = {s['min_alpha']:g} vs α = 0: {fmt(s['ratio_min_alpha_over_zero'])}." if negative else ".")
              + f" Against the unsteered α = 1: {fmt(s.get('ratio_max_alpha_over_one'), 1)}"
              + (f" and {fmt(s.get('ratio_min_alpha_over_one'), 1)}." if negative else "."),
              *([f"- Per concept (each one vote): α = {s['max_alpha']:g} vs α = 0 "
                 + ", ".join(f"#{c} {fmt(v)}" for c, v in s["per_concept_ratio_max_alpha_over_zero"].items())
                 + f"; geometric mean {fmt(geo)}"
                 + (f", α = {s['min_alpha']:g} vs 0 {fmt(s['geomean_ratio_min_alpha_over_zero'])}" if negative
                    else "")
                 + (f" ({s['concepts_without_base']} concept(s) never active at α = 0 left out)."
                    if s["concepts_without_base"] else ".")] if "per_concept_ratio_max_alpha_over_zero" in s
                else []),
              *(["- A negative α flips the sign of the concept's logit: a concept whose predicted logit is usually "
                 "negative then rises into the TopK and is mixed *more* (see the mixed shares), so α < 0 does not "
                 "suppress it; α = 0 sets its logit to 0, which leaves the TopK where the mix_k-th largest logit is "
                 "above 0 and, where it is below, takes a slot (with weight 0) from the concept that held it."]
                if negative else []),
              *([f"- Reference, the teacher steered through the same SAE latents (the paper's cross-check): "
                 f"α = {s['max_alpha']:g} vs 0 {fmt(s['teacher_ratio_max_alpha_over_zero'])}"
                 + (f", α = {s['min_alpha']:g} vs 0 {fmt(s['teacher_ratio_min_alpha_over_zero'])}." if negative
                    else ".")] if teacher else []),
              f"- Fluency cost of α = {s['max_alpha']:g}: teacher NLL {s['fluency_cost_max_alpha']:+.3f} nats/token "
              "over the unsteered (α = 1) continuations.", "", "![steering](steering.png)", ""]
    atomic_write_text(out / "steering.md", "\n".join(lines))
    _plot(result, out / "steering.png")
    return out


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = result["config"]["alphas"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for c in result["concepts"]:
        rates = [next(r["activation_rate"] for r in result["rows"] if r["concept"] == c and r["alpha"] == a)
                 for a in alphas]
        label = result["labels"][c]["label"].replace("$", r"\$")  # corpus text, not mathtext
        ax1.plot(alphas, rates, marker="o", alpha=0.6, label=f"#{c} {label}")
    mean = result["summary"]["mean"]
    ax1.plot(alphas, [mean[str(a)]["activation_rate"] for a in alphas], color="black", linewidth=2.5, marker="s",
             label="mean (student steered)")
    if "teacher_steered_rate" in mean[str(alphas[0])]:
        ax1.plot(alphas, [mean[str(a)]["teacher_steered_rate"] for a in alphas], color="black", linestyle="--",
                 linewidth=2, marker="^", label="mean, teacher steered (reference)")
    ax1.set_xlabel("steering multiplier α on the concept's predicted logit")
    ax1.set_ylabel("activation rate in continuation (share of tokens)")
    ax1.set_title("Steered concept active in the generated text")
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: no curve hidden
    ax2.plot(alphas, [mean[str(a)]["teacher_nll"] for a in alphas], color="tab:red", marker="o")
    ax2.set_xlabel("steering multiplier α")
    ax2.set_ylabel("teacher NLL of the continuation (nats/token)")
    ax2.set_title("Fluency cost (lower is more fluent)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_writer(path) as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
