"""`make demo`: the whole CoCoMix pipeline on the embedded Shakespeare corpus, on CPU, from nothing.

Stages (each is skipped when its output is complete, so a re-run reuses finished work and an interrupted one
resumes):

    data        prepare the corpus: byte-level BPE (4096) and train/val token files
    teacher     train the teacher: the tiny NTP model                                  -> OUT/teacher
    sae         train its TopK SAE at teacher_layer 1 (train-sae, 16 × 128 = 2048 latents, k 32) -> OUT/teacher-sae/sae
    targets     extract concept targets for every window (extract-concepts)           -> OUT/targets
    ntp         NTP student, parameter-matched to CoCoMix's active parameters          -> OUT/ntp
    cocomix     CoCoMix student (d 128, concept layer 1, cached targets), same tokens  -> OUT/cocomix
    report      compare (table, loss-vs-tokens / FLOPs plots, token efficiency), concept descriptions, the
                student's predicted concepts on a validation passage, one steered generation and the steering
                metric (OUT/steering/) -> OUT/report.md

Both students see the same windows in the same order (same seed and batch). The numbers are what this run
measured; nothing is tuned on the validation split.

No paper equation.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cocomix import json_text
from cocomix.atomic import atomic_write_text, check_out_folder
from cocomix.config import RunConfig
from cocomix.data import TokenStore, prepare
from cocomix.demo_checks import cache_names, check_made_from, check_stamp, store_ready
from cocomix.errors import CocomixError, Stopped
from cocomix.outputs import DEMO, STORE
from cocomix.presets import get_preset

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher

TEACHER_LAYER = 1
SAE_EXPANSION = 16
TOKENIZER = "bpe:4096"
STEPS = {"teacher": 800, "sae": 500, "student": 800}
# the report's steering metric (`steer-eval` settings; issue 6 asks for >= 20 prompts): prompts are capped by the
# validation windows there are
STEER_EVAL = {"n_prompts": 24, "prompt_len": 16, "max_new_tokens": 32, "n_concepts": 5}


def _say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def _student_runs(data: Path, out: Path, steps: int, n_latents: int) -> dict[str, RunConfig]:
    """The CoCoMix student and its parameter-matched NTP baseline, on the same data, seed and batches."""
    from cocomix.flops import ntp_width_for

    coco = get_preset("tiny-cocomix")
    every = max(1, steps // 4)  # four evaluations (every 200 of the demo's 800 steps): a curve for token efficiency
    train = dataclasses.replace(coco.train, steps=steps, eval_every=every, save_every=every)
    concept = dataclasses.replace(coco.concept, teacher=str(out / "teacher"), teacher_layer=TEACHER_LAYER,
                                  sae=str(out / "teacher-sae" / "sae"), cache=str(out / "targets"),
                                  n_latents=n_latents)
    coco = dataclasses.replace(coco, data=dataclasses.replace(coco.data, path=str(data)), train=train,
                               concept=concept)
    width = ntp_width_for(coco)
    ntp = dataclasses.replace(coco, method="ntp", model=dataclasses.replace(coco.model, d_model=width))
    return {"ntp": ntp, "cocomix": coco}


def concept_stages(data: Path, out: Path, steps: dict[str, int], source: str, timings: dict[str, float | None],
                   selections: tuple[str, ...] = ("attribution",)) -> int:
    """The stages every comparison needs: data, teacher, SAE and one target cache per selection rule
    (OUT/targets for attribution, OUT/targets-activation for activation); returns the SAE width."""
    from cocomix.concepts.cache import extract_concepts
    from cocomix.sae import load_sae
    from cocomix.sae.train_config import SAETrainConfig
    from cocomix.sae.training import train_sae
    from cocomix.teacher import Teacher

    # (the store's path is not stamped: `store_ready` checks what it holds, and a moved checkout stays usable)
    ready = store_ready(data, source, TOKENIZER)  # another store at --data is refused before anything is written
    check_stamp(out, {"source": source, "teacher_steps": steps["teacher"], "sae_steps": steps["sae"]})
    stage("data", ready, lambda: prepare(source, data, tokenizer=TOKENIZER), timings)
    teacher_run = get_preset("tiny")
    teacher_run = dataclasses.replace(teacher_run, data=dataclasses.replace(teacher_run.data, path=str(data)),
                                      train=dataclasses.replace(teacher_run.train, steps=steps["teacher"],
                                                                eval_every=steps["teacher"]))
    stage("teacher", _finished(out / "teacher", teacher_run), lambda: train_stage(teacher_run, out / "teacher"),
          timings)
    check_made_from(out, cache_names(selections))  # (a teacher trained again elsewhere: other weights)
    sae_cfg = SAETrainConfig(teacher=str(out / "teacher"), teacher_layer=TEACHER_LAYER, data=str(data),
                             seq_len=teacher_run.data.seq_len, expansion=SAE_EXPANSION, steps=steps["sae"],
                             warmup_steps=min(100, steps["sae"] // 5),
                             checkpoint_every=100, log_every=50, device="cpu")
    stage("sae", (out / "teacher-sae" / "summary.json").is_file(),
          lambda: train_sae(sae_cfg, out / "teacher-sae", Teacher.from_pretrained(out / "teacher", TEACHER_LAYER)),
          timings)
    sae_path = out / "teacher-sae" / "sae"
    check_made_from(out, cache_names(selections), sae_path)
    for selection, name in zip(selections, cache_names(selections), strict=True):
        cache = out / name

        def extract(cache: Path = cache, selection: str = selection) -> None:
            teacher = Teacher.from_pretrained(out / "teacher", TEACHER_LAYER)
            extract_concepts(data, cache, teacher, load_sae(str(sae_path)), teacher_spec=str(out / "teacher"),
                             sae_spec=str(sae_path), seq_len=teacher_run.data.seq_len, batch_size=16,
                             selection=selection)

        stage(cache.name, _cache_complete(cache), extract, timings)
    return load_sae(str(sae_path)).n_latents


def train_stage(run: RunConfig, run_dir: Path) -> None:
    """Train (or resume) one run of the pipeline; a run stopped by SIGTERM / SIGINT stops the pipeline too (the
    next stages would build on an unfinished model), with the CLI's exit code 128 + signal."""
    from cocomix.train import train

    result = train(run, run_dir, resume=True, stop_hint="run the same command again to resume")
    if result.stopped:
        raise Stopped(result.signum, f"{run_dir}: stopped by {result.stopped} with a checkpoint; run the same "
                      "command again to resume")
    if result.late_signal:  # the run finished meanwhile; the signal still stops the pipeline before its next stage
        raise Stopped(int(signal.Signals[result.late_signal]), f"{run_dir}: finished, but {result.late_signal} "
                      "arrived during its last step: stopping before the next stage; run the same command again "
                      "to go on")


