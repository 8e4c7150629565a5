"""Opening a trained run for inference: config, method and model with weights from a checkpoint, and its token
store, checked to hold the run's tokenizer (`check_tokenizer`) (no paper equation)."""

from __future__ import annotations

from pathlib import Path

import torch

from cocomix.config import RunConfig
from cocomix.data import TokenStore
from cocomix.digest import file_sha256
from cocomix.errors import CheckpointError, DataError
from cocomix.methods import METHODS, Method
from cocomix.model import Transformer
from cocomix.train.checkpoint import (
    CKPT_DIR,
    load_model_weights,
    read_run_config,
    read_state,
    resolve_checkpoint,
    step_folders,
    verify_checkpoint,
)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> tuple[RunConfig, Method, Transformer, Path]:
    """(config, method, model in eval mode, checkpoint dir) from a run directory or a checkpoint directory."""
    run_dir, ckpt = resolve_checkpoint(path)
    try:
        verify_checkpoint(ckpt, only=("model.safetensors", "state.json"))  # (not the optimizer state)
    except CheckpointError as e:
        others = [d for d in step_folders(run_dir / CKPT_DIR) if d != ckpt and (d / "state.json").is_file()]
        hint = (f"give another of the run's checkpoint folders instead (e.g. {others[-1]})" if others else
                "the run has no other checkpoint to fall back to")
        raise CheckpointError(f"{e}; {hint}") from None
    run = read_run_config(run_dir)
    method = METHODS[run.method](run)
    with torch.random.fork_rng(devices=[]):  # the initialisation the weights replace leaves the caller's RNG alone
        model = method.build_model()
    load_model_weights(model, ckpt / "model.safetensors")
    return run, method, model.to(device).eval(), ckpt


def run_store(run: RunConfig, data: str | Path | None = None, ckpt: Path | None = None) -> TokenStore:
    """The token store given by `data` (a `--data` flag), else the run's `data.path` — which is relative to where
    training ran, so a failure says so and how to point elsewhere. With the checkpoint, a store whose tokenizer is
    not the one the run was trained with is refused (its ids would stand for other text)."""
    if data:
        store = TokenStore.open(data)
    else:
        try:
            store = TokenStore.open(run.data.path)
        except DataError as e:
            raise DataError(f"{e} (the run's data.path {run.data.path!r}, read from {Path.cwd()}; pass --data DIR "
                            "to use a store elsewhere)") from None
    check_tokenizer(store.path / "tokenizer", ckpt, "give the run's token store" + (" as --data" if data else ""))
    return store


def check_tokenizer(tokenizer_dir: Path, ckpt: Path | None, hint: str, whose: str = "the run") -> None:
    """DataError when the checkpoint recorded the tokenizer it was trained with and `tokenizer_dir` holds another
    (a store of other ids would stand for other text); `hint` says what to give instead, `whose` names the run."""
    trained = (read_state(ckpt).get("store") or {}).get("tokenizer_sha256") if ckpt is not None else None
    if trained is not None and file_sha256(tokenizer_dir / "tokenizer.json") != trained:
        from cocomix.data.tokenizer import load_tokenizer

        load_tokenizer(str(tokenizer_dir / "tokenizer.json"))  # a damaged file is said as such, not as another one
        raise DataError(f"{tokenizer_dir.parent}: its tokenizer is not the one {whose} was trained with "
                        f"(tokenizer.json differs); {hint}")
