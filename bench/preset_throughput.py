"""Throughput and model FLOPs utilisation (MFU) of whole presets, trained by the real `cocomix train` command:
the GPU check of issue 7 (acceptance 5: the 69M CoCoMix and NTP presets for a few hundred steps in bf16).

Everything is built offline in `--work`, so the script runs on a machine without internet: a synthetic corpus
(seeded pseudo-words) prepared into a token store (byte-level BPE, 4096 tokens: the ids do not change a step's
cost), and, for presets with a teacher, a randomly initialised teacher of the preset's shape (GPT-2 small for
`d_teacher` 768, the paper's; a small GPT-2 otherwise) with a random TopK SAE of the preset's latents and k,
saved in SAELens format. Each preset then trains for `--steps` optimizer steps with its own model, context,
micro-batch, precision (bf16 autocast on CUDA) and method, evaluation and intermediate checkpoints off;
`--grad-accum` defaults to 1 (the preset's accumulation only repeats the same micro-steps).

Reported per preset (JSON on stdout and in WORK/throughput.json): tokens/s (median over the logged intervals
after the first, which holds start-up and compilation), analytic model FLOPs per token (`cocomix.flops`: the
student's 6N + attention, plus the frozen teacher's and SAE's forward and backward-to-hidden when online),
achieved TFLOP/s, MFU = achieved / `--peak-tflops` (by default the bf16 dense peak of a known GPU: H100/H200
989.4, A100 312; unknown devices and CPUs get none), and the peak GPU memory the run logged.

    python bench/preset_throughput.py --device cuda --steps 300 --work /tmp/pt            # the 69M pair
    python bench/preset_throughput.py --presets tiny,tiny-cocomix --device cpu --steps 6 --log-every 2 --words 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L40": 181.0, "L4": 121.0}
# (dense bf16, SXM parts; a PCIe card or another GPU: give --peak-tflops)


def synthetic_corpus(folder: Path, words: int, seed: int = 0) -> None:
    """Text files of seeded pseudo-words (syllable strings with a Zipf-like frequency), ~words words in all."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    weights = [1.0 / (i + 1) for i in range(len(lexicon))]
    folder.mkdir(parents=True, exist_ok=True)
    per_doc = max(50, min(2000, words // 100))  # at least ~100 documents, so the validation split is never empty
    for d in range(max(2, words // per_doc)):
        text = " ".join(rng.choices(lexicon, weights, k=per_doc))
        (folder / f"doc{d:04d}.txt").write_text(text + "\n")


def build_teacher_and_sae(run: Any, out: Path) -> tuple[Path, Path]:
    """A random teacher of the preset's concept shape (HF GPT-2 folder) and a random SAE (SAELens folder)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from cocomix.sae import TopKSAE
    from cocomix.sae.saelens import save_saelens

    c = run.concept
    torch.manual_seed(0)
    if c.d_teacher == 768 and c.teacher_layer < 12:
        cfg = GPT2Config(vocab_size=max(50257, run.model.vocab_size))  # GPT-2 small, the paper's teacher
    else:
        cfg = GPT2Config(vocab_size=run.model.vocab_size, n_embd=c.d_teacher, n_layer=c.teacher_layer + 2,
                         n_head=max(1, c.d_teacher // 32), n_positions=max(1024, run.model.context_length))
    GPT2LMHeadModel(cfg).save_pretrained(out / "teacher")
    sae = TopKSAE(c.d_teacher, c.n_latents, c.sae_k or 32)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.05)
    save_saelens(sae, out / "sae")
    return out / "teacher", out / "sae"


def peak_tflops(device: str, given: float | None) -> float | None:
    if given is not None:
        return given
    if not device.startswith("cuda"):
        return None
    import torch

    words = re.split(r"[\s-]+", torch.cuda.get_device_name(torch.device(device)))  # "NVIDIA A100-SXM4-80GB"
    if {"PCIe", "NVL"} & set(words):  # lower clocks / power than the SXM figures below: give --peak-tflops
        return None
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in words), None)


def summarise(run_dir: Path, peak: float | None) -> dict[str, Any]:
    """tokens/s, FLOPs/token, achieved TFLOP/s, MFU and GPU memory from a finished run's metrics.jsonl."""
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    flops = next(e for e in events if e["kind"] == "flops")
    train = [e for e in events if e["kind"] == "train"]
    if len(train) < 2:
        sys.exit(f"{run_dir}: {len(train)} logged interval(s); the first holds start-up and is left out, so at least "
                 "two are needed (more --steps or a smaller --log-every)")
    timed = train[1:]  # the first interval holds start-up (and torch.compile)
    rate = statistics.median(e["tok_per_s"] for e in timed)
    per_token = flops["flops_per_token_total"]
    achieved = rate * per_token / 1e12
    return {"steps": train[-1]["step"], "log_intervals_timed": len(timed), "tokens_per_s": rate,
            "model_flops_per_token": per_token, "student_flops_per_token": flops["flops_per_token_student"],
            "achieved_tflops": achieved, "mfu": achieved / peak if peak else None,
            # the student alone (CoCoMix's teacher and SAE compute in fp32/TF32, not at the bf16 peak)
            "student_mfu": rate * flops["flops_per_token_student"] / 1e12 / peak if peak else None,
            "gpu_peak_gib": max((e.get("gpu_peak_gib", 0.0) for e in train), default=None) or None,
            "final_train_loss": train[-1]["loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="gpt2-69m-ntp,gpt2-69m-cocomix")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", default="runs/preset-throughput", help="folder for the data, teacher, SAE and runs")
    p.add_argument("--words", type=int, default=2_000_000, help="size of the synthetic corpus")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: known GPUs' bf16)")
    p.add_argument("--set", action="append", default=[], help="extra key=value for every run (e.g. train.compile=true)")
    args = p.parse_args()
    if args.steps < 2 * args.log_every:  # the first interval (start-up, compilation) is left out: two at least
        p.error(f"--steps {args.steps}: give at least 2 × --log-every ({2 * args.log_every}); the first logged "
                "interval holds start-up and torch.compile and is left out of the rates")
    sys.path.insert(0, str(ROOT / "src"))
    from cocomix.atomic import atomic_write_text
    from cocomix.data import prepare
    from cocomix.errors import ConfigError
    from cocomix.methods import DISTILLING
    from cocomix.presets import get_preset

    names = args.presets.split(",")
    if len(set(names)) < len(names):
        p.error(f"--presets {args.presets}: each preset once")
    try:  # every name checked before any data is made or any preset trains
        runs = {name: get_preset(name) for name in names}
    except ConfigError as e:
        p.error(str(e))
    work = Path(args.work)
    store, stamp = work / "data", work / "data.json"  # the corpus size the store was made with
    if not (store / "meta.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamp, json.dumps({"words": args.words}))  # first: a store is never left without it
        synthetic_corpus(work / "corpus", args.words)
        prepare(f"text:{work / 'corpus'}", store, tokenizer="bpe:4096", val_fraction=0.05, progress=False)
    elif not stamp.is_file():  # a --work from before the stamp: its runs' own records say what it was made with
        print(f"[preset_throughput] {stamp}: missing; taking the store as made with --words {args.words}",
              file=sys.stderr)
        atomic_write_text(stamp, json.dumps({"words": args.words}))
    made = json.loads(stamp.read_text())["words"]
    if made != args.words:
        sys.exit(f"{store}: a token store of {made} words, not --words {args.words}; give another --work")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    peak = peak_tflops(args.device, args.peak_tflops)
    import torch

    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    # what the runs are trained with, kept with the figures (a --set train.compile=true run is not the default one)
    settings = {"steps": args.steps, "grad_accum": args.grad_accum, "log_every": args.log_every, "words": args.words,
                "set": args.set}
    results: dict[str, Any] = {"device": args.device, "device_name": name, "torch": torch.__version__,
                               "peak_tflops": peak, **settings, "presets": {}}
    for name, run in runs.items():
        sets = [f"data.path={store}", f"train.steps={args.steps}", f"train.device={args.device}",
                f"train.grad_accum={args.grad_accum}", "train.eval_every=0", "train.eval_batches=1",
                "train.save_every=0", f"train.log_every={args.log_every}",
                f"train.warmup_steps={min(run.train.warmup_steps, max(1, args.steps // 10))}"]
        if run.method == "cocomix" or run.method in DISTILLING:
            teacher, sae = build_teacher_and_sae(run, work / f"parts-{name}")
            sets += [f"concept.teacher={teacher}", f"concept.sae={sae}"]
        out = work / name
        cmd = [sys.executable, "-m", "cocomix", "train", "--preset", name, "--out", str(out)]
        cmd += [x for kv in sets + args.set for x in ("--set", kv)]
        made_with = out / "preset_throughput.json"  # the settings a run in --work was started with
        if (out / "config.json").exists():
            before = json.loads(made_with.read_text()) if made_with.is_file() else None
            if before is not None and before != {**settings, "device": args.device}:
                sys.exit(f"{out}: trained with {before}, not {settings | {'device': args.device}}; give another "
                         "--work (its figures would otherwise be re-read as this call's)")
            cmd.append("--resume")  # a rerun finishes (or just re-reads) the same run
        else:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(made_with, json.dumps({**settings, "device": args.device}))
        print(f"[preset_throughput] {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, env=env, stdout=sys.stderr)  # stdout: this script's JSON alone
        if r.returncode != 0:
            sys.exit(f"{name}: cocomix train exited with {r.returncode}")
        results["presets"][name] = summarise(out, peak)
    atomic_write_text(work / "throughput.json", json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
