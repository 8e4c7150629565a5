"""The analytic FLOPs (`cocomix.flops`) against the matmul FLOPs torch's own formulas count while the real modules
run: student forwards and training steps of every built-in method, KD steps, the online targets of an HF teacher
and of a cocomix run used as a teacher (its concept slots and head included), HF teachers of other shapes
(mixtures of experts, wide heads, MLA, sliding windows, Mamba hybrids) and both sides of `bench/step_cost.py`'s
naive-vs-optimised ratio.

The count is the one `torch.utils.flop_counter` keeps (mm, addmm, bmm, attention), with the attention backward
taken as dQ, dK, dV and dP (the module's convention; torch's formula adds a recomputation of the scores). What the
analytic count names but the code computes elementwise, or computes again, is added or taken off by name below.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import bmm_flop, flop_registry, sdpa_flop_count, shape_wrapper

from cocomix.concepts.attribution import compute_targets
from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
from cocomix.flops import LMShape, lm_forward, lm_prefix_forward, recorded_teacher, run_flops, teacher_flops
from cocomix.methods import METHODS, Batch
from cocomix.sae.topk import TopKSAE
from cocomix.teacher import Teacher

aten = torch.ops.aten
T, D, V, C, MIX_K, SAE_K = 16, 32, 97, 80, 8, 8


def _sdpa_forward(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_backward(grad: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    b, h, s, d = q
    keys, d_v = k[2], v[3]  # dP = dO·Vᵀ and dV = Pᵀ·dO (value width), dQ = dS·K and dK = dSᵀ·Q (query·key width)
    return 2 * bmm_flop((b * h, s, d_v), (b * h, d_v, keys)) + 2 * bmm_flop((b * h, s, d), (b * h, d, keys))


def _grouped_mm(a: Any, b: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    """Mixture-of-experts matmuls (`transformers`' grouped_mm experts): every routed row of a (M, K) times its
    expert's (K, N) matrix."""
    return 2 * a[0] * a[-1] * b[-1]


class MatmulFlops(TorchDispatchMode):
    """Sums the FLOPs of every matmul and attention op that runs (a dispatch mode: unlike `FlopCounterMode` it
    installs no module hooks, which `torch.autograd.grad` on a teacher's leaf does not allow)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: dict[str, int] = {}
        self.formulas = {**flop_registry,
                         aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(_sdpa_forward),
                         aten._scaled_dot_product_flash_attention_for_cpu_backward: shape_wrapper(_sdpa_backward),
                         aten._grouped_mm: shape_wrapper(_grouped_mm)}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            self.total += flops
            name = str(func._overloadpacket)
            self.by_op[name] = self.by_op.get(name, 0) + flops
        return out


def _run(method: str, flavour: str = "gpt2", **concept: Any) -> RunConfig:
    model = ModelConfig(flavour=flavour, vocab_size=V, n_layer=4, n_head=4, d_model=D, context_length=64)
    c = {"n_latents": C, "concept_layer": 2, "mix_k": MIX_K, "k_attr": 4, "d_teacher": 24, **concept}
    return RunConfig(method=method, model=model, data=DataConfig(seq_len=T), concept=ConceptConfig(**c))


def _gather(run: RunConfig) -> float:
    """The compression of a concept head mixing its TopK: counted as a 2·mix_k·d matmul of the gathered rows,
    computed elementwise (no matmul op)."""
    c = run.concept
    return 2.0 * MIX_K * D if run.method == "cocomix" and c.target == "concepts" and c.mixing != "none" else 0.0


STUDENTS = [("ntp", {}), ("pause", {}), ("cocomix", {}), ("cocomix", {"mixing": "add"}),
            ("cocomix", {"mixing": "none"}), ("cocomix", {"target": "hidden"}),
            ("cocomix", {"target": "hidden", "mixing": "none"}), ("cocomix", {"mixing": "none", "lambda_concept": 0.0})]


def _id(value: Any) -> str:
    return "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize(("method", "concept"), STUDENTS, ids=_id)
def test_the_forward_of_every_student_costs_what_lm_forward_counts(method: str, concept: dict[str, str],
                                                                   flavour: str) -> None:
    run = _run(method, flavour, **concept)
    model = METHODS[method](run).build_model().eval()
    ids = torch.randint(0, V, (2, T))
    with MatmulFlops() as count, torch.no_grad():
        model(ids)
    assert count.total / ids.numel() == lm_forward(LMShape.from_run(run), T) - _gather(run)


@pytest.mark.parametrize(("method", "concept"), STUDENTS, ids=_id)
def test_a_training_step_costs_what_run_flops_counts_for_the_student(method: str, concept: dict[str, str]) -> None:
    """Loss and backward (weights included) of one step: 3× the forward. The fused concept head computes its
    logits again in the backward instead of keeping (B, T, C) of them: one 2·d·C more, which model FLOPs (as
    activation checkpointing) do not count."""
    run = _run(method, "llama", **concept)
    meth = METHODS[method](run)
    model = meth.build_model().train()
    ids = torch.randint(0, V, (2, T))
    targets = torch.randint(0, C, (2, T, 4))
    targets[:, -1] = -1
    meth.targets = lambda batch: targets  # type: ignore[method-assign]  # what a teacher would give
    meth.teacher = SimpleNamespace(hidden=lambda x: torch.randn(2, T, 24))  # type: ignore[assignment]
    with MatmulFlops() as count:
        loss, _ = meth.loss(model, Batch(ids))
        loss.backward()
    c = run.concept
    recompute = 2.0 * D * C if method == "cocomix" and c.target == "concepts" and c.lambda_concept > 0 else 0.0
    assert count.total / ids.numel() == run_flops(run)["student"] - 3 * _gather(run) + recompute


@pytest.mark.parametrize("method", ["kd", "kd-pause"])
@pytest.mark.parametrize("teacher_kind", ["hf", "cocomix"])
def test_a_distillation_step_costs_the_student_and_the_teachers_forward(method: str, teacher_kind: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    run = _run(method)
    if teacher_kind == "hf":
        teacher = Teacher(GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=D, n_layer=3, n_head=4, n_positions=64)), 0)
    else:  # a cocomix run distilled from: its slots and head are part of its forward
        teacher_run = _run("cocomix")
        teacher = Teacher(METHODS["cocomix"](teacher_run).build_model(), 0)
        teacher.run = teacher_run
    meth = METHODS[method](run)
    meth.teacher = teacher  # type: ignore[attr-defined]  # what prepare() loads
    model = meth.build_model().train()
    ids = torch.randint(0, V, (2, T))
    with MatmulFlops() as count:
        loss, _ = meth.loss(model, Batch(ids))
        loss.backward()
    flops = run_flops(run, LMShape.of_teacher(teacher))
    gather = _gather(teacher.run) if teacher.run is not None else 0.0
    assert count.total / ids.numel() == flops["student"] + flops["teacher"] - gather


def _save_run(run: RunConfig, run_dir: Path) -> None:
    from cocomix.train.checkpoint import save_checkpoint

    run_dir.mkdir()
    (run_dir / "config.json").write_text(run.to_json())
    save_checkpoint(run_dir, 1, METHODS[run.method](run).build_model(), {"state": {}, "param_groups": []}, {}, keep=1)


def _targets_flops(teacher: Teacher, sae: TopKSAE, ids: torch.Tensor, selection: str) -> float:
    compute_targets(teacher, sae, ids, selection=selection)  # the first call checks the teacher's split head once
    with MatmulFlops() as count:
        compute_targets(teacher, sae, ids, selection=selection)
    return count.total / ids.numel()


@pytest.mark.parametrize(("method", "concept"), [("hf", {}), ("cocomix", {}), ("cocomix", {"mixing": "add"}),
                                                 ("cocomix", {"mixing": "none"}), ("pause", {})], ids=_id)
def test_online_targets_cost_what_the_teacher_and_sae_counts_say(method: str, concept: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """Teacher forward, the activation-only backward down to teacher_layer, SAE encode and attribution gather; a
    cocomix run as teacher with its slots and head (before, counted as a plain decoder: ~45% too little). The
    teacher's chunked head reads no logits at the final position (no next token): 2·d·V/T less each way."""
    if method == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=D, n_layer=4, n_head=4, n_positions=64,
                                   bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path / "t")
    else:
        _save_run(_run(method, **concept), tmp_path / "t")
    teacher = Teacher.from_pretrained(tmp_path / "t", 1)
    shape = LMShape.of_teacher(teacher)
    if method != "hf":
        assert teacher.run is not None and shape == LMShape.from_run(teacher.run) and shape.seam_layer == 2
        assert recorded_teacher({"teacher_shape": shape.to_json()}) == shape  # what a target cache records
    from cocomix.flops import teacher_shape

    assert teacher_shape(str(tmp_path / "t")) == shape  # `cocomix flops` without loading it
    if method != "hf":  # ... also given a checkpoint of the run, as a teacher may be
        assert teacher_shape(str(next((tmp_path / "t" / "checkpoints").glob("step_*")))) == shape
    old = {"block_params": list(shape.block_params), "d_model": D, "vocab_size": V}  # a cache's record before seams
    assert recorded_teacher({"teacher": str(tmp_path / "t"), "teacher_shape": old}) == shape  # the named teacher
    bare = LMShape(shape.block_params, D, V)
    assert recorded_teacher({"teacher": str(tmp_path / "gone"), "teacher_shape": old}) == bare  # else the record
    sae = TopKSAE(D, C, SAE_K)
    ids = torch.randint(0, V, (2, T))
    last = 2.0 * D * V / T
    gather = _gather(teacher.run) if teacher.run is not None else 0.0
    want = teacher_flops(shape, T, 1, True) + 2.0 * D * C + 2.0 * SAE_K * D
    assert _targets_flops(teacher, sae, ids, "attribution") == want - 2 * last - 2 * gather
    assert _targets_flops(teacher, sae, ids, "activation") == lm_prefix_forward(shape, T, 1) + 2.0 * D * C
    kd = dataclasses.replace(_run("kd"), concept=dataclasses.replace(_run("kd").concept, teacher=str(tmp_path / "t")))
    with MatmulFlops() as count, torch.no_grad():
        teacher.model(ids)
    assert count.total / ids.numel() == run_flops(kd)["teacher"] - gather  # KD: the teacher's whole forward


