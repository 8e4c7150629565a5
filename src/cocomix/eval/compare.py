"""`cocomix compare`: runs side by side — a Markdown table, loss curves against tokens and FLOPs, token efficiency.

Each run directory contributes its config, its `kind: "eval"` events (validation loss at a step, with tokens,
training FLOPs counted with teacher and SAE, and training wall-clock) and its final numbers. Runs whose directory
names differ only by a `-seedN` / `_seedN` suffix, or a `-sN` / `_sN` suffix whose N is the run's own seed (so
`ctx-s512` stays a name), are one group: the table shows mean ± sample std over the seeds and the plots the mean
curve with a ±std band. Runs a group would mix that cannot be seeds of one run (the same seed twice, the same
directory twice, another method, or any setting that shapes the result: all but the seed and
`resume.RESULT_NEUTRAL`'s batch split, logging, device and data paths, and the `concept.*` settings the method does
not read, `Method.concept_settings`; validation batches count) are refused rather than averaged. Seeds are lined up
by training step: the group's curve and final loss are at the steps every seed evaluated, and its wall-clock is each
seed's at the final one. Seeds must also have trained on the same tokens per step (another global batch is refused).
A non-finite validation loss is left out (said under the table); a run whose last evaluation is non-finite is
flagged DIVERGED, one whose log ends before its `train.steps` unfinished, and a group whose validation differs from
the reference's (`MEASURED_ON`: the number of validation windows, context, vocabulary, the validation split its
checkpoint recorded) gets a note saying its loss is not like for like. Seeds must also have trained on one token
store (its train split and tokenizer as their checkpoints recorded them: a moved copy is the same store).

Token efficiency of A over B (the paper's 21.5%): with L_B the final validation loss of B (mean over seeds) and N_B
its tokens, N_A = the tokens at which A's mean curve first reaches L_B, linearly interpolated between the two
evaluations around the crossing; efficiency = 1 − N_A / N_B (A needs that fraction fewer tokens). If A never reaches
L_B, it is reported as not reached; if A's first evaluation is already at or below L_B, N_A is at most that
evaluation's tokens and the efficiency is shown as a lower bound (≥).

No paper equation.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocomix import json_text
from cocomix.atomic import atomic_write_text, remove_empty_folders, shown_path
from cocomix.errors import CocomixError
from cocomix.eval.compare_plot import plot
from cocomix.eval.recorded_store import recorded_store
from cocomix.outputs import what_is

SEED_SUFFIX = re.compile(r"[-_](seed|s)(\d+)$")
# settings a validation loss depends on besides the model; groups that differ in them are compared with a note
MEASURED_ON = ("validation windows", "data.seq_len", "model.vocab_size", "validation split")
RECORDED = ("token store (train split)",)  # settings read from a checkpoint's records, which older ones may lack


@dataclass
class RunCurve:
    """One run's validation curve and totals."""

    path: Path
    method: str
    seed: int
    steps: list[int]
    tokens: list[float]
    flops: list[float]
    val_loss: list[float]
    eval_train_s: list[float]
    """Training wall-clock at each evaluation (NaN where a log does not say)."""
    train_s: float
    """Training wall-clock at the run's last event."""
    params: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    """The run's flattened config without its seed and the settings that do not shape its result
    (`resume.RESULT_NEUTRAL`); seeds of one group must share it."""
    non_finite: int = 0
    """Evaluations left out for a non-finite loss."""
    diverged_at: int | None = None
    """The step of the run's last evaluation when its loss is non-finite (the curve ends before it)."""
    planned_steps: int | None = None
    """`train.steps` of its config (a run stopped earlier is unfinished)."""
    measured_on: dict[str, Any] = field(default_factory=dict)
    """What its validation loss depends on besides the model: windows, context, vocabulary, store."""


