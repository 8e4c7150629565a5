"""`evaluate_loss` split over processes (`shard`, `sum_over_shards`): the shards' sums give the one-process mean
over the same windows, and every shard runs the same number of forwards (FSDP's collectives need lockstep)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cocomix.data.store import TokenStore
from cocomix.eval import evaluate_loss
from cocomix.methods import METHODS
from cocomix.model import Transformer
from cocomix.presets import get_preset
from tests.conftest import tiny_model_config


@pytest.fixture(scope="module")
def store(store_dir: Path) -> TokenStore:
    return TokenStore.open(store_dir)


@pytest.mark.parametrize(("world", "batch_size", "max_batches"), [(2, 3, 0), (3, 2, 5), (4, 4, 0), (5, 16, 0)])
def test_shards_sum_to_the_single_process_mean(store: TokenStore, world: int, batch_size: int,
                                               max_batches: int) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(n_layer=2, vocab_size=store.vocab_size)).eval()
    method = METHODS["ntp"](get_preset("tiny"))
    whole = evaluate_loss(method, model, store, "val", 16, batch_size, max_batches)
    calls, real = [], method.eval_loss
    parts: list[torch.Tensor] = []
    reported: list[list[tuple[int, int]]] = []  # progress(done, total) of each shard
    for rank in range(world):
        n = len(calls)
        method.eval_loss = lambda m, ids: (calls.append(ids.shape[0]), real(m, ids))[1]
        reported.append([])
        evaluate_loss(method, model, store, "val", 16, batch_size, max_batches, shard=(rank, world),
                      sum_over_shards=lambda t: (parts.append(t), t)[1],
                      progress=lambda done, total: reported[-1].append((done, total)))
        calls[n:] = [len(calls) - n]  # forwards of this shard
    assert len(set(calls)) == 1  # the same number of forwards on every shard
    total, windows = torch.stack(parts).sum(0).tolist()
    # progress: each shard counts up to its own total, once per batch it counts; the totals add up to the whole
    assert sum(r[-1][1] for r in reported if r) == whole["windows"]
    assert all(r[-1][0] == r[-1][1] and len({t for _, t in r}) == 1 for r in reported if r)
    assert all(b > a for r in reported for (a, _), (b, _) in zip(r, r[1:], strict=False))
    assert int(windows) == whole["windows"] and total / windows == pytest.approx(whole["loss"], rel=1e-12)
    # and the one-process mean itself: every prediction of the first `windows` windows, weighted equally
    n = int(windows)
    ids = store.batch("val", list(range(n)), 16)
    with torch.no_grad():
        logits = model(ids).logits
    direct = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert whole["loss"] == pytest.approx(float(direct), rel=1e-5) and whole["tokens"] == n * 15
    assert whole["ppl"] == pytest.approx(math.exp(float(direct)), rel=1e-5)  # perplexity: e^(mean NLL per token)


def test_evaluation_runs_with_dropout_off_and_gives_the_model_back_in_training_mode(store: TokenStore) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(n_layer=2, vocab_size=store.vocab_size, dropout=0.5))  # training mode
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10.0)  # away from the uniform initial prediction, so that dropout moves the loss
    method = METHODS["ntp"](get_preset("tiny"))
    first = evaluate_loss(method, model, store, "val", 16, 4, 2)
    assert model.training  # periodic validation mid-run: training goes on with dropout
    ids = store.batch("val", list(range(8)), 16)
    with torch.no_grad():
        logits = model.eval()(ids).logits  # the deterministic forward: dropout off
    direct = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    model.train()
    assert first["loss"] == pytest.approx(float(direct), rel=1e-5) and first["windows"] == 8
    assert evaluate_loss(method, model, store, "val", 16, 4, 2)["loss"] == first["loss"]
    with torch.no_grad():  # (and dropout at 0.5 does change the loss: the check above could fail)
        assert float(F.cross_entropy(model(ids).logits[:, :-1].reshape(-1, logits.shape[-1]),
                                     ids[:, 1:].reshape(-1))) != pytest.approx(first["loss"], rel=1e-3)