def _hf(arch: str) -> torch.nn.Module:
    import transformers as tf

    small = {"vocab_size": V, "hidden_size": D, "intermediate_size": 48, "num_attention_heads": 4,
             "num_key_value_heads": 2}
    moe = {**small, "num_experts_per_tok": 2}
    if arch == "qwen3":  # heads of head_dim 16: the attention is 2·d wide
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**small, num_hidden_layers=2, head_dim=16))
    if arch == "gemma2":  # the same, and a soft-capped head (no split head: its logits at every position)
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**small, num_hidden_layers=2, head_dim=16))
    if arch == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(**moe, num_hidden_layers=2, num_local_experts=4))
    if arch == "qwen2-moe":  # a shared expert and its gate beside the routed ones
        return tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(**moe, num_hidden_layers=2, num_experts=4,
                                                        moe_intermediate_size=24, shared_expert_intermediate_size=40))
    if arch == "gpt-oss":  # expert biases, (E, d, 2m) layout
        return tf.GptOssForCausalLM(tf.GptOssConfig(**moe, num_hidden_layers=2, num_local_experts=4, head_dim=8,
                                                    layer_types=["full_attention"] * 2))
    if arch == "dbrx":  # the E experts' matrices stacked as 2-D (E·m, d) parameters of one module
        attn = {"kv_n_heads": 2, "rope_theta": 1e4, "clip_qkv": 8.0}
        ffn = {"ffn_hidden_size": 48, "moe_num_experts": 4, "moe_top_k": 2}
        return tf.DbrxForCausalLM(tf.DbrxConfig(vocab_size=V, d_model=D, n_heads=4, n_layers=2, attn_config=attn,
                                                ffn_config=ffn))
    moe["num_key_value_heads"] = 4  # deepseek-v3: MLA (query·key 4 × 16, value 4 × 6), a dense block, experts
    return tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(
        **moe, num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=4, moe_intermediate_size=24,
        n_group=1, topk_group=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=12,
        v_head_dim=6))


