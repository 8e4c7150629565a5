"""Data-parallel training under torchrun: DDP or FSDP2 (`fully_shard`), one node or many (no paper equation).

`torchrun --nproc_per_node=N -m cocomix train …` starts N copies of the same command; each reads its RANK,
WORLD_SIZE and LOCAL_RANK from the environment. Every rank builds the same model from the same seed, loads the
frozen teacher and SAE itself, and reads its own slice of each step's global batch from the `WindowSampler`
(micro-batch m of rank r holds positions (m · W + r) · B … of the step's G = B · grad_accum · W windows), so W
processes with micro-batch B see exactly the windows one process with micro-batch W · B sees.

- `ddp`: `DistributedDataParallel`; gradients are averaged once per optimizer step (`no_sync` on all but the
  last micro-batch).
- `fsdp`: FSDP2 — every transformer block and then the whole model are `fully_shard`ed (parameters, gradients
  and optimizer state split over the ranks); gradient reduce-scatter only on the last micro-batch
  (`set_requires_gradient_sync`); on CPU (gloo) a sum followed by FSDP's division by W, not `ReduceOp.AVG`.

Checkpoints stay in the single-process format whatever the mode: rank 0 writes the full (gathered) weights and
the optimizer state keyed by parameter position, so a run saved by W processes resumes on any other number of
processes with the same global batch. The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cocomix.errors import CheckpointError, CocomixError, ConfigError

PARALLEL = ("ddp", "fsdp")
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # torch's default is 10 (NCCL): short for big checkpoints


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def context_from_env() -> DistContext:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); a plain single process without it."""
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = os.environ.get(name)
        try:
            values[name] = int(raw) if raw is not None else None
        except ValueError:
            raise ConfigError(f"environment {name}: expected an integer, got {raw!r}") from None
    world = values["WORLD_SIZE"] or 1
    rank = values["RANK"] or 0
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"environment RANK={rank} / WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return DistContext(rank, world, values["LOCAL_RANK"] or 0)


def setup(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device: cuda:LOCAL_RANK on GPUs, or cuda:0 when the
    process sees one GPU (a scheduler may expose one per process). The CUDA device is made current, also for one
    process (`cuda:1`; `cuda` / `auto` become the current index), so that its RNG state is the one checkpoints save
    and restore. Collectives wait up to `COLLECTIVE_TIMEOUT` (rank 0 writes and hashes whole checkpoints while the
    others wait)."""
    if not ctx.active:
        if device.type == "cuda":
            device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        return device
    if not dist.is_initialized():  # (torch's env:// start needs these; its own error is a traceback)
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise ConfigError(f"environment {', '.join(missing)}: not set, while WORLD_SIZE={ctx.world_size} "
                              "asks for that many processes; start them with torchrun, which sets these")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if visible > 1 and not os.environ.get("LOCAL_RANK"):  # every rank of the node would take cuda:0
            raise ConfigError(f"environment LOCAL_RANK: not set, while this node shows {visible} GPUs; start the "
                              "processes with torchrun, which sets it (or show each process one GPU)")
        if visible > 1 and ctx.local_rank >= visible:
            raise ConfigError(f"environment LOCAL_RANK={ctx.local_rank}: this node shows {visible} GPUs; start at "
                              f"most {visible} processes per node (--nproc_per_node)")
        device = torch.device("cuda", ctx.local_rank if visible > 1 else 0)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return device


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (a collective); nothing for one process."""
    if ctx.active and dist.is_initialized():
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    """Leave the process group (after `barrier`: a rank leaving early would fail the others' last collective)."""
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def check_support(ctx: DistContext, parallel: str, device: torch.device, param_dtype: str = "float32") -> None:
    """ConfigError, before any work, where this torch cannot run `parallel` on `device`: FSDP2 on CPU (gloo)
    needs torch 2.7 or newer, whose CPU streams have the `record_event` FSDP2 calls (2.6 fails in the first
    forward with an AttributeError); on GPUs torch 2.6 runs it. Also where FSDP's `param_dtype` would be ignored:
    one process trains the model unwrapped (`wrap`), so bf16 parameters would silently be fp32 ones."""
    if not ctx.active and parallel == "fsdp" and param_dtype != "float32":
        raise ConfigError(f"train.fsdp_param_dtype={param_dtype}: FSDP shards across 2 or more processes; one "
                          "process trains the model unwrapped in float32 (bf16 autocast on GPUs) and would ignore "
                          "it: set train.fsdp_param_dtype=float32 (also to resume an FSDP run on one process)")
    if ctx.active and parallel == "fsdp" and device.type == "cpu" and not hasattr(torch.cpu.Stream, "record_event"):
        raise ConfigError(f"train.parallel=fsdp: FSDP2 on CPU needs torch 2.7 or newer (this is torch "
                          f"{torch.__version__}); use train.parallel=ddp, GPUs, or a newer torch")


def wrap(model: nn.Module, ctx: DistContext, parallel: str, device: torch.device,
         unused_parameters: bool = False, param_dtype: str = "float32") -> nn.Module:
    """The module the training step calls: the model itself (one process), DDP around it, or the model after
    `fully_shard` of each block and of the root (FSDP2 shards in place: the returned module is `model`).
    `unused_parameters`: some parameters get no gradient by design (an ablation), which DDP must be told.
    `param_dtype` (FSDP only): the dtype parameters are gathered and computed in; gradients reduce in fp32."""
    if parallel not in PARALLEL:
        raise ConfigError(f"train.parallel: expected one of {PARALLEL}, got {parallel!r}")
    if not ctx.active:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=unused_parameters)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (ctx.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype), reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # the root's floating inputs stay as given: KD's teacher logits (`forward(teacher_logits=)`) are the fp32
    # target of its KL, not an activation (ids and concept targets are integers, never cast)
    root = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype), reduce_dtype=torch.float32,
                                cast_forward_inputs=False)
    fully_shard(model, mesh=mesh, mp_policy=root)
    if device.type == "cpu" and hasattr(model, "set_force_sum_reduction_for_comms"):  # torch >= 2.8
        # gloo: torch 2.8's (at least) sums where FSDP2 asks for ReduceOp.AVG (pytorch#162338): gradients W times
        # too large. A sum and FSDP's own division by W instead, on every sharded module
        for module in (*model.blocks, model):
            module.set_force_sum_reduction_for_comms(True)
    return model


