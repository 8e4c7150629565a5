"""A corpus of bad inputs across the CLI: each gives one line `cocomix: error: …` naming the problem, exit code 2,
and leaves every existing output (a finished run, a prepared store) byte-for-byte untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from cocomix.cli import main
from tests.cli import run_cli
from tests.integration.test_train import small_run


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(store_dir: Path, concept_parts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
          ) -> dict[str, Path]:
    """A finished NTP run, a finished CoCoMix run, a copy of the store, broken files, and their hashes."""
    from cocomix.train import train

    root = tmp_path_factory.mktemp("bad")
    store = root / "store"
    shutil.copytree(store_dir, store)
    run = small_run(store, steps=2, save_every=2, eval_every=0)
    train(run, root / "run", quiet=True)
    (root / "run.json").write_text(run.to_json())
    (root / "heads.json").write_text('{"model": {"n_head": 3}}')  # a partial file on top of a preset
    (root / "bad.json").write_text("{not json")
    (root / "wrongtype.json").write_text(json.dumps({**json.loads(run.to_json()), "train": {"steps": "many"}}))
    (root / "afile").write_text("x")
    (root / "sae-config.json").write_text(json.dumps({"auxk_alpha": 1 / 32, "k": 32, "steps": 500}))  # train-sae's
    (root / "sae-run" / "sae").mkdir(parents=True)  # what train-sae writes around its SAE
    (root / "sae-run" / "summary.json").write_text("{}")
    (root / "empty-docs").mkdir()
    broken = root / "broken-store"  # train.bin cut short of what meta.json says
    shutil.copytree(store, broken)
    (broken / "train.bin").write_bytes((broken / "train.bin").read_bytes()[:100])
    corrupt = root / "corrupt-run"  # weights file overwritten with garbage
    shutil.copytree(root / "run", corrupt)
    for f in corrupt.rglob("model.safetensors"):
        f.write_bytes(b"\x00garbage")
    torch.save({"x": torch.zeros(1)}, root / "notsae.pt")
    shutil.copytree(store, root / "badtok-store")  # a store whose tokenizer.json was damaged after prepare
    (root / "badtok-store" / "tokenizer" / "tokenizer.json").write_text("garbage")
    from cocomix.data import prepare
    from cocomix.sae import TopKSAE
    from cocomix.sae.saelens import save_saelens

    prepare(f"text:{store_dir.parent / 'docs'}", root / "other-tok", tokenizer="bpe:300", val_fraction=0.15,
            progress=False)  # the same text under another tokenizer
    save_saelens(TopKSAE(16, 64, 4), root / "narrow-sae")  # reads 16-wide activations; the teacher's are 32
    save_saelens(TopKSAE(32, 256, 8), root / "block1-sae", metadata={"hook_name": "blocks.1.hook_resid_post"})
    save_saelens(TopKSAE(32, 34, 32), root / "crowded-sae")  # k = 32 of 34 latents: no room for 4 targets beside
    shutil.copytree(concept_parts[0], root / "cut-teacher")  # weights file cut in the middle of its header
    (root / "cut-teacher" / "model.safetensors").write_bytes((root / "cut-teacher" / "model.safetensors")
                                                             .read_bytes()[:6])
    shutil.copytree(root / "run", root / "ckfile-run")  # `checkpoints` a file where the run keeps its folder
    shutil.rmtree(root / "ckfile-run" / "checkpoints")
    (root / "ckfile-run" / "checkpoints").write_text("x")
    shutil.copytree(root / "run", root / "nomodel-run")  # config.json without its model section
    stored = json.loads((root / "run" / "config.json").read_text())
    (root / "nomodel-run" / "config.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "model"}))
    nan_sae = TopKSAE(32, 64, 4)
    with torch.no_grad():
        nan_sae.W_dec[3, 1] = float("nan")
    save_saelens(nan_sae, root / "nan-sae")
    (root / "date.toml").write_text("[train]\nsteps = 3\nstart = 2024-01-01\n")
    (root / "unsaved-run").mkdir()  # a run stopped before its first checkpoint: config.json and metrics only
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(root / "run" / name, root / "unsaved-run" / name)
    kept = ("run", "store", "ckfile-run", "nomodel-run")
    return {"root": root, "store": store, "run": root / "run", "teacher": concept_parts[0],
            "sae": concept_parts[1], "hash": {name: _tree_hash(root / name) for name in kept}}


# (name, argv with {placeholders}, expected fragment of the error line)
CASES = [
    ("train-no-config", ["train", "--out", "{root}/o1"], "give --preset NAME or --config FILE"),
    ("train-unknown-preset", ["train", "--preset", "nope", "--out", "{root}/o2"], "unknown preset 'nope'"),
    ("train-negative-lr", ["train", "--config", "{root}/run.json", "--set", "train.lr=-1", "--out", "{root}/o3"],
     "train.lr: expected a finite positive number, got -1.0"),
    ("train-zero-steps", ["train", "--config", "{root}/run.json", "--set", "train.steps=0", "--out", "{root}/o4"],
     "train.steps: expected a positive integer, got 0"),
    ("train-bad-precision", ["train", "--config", "{root}/run.json", "--set", "train.precision=fp8", "--out",
                             "{root}/o5"], "train.precision: expected one of ('auto', 'fp32', 'bf16'), got 'fp8'"),
    ("train-bad-parallel", ["train", "--config", "{root}/run.json", "--set", "train.parallel=zero3", "--out",
                            "{root}/o6"], "train.parallel: expected ddp or fsdp, got 'zero3'"),
    ("train-zero-bad-steps", ["train", "--config", "{root}/run.json", "--set", "train.max_bad_steps=0", "--out",
                              "{root}/o7"], "train.max_bad_steps: expected a positive integer, got 0"),
    ("train-unknown-key", ["train", "--config", "{root}/run.json", "--set", "train.nosuch=1", "--out", "{root}/o8"],
     "train.nosuch: unknown field (known: "),
    ("train-heads-dont-divide", ["train", "--config", "{root}/run.json", "--set", "model.n_head=3", "--out",
                                 "{root}/o9"], "model.n_head: expected a divisor of d_model=32, got 3"),
    ("train-missing-config", ["train", "--config", "{root}/missing.json", "--out", "{root}/o10"],
     "missing.json: config file not found"),
    ("train-invalid-json", ["train", "--config", "{root}/bad.json", "--out", "{root}/o11"], "bad.json: not valid JSON"),
    ("train-wrong-type", ["train", "--config", "{root}/wrongtype.json", "--out", "{root}/o12"], "train.steps"),
    ("train-missing-store", ["train", "--config", "{root}/run.json", "--set", "data.path={root}/nostore", "--out",
                             "{root}/o13"],
     "nostore/meta.json: missing (the folder does not exist); run `cocomix prepare`"),
    ("train-vocab-too-small", ["train", "--config", "{root}/run.json", "--set", "model.vocab_size=100", "--out",
                               "{root}/o14"], "model.vocab_size is 100; set model.vocab_size >= 320"),
    ("train-window-too-long", ["train", "--config", "{root}/run.json", "--set", "data.seq_len=100000", "--out",
                               "{root}/o15"], "data.seq_len: expected at most model.context_length=32, got 100000"),
    ("train-out-is-a-file", ["train", "--config", "{root}/run.json", "--out", "{root}/afile"],
     "afile exists and is not a directory"),
    ("train-existing-run", ["train", "--config", "{root}/run.json", "--out", "{run}"], "already holds a run"),
    ("train-resume-changed", ["train", "--config", "{root}/run.json", "--set", "train.seed=7", "--out", "{run}",
                              "--resume"], "config differs"),
    ("train-resume-other-batch", ["train", "--config", "{root}/run.json", "--set", "train.grad_accum=1", "--out",
                                  "{run}", "--resume"], "global batch"),
    ("train-truncated-tokens", ["train", "--config", "{root}/run.json", "--set", "data.path={root}/broken-store",
                                "--out", "{root}/o16"], "train.bin"),
    ("train-cocomix-no-teacher", ["train", "--preset", "tiny-cocomix", "--set", "data.path={store}", "--set",
                                  "model.vocab_size=320", "--set", "concept.teacher={root}/noteacher", "--out",
                                  "{root}/o17"], "concept.teacher: {root}/noteacher: no such folder (a teacher is"),
    ("train-kd-sae-as-teacher", ["train", "--preset", "tiny-kd", "--set", "data.path={store}", "--set",
                                 "model.vocab_size=320", "--set", "concept.teacher={root}/block1-sae", "--out",
                                 "{root}/o17b"], "concept.teacher: {root}/block1-sae: holds an SAE, not a teacher"),
    ("train-cocomix-sae-of-another-block", ["train", "--preset", "tiny-cocomix", "--set", "data.path={store}", "--set",
                                           "model.vocab_size=320", "--set", "concept.teacher={teacher}", "--set",
                                           "concept.sae={root}/block1-sae", "--set", "concept.teacher_layer=2",
                                           "--set", "data.seq_len=64", "--out", "{root}/o19"],
     "concept.teacher_layer: {root}/block1-sae was trained on blocks.1.hook_resid_post (the output of block 1), but "
     "concept.teacher_layer is 2; set concept.teacher_layer=1"),
    ("train-cocomix-sae-is-a-train-sae-output", ["train", "--preset", "tiny-cocomix", "--set", "data.path={store}",
                                                 "--set", "model.vocab_size=320", "--set", "concept.teacher={teacher}",
                                                 "--set", "concept.sae={root}/sae-run", "--set", "data.seq_len=64",
                                                 "--out", "{root}/o20"],
     "concept.sae: {root}/sae-run: a train-sae output; give its SAE folder, {root}/sae-run/sae"),
    ("train-cocomix-windows-beyond-the-teacher", ["train", "--preset", "tiny-cocomix", "--set", "data.path={store}",
                                                  "--set", "model.vocab_size=320", "--set", "concept.teacher={teacher}",
                                                  "--set", "concept.sae={root}/block1-sae", "--out", "{root}/o21"],
     "data.seq_len: 128-token windows exceed the teacher's 64 positions; use at most 64"),
    ("train-cocomix-sae-too-narrow", ["train", "--preset", "tiny-cocomix", "--set", "data.path={store}", "--set",
                                      "model.vocab_size=320", "--set", "concept.teacher={teacher}", "--set",
                                      "concept.sae={root}/crowded-sae", "--set", "concept.teacher_layer=1", "--set",
                                      "concept.n_latents=34", "--set", "concept.sae_k=32", "--set", "data.seq_len=64",
                                      "--out", "{root}/o21b"],
     "concept.sae: 34 latents; targets are chosen among at least its k + concept.k_attr = 36"),
    ("train-config-of-another-tool", ["train", "--config", "{root}/sae-config.json", "--out", "{root}/o18b"],
     "--config {root}/sae-config.json: not a cocomix run config (its fields auxk_alpha, k, steps are none of a "
     "run's: method, model, data, train, concept)"),
    ("flops-config-of-another-tool", ["flops", "--config", "{root}/sae-config.json"], "not a cocomix run config"),
    ("train-bad-set-syntax", ["train", "--config", "{root}/run.json", "--set", "train.lr", "--out", "{root}/o18"],
     "KEY=VALUE"),
    ("cli-unknown-command", ["frobnicate"], "invalid choice"),
    ("presets-empty-name", ["presets", ""], "unknown preset ''"),
    ("cli-missing-argument", ["eval"], "--run"),
    ("inspect-missing-run", ["inspect", "--text", "x"], "required: RUN (or --run RUN)"),
    ("run-given-twice", ["steer", "{run}", "--run", "{root}/norun", "--prompt", "a", "--concept", "1", "--alpha",
                         "2"], "differ; give the run once"),
    ("eval-missing-run", ["eval", "--run", "{root}/norun"], "norun: no such run or checkpoint directory"),
    ("eval-corrupt-weights", ["eval", "--run", "{root}/corrupt-run"], "model.safetensors"),
    ("eval-bad-split", ["eval", "--run", "{run}", "--split", "test"], "invalid choice"),
    ("eval-task-option-without-tasks", ["eval", "--run", "{run}", "--limit", "3"], "--limit: an lm-eval option"),
    ("eval-default-max-batch-size-without-tasks", ["eval", "--run", "{run}", "--max-batch-size", "64"],
     "--max-batch-size: an lm-eval option"),  # refused even at its default value: given, it would be ignored
    ("eval-perplexity-option-with-tasks", ["eval", "--run", "{run}", "--tasks", "x", "--batches", "2"],
     "--batches: a perplexity option"),
    ("eval-bad-device", ["eval", "--run", "{run}", "--device", "bogus"], "--device: expected auto, cpu"),
    ("eval-zero-seq-len", ["eval", "--run", "{run}", "--seq-len", "0"], "--seq-len: expected an integer >= 2"),
    ("eval-tasks-seq-len-past-context", ["eval", "--run", "{run}", "--tasks", "x", "--seq-len", "100000"],
     "max_length (eval --seq-len): expected an integer from 1 to the model's context_length"),
    ("eval-zero-batch-size", ["eval", "--run", "{run}", "--batch-size", "0"], "--batch-size: expected an integer"),
    ("eval-negative-batches", ["eval", "--run", "{run}", "--batches", "-1"], "--batches: expected an integer >= 0"),
    ("train-bad-device", ["train", "--config", "{root}/run.json", "--set", "train.device=gpu", "--out",
                          "{root}/o30"], "train.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("generate-empty-prompt", ["generate", "--run", "{run}", "--prompt", ""], "--prompt: encodes to no tokens"),
    ("generate-negative-temperature", ["generate", "--run", "{run}", "--prompt", "the", "--temperature", "-1"],
     "--temperature: expected a finite number >= 0"),
    ("generate-bad-top-p", ["generate", "--run", "{run}", "--prompt", "the", "--top-p", "2"], "--top-p: expected"),
    ("experiment-no-seeds", ["experiment", "--seeds", "0", "--out", "{root}/exp0"],
     "--seeds: expected a positive integer, got 0"),
    ("demo-negative-steps", ["demo", "--steps", "-5", "--out", "{root}/demo0"],
     "--steps: expected a positive integer below 2**63 (0: the defaults), got -5"),
    ("experiment-steps-no-config-can-hold", ["experiment", "--steps", "100000000000000000000", "--out", "{root}/ex1"],
     "--steps: expected a positive integer below 2**63 (0: the defaults), got 100000000000000000000"),
    ("generate-no-samples", ["generate", "--run", "{run}", "--prompt", "the", "--num-samples", "0"],
     "--num-samples: expected a positive integer, got 0"),
    ("export-missing-run", ["export", "--run", "{root}/norun", "--out", "{root}/hf"],
     "norun: no such run or checkpoint directory"),
    ("prepare-unknown-source", ["prepare", "--source", "nosuch:thing", "--out", "{root}/p1"],
     "source 'nosuch:thing': expected one of 'shakespeare'"),
    ("prepare-missing-folder", ["prepare", "--source", "text:{root}/nodocs", "--out", "{root}/p2"],
     "nodocs does not exist (expected a .txt file or a folder)"),
    ("prepare-split-by-shakespeare", ["prepare", "--split-by", "content", "--out", "{root}/p3"],
     "--split-by: the embedded shakespeare corpus holds out fixed plays"),
    ("prepare-streaming-text", ["prepare", "--source", "text:{root}/nodocs", "--streaming", "--out", "{root}/p2"],
     "--streaming: only hf: sources"),
    ("prepare-bad-tokenizer", ["prepare", "--source", "shakespeare", "--tokenizer", "bpe:abc", "--out",
                               "{root}/p3"], "tokenizer 'bpe:abc': expected bpe:<vocab_size>"),
    ("prepare-empty-folder", ["prepare", "--source", "text:{root}/empty-docs", "--out", "{root}/p5"],
     "no *.txt files"),
    ("prepare-bad-val-fraction", ["prepare", "--source", "text:{root}/nodocs", "--val-fraction", "2", "--out",
                                  "{root}/p4"], "--val-fraction: expected a number in [0, 1)"),
    ("prepare-shakespeare-val-fraction", ["prepare", "--val-fraction", "0.1", "--out", "{root}/p6"],
     "holds out fixed plays"),
    ("prepare-existing-store", ["prepare", "--source", "shakespeare", "--out", "{store}"], "already prepared"),
    ("train-sae-missing-teacher", ["train-sae", "--teacher", "{root}/noteacher", "--teacher-layer", "1", "--data",
                                   "{store}", "--out", "{root}/s1"], "noteacher: no such folder"),
    ("train-sae-layer-out-of-range", ["train-sae", "--teacher", "{teacher}", "--teacher-layer", "99", "--data",
                                      "{store}", "--out", "{root}/s2"], "--teacher-layer: expected a block index"),
    ("train-sae-zero-k", ["train-sae", "--teacher", "{teacher}", "--teacher-layer", "1", "--data", "{store}",
                          "--k", "0", "--out", "{root}/s3"], "--k: expected a positive integer, got 0"),
    ("extract-missing-sae", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}", "--teacher-layer",
                             "1", "--sae", "{root}/nosae", "--seq-len", "32", "--out", "{root}/e1"],
     "nosae: not found (expected an OpenAI .pt/.safetensors file or a SAELens/sparsify SAE"),
    ("extract-not-an-sae", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}", "--teacher-layer",
                            "1", "--sae", "{root}/notsae.pt", "--seq-len", "32", "--out", "{root}/e2"],
     "notsae.pt: no 'activation' entry"),
    ("extract-k-attr-too-big", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                "--teacher-layer", "1", "--sae", "{sae}", "--k-attr", "100", "--seq-len", "32",
                                "--out", "{root}/e3"], "--k-attr: expected"),
    ("extract-setting-pair-named-by-flags", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                             "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32",
                                             "--gradient-at", "reconstruction", "--out", "{root}/e5"],
     "--gradient-at reconstruction: needs --attribution-loss next_token"),
    # options that need neither the teacher nor the SAE are checked before either loads (a hub teacher: minutes)
    ("extract-splits-before-the-teacher", ["extract-concepts", "--data", "{store}", "--teacher", "{root}/noteacher",
                                           "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32", "--splits",
                                           "train,", "--out", "{root}/e6"],
     "expected distinct names among train, val, got 'train,'"),
    ("extract-k-attr-before-the-teacher", ["extract-concepts", "--data", "{store}", "--teacher", "{root}/noteacher",
                                           "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32", "--k-attr",
                                           "0", "--out", "{root}/e7"], "--k-attr: expected an integer >= 1, got 0"),
    ("extract-option-pair-before-the-teacher", ["extract-concepts", "--data", "{store}", "--teacher",
                                                "{root}/noteacher", "--teacher-layer", "1", "--sae", "{sae}",
                                                "--seq-len", "32", "--gradient-at", "reconstruction", "--out",
                                                "{root}/e8"],
     "--gradient-at reconstruction: needs --attribution-loss next_token"),
    ("extract-sae-of-another-block", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                      "--teacher-layer", "2", "--sae", "{root}/block1-sae", "--seq-len", "32",
                                      "--out", "{root}/e9"],
     "--teacher-layer: {root}/block1-sae was trained on blocks.1.hook_resid_post (the output of block 1), but "
     "--teacher-layer is 2; set --teacher-layer=1"),
    ("extract-window-too-long", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                 "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "128", "--out", "{root}/e4"],
     "exceed the teacher's 64 positions"),
    ("train-sae-window-too-long", ["train-sae", "--teacher", "{teacher}", "--teacher-layer", "1", "--data", "{store}",
                                   "--seq-len", "128", "--out", "{root}/s4"], "exceed the teacher's 64 positions"),
    ("describe-one-token-windows", ["describe-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                    "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "1", "--out", "{root}/d1"],
     "at least 2 tokens"),
    ("describe-sae-of-other-width", ["describe-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                     "--teacher-layer", "1", "--sae", "{root}/narrow-sae", "--seq-len", "32", "--out",
                                     "{root}/d2"], "SAE input width 16"),
    ("describe-negative-context", ["describe-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                   "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32", "--context", "-3",
                                   "--out", "{root}/d3"], "--context: expected an integer >= 0, got -3"),
    ("extract-cut-teacher-weights", ["extract-concepts", "--data", "{store}", "--teacher", "{root}/cut-teacher",
                                     "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32", "--out",
                                     "{root}/e5"], "cannot load a causal LM teacher"),
    ("extract-teacher-not-a-model", ["extract-concepts", "--data", "{store}", "--teacher", "{root}/empty-docs",
                                     "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32", "--out",
                                     "{root}/e9"], "empty-docs: neither a cocomix run nor a model folder"),
    ("extract-teacher-a-run-before-its-first-checkpoint", ["extract-concepts", "--data", "{store}", "--teacher",
                                                           "{root}/unsaved-run", "--teacher-layer", "1", "--sae",
                                                           "{sae}", "--seq-len", "32", "--out", "{root}/e11"],
     "unsaved-run: holds a cocomix run with no checkpoint yet"),
    ("extract-teacher-a-store", ["extract-concepts", "--data", "{store}", "--teacher", "{store}",
                                 "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32", "--out",
                                 "{root}/e10"], "store: holds a token store, not a teacher"),
    ("extract-unknown-split", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}", "--teacher-layer",
                               "1", "--sae", "{sae}", "--seq-len", "32", "--splits", "train,test", "--out",
                               "{root}/e6"], "splits: expected distinct names among train, val"),
    ("prepare-corpus-without-out", ["prepare", "--source", "text:{root}/empty-docs"], "--out: give the folder"),
    ("train-preset-and-bad-config", ["train", "--preset", "tiny", "--config", "{root}/heads.json", "--out",
                                     "{root}/o31"], "model.n_head: expected a divisor of d_model=128, got 3"),
    ("eval-store-of-another-tokenizer", ["eval", "--run", "{run}", "--data", "{root}/other-tok"],
     "not the one the run was trained with"),
    ("eval-store-with-a-damaged-tokenizer", ["eval", "--run", "{run}", "--data", "{root}/badtok-store"],
     "tokenizer.json: not a valid tokenizer.json"),
    ("generate-store-of-another-tokenizer", ["generate", "--run", "{run}", "--data", "{root}/other-tok", "--prompt",
                                             "the", "--max-new-tokens", "2"], "not the one the run was trained with"),
    ("eval-not-a-run", ["eval", "--run", "{root}/empty-docs"], "not a cocomix run"),
    ("eval-a-file-of-the-run", ["eval", "{run}/config.json"], "config.json: a file; give a run directory or one of "
                                                              "its checkpoints (e.g. "),
    ("eval-a-concept-cache-as-data", ["eval", "{run}", "--data", "{root}/sae-run"],
     "holds a train-sae output, not a token store"),
    ("train-config-of-a-store", ["train", "--config", "{store}", "--out", "{root}/o43"],
     "holds a token store, not a run"),
    ("generate-past-the-context", ["generate", "{run}", "--prompt", "the", "--max-new-tokens", "500"],
     "--max-new-tokens: 500 new tokens after a prompt of 2 tokens exceed the model's context_length 32"),
    ("generate-prompt-filling-the-context", ["generate", "{run}", "--prompt", "the king " * 40],
     "--prompt: 82 tokens fill the model's context_length 32 and leave no room for a new token; shorten the prompt"),
    ("steer-sae-without-teacher-check", ["steer", "{run}", "--prompt", "the", "--concept", "1", "--alpha", "10",
                                         "--sae", "{root}/nosae"],
     "--sae: used only by --teacher-check; add --teacher-check or drop --sae"),
    ("steer-ntp-run", ["steer", "{run}", "--prompt", "the", "--concept", "1", "--alpha", "10"], "CoCoMix"),
    ("extract-zero-batch", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}", "--teacher-layer", "1",
                            "--sae", "{sae}", "--seq-len", "32", "--batch-size", "0", "--out", "{root}/e8"],
     "--batch-size: expected an integer >= 1"),
    ("extract-out-is-a-file", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}", "--teacher-layer",
                               "1", "--sae", "{sae}", "--seq-len", "32", "--out", "{root}/afile"],
     "afile exists and is not a directory"),
    ("extract-out-is-a-store", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}", "--teacher-layer",
                                "1", "--sae", "{sae}", "--seq-len", "32", "--out", "{store}"],
     "its meta.json is not a concept cache's"),
    ("describe-out-inside-a-file", ["describe-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                    "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32", "--out",
                                    "{root}/afile/sub"], "afile exists and is not a directory"),
    ("compression-ntp-run", ["compression", "{run}", "--out", "{root}/c1"], "got a plain LM (NTP or KD)"),
    ("train-out-is-a-store", ["train", "--config", "{root}/run.json", "--out", "{store}"],
     "holds a token store, not a cocomix run; choose a new or empty --out"),
    ("train-out-is-a-checkpoint", ["train", "--config", "{root}/run.json", "--out", "{run}/checkpoints/step_0000002"],
     "inside the checkpoints folder of the run"),
    ("compare-into-a-runs-checkpoints", ["compare", "{run}", "--out", "{run}/checkpoints/step_0000009"],
     "inside the checkpoints folder of the run"),
    ("eval-empty-task-list", ["eval", "--run", "{run}", "--tasks", ","], "--tasks: expected comma-separated"),
    ("eval-include-path-missing", ["eval", "--run", "{run}", "--tasks", "x", "--include-path", "{root}/nowhere"],
     "nowhere: not a folder"),
    ("generate-infinite-temperature", ["generate", "--run", "{run}", "--prompt", "the", "--temperature", "inf"],
     "--temperature: expected a finite number"),
    ("train-deeply-nested-set", ["train", "--config", "{root}/run.json", "--set", "train.lr=" + "[" * 50000,
                                 "--out", "{root}/o32"], "nested too deeply"),
    ("export-store-of-another-tokenizer", ["export", "--run", "{run}", "--data", "{root}/other-tok", "--out",
                                           "{root}/hf2"], "not the one the run was trained with"),
    # no command writes into another's output
    ("prepare-into-a-run", ["prepare", "--source", "shakespeare", "--out", "{run}"],
     "holds a cocomix run, not a token store"),
    ("describe-into-a-store", ["describe-concepts", "--data", "{store}", "--teacher", "{teacher}", "--teacher-layer",
                               "1", "--sae", "{sae}", "--seq-len", "32", "--out", "{store}"],
     "holds a token store; choose a new or empty folder"),
    ("compare-into-a-run", ["compare", "{run}", "--out", "{run}"], "holds a cocomix run; choose a new or empty"),
    ("train-sae-into-a-run", ["train-sae", "--teacher", "{teacher}", "--teacher-layer", "1", "--data", "{store}",
                              "--out", "{run}"], "holds a cocomix run, not an SAE training run"),
    # flags named as the command spells them; one line before any progress
    ("train-sae-negative-layer", ["train-sae", "--teacher", "{teacher}", "--teacher-layer", "-1", "--data",
                                  "{store}", "--out", "{root}/sae1"], "--teacher-layer: expected"),
    ("prepare-bpe-zero", ["prepare", "--source", "shakespeare", "--out", "{root}/p0", "--tokenizer", "bpe:0"],
     "--tokenizer: a byte-level BPE needs vocab_size >= 257"),
    ("steer-eval-repeated-alpha", ["steer-eval", "{run}", "--out", "{root}/se1", "--alphas=0,1,1"],
     "--alphas: '0,1,1' repeats a value"),
    ("inspect-html-under-a-file", ["inspect", "{run}", "--text", "the", "--html", "{root}/afile/x.html"],
     "afile is a file, not a folder"),
    ("describe-sae-is-a-train-sae-output", ["describe-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                            "--teacher-layer", "1", "--sae", "{root}/sae-run", "--seq-len", "32",
                                            "--out", "{root}/d9"], "sae-run: a train-sae output; give its SAE folder"),
    ("export-out-under-a-file", ["export", "--run", "{run}", "--out", "{root}/afile/hf"],
     "afile exists and is not a directory"),
    ("train-without-out", ["train", "--config", "{root}/run.json"], "--out: expected the run directory"),
    # text and paths that are not UTF-8 (a shell passing Latin-1 bytes): refused before any work
    ("generate-prompt-not-utf8", ["generate", "{run}", "--prompt", "caf\udce9"],
     "argument --prompt: not valid UTF-8 text"),
    ("inspect-text-not-utf8", ["inspect", "{run}", "--text", "\udce9t\udce9"], "argument --text: not valid UTF-8"),
    ("train-out-not-utf8", ["train", "--config", "{root}/run.json", "--out", "{root}/o\udce9"],
     "o\\xe9: the path is not valid UTF-8"),
    ("prepare-out-not-utf8", ["prepare", "--source", "shakespeare", "--out", "{root}/p\udce9"],
     "the path is not valid UTF-8"),
    ("train-set-empty-key", ["train", "--config", "{root}/run.json", "--set", "=5", "--out", "{root}/o40"],
     "with a dotted field name"),
    ("train-config-not-json-or-toml", ["train", "--config", "{root}/afile", "--out", "{root}/o41"],
     "afile: expected a .json or .toml config file"),
    ("train-resume-a-file", ["train", "--resume", "--out", "{root}/afile"],
     "--out {root}/afile: is a file, not a run folder, so --resume has no config to continue"),
    ("train-resume-a-store", ["train", "--resume", "--out", "{store}"],
     "holds a token store, not a run, so there is nothing to --resume; choose another --out"),
    ("train-damaged-tokenizer", ["train", "--config", "{root}/run.json", "--set", "data.path={root}/badtok-store",
                                 "--out", "{root}/o42"], "not a valid tokenizer.json"),
    ("eval-tasks-empty-string", ["eval", "{run}", "--tasks", ""], "--tasks: expected comma-separated"),
    ("eval-unknown-option", ["eval", "{run}", "--checkpoint", "x"], "(see `cocomix eval --help`)"),
    ("eval-seq-len-over-context", ["eval", "{run}", "--seq-len", "100000"], "--seq-len: 100000 exceeds"),
    ("eval-corrupt-weights-no-fallback", ["eval", "{root}/corrupt-run"], "the run has no other checkpoint"),
    ("inspect-ntp-run", ["inspect", "{run}", "--text", "the"], "RUN: expected a CoCoMix run"),
    # seeds beyond torch's range, sizes that would abort in Rust, names no file format can hold
    ("generate-seed-too-large", ["generate", "{run}", "--prompt", "the", "--seed", str(2**64)],
     "argument --seed: expected an integer in [0, 2**64)"),
    ("steer-seed-too-large", ["steer", "{run}", "--prompt", "the", "--concept", "1", "--alpha", "2", "--seed",
                              "999999999999999999999999"], "argument --seed: expected an integer in [0, 2**64)"),
    ("steer-eval-negative-seed", ["steer-eval", "{run}", "--out", "{root}/se9", "--seed=-1"],
     "argument --seed: expected an integer in [0, 2**64)"),
    ("train-sae-seed-too-large", ["train-sae", "--teacher", "{root}/noteacher", "--teacher-layer", "1", "--data",
                                  "{store}", "--seed", str(2**64), "--out", "{root}/s9"],
     "--seed: expected an integer below 2**64"),
    ("prepare-bpe-too-large", ["prepare", "--source", "shakespeare", "--out", "{root}/p9", "--tokenizer",
                               "bpe:2147483648"], "--tokenizer: a byte-level BPE takes vocab_size <= 16777216"),
    ("prepare-source-not-utf8", ["prepare", "--source", "text:{root}/d\udce9", "--out", "{root}/p10"],
     "argument --source: not valid UTF-8 text"),
    ("prepare-adopt-not-utf8", ["prepare", "--adopt", "{root}/a\udce9"], "a\\xe9: the path is not valid UTF-8"),
    ("train-resume-checkpoints-a-file", ["train", "--config", "{root}/run.json", "--out", "{root}/ckfile-run",
                                         "--resume"], "checkpoints: not a folder, but the run keeps its checkpoints"),
    ("eval-config-without-model", ["eval", "{root}/nomodel-run"], "config.json: no model section"),
    ("extract-nan-sae", ["extract-concepts", "--data", "{store}", "--teacher", "{teacher}", "--teacher-layer", "1",
                         "--sae", "{root}/nan-sae", "--seq-len", "32", "--out", "{root}/e11"],
     "nan-sae: the SAE's W_dec holds NaN or infinite values"),
    ("steer-eval-empty-out", ["steer-eval", "{run}", "--out", ""], "argument --out: expected a path, got an empty"),
    ("export-data-without-tokenizer", ["export", "{run}", "--out", "{root}/hf3", "--no-tokenizer", "--data",
                                       "{store}"], "--data: read for the tokenizer only"),
    ("train-config-not-a-file", ["train", "--config", "/dev/null", "--out", "{root}/o44"],
     "/dev/null: not a regular file"),
    ("flops-absurd-depth", ["flops", "--preset", "tiny", "--set", "model.n_layer=100000000"],
     "model.n_layer: expected at most 10000 blocks"),
    ("describe-top-n-too-large", ["describe-concepts", "--data", "{store}", "--teacher", "{teacher}",
                                  "--teacher-layer", "1", "--sae", "{sae}", "--seq-len", "32", "--top-n", "100000000",
                                  "--out", "{root}/d10"], "--top-n: expected at most 1000"),
    ("train-toml-date", ["train", "--config", "{root}/date.toml", "--out", "{root}/o45"],
     "date.toml: train.start: expected a string, number, boolean or list, got a date"),
]


@pytest.mark.parametrize("name,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(name: str, argv: list[str], fragment: str,
                                                          world: dict, capsys: pytest.CaptureFixture) -> None:
    args = [a.format(root=world["root"], run=world["run"], store=world["store"], teacher=world["teacher"],
                     sae=world["sae"]) for a in argv]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    assert exc.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("cocomix: error:"), err
    fragment = fragment.format(root=world["root"])
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert {name: _tree_hash(world["root"] / name) for name in world["hash"]} == world["hash"]


def test_tiny_concept_presets_without_the_demo_say_how_to_make_its_outputs(
        world: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(world["root"])  # no runs/demo/ here
    for preset in ("tiny-cocomix", "tiny-kd"):
        code = main(["train", "--preset", preset, "--set", f"data.path={world['store']}", "--out", "t"])
        err = capsys.readouterr().err
        assert code == 2 and "concept.teacher: runs/demo/teacher does not exist" in err and "make demo" in err
        assert not (world["root"] / "t").exists()


def test_the_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    assert len({tuple(c[1]) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_of_a_user_error(world: dict, where: str) -> None:
    """`--debug` before the subcommand or among its options."""
    from cocomix.errors import CocomixError

    args = ["eval", "--run", str(world["root"] / "norun")]
    with pytest.raises(CocomixError, match="norun"):
        main(["--debug", *args] if where == "before" else [*args, "--debug"])


def test_every_device_option_defaults_to_auto() -> None:
    """The commands that take --device agree: CUDA when available (on this CPU machine, the CPU)."""
    import argparse

    from cocomix.cli import build_parser

    sub = next(a for a in build_parser()._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    defaults = {name: s.get_default("device") for name, s in sub.choices.items()
                if "--device" in s._option_string_actions}
    assert len(defaults) >= 8 and set(defaults.values()) == {"auto"}, defaults


def test_a_file_the_command_cannot_read_or_write_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    """Permissions, a full disk, a path in the way (OSError anywhere in a command): one line naming the file,
    exit 2 (tests run as root here, so a chmod 000 file would still be readable: the error is injected)."""
    import cocomix.cli as cli

    def unreadable(args):  # noqa: ANN001, ANN202
        raise PermissionError(13, "Permission denied", "/runs/x/config.json")

    monkeypatch.setattr(cli, "cmd_eval", unreadable)
    assert main(["eval", "--run", "/runs/x"]) == 2
    assert capsys.readouterr().err == "cocomix: error: /runs/x/config.json: Permission denied\n"
    monkeypatch.setattr(cli, "cmd_eval", lambda args: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert main(["eval", "--run", "/runs/x"]) == 2
    assert capsys.readouterr().err == "cocomix: error: No space left on device\n"


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`cocomix presets | head -0`: the reader is gone; no error line, the exit status of a SIGPIPE death."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.Popen([sys.executable, "-m", "cocomix", "presets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": src})
    proc.stdout.close()  # before it writes anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_a_one_process_command_under_torchrun_is_a_one_line_error(tmp_path: Path) -> None:
    """`prepare`, `generate`, `demo`, ... do all their work in each process: started by torchrun with several
    processes they say so (exit 2) instead of racing each other for their output; the sharing commands do not."""
    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "TORCHELASTIC_RUN_ID": "none"}
    r = run_cli("presets", env=torchrun)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "presets: runs in one process, but torchrun started 2 (WORLD_SIZE)" in r.stderr
    assert run_cli("presets", env={**torchrun, "WORLD_SIZE": "1"}).returncode == 0
    assert run_cli("presets", env={"WORLD_SIZE": "2", "RANK": "1"}).returncode == 0  # not torchrun (Kubeflow)
    # a sharing command goes on to its own checks (here: a missing store), not to this error
    r = run_cli("describe-concepts", "--data", str(tmp_path / "absent"), "--teacher", "t", "--teacher-layer", "0",
                "--sae", "s", "--seq-len", "8", "--out", str(tmp_path / "o"), env=torchrun)
    assert r.returncode == 2 and "runs in one process" not in r.stderr, r.stderr


def test_a_mistyped_relative_teacher_path_is_said_at_once_and_in_the_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`runs/teach` with a local runs/ folder may be a mistyped path or a hub name whose owner is also a local
    folder (models downloaded by owner/name): a note before the hub is asked, and the hint in its error."""
    import transformers

    from cocomix.errors import CheckpointError
    from cocomix.teacher import Teacher

    asked: list[str] = []

    def hub(name: str, **kwargs: object) -> None:
        asked.append(name)
        print("retrying...", file=sys.stderr)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError, match=r"^runs/teach: cannot load a causal LM teacher \(OSError: .*\) "
                                              r"\(and no local folder runs/teach, though runs/ is one here: a "
                                              r"mistyped path\?\)$"):
        Teacher.from_pretrained("runs/teach", 1)
    err = capsys.readouterr().err
    assert err.index("teacher runs/teach: no such local folder, though runs/ is one here") < err.index("retrying")
    with pytest.raises(CheckpointError) as caught:
        Teacher.from_pretrained("openai-community/gpt2", 1)  # no local owner folder: a hub name, no hint
    assert "mistyped" not in str(caught.value) and "no such local folder" not in capsys.readouterr().err
    assert asked == ["runs/teach", "openai-community/gpt2"]
    (tmp_path / "runs" / "demo").mkdir()
    (tmp_path / "runs" / "demo" / "stages.json").write_text("{}")  # runs/ holds cocomix outputs: a workspace
    with pytest.raises(CheckpointError, match=r"^runs/teach: no such folder, and runs/ here holds cocomix outputs "
                                              r"\(a mistyped path\?\)"):
        Teacher.from_pretrained("runs/teach", 1)
    assert asked == ["runs/teach", "openai-community/gpt2"]  # the hub was not asked (no retries to wait for)