@pytest.mark.parametrize("arch", ["qwen3", "gemma2", "mixtral", "qwen2-moe", "gpt-oss", "dbrx", "deepseek-v3"])
def test_hf_teachers_of_other_shapes_are_counted_as_they_run(arch: str) -> None:
    """Attention wider or narrower than d (head_dim · heads, MLA), and mixtures of experts as `transformers` 5
    holds them (3-D parameters: a token runs its router and its top_k experts): the forward and the attribution
    backward (before, attention was taken as d wide and experts were not counted)."""
    pytest.importorskip("transformers", minversion="5")
    teacher = Teacher(_hf(arch), 0)
    ids = torch.randint(0, V, (2, T))
    with MatmulFlops() as count, torch.no_grad():
        teacher.model(ids)
    shape = LMShape.of_teacher(teacher)
    assert count.total / ids.numel() == lm_forward(shape, T)
    assert recorded_teacher({"teacher_shape": shape.to_json()}) == shape
    teacher.residual_and_grad(ids)  # the first call checks the split head
    with MatmulFlops() as count:
        teacher.residual_and_grad(ids)
    last = 2.0 * D * V / T if teacher._split_ok else 0.0
    assert teacher._split_ok is (arch != "gemma2")
    assert count.total / ids.numel() == teacher_flops(shape, T, 0, True) - 2 * last
    if arch in ("mixtral", "qwen2-moe", "gpt-oss", "dbrx", "deepseek-v3"):  # without the model config: routers' top_k
        assert LMShape.from_module(None, teacher.blocks, D, V).block_params == shape.block_params


