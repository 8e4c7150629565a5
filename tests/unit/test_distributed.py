"""The pieces of `cocomix.train.distributed` that need no torchrun: the environment, the optimizer-state formats,
the single-process fall-through, and DDP on a one-process gloo group (unused parameters of an ablation)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
from cocomix.errors import CheckpointError, ConfigError
from cocomix.methods import Batch, CoCoMix
from cocomix.train import distributed as dd
from tests.conftest import needs_cpu_fsdp


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


def test_cuda_device_of_each_process_is_indexed_and_made_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """`train.device=auto|cuda` gives an index-less device, which `torch.cuda.set_device` refuses: one process takes
    the current index; under torchrun LOCAL_RANK, or 0 where each process sees one GPU; more processes than GPUs on
    a node is an error. (torch.cuda is stubbed: this runs without a GPU.)"""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    monkeypatch.setattr(dd.dist, "is_initialized", lambda: True)  # no process group is joined here
    one = dd.DistContext(0, 1, 0)
    assert dd.setup(one, torch.device("cuda")) == torch.device("cuda", 2) == current[-1]
    assert dd.setup(one, torch.device("cuda", 1)) == torch.device("cuda", 1) == current[-1]
    assert dd.setup(one, torch.device("cpu")) == torch.device("cpu") and len(current) == 2
    for visible, local_rank, want in ((8, 3, 3), (1, 3, 0)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda v=visible: v)
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        got = dd.setup(dd.DistContext(3, 4, local_rank), torch.device("cuda"))
        assert got == torch.device("cuda", want) == current[-1]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(ConfigError, match="LOCAL_RANK=5: this node shows 4 GPUs"):
        dd.setup(dd.DistContext(5, 8, 5), torch.device("cuda"))
    # a launcher that sets no LOCAL_RANK would put a node's ranks on one GPU: said where the node shows several
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(ConfigError, match="^environment LOCAL_RANK: not set, while this node shows 4 GPUs"):
        dd.setup(dd.DistContext(1, 2, 0), torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU shown to each process: cuda:0
    assert dd.setup(dd.DistContext(1, 2, 0), torch.device("cuda")) == torch.device("cuda", 0)


def test_a_process_group_without_torchruns_environment_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """WORLD_SIZE > 1 without RANK or the rendezvous address: torch's env:// start would fail with a ValueError
    traceback; said in one line before any group is joined (and before a run folder exists)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(dd.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dd.dist, "init_process_group", lambda *a, **k: pytest.fail("joined without the environment"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    ctx = dd.context_from_env()
    with pytest.raises(ConfigError, match=r"^environment RANK, MASTER_ADDR, MASTER_PORT: not set, while "
                                          r"WORLD_SIZE=2 asks for that many processes; start them with torchrun"):
        dd.setup(ctx, torch.device("cpu"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(ConfigError, match=r"^environment MASTER_PORT: not set"):
        dd.setup(ctx, torch.device("cpu"))


def test_optimizer_state_names_become_positions() -> None:
    """`_positional`: the FQN-keyed state torch's gathering returns, keyed as `Optimizer.state_dict` keys it."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    plain = opt.state_dict()
    flat = ["0.weight", "0.bias", "1.weight", "1.bias"]
    named = {"state": {flat[i]: s for i, s in plain["state"].items()},
             "param_groups": [{**g, "params": [flat[i] for i in g["params"]]} for g in plain["param_groups"]]}
    back = dd._positional(named)
    assert back["param_groups"] == plain["param_groups"]
    assert all(torch.equal(back["state"][i]["exp_avg"], plain["state"][i]["exp_avg"]) for i in range(4))


class _OneRank(dd.DistContext):  # FSDP on a one-process group (a real run has world_size > 1)
    active = property(lambda self: True)


@needs_cpu_fsdp
@pytest.mark.parametrize("mixing,steps", [("insert", 0), ("none", 2), ("insert", 2)])
def test_a_saved_optimizer_state_loads_into_fsdp_as_into_one_process(mixing: str, steps: int,
                                                                     one_rank_group: None) -> None:
    """What `full_state` saves under FSDP loads back (`load_optimizer`) to the very state one process would hold:
    also when no update was applied yet (empty: no AdamW step may be invented) and for concept.mixing=none, whose
    unused compression layer has no state; both failed through torch's DCP loading."""
    from torch.distributed.tensor import DTensor

    from cocomix.train.optim import build_optimizer

    def build() -> tuple[CoCoMix, torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        run = RunConfig(method="cocomix", model=ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32,
                                                            context_length=64), data=DataConfig(seq_len=16),
                        concept=ConceptConfig(n_latents=80, concept_layer=2, mix_k=8, k_attr=4, mixing=mixing))
        method = CoCoMix(run)
        method.targets = lambda batch: torch.randint(0, 80, (2, 16, 4), generator=torch.Generator().manual_seed(1))
        module = dd.wrap(method.build_model(), _OneRank(0, 1, 0), "fsdp", torch.device("cpu"))
        return method, module, build_optimizer(module, run.train, torch.device("cpu"))

    method, module, opt = build()
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        method.loss(module, Batch(ids))[0].backward()
        opt.step()
        opt.zero_grad()
    _, saved = dd.full_state(module, opt, _OneRank(0, 1, 0), "fsdp")
    assert len(saved["state"]) == len(opt.state) and (steps > 0) == bool(opt.state)
    _, module2, opt2 = build()
    dd.load_optimizer(module2, opt2, saved, _OneRank(0, 1, 0), "fsdp")
    assert len(opt2.state) == len(opt.state)  # no state invented, none refused
    for p, q in zip((p for g in opt.param_groups for p in g["params"]), (q for g in opt2.param_groups
                                                                        for q in g["params"]), strict=True):
        assert (p in opt.state) == (q in opt2.state)
        for key, value in opt.state.get(p, {}).items():
            got = opt2.state[q][key]
            assert isinstance(got, DTensor) == isinstance(value, DTensor)
            assert torch.equal(dd.local(got), dd.local(value)), key


def test_single_process_is_a_plain_model() -> None:
    model = torch.nn.Linear(2, 2)
    ctx = dd.DistContext()
    assert dd.wrap(model, ctx, "fsdp", torch.device("cpu")) is model
    with pytest.raises(ConfigError, match="train.parallel"):
        dd.wrap(model, ctx, "zero3", torch.device("cpu"))
    values = {"loss": torch.tensor(2.0)}
    assert dd.mean_over_ranks(values, ctx) is values
    t = torch.tensor(1.5)
    assert dd.local(t) is t  # a plain tensor passes through (a DTensor is made whole)


def test_fsdp_on_cpu_with_a_torch_too_old_for_it_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.6's CPU streams lack the `record_event` FSDP2 calls in its first forward: said before any work."""
    two = dd.DistContext(0, 2, 0)
    for parallel, device in (("fsdp", "cpu"), ("ddp", "cpu"), ("fsdp", "cuda")):
        if parallel == "fsdp" and device == "cpu" and not hasattr(torch.cpu.Stream, "record_event"):
            continue  # torch 2.6 itself: said below
        dd.check_support(two, parallel, torch.device(device))  # this torch: nothing to say
    monkeypatch.setattr(torch.cpu, "Stream", type("Stream", (), {}))  # a CPU stream as torch 2.6 has it
    with pytest.raises(ConfigError, match=r"^train\.parallel=fsdp: FSDP2 on CPU needs torch 2\.7 or newer \(this "
                       r"is torch .*\); use train\.parallel=ddp, GPUs, or a newer torch$"):
        dd.check_support(two, "fsdp", torch.device("cpu"))
    dd.check_support(two, "ddp", torch.device("cpu"))
    dd.check_support(two, "fsdp", torch.device("cuda"))
    dd.check_support(dd.DistContext(), "fsdp", torch.device("cpu"))  # one process: no FSDP at all


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    """A gloo process group of one process (DDP runs on it as on many; no torchrun needed)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mixing", ["insert", "none"])
def test_ddp_trains_the_prediction_only_ablation(mixing: str, one_rank_group: None) -> None:
    """mixing="none" leaves the compression layer unused; DDP is told so and takes two steps (it refuses the
    second otherwise: "Expected to have finished reduction in the prior iteration")."""
    model_cfg = ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64)
    run = RunConfig(method="cocomix", model=model_cfg, data=DataConfig(seq_len=16),
                    concept=ConceptConfig(n_latents=80, concept_layer=2, mix_k=8, k_attr=4, mixing=mixing))
    method = CoCoMix(run)
    assert method.unused_parameters == (mixing == "none")
    targets = torch.randint(0, 80, (2, 16, 4))
    method.targets = lambda batch: targets
    module = dd.wrap(method.build_model(), dd.DistContext(0, 2, 0), "ddp", torch.device("cpu"),
                     unused_parameters=method.unused_parameters)
    assert isinstance(module, torch.nn.parallel.DistributedDataParallel)
    for _ in range(2):
        loss, _ = method.loss(module, Batch(torch.randint(0, 97, (2, 16))))
        loss.backward()
    grads = {n: p.grad for n, p in module.module.named_parameters()}
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads.values())
    # the compression layer gets a gradient exactly when its vector is mixed in; the concept head always does
    assert (grads["seam.compress_weight"] is None) == (mixing == "none")
    assert all(g is not None for n, g in grads.items() if not n.startswith("seam.compress"))


def _resume_rank(rank: int, init: str, steps: list[int], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        dd.check_same_step(steps[rank], dd.DistContext(rank, 2, rank), torch.device("cpu"))
        result = "ok"
    except CheckpointError as e:
        result = str(e)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}").write_text(result)


@pytest.mark.parametrize("steps", [[3, 3], [3, 0]])
def test_ranks_must_resume_from_the_same_step(steps: list[int], tmp_path: Path) -> None:
    """Two processes: the same step passes; a rank that found no checkpoint (no shared filesystem) is an error on
    both ranks, before any collective that could hang."""
    import torch.multiprocessing as mp

    mp.spawn(_resume_rank, args=(f"file://{tmp_path / 'rendezvous'}", steps, str(tmp_path)), nprocs=2)
    results = [(tmp_path / f"rank{r}").read_text() for r in range(2)]
    if steps[0] == steps[1]:
        assert results == ["ok", "ok"]
    else:
        assert all("another rank" in r and "shared filesystem" in r for r in results), results


def test_a_resumed_optimizer_keeps_the_implementation_chosen_for_its_device() -> None:
    """A checkpoint's param groups carry `fused` / `foreach` (a GPU run's fused AdamW); loaded on another device
    the live optimizer's choice stays, the state and hyper-parameters come from the checkpoint."""
    w = torch.nn.Parameter(torch.randn(3))
    saved_opt = torch.optim.AdamW([w], lr=1e-3, foreach=True)
    w.grad = torch.ones(3)
    saved_opt.step()
    saved = saved_opt.state_dict()
    saved["param_groups"][0]["fused"] = True  # as written by a CUDA run
    live = torch.optim.AdamW([w], lr=5e-4, foreach=False)
    dd.load_optimizer(torch.nn.Linear(1, 1), live, saved, dd.DistContext(), "ddp")
    group = live.param_groups[0]
    assert group["foreach"] is False and not group["fused"] and group["lr"] == 1e-3
    assert torch.equal(live.state[w]["exp_avg"], saved_opt.state[w]["exp_avg"])


def test_dropout_seeds_differ_across_ranks_micro_batches_and_run_seeds() -> None:
    from cocomix.train.loop import dropout_seed

    seeds = {dropout_seed(seed, step, micro, rank) for seed in (7, 8) for step in range(50) for micro in range(4)
             for rank in range(8)}
    assert len(seeds) == 2 * 50 * 4 * 8  # no two (seed, step, micro, rank) share masks


@needs_cpu_fsdp
def test_fsdp_with_bf16_parameters_leaves_kds_teacher_logits_in_fp32(one_rank_group: None) -> None:
    """The root's forward inputs are not cast: chunked KD's teacher logits reach the KL in fp32 under
    fsdp_param_dtype=bfloat16 (as the whole-logits path, which never passes them through the model)."""
    from cocomix.model import Transformer, chunked_nll

    model = Transformer(ModelConfig(vocab_size=97, n_layer=2, n_head=2, d_model=16, context_length=32))
    seen = []
    real = chunked_nll.chunked_kd

    def spy(h, w, b, ids, teacher_logits, lam):  # noqa: ANN001, ANN202
        seen.append(teacher_logits.dtype)
        return real(h, w, b, ids, teacher_logits, lam)

    import cocomix.model.transformer as tr

    original = tr.chunked_kd
    tr.chunked_kd = spy
    try:
        class OneRank(dd.DistContext):  # FSDP on this one-process group (a real run has world_size > 1)
            active = property(lambda self: True)

        module = dd.wrap(model, OneRank(0, 1, 0), "fsdp", torch.device("cpu"), param_dtype="bfloat16")
        out = module(torch.randint(0, 97, (2, 16)), lm_loss=True, teacher_logits=torch.randn(2, 16, 97),
                     lambda_kd=0.1)
        out.loss.backward()
    finally:
        tr.chunked_kd = original
    assert seen == [torch.float32]