@contextlib.contextmanager
def grad_sync(module: nn.Module, ctx: DistContext, parallel: str, sync: bool) -> Iterator[None]:
    """Within it, backward reduces gradients across ranks only when `sync` (the last micro-batch of a step)."""
    if not ctx.active:
        yield
    elif parallel == "ddp":
        with contextlib.nullcontext() if sync else module.no_sync():
            yield
    else:
        module.set_requires_gradient_sync(sync)
        yield


def local(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a tensor or a DTensor (FSDP2's gradient norm)."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def mean_over_ranks(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """Each metric averaged over the ranks (a collective: every rank calls it at the same steps)."""
    if not ctx.active or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].float() for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= ctx.world_size
    return dict(zip(keys, stacked, strict=True))


def sum_over_ranks(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The element-wise sum of `t` over the ranks (a collective); `t` itself without torchrun."""
    if ctx.active:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def check_same_step(step: int, ctx: DistContext, device: torch.device) -> None:
    """Every rank resumes from the same checkpoint step (a collective); otherwise a one-line error on every rank,
    before ranks that disagree could run different numbers of steps or mix loaded and fresh FSDP shards."""
    if not ctx.active:
        return
    t = torch.tensor([step, -step], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != step or int(-t[1]) != step:
        raise CheckpointError(f"run directory: rank {ctx.rank} resumes from step {step} but another rank from "
                              f"step {int(t[0]) if int(t[0]) != step else int(-t[1])}; every node must see the "
                              "same run directory (a shared filesystem)")


def from_rank0(value: int, ctx: DistContext, device: torch.device) -> int:
    """Rank 0's integer on every rank (a collective); `value` itself for one process."""
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def max_over_ranks(value: int, ctx: DistContext, device: torch.device) -> int:
    """The largest of the ranks' small non-negative integers, on every rank (a collective: every rank calls it at
    the same steps); e.g. the number of a stop signal any rank received."""
    if not ctx.active:
        return value
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def on_main_rank(compute: Callable[[], list[int]], n: int, ctx: DistContext, device: torch.device) -> list[int]:
    """`compute()` (n integers) run by rank 0 alone, its result on every rank (collectives). When it raises there,
    every other rank stops with a one-line error instead of waiting for rank 0."""
    if not ctx.active:
        return compute()
    if ctx.is_main:
        try:
            values = compute()
        except BaseException:
            from_rank0(-1, ctx, device)  # the others' status broadcast below
            raise
        from_rank0(0, ctx, device)
    elif from_rank0(0, ctx, device) < 0:
        raise CocomixError(f"rank {ctx.rank}: rank 0 stopped with an error (see its message)")
    if n == 0:
        return []
    t = torch.tensor(values if ctx.is_main else [0] * n, dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def main_rank_does(action: Callable[[], object], ctx: DistContext, device: torch.device) -> None:
    """`action()` (a check or a write) on rank 0 alone, the others waiting for it; when it raises there, every
    other rank stops with a one-line error instead of waiting in the next collective."""
    def compute() -> list[int]:
        action()
        return []

    on_main_rank(compute, 0, ctx, device)


def gather_rows(t: torch.Tensor, rows: int, ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's t (n_r, ...), n_r <= rows, on every rank in rank order (collectives: padded to `rows` rows to
    travel, cut back after); [t] for one process."""
    if not ctx.active:
        return [t]
    pad = t.new_zeros((rows, *t.shape[1:]))
    pad[:t.shape[0]] = t
    count = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    counts = [torch.empty_like(count) for _ in range(ctx.world_size)]
    parts = [torch.empty_like(pad) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    dist.all_gather(parts, pad)
    return [p[:int(c)] for p, c in zip(parts, counts, strict=True)]


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext,
               parallel: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, optimizer state) in the single-process format; under FSDP a collective that gathers shards."""
    if not (ctx.active and parallel == "fsdp"):
        return {n: t.detach() for n, t in model.state_dict().items()}, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model, options=_options())  # full on rank 0, empty elsewhere
    aliases = ({n for n, _ in model.named_parameters(remove_duplicate=False)}
               - {n for n, _ in model.named_parameters()})  # tied weights (lm_head = wte) are stored once
    weights = {n: t for n, t in weights.items() if n not in aliases}
    if not optimizer.state:  # no update applied yet (all skipped): torch would initialise the state with a step
        return weights, optimizer.state_dict() if ctx.is_main else {}
    optim = get_optimizer_state_dict(model, optimizer, options=_options())
    return weights, _positional(optim) if ctx.is_main else {}


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any], ctx: DistContext,
                   parallel: str) -> None:
    """Load a single-process optimizer state into the (possibly sharded) optimizer. The live optimizer's
    implementation flags (`fused`, `foreach`, `capturable`: what `build_optimizer` chose for this device) replace the
    saved ones, so a run saved on a CPU and resumed on a GPU (or back) runs the device's AdamW."""
    live = optimizer.param_groups
    if len(saved.get("param_groups", [])) == len(live):
        saved = {**saved, "param_groups": [
            {**g, **{k: lg[k] for k in ("fused", "foreach", "capturable", "differentiable") if k in lg}}
            for g, lg in zip(saved["param_groups"], live, strict=True)]}
    if not (ctx.active and parallel == "fsdp"):
        optimizer.load_state_dict(saved)
        return
    # Under FSDP every rank read the whole file: each full state tensor is cut into this rank's shard exactly as its
    # parameter is (no communication), and the optimizer loads it as one process would. (DCP's
    # set_optimizer_state_dict is not used: it first initialises the state with a zero step, so an empty saved
    # state -- every update so far skipped -- resumed at AdamW step 1, and it refuses a parameter without state --
    # the unused compression layer of concept.mixing=none.)
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    if len(params) != sum(len(g["params"]) for g in saved.get("param_groups", [])):
        raise ConfigError("optimizer state: the checkpoint's parameter count differs from the model's")

    def shard(value: Any, p: torch.Tensor) -> Any:  # a full (param-shaped) state tensor -> this rank's shard
        if isinstance(p, DTensor) and torch.is_tensor(value) and value.dim() > 0:
            # a copy first: the saved tensor may be a view of the memory-mapped file, which a shard must not keep
            return distribute_tensor(value.to(p.device, copy=True), p.device_mesh, p.placements, src_data_rank=None)
        return value  # the step count, or a parameter that is not sharded

    state = {i: {k: shard(v, params[int(i)]) for k, v in s.items()} for i, s in saved.get("state", {}).items()}
    optimizer.load_state_dict({**saved, "state": state})


def _positional(named: dict[str, Any]) -> dict[str, Any]:
    """FQN-keyed optimizer state -> keyed by position in the param groups (torch's own `state_dict` format)."""
    order = [n for g in named["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(order)}
    groups, start = [], 0
    for g in named["param_groups"]:
        groups.append({**g, "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    return {"state": {index[n]: s for n, s in named["state"].items()}, "param_groups": groups}