def test_experts_held_as_a_module_list_count_their_top_k_share() -> None:
    """`transformers` 4's layouts (an `experts` ModuleList of MLPs; top_k on the MoE block with an nn.Linear router,
    or on a router holding a bare weight): a token uses top_k of the E experts' weights, and the whole router."""
    from torch import nn

    class Expert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.w2 = nn.Linear(D, 48, bias=False), nn.Linear(48, D, bias=False)

    class SparseMoe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_experts, self.top_k = 4, 2
            self.gate = nn.Linear(D, 4, bias=False)
            self.experts = nn.ModuleList(Expert() for _ in range(4))

    class Router(nn.Module):  # DeepSeek-V3 in transformers 4: top_k on the router, a bare (E, d) weight
        def __init__(self) -> None:
            super().__init__()
            self.top_k, self.n_routed_experts = 2, 4
            self.weight = nn.Parameter(torch.zeros(4, D))

    class DeepseekMoe(nn.Module):  # ... and none on the MoE block
        def __init__(self) -> None:
            super().__init__()
            self.gate = Router()
            self.experts = nn.ModuleList(Expert() for _ in range(4))

    want = 3 * D * D + 4 * D + 2 * (2 * D * 48)  # attention, router, 2 of the 4 experts
    for moe in (SparseMoe(), DeepseekMoe()):
        block = nn.Module()
        block.attn = nn.Linear(D, 3 * D)
        block.moe = moe
        assert LMShape.from_module(None, [block], D, V).block_params == (want,)