def make_out(out: Path, data: Path | None = None) -> None:
    """Create OUT after checking, before anything is written, that OUT holds no other command's output (a run, a
    store, ...) and that `data` (--data) is a token store or a new or empty folder."""
    check_out_folder(out, own=(DEMO,))
    if data is not None:
        if data.resolve() == out.resolve():
            raise CocomixError(f"--data {data}: the same folder as --out; the token store needs a folder of its own")
        if data.resolve().is_relative_to(out.resolve()):  # (in a stage's folder it would be refused as output)
            raise CocomixError(f"--data {data}: inside --out {out}, whose folders are the demo's stages; give the "
                               "token store a folder outside it")
        check_out_folder(data, "--data", own=(STORE,))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CocomixError(f"--out {out}: cannot create the output folder ({e.strerror or e})") from None


def stage(name: str, done: bool, fn: Any, timings: dict[str, float | None]) -> None:
    """Run `fn` unless `done`, reporting progress and recording the stage's wall-clock (None: reused, not run)."""
    if done:
        _say(f"[{name}] already done, reusing it")
        timings[name] = None
        return
    _say(f"[{name}] starting")
    t0 = time.perf_counter()
    fn()
    timings[name] = time.perf_counter() - t0
    _say(f"[{name}] {timings[name]:.0f} s")