@dataclass
class Group:
    """Runs that differ only by seed."""

    label: str
    runs: list[RunCurve] = field(default_factory=list)

    def steps(self) -> list[int]:
        """The training steps at which every seed was evaluated, in order."""
        common = set(self.runs[0].steps).intersection(*(r.steps for r in self.runs[1:]))
        if not common:
            raise CocomixError(f"compare: the seeds of {self.label!r} share no evaluation step "
                               f"({', '.join(str(r.path) for r in self.runs)})")
        return sorted(common)

    def _at(self, run: RunCurve, name: str, step: int) -> float:
        return getattr(run, name)[run.steps.index(step)]

    def mean_curve(self, axis: str = "tokens") -> tuple[list[float], list[float], list[float]]:
        """(x, mean loss, std loss) at the steps every seed evaluated."""
        xs, means, stds = [], [], []
        for step in self.steps():
            xs.append(sum(self._at(r, axis, step) for r in self.runs) / len(self.runs))
            vals = [self._at(r, "val_loss", step) for r in self.runs]
            means.append(sum(vals) / len(vals))
            stds.append(_std(vals))
        return xs, means, stds

    def final(self) -> tuple[float, float]:
        """(mean, std) of the loss at the last step every seed evaluated (the end of `mean_curve`, so a seed cut
        short never mixes its last point with the others')."""
        step = self.steps()[-1]
        vals = [self._at(r, "val_loss", step) for r in self.runs]
        return sum(vals) / len(vals), _std(vals)

    def train_seconds(self) -> float:
        """Mean training wall-clock of the seeds at the final compared step (a seed's last event where its log
        does not record it at evaluations)."""
        step = self.steps()[-1]
        secs = [self._at(r, "eval_train_s", step) for r in self.runs]
        secs = [s if math.isfinite(s) else r.train_s for s, r in zip(secs, self.runs, strict=True)]
        return sum(secs) / len(secs)


