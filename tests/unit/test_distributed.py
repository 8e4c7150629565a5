"""The pieces of `cocomix.train.distributed` that need no process group: the torchrun environment, the
optimizer-state formats, and the single-process fall-through."""

from __future__ import annotations

import pytest
import torch

from cocomix.errors import ConfigError
from cocomix.train import distributed as dd


def test_environment_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert dd.context_from_env() == dd.DistContext(0, 1, 0) and not dd.context_from_env().active
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = dd.context_from_env()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.active) == (3, 4, 1, False, True)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4"):
        dd.context_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="environment RANK"):
        dd.context_from_env()


def test_optimizer_state_round_trips_between_positions_and_names() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    plain = opt.state_dict()
    names = [["0.weight", "0.bias"], ["1.weight", "1.bias"]]
    named = dd._by_name(plain, names)
    assert list(named["state"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert named["param_groups"][1]["params"] == ["1.weight", "1.bias"]
    back = dd._positional(named)
    assert back["param_groups"] == plain["param_groups"]
    assert all(torch.equal(back["state"][i]["exp_avg"], plain["state"][i]["exp_avg"]) for i in range(4))
    with pytest.raises(ConfigError, match="parameter count"):
        dd._by_name(plain, [["0.weight"], ["1.weight", "1.bias"]])


def test_single_process_is_a_plain_model() -> None:
    model = torch.nn.Linear(2, 2)
    ctx = dd.DistContext()
    assert dd.wrap(model, ctx, "fsdp", torch.device("cpu")) is model
    with pytest.raises(ConfigError, match="train.parallel"):
        dd.wrap(model, ctx, "zero3", torch.device("cpu"))
    values = {"loss": torch.tensor(2.0)}
    assert dd.mean_over_ranks(values, ctx) is values
    assert dd.scalar(torch.tensor(1.5)) == 1.5