def _earlier_timings(path: Path) -> dict[str, float]:
    """Stage times an earlier run of the pipeline measured (its result JSON), to report for reused stages."""
    try:
        old = json_text.loads(path.read_text(encoding="utf-8")).get("stage_seconds", {})
        return {k: float(v) for k, v in old.items() if isinstance(v, (int, float))}
    except (OSError, ValueError, AttributeError):
        return {}


def fill_reused(timings: dict[str, float | None], earlier: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """(stage seconds with a reused stage's time taken from the run that made it, where known; the reused
    stages)."""
    reused = [k for k, v in timings.items() if v is None]
    return {k: earlier[k] if v is None else v for k, v in timings.items() if v is not None or k in earlier}, reused


def run_demo(data_dir: str | Path = "data/shakespeare", out_dir: str | Path = "runs/demo",
             steps: dict[str, int] | None = None, source: str = "shakespeare") -> dict[str, Any]:
    """Run (or resume) every stage; returns the summary written to OUT/demo_result.json.

    `source` is any `cocomix prepare` source (the tests use a small text corpus); `steps` overrides STEPS.
    """
    data, out = Path(data_dir).expanduser(), Path(out_dir).expanduser()  # (`--data=~/store` reaches us as is)
    steps = {**STEPS, **(steps or {})}
    timings: dict[str, float | None] = {}
    make_out(out, data)
    earlier = _earlier_timings(out / "demo_result.json")
    n_latents = concept_stages(data, out, steps, source, timings)
    runs = _student_runs(data, out, steps["student"], n_latents)
    for name in ("ntp", "cocomix"):
        stage(name, _finished(out / name, runs[name]), lambda name=name: train_stage(runs[name], out / name), timings)
    seconds, reused = fill_reused(timings, earlier)
    t0 = time.perf_counter()
    summary = write_report(data, out, runs, seconds, reused, steps, source)
    seconds["report"] = time.perf_counter() - t0
    summary["stage_seconds"], summary["reused_stages"] = seconds, reused
    atomic_write_text(out / "demo_result.json", json.dumps(summary, indent=2))
    print(summary["table"])
    print("stage times: " + ", ".join(f"{k} {v:.0f} s" + (" (reused)" if k in reused else "")
                                      for k, v in seconds.items()))
    print(f"report: {out / 'report.md'}")
    return summary


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell / inline code span: newlines shown as ⏎, no pipes or backticks."""
    return text.strip().replace("\n", " ⏎ ").replace("|", "¦").replace("`", "'")


def _finished(run_dir: Path, run: RunConfig) -> bool:
    """Whether run_dir holds `run` trained to the end. A finished run there that cannot be resumed as `run` (other
    settings, as a longer one or an edited preset, or no checkpoint that verifies) is an error naming the reason:
    reusing it would report numbers of a run the report does not describe."""
    from cocomix.errors import CheckpointError
    from cocomix.train.checkpoint import latest_checkpoint, read_state
    from cocomix.train.resume import prepare_run_dir

    try:
        ckpt = latest_checkpoint(run_dir)
        done = ckpt is not None and read_state(ckpt)["step"] >= run.train.steps
    except Exception:  # noqa: BLE001 - a damaged run is resumed (and reported) by train itself
        return False
    if done:
        try:  # (the checkpoint checked against its manifest: a damaged final one is set aside for the one before)
            ckpt = prepare_run_dir(run, run_dir, resume=True)
        except CheckpointError as e:
            raise CocomixError(f"{run_dir}: holds a finished run this demo cannot reuse ({e}); use another --out, or "
                               "remove it to train it again") from None
        done = ckpt is not None and read_state(ckpt)["step"] >= run.train.steps  # else the stage resumes it
    return done


def _cache_complete(path: Path) -> bool:
    try:
        meta = json_text.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and bool(meta.get("complete"))  # (anything else: extracted again)


def write_report(data: Path, out: Path, runs: dict[str, RunConfig], timings: dict[str, float], reused: list[str],
                 steps: dict[str, int], source: str = "shakespeare") -> dict[str, Any]:
    """report.md: comparison table and plots, concept descriptions, inspected concepts, a steered generation."""
    from cocomix.concepts.describe import describe_concepts
    from cocomix.concepts.describe import write_report as write_concepts
    from cocomix.eval.compare import compare
    from cocomix.eval.perplexity import evaluate_loss
    from cocomix.flops import active_params
    from cocomix.runs import load_run
    from cocomix.sae import load_sae
    from cocomix.teacher import Teacher
    from cocomix.train.checkpoint import read_run_config

    store = TokenStore.open(data)
    cmp = compare([out / "ntp", out / "cocomix"], out, reference="ntp")
    seq_len = runs["cocomix"].data.seq_len
    finals = {}
    for name in ("ntp", "cocomix"):
        _, method, model, _ = load_run(out / name)
        finals[name] = evaluate_loss(method, model, store, "val", seq_len, 16)
    teacher = Teacher.from_pretrained(out / "teacher", TEACHER_LAYER)
    sae = load_sae(str(out / "teacher-sae" / "sae"))
    stats = describe_concepts(store, teacher, sae, seq_len, split="val", max_windows=400, progress=False)
    write_concepts(stats, store, out / "concepts", "val", seq_len)
    inspected, steer, steering = _inspect_and_steer(out, store, seq_len, teacher, sae)
    sae_summary = json_text.loads((out / "teacher-sae" / "summary.json").read_text())
    tm = read_run_config(out / "teacher").model
    coco, corpus = runs["cocomix"], "Shakespeare" if source == "shakespeare" else f"`{_cell(source)}`"
    lines = [
        f"# cocomix demo: CoCoMix vs NTP on {corpus} (CPU)", "",
        f"Teacher: an NTP model ({tm.n_layer} blocks × {tm.d_model}) trained {steps['teacher']} steps (`teacher/`). "
        f"SAE at teacher block {TEACHER_LAYER}: {sae.n_latents} latents, k {sae.k}; held-out FVU "
        f"{sae_summary['fvu']:.4f}, L0 {sae_summary['l0']:.1f}, dead {100 * sae_summary['dead_fraction']:.2f}%.", "",
        f"Students (same windows, same order, {coco.train.steps} steps × "
        f"{coco.train.micro_batch_size * coco.train.grad_accum * coco.data.seq_len} tokens): CoCoMix "
        f"d={coco.model.d_model} "
        f"({active_params(runs['cocomix']) / 1e6:.2f}M active parameters), NTP d={runs['ntp'].model.d_model} "
        f"({active_params(runs['ntp']) / 1e6:.2f}M, parameter-matched).", "",
        "## Result", "", cmp["table"],
        f"Full validation split ({store.num_chunks('val', seq_len):,} windows of {seq_len}, "
        f"{finals['ntp']['tokens']:,} predicted tokens): NTP {finals['ntp']['loss']:.4f}, CoCoMix "
        f"{finals['cocomix']['loss']:.4f} nats/token (NTP − CoCoMix "
        f"{finals['ntp']['loss'] - finals['cocomix']['loss']:+.4f}).",
        "", "![validation loss vs tokens](loss_vs_tokens.png)", "", "![validation loss vs FLOPs](loss_vs_flops.png)",
        "", "## Predicted concepts on a validation passage", "",
        "Top-3 concepts the CoCoMix student predicts at a few positions, with each concept's strongest teacher "
        "context (from `concepts/concepts.md`).", "", *inspected, "", "## Steering", "", *steer, "",
        "## Stage times", "", *(f"- {k}: {v:.0f} s" + (" (measured when it ran; reused by this run)" if k in reused
                                                        else "") for k, v in timings.items()),
        *(f"- {k}: reused from an earlier run (not timed)" for k in reused if k not in timings), "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"table": cmp["table"], "val_loss": {k: v["loss"] for k, v in finals.items()},
            "sae": {k: sae_summary[k] for k in ("fvu", "l0", "dead_fraction")}, "steering": steering}


@torch.no_grad()
def _inspect_and_steer(out: Path, store: TokenStore, seq_len: int, teacher: Teacher, sae: TopKSAE,
                       ) -> tuple[list[str], list[str], dict[str, Any]]:
    """Report sections: the student's predicted concepts on a validation passage, one steered generation and the
    steering metric (`cocomix.interpret`; what `cocomix inspect`, `steer` and `steer-eval` print)."""
    from cocomix.interpret.inspect import inspect_ids
    from cocomix.interpret.labels import ConceptBook
    from cocomix.interpret.steer import steer_student
    from cocomix.interpret.steer_eval import SteerEvalConfig, steering_eval, write_steering_report
    from cocomix.runs import load_run
    from cocomix.shown_text import whitespace_only

    _, _, model, _ = load_run(out / "cocomix")
    book = ConceptBook.load(out / "concepts")
    tok = store.tokenizer()
    ids = store.batch("val", [3], seq_len)[0, :48].tolist()
    found = inspect_ids(model, ids, tok.decode, top=3)

    def name(c: int) -> str:
        return f"#{c} {_cell(book[c].short())} `{_cell(book[c].context or '(never fired on the val sample)')}`"

    rows = ["| text so far (last 30 characters) | top predicted concepts (label, strongest teacher context) |",
            "|---|---|"]
    for t in range(8, len(ids), 5):
        rows.append(f"| `{_cell(tok.decode(ids[:t + 1])[-30:])}` | "
                    + "; ".join(name(c) for c, _, _ in found[t].concepts) + " |")
    windows = store.num_chunks("val", seq_len)
    cfg = SteerEvalConfig(**{**STEER_EVAL, "n_prompts": min(STEER_EVAL["n_prompts"], windows)}, teacher_check=True)
    metric = steering_eval(model, teacher, sae, store, book, cfg, seq_len, progress=False)
    write_steering_report(metric, out / "steering")
    concept = metric["concepts"][0]  # the student's most frequent well-described top-1 concept
    prompt = torch.tensor([tok.encode("KING HENRY:\n")])
    outs = {a: steer_student(model, prompt, [concept], [a], 40) for a in (1.0, 10.0)}
    raw = {a: tok.decode(o.tokens[0, prompt.shape[1]:].tolist()) for a, o in outs.items()}
    # (a continuation of whitespace only, e.g. 40 newlines from a steered newline concept, shown by its marks)
    text = {a: whitespace_only(t) or t.strip()[:300] for a, t in raw.items()}
    steer = [f"Concept {name(concept)}; greedy continuation of `KING HENRY:` and a newline (`cocomix steer --prompt "
             "$'KING HENRY:\\n'`) with its predicted logit × α at every "
             f"position (mixed at {outs[1.0].mixed[0]:.0%} of the generating positions unsteered, "
             f"{outs[10.0].mixed[0]:.0%} steered):", "", "α = 1 (unsteered):", "", "```", text[1.0], "```", "",
             "α = 10:", "", "```", text[10.0], "```", "", "### Steering metric (`cocomix steer-eval`)", "",
             *(out / "steering" / "steering.md").read_text().split("\n")[2:]]
    return rows, [line.replace("](steering.png)", "](steering/steering.png)") for line in steer], metric["summary"]