def _std(values: list[float]) -> float:
    """Sample standard deviation (0 for fewer than 2 values)."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def _fmt_secs(secs: float) -> str:
    """A wall-clock for the table: whole seconds, a tenth under 10 s (a short run is not "0 s")."""
    if not math.isfinite(secs):
        return "n/a"
    return f"{secs:.1f} s" if secs < 9.95 else f"{secs:.0f} s"


def read_run(path: str | Path) -> RunCurve:
    """The evaluation curve of a run directory (config.json + metrics.jsonl)."""
    try:
        return _read_run(Path(path))
    except (KeyError, TypeError, AttributeError) as e:
        raise CocomixError(f"{Path(path) / 'config.json'}: not a cocomix run config (missing or malformed "
                           f"{e})") from None


def _read_run(path: Path) -> RunCurve:
    try:
        config = json_text.loads((path / "config.json").read_text())
        lines = (path / "metrics.jsonl").read_text().splitlines()
    except (OSError, ValueError) as e:
        what, run = what_is(path), f" ({path.parent.parent})" if path.parent.name == "checkpoints" else ""
        raise CocomixError(f"{path}: {what}, not a run; give a run directory{run}" if what else  # a checkpoint, ...
                           f"{path}: not a finished cocomix run (config.json / metrics.jsonl unreadable: "
                           f"{getattr(e, 'strerror', None) or e})") from None
    events = []
    for line in lines:
        try:
            event = json_text.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(event, dict):
            events.append(event)
    from cocomix.config_io import run_config
    from cocomix.methods import unread_concept_settings
    from cocomix.train.resume import RESULT_NEUTRAL, flatten

    for section, key in (("train", "micro_batch_size"), ("train", "grad_accum"), ("data", "seq_len")):
        value = config[section][key]  # a config without these: read_run's error names config.json
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CocomixError(f"{path / 'config.json'}: {section}.{key} is {value!r}, expected a positive integer")
    tokens_per_step = config["train"]["micro_batch_size"] * config["train"]["grad_accum"] * config["data"]["seq_len"]
    try:  # with the defaults of fields an older cocomix did not write, as a resume reads it
        full = run_config(config).to_dict()
    except CocomixError:
        full = config
    # validation on another number of batches is another measurement: only the rest of RESULT_NEUTRAL may differ
    method, seed, flat = config["method"], config["train"]["seed"], flatten(full)
    unread = set(unread_concept_settings(method, flat))
    settings = {k: v for k, v in flat.items() if k != "train.seed" and (k not in RESULT_NEUTRAL or k ==
                "train.eval_batches") and k not in unread}
    split, val_tokens, trained_on = recorded_store(path)
    if trained_on:  # seeds of one run train on one store (recorded by content, so a moved store is the same)
        settings[RECORDED[0]] = trained_on
    try:
        curve = _curve(path, events, tokens_per_step, method, seed, settings)
    except (ValueError, TypeError, KeyError) as e:
        raise CocomixError(f"{path / 'metrics.jsonl'}: a malformed event ({type(e).__name__}: "
                           f"{str(e)[:120]})") from None
    curve.planned_steps = flat.get("train.steps")
    seq_len = flat["data.seq_len"]
    available = val_tokens // seq_len if isinstance(val_tokens, int) else None  # the split's windows, if known
    global_batch = curve.tokens[-1] / curve.steps[-1] / seq_len if curve.steps[-1] else None
    eval_batches = flat.get("train.eval_batches")  # global batches (0: the whole split)
    asked = None if eval_batches == 0 or global_batch is None else round(eval_batches * global_batch)
    windows = available if asked is None else asked if available is None else min(asked, available)
    curve.measured_on = {"validation windows": "all" if eval_batches == 0 and windows is None else windows,
                         "data.seq_len": seq_len, "model.vocab_size": flat.get("model.vocab_size"),
                         "validation split": split, "whole split": eval_batches == 0}
    return curve


def _curve(path: Path, events: list[dict[str, Any]], tokens_per_step: int, method: str, seed: int,
           settings: dict[str, Any]) -> RunCurve:
    flops_event = next((e for e in events if e.get("kind") == "flops"), {})
    flops_per_token = flops_event.get("flops_per_token_total")
    cached = float(flops_event.get("flops_per_token_cached_targets", 0.0))  # targets made once, charged per token
    evals = [e for e in events if e.get("kind") == "eval"]
    bad = next((e["step"] for e in evals if isinstance(e.get("step"), bool) or not isinstance(e.get("step"), int)
                or e["step"] < 0), None)
    if bad is not None or any("step" not in e for e in evals):
        raise CocomixError(f"{path / 'metrics.jsonl'}: an eval event whose step is {str(bad)[:40]!r}, expected a "
                           "non-negative integer")
    evals.sort(key=lambda e: e["step"])
    finite = [e for e in evals if math.isfinite(float(e["val_loss"]))]
    diverged_at = evals[-1]["step"] if evals and not math.isfinite(float(evals[-1]["val_loss"])) else None
    non_finite, evals = len(evals) - len(finite), finite
    if not evals:
        last = max((e["step"] for e in events if isinstance(e.get("step"), int)), default=0)
        raise CocomixError(f"{path / 'metrics.jsonl'}: " + ("every validation loss is non-finite" if non_finite else
                           f"no validation loss yet: the log ends at step {last}, before the run's first evaluation "
                           "(resume it with `cocomix train --out RUN --resume`, or leave it out)"))
    tokens = [float(e.get("tokens", e["step"] * tokens_per_step)) for e in evals]
    flops = [float(e.get("flops", t * (flops_per_token or math.nan))) + t * cached
             for e, t in zip(evals, tokens, strict=True)]
    train_s = max((float(e.get("train_s", 0.0)) for e in events if "train_s" in e), default=math.nan)
    return RunCurve(path=path, method=method, seed=seed,
                    steps=[int(e["step"]) for e in evals], tokens=tokens, flops=flops,
                    val_loss=[float(e["val_loss"]) for e in evals],
                    eval_train_s=[float(e.get("train_s", math.nan)) for e in evals], train_s=train_s,
                    settings=settings, non_finite=non_finite, diverged_at=diverged_at)


def group_label(name: str, seed: int) -> str:
    """The directory name without its seed suffix: `-seedN` always, the short `-sN` only when N is the run's seed."""
    m = SEED_SUFFIX.search(name)
    if m is None or (m.group(1) == "s" and int(m.group(2)) != seed):
        return name
    return name[:m.start()]