def test_a_fresh_run_failing_on_its_data_before_a_checkpoint_leaves_its_folder_as_it_was(
        world: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token id beyond the vocabulary is found in the chunk that holds it, once training reads it: the run had
    written config.json and metrics.jsonl by then. They are removed again, so the same command (a new --out, or a
    job's folder holding only its log) starts afresh once the store is fixed, not "already holds a run"."""
    import numpy as np

    root = world["root"]
    oov = root / "oov-store"
    shutil.copytree(world["store"], oov)
    ids = np.fromfile(oov / "train.bin", dtype=np.uint16)
    ids[::50] = 60000  # in every window of 32 tokens or the next
    ids.tofile(oov / "train.bin")
    (root / "job").mkdir()
    (root / "job" / "job.log").write_text("submitted")
    for out in (root / "fresh", root / "job"):
        argv = ["train", "--config", str(root / "run.json"), "--out", str(out)]
        assert main([*argv, "--set", f"data.path={oov}"]) == 2
        assert "token id 60000" in capsys.readouterr().err
        assert not out.exists() if out.name == "fresh" else sorted(p.name for p in out.iterdir()) == [".lock",
                                                                                                      "job.log"]
        assert main(argv) == 0  # the store of run.json: trains in the same folder
        assert (out / "checkpoints" / "latest").is_file()
    assert (root / "job" / "job.log").read_text() == "submitted"
    monkeypatch.setenv("COCOMIX_INJECT_NAN_STEPS", "1,2")  # a divergence is no bad input: its metrics stay
    assert main(["train", "--config", str(root / "run.json"), "--set", "train.max_bad_steps=2", "--set",
                 "train.save_every=0", "--out", str(root / "diverged")]) == 2
    assert "training stopped at step 2" in capsys.readouterr().err
    assert [json.loads(line)["kind"] for line in (root / "diverged" / "metrics.jsonl").read_text().splitlines()
            ].count("skip") == 2
