"""Fault-injection loop: SIGKILL `cocomix prepare`, `train`, `train-sae` and `extract-concepts` at random moments,
rerun each until it completes, and check that nothing is ever corrupt, that `train` and `train-sae` go on from
the checkpoint the kill left, and that the final outputs are bit-identical to an uninterrupted run (issue 8,
acceptance 1). Run with `make test-faults` (~6 minutes on 2
cores); prints one JSON summary and exits 1 on any failure.

    PYTHONPATH=src python tests/faults/kill_resume.py --kills 32 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINES = [
    "the king is dead and the queen is sad", "a horse, a horse, my kingdom for a horse",
    "to be or not to be, that is the question", "all the world's a stage and all the men players",
    "now is the winter of our discontent", "shall I compare thee to a summer's day",
]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cocomix", *args]


VOLATILE = ("wall_clock_s", "train_s")  # wall-clock seconds: the only content allowed to differ


def _stable(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def digest(paths: list[Path]) -> str:
    """Hash of the files' bytes; JSON files without their wall-clock fields."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        data = p.read_bytes()
        if p.suffix == ".json":
            data = json.dumps(_stable(json.loads(data)), sort_keys=True).encode()
        h.update(data)
    return h.hexdigest()


def setup(root: Path) -> dict[str, Path]:
    """The corpus, a prepared store, a small HF teacher folder and its SAE (inputs of the stages)."""
    import torch

    from cocomix.config import ModelConfig
    from cocomix.data import prepare
    from cocomix.export import export_hf
    from cocomix.model import Transformer

    docs = root / "docs"
    docs.mkdir()
    for i in range(400):
        (docs / f"doc{i:03d}.txt").write_text("\n".join(LINES[(i + j) % len(LINES)] + f" {i * j % 11}"
                                                        for j in range(40)))
    prepare(f"text:{docs}", root / "store", tokenizer="bpe:320", val_fraction=0.1, progress=False)
    torch.manual_seed(0)
    export_hf(Transformer(ModelConfig(vocab_size=320, n_layer=3, n_head=2, d_model=32, context_length=64)),
              root / "teacher")
    run = subprocess.run(cli("train-sae", "--teacher", str(root / "teacher"), "--teacher-layer", "1", "--data",
                             str(root / "store"), "--seq-len", "32", "--n-latents", "128", "--k", "8", "--steps",
                             "10", "--warmup-steps", "2", "--batch-tokens", "256", "--out", str(root / "sae-ref")),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return {"docs": docs, "store": root / "store", "teacher": root / "teacher", "sae": root / "sae-ref" / "sae"}


def stages(parts: dict[str, Path], cfg: Path) -> dict[str, dict]:
    """Per stage: the command for an output folder, the extra arguments of a rerun, its final files."""
    return {
        "prepare": {
            "cmd": lambda out: cli("prepare", "--source", f"text:{parts['docs']}", "--tokenizer", "bpe:320",
                                   "--val-fraction", "0.1", "--out", str(out)),
            "rerun": [], "done_ok": "already prepared",
            "final": lambda out: [out / "train.bin", out / "val.bin", out / "meta.json",
                                  *sorted((out / "tokenizer").iterdir())]},
        "train": {
            "cmd": lambda out: cli("train", "--config", str(cfg), "--out", str(out)),
            "rerun": ["--resume"], "done_ok": None,
            "final": lambda out: [out / "checkpoints" / "step_0000060" / f for f in
                                  ("model.safetensors", "optimizer.pt", "rng.pt")]},
        "train-sae": {
            "cmd": lambda out: cli("train-sae", "--teacher", str(parts["teacher"]), "--teacher-layer", "1",
                                   "--data", str(parts["store"]), "--seq-len", "32", "--n-latents", "128", "--k",
                                   "8", "--steps", "60", "--warmup-steps", "6", "--batch-tokens", "256",
                                   "--checkpoint-every", "5",
                                   "--out", str(out)),
            "rerun": [], "done_ok": None,
            "final": lambda out: sorted((out / "sae").iterdir())},
        "extract-concepts": {
            "cmd": lambda out: cli("extract-concepts", "--data", str(parts["store"]), "--teacher",
                                   str(parts["teacher"]), "--teacher-layer", "1", "--sae", str(parts["sae"]),
                                   "--seq-len", "32", "--batch-size", "4", "--out", str(out)),
            "rerun": [], "done_ok": None,
            "final": lambda out: [out / "targets_train.bin", out / "targets_val.bin"]},
    }


def intact(stage: str, out: Path) -> str:
    """'' when everything `out` holds after a kill is complete and readable; else what is wrong."""
    try:
        if stage == "prepare" and (out / "meta.json").is_file():
            from cocomix.data import TokenStore

            store = TokenStore.open(out)
            store.num_chunks("train", 32)
        elif stage in ("train", "train-sae") and (out / "checkpoints" / "latest").is_file():
            from cocomix.train.checkpoint import latest_checkpoint, read_state

            ckpt = latest_checkpoint(out)
            read_state(ckpt)
            from safetensors.torch import load_file

            files = {p.name for p in ckpt.iterdir()}
            if not {"optimizer.pt", "rng.pt", "state.json"} <= files:
                return f"{ckpt}: incomplete ({sorted(files)})"
            for f in ckpt.glob("*.safetensors"):
                load_file(str(f))
        elif stage == "extract-concepts" and (out / "progress.json").is_file():
            json.loads((out / "progress.json").read_text())
            json.loads((out / "meta.json").read_text())
    except Exception as e:  # noqa: BLE001 - any failure to read is what we look for
        return f"{type(e).__name__}: {e}"
    return ""


def latest_step(out: Path) -> int:
    """The step of the latest checkpoint in `out` (0 when there is none)."""
    pointer = out / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("_")[1]) if pointer.is_file() else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="cocomix-faults-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    os.environ.update(env)
    sys.path.insert(0, str(ROOT / "src"))
    from cocomix.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    parts = setup(root)
    cfg = root / "run.json"
    cfg.write_text(RunConfig(method="ntp", model=ModelConfig(vocab_size=320, n_layer=2, n_head=2, d_model=32,
                                                             context_length=32),
                             data=DataConfig(path=str(parts["store"]), seq_len=32),
                             train=TrainConfig(steps=60, micro_batch_size=4, lr=3e-3, warmup_steps=2, eval_every=20,
                                               eval_batches=2, save_every=5, log_every=5, device="cpu",
                                               seed=1)).to_json())
    plan = stages(parts, cfg)
    reference, duration, first_output = {}, {}, {}
    for name, st in plan.items():
        out = root / f"ref-{name}"
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty stage cannot block on it
            proc = subprocess.Popen(st["cmd"](out), stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
            while proc.poll() is None:  # when the stage starts writing its outputs
                if name not in first_output and out.is_dir() and any(out.iterdir()):
                    first_output[name] = time.perf_counter() - t0
                time.sleep(0.01)
            duration[name] = time.perf_counter() - t0
            err.seek(0)
            assert proc.returncode == 0, f"{name}: {err.read()[-2000:]}"
        first_output.setdefault(name, 0.2)
        reference[name] = digest(st["final"](out))
    results, failures = [], []
    names = list(plan)
    for i in range(args.kills):
        name = names[i % len(names)]
        st = plan[name]
        out = root / f"kill{i:02d}-{name}"
        # kills land between the stage's first output and its end (earlier ones would only test interpreter start-up)
        delay = rng.uniform(first_output[name], duration[name])
        proc = subprocess.Popen(st["cmd"](out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        # a kill during interpreter start-up tests little: count the kills that found the stage's outputs begun
        wrote = killed and out.is_dir() and any(out.iterdir())
        problem = intact(name, out)
        reruns = 0
        while not problem:
            start = latest_step(out)  # what a train / train-sae rerun must go on from
            r = subprocess.run(st["cmd"](out) + st["rerun"], capture_output=True, text=True, env=env)
            reruns += 1
            if r.returncode == 0 or (st["done_ok"] and st["done_ok"] in r.stderr):
                # a rerun that started over would also end with the uninterrupted run's outputs: its start line
                # (`steps N->`) must name the checkpoint the kill left
                # (a kill that landed after the run's last write, while the interpreter was exiting, leaves a
                # finished run: its rerun says so and trains nothing; the outputs are then checked below)
                finished = "already finished" in r.stderr
                if (r.returncode == 0 and name in ("train", "train-sae") and f"steps {start}->" not in r.stderr
                        and not finished):
                    problem = f"the rerun did not go on from step {start}: {r.stderr.strip()[-300:]}"
                break
            if reruns >= 3:
                problem = f"rerun failed: {r.stderr.strip()[-300:]}"
        same = not problem and digest(st["final"](out)) == reference[name]
        if not same and not problem:
            problem = "final outputs differ from the uninterrupted run"
        results.append({"stage": name, "delay_s": round(delay, 2), "killed": killed, "after_output": wrote,
                        "reruns": reruns,
                        "ok": not problem, "problem": problem})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if problem:
            failures.append(results[-1])
        else:
            shutil.rmtree(out, ignore_errors=True)
    summary = {"kills_attempted": args.kills, "killed_mid_run": sum(r["killed"] for r in results),
               "per_stage": {n: sum(r["killed"] for r in results if r["stage"] == n) for n in names},
               "per_stage_after_output": {n: sum(r["after_output"] for r in results if r["stage"] == n)
                                          for n in names},
               "failures": failures, "reference_seconds": {n: round(d, 1) for n, d in duration.items()},
               "reference_first_output_seconds": {n: round(d, 1) for n, d in first_output.items()},
               "work_dir": str(root) if args.keep or failures else None}
    print(json.dumps(summary, indent=1))
    if not args.keep and not failures:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