def group_runs(paths: list[str | Path]) -> list[Group]:
    """Runs grouped by directory name without its seed suffix, in the order first seen."""
    groups: dict[str, Group] = {}
    for p in paths:
        run = read_run(p)
        label = group_label(shown_path(run.path.resolve().name), run.seed)
        group = groups.setdefault(label, Group(label))
        for other in group.runs:  # a group is one run's seeds: two seeds alike, or two runs unalike, are an error
            differ = sorted(k for k in other.settings.keys() | run.settings.keys()  # (a record one run's checkpoint
                            if other.settings.get(k) != run.settings.get(k)    # predates is not compared)
                            and (k not in RECORDED or (k in other.settings and k in run.settings)))
            why = ("the same run" if other.path.resolve() == run.path.resolve() else
                   f"both seed {run.seed}" if other.seed == run.seed else
                   f"methods {other.method} and {run.method}" if other.method != run.method else
                   f"{differ[0]} {other.settings.get(differ[0])!r} vs {run.settings.get(differ[0])!r}" if differ
                   else "")
            if not why:  # a global batch of another size (processes × micro-batch × accumulation, or context)
                step = next((st for st in other.steps if st in run.steps and st > 0), None)
                if step is not None:
                    a, b = other.tokens[other.steps.index(step)], run.tokens[run.steps.index(step)]
                    why = f"{a:.0f} vs {b:.0f} training tokens at step {step}: another global batch" if a != b else ""
            if why == "the same run":
                raise CocomixError(f"compare: {run.path} is given twice (as {other.path} too); give each run once")
            if why:
                raise CocomixError(f"compare: {other.path} and {run.path} would be seeds of one group {label!r} "
                                   f"({why}); give runs of different experiments different directory names")
        group.runs.append(run)
    return list(groups.values())


def tokens_to_reach(tokens: list[float], losses: list[float], target: float) -> float | None:
    """First point where the curve reaches `target`, linearly interpolated; None if it never does."""
    if losses and losses[0] <= target:
        return tokens[0]
    for i in range(1, len(losses)):
        if losses[i] <= target:
            t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


def token_efficiency(a: Group, b: Group) -> float | None:
    """1 − (tokens A needs to reach B's final loss) / (B's tokens), on mean curves; None if A never gets there.
    When A's first evaluation is already at or below B's final loss the value is a lower bound
    (`efficiency_is_bound`): A got there at some point before it."""
    target, _ = b.final()
    xs, means, _ = a.mean_curve("tokens")
    needed = tokens_to_reach(xs, means, target)
    reference_tokens = b.mean_curve("tokens")[0][-1]
    if needed is None or reference_tokens <= 0:  # (a reference evaluated before any training step: no figure)
        return None
    return 1.0 - needed / reference_tokens


def efficiency_is_bound(a: Group, b: Group) -> bool:
    """Whether A's first evaluation already reaches B's final loss, so that `token_efficiency` is a lower bound."""
    _, means, _ = a.mean_curve("tokens")
    return bool(means) and means[0] <= b.final()[0]