def test_the_naive_and_the_optimised_cocomix_steps_cost_what_step_cost_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two sides of `bench/step_cost.py`'s naive-vs-optimised ratio (issue 7): the naive step (the official
    code's teacher backward with weight gradients, dense attribution and compression, whole logits) exactly as
    `naive_flops` counts it; the optimised step as `run_flops` counts it, but for the fused head's recomputed logits
    (2·d·C more), the gathered compression (elementwise) and the teacher's split head (no final position)."""
    import copy
    import importlib

    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    naive = importlib.import_module("naive")  # bench/naive.py
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=D, n_layer=4, n_head=4, n_positions=64))
    sae = TopKSAE(D, C, SAE_K)
    run = _run("cocomix", teacher_layer=1)
    ids = torch.randint(0, V, (2, T))
    optimised = METHODS["cocomix"](run)
    optimised.teacher, optimised.sae = Teacher(copy.deepcopy(hf), 1), sae  # type: ignore[attr-defined]
    model = optimised.build_model().train()
    optimised.loss(model, Batch(ids))  # the teacher checks its split head once
    with MatmulFlops() as count:
        optimised.loss(model, Batch(ids))[0].backward()
    shape = LMShape.of_teacher(optimised.teacher)
    flops = run_flops(run, shape, SAE_K)
    assert count.total / ids.numel() == flops["total"] + 2.0 * D * C - 3 * _gather(run) - 2 * (2.0 * D * V / T)

    slow = METHODS["cocomix"](run)
    model = slow.build_model().train()
    naive.dense_compression(model.seam)
    slow.loss = naive.naive_loss(slow, naive.NaiveTargets(copy.deepcopy(hf), 1, copy.deepcopy(sae), 4))
    with MatmulFlops() as count:
        slow.loss(model, Batch(ids))[0].backward()
    assert count.total / ids.numel() == naive.naive_flops(run, flops, shape, SAE_K)["total"]


def test_sliding_window_blocks_count_the_keys_in_their_window() -> None:
    """Gemma 2 alternates local (sliding-window) and global blocks: a local block's query attends at most `window`
    keys. SDPA computes the full T × T product and masks it, so torch's count exceeds the model FLOPs by exactly
    the masked keys of the local blocks."""
    import transformers as tf

    pytest.importorskip("transformers", minversion="5")
    window = 6
    model = tf.Gemma2ForCausalLM(tf.Gemma2Config(vocab_size=V, hidden_size=D, intermediate_size=48,
                                                 num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
                                                 head_dim=16, sliding_window=window))
    teacher = Teacher(model, 0)
    shape = LMShape.of_teacher(teacher)
    assert shape.key_limits == (window, 0, window, 0)
    ids = torch.randint(0, V, (2, T))
    with MatmulFlops() as count, torch.no_grad():
        teacher.model(ids)
    masked = 2 * 2.0 * (T - window) * shape.attention  # two local blocks, 2·(d_qk + d_v) per key left out
    assert count.total / ids.numel() == lm_forward(shape, T) + masked
    assert recorded_teacher({"teacher_shape": shape.to_json()}) == shape
    assert lm_forward(dataclasses.replace(shape, key_limits=()), T) == lm_forward(shape, T) + masked


def test_blocks_without_softmax_attention_count_none() -> None:
    """Jamba's Mamba blocks (`layer_types` "linear_attention") attend no keys: the attention FLOPs torch counts are
    those of its attention blocks alone. (The Mamba scan and convolution themselves are not model FLOPs here.)"""
    import transformers as tf

    pytest.importorskip("transformers", minversion="5")
    model = tf.JambaForCausalLM(tf.JambaConfig(vocab_size=V, hidden_size=D, intermediate_size=48,
                                               num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
                                               attn_layer_period=2, attn_layer_offset=1, expert_layer_period=4,
                                               mamba_d_state=4, mamba_dt_rank=4, use_mamba_kernels=False))
    shape = LMShape.of_teacher(Teacher(model, 0))
    assert shape.key_limits == (-1, 0, -1, 0)
    ids = torch.randint(0, V, (2, T))
    with MatmulFlops() as count, torch.no_grad():
        model(ids)
    attention = count.by_op["aten._scaled_dot_product_flash_attention_for_cpu"] / ids.numel()
    assert attention == sum(2.0 * shape.keys_at(i, T) * shape.attention for i in range(4)) == 2 * 2.0 * T * 2 * D


