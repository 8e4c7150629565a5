"""`make demo`: prepare the embedded Shakespeare corpus, pretrain the tiny NTP model on CPU, and report.

The report compares the model's validation loss with the unigram entropy of the validation tokens (the loss of
the best context-free predictor): a model that learned anything from context must be clearly below it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from cocomix.atomic import atomic_write_text
from cocomix.config import run_config
from cocomix.data import TokenStore, prepare
from cocomix.eval.perplexity import evaluate_loss
from cocomix.model import generate
from cocomix.presets import get_preset
from cocomix.runs import load_run
from cocomix.train import train


def run_demo(data_dir: str | Path = "data/shakespeare", run_dir: str | Path = "runs/demo",
             preset: str = "tiny", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prepare (if needed), train (or resume), evaluate; returns and writes run_dir/demo_result.json."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if not (data_dir / "meta.json").is_file():
        print(f"demo: preparing the Shakespeare corpus into {data_dir}", file=sys.stderr)
        prepare("shakespeare", data_dir, tokenizer="bpe:4096")
    base = get_preset(preset)
    cfg_dict = base.to_dict()
    cfg_dict["data"]["path"] = str(data_dir)
    for key, value in (overrides or {}).items():
        section, name = key.split(".")
        cfg_dict[section][name] = value
    run = run_config(cfg_dict)
    train(run, run_dir, resume=True)

    _, method, model, ckpt = load_run(run_dir)
    store = TokenStore.open(data_dir)
    val = evaluate_loss(method, model, store, "val", run.data.seq_len, run.train.micro_batch_size)
    unigram = store.unigram_entropy("val")
    tok = store.tokenizer()
    prompt = torch.tensor([tok.encode("ROMEO:\n")])
    sample, _ = generate(model, prompt, 60, temperature=0.8, top_k=50,
                         generator=torch.Generator().manual_seed(0))
    result = {
        "preset": preset,
        "checkpoint": str(ckpt),
        "params": model.num_params(),
        "train_tokens": run.train.steps * run.train.micro_batch_size * run.train.grad_accum * run.data.seq_len,
        "val_loss_nats": val["loss"],
        "val_ppl": val["ppl"],
        "val_tokens": val["tokens"],
        "unigram_entropy_nats": unigram,
        "sample": tok.decode(sample[0].tolist()),
    }
    atomic_write_text(run_dir / "demo_result.json", json.dumps(result, indent=2))
    print("\n== cocomix demo: tiny NTP on Shakespeare (CPU) ==")
    print(f"parameters             {result['params'] / 1e6:.2f}M")
    print(f"training tokens        {result['train_tokens']:,}")
    print(f"validation loss        {val['loss']:.4f} nats/token  (ppl {val['ppl']:.1f}, {val['tokens']:,} tokens)")
    print(f"unigram entropy (val)  {unigram:.4f} nats/token")
    print(f"difference             {unigram - val['loss']:.4f} nats/token below the unigram baseline")
    print(f"sample:\n{result['sample']}")
    print(f"\nwritten: {run_dir / 'demo_result.json'}")
    return result