def _fmt_num(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def table(groups: list[Group], reference: str | None = None) -> str:
    """The Markdown comparison table (and token efficiency against `reference`, default: the first group)."""
    ref = next((g for g in groups if g.label == reference), groups[0]) if groups else None
    head = ("| run | method | seeds | final val loss (nats/token) | val ppl | tokens | training FLOPs "
            "(teacher + SAE incl.) | train wall-clock | tokens/s | token efficiency vs " + (ref.label if ref else "-")
            + " |\n|---|---|---|---|---|---|---|---|---|---|\n")
    rows, notes, any_bound = [], [], False
    for g in groups:
        mean, std = g.final()
        tokens = g.mean_curve("tokens")[0][-1]  # at the evaluation `final` reads, not each seed's own last one
        flops = g.mean_curve("flops")[0][-1]
        shared = g.steps()
        if any(r.steps != shared for r in g.runs):
            notes.append(f"{g.label}: its seeds were evaluated at different steps "
                         f"({' / '.join(str(len(r.steps)) for r in g.runs)} evaluations); compared at the "
                         f"{len(shared)} steps they share, up to step {shared[-1]}.")
        dropped = sum(r.non_finite for r in g.runs)
        diverged = [r for r in g.runs if r.diverged_at is not None]
        if diverged:
            notes.append(f"{g.label}: DIVERGED — " + "; ".join(
                f"{shown_path(r.path.name)}'s last evaluation (step {r.diverged_at}) is non-finite" for r in diverged)
                + f"; its row is read at step {shared[-1]}, the last finite evaluation its seeds share.")
        elif dropped:
            notes.append(f"{g.label}: {dropped} evaluation(s) with a non-finite validation loss left out.")
        unfinished = [r for r in g.runs if r.planned_steps and r.diverged_at is None
                      and r.steps[-1] < r.planned_steps]
        if unfinished:
            notes.append(f"{g.label}: unfinished — " + "; ".join(
                f"{shown_path(r.path.name)} last evaluated at step {r.steps[-1]} of {r.planned_steps}"
                for r in unfinished) + ".")
        if ref is not None and g is not ref:
            mine, theirs = g.runs[0].measured_on, ref.runs[0].measured_on
            whole = mine.get("whole split") and theirs.get("whole split")  # both read all their split's windows
            other = [k for k in MEASURED_ON if mine.get(k) is not None and theirs.get(k) is not None
                     and mine.get(k) != theirs.get(k)  # (not recorded: not compared)
                     and not (k == "validation windows" and whole and "all" in (mine[k], theirs[k]))]
            if other:
                notes.append(f"{g.label}: validation measured otherwise than {ref.label}'s ("
                             + ", ".join(f"{k} {mine[k]!r} vs {theirs[k]!r}" for k in other)
                             + "): its loss and token efficiency are not like for like.")
        secs = g.train_seconds()
        eff = token_efficiency(g, ref) if ref is not None and g is not ref else None
        bound = "≥ " if eff is not None and efficiency_is_bound(g, ref) else ""
        any_bound = any_bound or bool(bound)
        eff_s = "—" if g is ref else ("not reached" if eff is None else f"{bound}{100 * eff:+.1f}%")
        loss_s = f"{mean:.4f} ± {std:.4f}" if len(g.runs) > 1 else f"{mean:.4f}"
        rows.append(f"| {g.label} | {g.runs[0].method} | {len(g.runs)} | {loss_s} | {math.exp(min(mean, 50)):.2f} | "
                    f"{_fmt_num(tokens)} | {_fmt_num(flops)} | {_fmt_secs(secs)} | "
                    f"{_fmt_num(tokens / secs) if secs and math.isfinite(secs) else 'n/a'} | {eff_s} |")
    if any_bound:
        notes.append("≥: the run's first evaluation already reached the reference's final loss, so it needed at "
                     "most that many tokens (evaluate more often for the exact figure).")
    return head + "\n".join(rows) + "\n" + "".join(f"\n{n}\n" for n in notes)


def compare(paths: list[str | Path], out_dir: str | Path, reference: str | None = None,
            before_writing: Callable[[], object] | None = None) -> dict[str, Any]:
    """Write compare.md and the two PNGs into out_dir; returns {"table", "groups", "files"}. `before_writing` runs
    once the runs and `reference` are read and checked (the command line's check of out_dir and its note)."""
    if not paths:
        raise CocomixError("compare: give at least one run directory")
    groups = group_runs(paths)
    if reference is not None and reference not in {g.label for g in groups}:  # a run's path names its group
        asked = Path(reference).expanduser().resolve()  # (`--reference=~/runs/ntp`: no shell expands it there)
        reference = next((g.label for g in groups for r in g.runs if r.path.resolve() == asked), reference)
    if reference is not None and reference not in {g.label for g in groups}:
        raise CocomixError(f"--reference: {reference!r} is not one of the runs ({', '.join(g.label for g in groups)})")
    md = table(groups, reference)  # (checks that each group's seeds share evaluation steps: before any writing)
    if before_writing is not None:
        before_writing()
    out = Path(out_dir)
    made = [p for p in (out, *out.parents) if not p.exists()]  # folders created for it: removed again on failure
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty_folders(made)
        raise CocomixError(f"--out {out}: cannot create the output folder ({e.strerror or e})") from None
    try:
        files = [plot(groups, out, "tokens"), plot(groups, out, "flops")]
        body = ("# Run comparison\n\n" + md + "\nToken efficiency: how many fewer training tokens the run needs "
                "to reach the reference's final validation loss (mean curves, linear interpolation between "
                "evaluations).\n\n![validation loss vs tokens](loss_vs_tokens.png)\n\n"
                "![validation loss vs FLOPs](loss_vs_flops.png)\n")
        atomic_write_text(out / "compare.md", body)
    except BaseException:
        if made:  # a folder made here goes again, with the plots written into it (an existing one keeps them)
            for f in ("loss_vs_tokens.png", "loss_vs_flops.png"):
                (out / f).unlink(missing_ok=True)
            remove_empty_folders(made)
        raise
    return {"table": md, "groups": groups, "files": [out / "compare.md", *files]}