@pytest.mark.parametrize(("config", "want"), [
    ({"sliding_window": 4096}, (4096, 4096, 4096)),  # Mistral: every block
    ({"sliding_window": None, "layer_types": ["full_attention"] * 3}, ()),
    ({"attention_chunk_size": 8192, "layer_types": ["chunked_attention"] * 2 + ["full_attention"]}, (8192, 8192, 0)),
    ({"layers_block_type": ["mamba", "attention", "mamba"]}, (-1, 0, -1)),  # transformers 4's Jamba
    ({"sliding_window": 64, "layer_types": ["sliding_attention"] * 2}, ()),  # not one per block: not read
    ({"layer_types": ["linear_attention", "mlp", "full_attention"]}, (-1, -1, 0)),  # Nemotron-H's MLP-only blocks
    ({"layers_block_type": ["recurrent", "recurrent", "attention"], "attention_window_size": 2048},
     (-1, -1, 2048)),  # transformers 4's RecurrentGemma: local attention blocks
    ({"attention_layers": ["global", "local", "global"], "window_size": 256}, (0, 256, 0)),  # GPT-Neo
], ids=["mistral", "global", "llama4-chunked", "jamba-4.x", "mismatched", "nemotron-h", "recurrentgemma-4.x",
        "gpt-neo"])
def test_key_limits_are_read_from_the_layer_types(config: dict[str, Any], want: tuple[int, ...]) -> None:
    from cocomix.lm_shape import _key_limits

    assert _key_limits(SimpleNamespace(**config), 3) == want


def test_a_config_whose_settings_differ_per_layer_is_read_without_failing() -> None:
    """transformers 5 configs with per-layer settings raise when one of those is read as a single value: the
    shape reader takes such a field as unknown instead of failing training over a FLOPs count."""
    from cocomix.lm_shape import _attention_widths, _key_limits

    class PerLayer:
        num_attention_heads, layer_types = 4, ["full_attention", "sliding_attention", "full_attention"]

        @property
        def sliding_window(self) -> int:
            raise AttributeError("sliding_window differs between layers: read per_layer_config[i]")

        @property
        def head_dim(self) -> int:
            raise ValueError("head_dim differs between layers")

    assert _key_limits(PerLayer(), 3) == () and _attention_widths(PerLayer(), D) == (0, 0)


def test_the_flops_command_says_what_it_takes_the_teacher_to_be(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`cocomix flops` for a KD run from a local mixture-of-experts teacher with wide heads and sliding windows:
    its summary gives the weights a token uses (router and top_k experts), the attention widths and the windowed
    blocks, as the count takes them."""
    import json

    import transformers as tf

    from cocomix.cli import main

    pytest.importorskip("transformers", minversion="5")
    tf.MixtralForCausalLM(tf.MixtralConfig(vocab_size=V, hidden_size=D, intermediate_size=48, num_attention_heads=4,
                                           num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                                           num_local_experts=4, num_experts_per_tok=2, sliding_window=8)
                          ).save_pretrained(tmp_path / "moe")
    assert main(["flops", "--preset", "tiny-kd", "--set", f"concept.teacher={tmp_path / 'moe'}"]) == 0
    teacher = json.loads(capsys.readouterr().out)["teacher"]
    per_block = 2 * D * 64 + 2 * D * 32 + 4 * D + 2 * (3 * D * 48)  # q, o; k, v; router; 2 of 4 experts
    assert teacher == {"blocks": 2, "d_model": D, "vocab_size": V, "matmul_weights_per_token": 2 * per_block,
                       "attention_widths": {"query_key": 64, "value": 64}, "windowed_blocks": 2,
                       "blocks_without_attention": 0}
