"""The shape of a causal LM as the FLOPs count needs it (`LMShape`; no paper equation): per-block matmul weights,
width, vocabulary, attention widths and key limits (sliding windows, blocks without softmax attention), and a
cocomix run's slot seam and concept head; read from a cocomix config, a loaded model's modules (Linear / Conv1D
weights, mixture-of-experts routers and the top_k experts a token uses), a teacher named in a config (without
loading its weights) or a target cache's record. The counts themselves, and their conventions, are in
`cocomix.flops`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from cocomix.config import ModelConfig, RunConfig
from cocomix.methods import PAUSING

if TYPE_CHECKING:
    from cocomix.teacher import Teacher

SHAPE_VERSION = 3
"""Of the JSON `LMShape.to_json` writes; 1 (no `version` key) had only block_params, d_model and vocab_size, 2
no blocks without softmax attention."""


@dataclass(frozen=True)
class LMShape:
    """What the FLOPs count needs of a causal LM: per-block matmul weights, width, vocabulary."""

    block_params: tuple[int, ...]
    """Matmul weight elements of each block (attention projections + MLP), biases excluded."""
    d_model: int
    vocab_size: int
    seam_layer: int | None = None
    """A cocomix run's slot seam: the first block that sees `seam_positions` positions per token (None: none)."""
    seam_positions: int = 1
    seam_head: float = 0.0
    """Forward matmul FLOPs per token of the seam's head (concept predictor + compression), run once per token."""
    seam_head_backward: float = 0.0
    """Activation-gradient FLOPs per token through the head when the LM loss reaches it (0 without mixing)."""
    attn_qk: int = 0
    """Query·key width over all query heads, when it is not d_model (Qwen 3, Gemma: head_dim·heads; MLA)."""
    attn_v: int = 0
    """Value width over all query heads, when it is not d_model."""
    key_limits: tuple[int, ...] = ()
    """Per block, the keys a query attends at most: 0 all (global attention), > 0 its sliding window or chunk, −1
    none (a block without softmax attention: linear attention, Mamba, a convolution); () when all are global."""

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> LMShape:
        d, m = cfg.d_model, cfg.mlp_width
        mlp = (2 if cfg.flavour == "gpt2" else 3) * d * m
        return cls((4 * d * d + mlp,) * cfg.n_layer, d, cfg.vocab_size)

    @classmethod
    def from_run(cls, run: RunConfig) -> LMShape:
        """A cocomix run's whole model as its forward computes it: the decoder, and for a method with slots the
        seam's layer, positions per token and head (a built-in method's; another package's counts as a plain
        decoder, see `plugin_note`)."""
        base = cls.from_config(run.model)
        m, c = run.model, run.concept
        if run.method not in ("cocomix", *PAUSING):
            return base
        positions = 2 if run.method in PAUSING or c.mixing == "insert" else 1
        head = backward = 0.0
        if run.method == "cocomix" and c.mixing != "none":
            head = concept_predictor(run)
            head += 2.0 * (c.d_teacher if c.target == "hidden" else c.mix_k) * m.d_model  # the compression
            backward = head
        elif run.method == "cocomix" and c.target == "hidden":  # its MLP runs in every forward, feeding no slot
            head = concept_predictor(run)  # (a concept head without mixing runs only for training's loss)
        return dataclasses.replace(base, seam_layer=c.concept_layer, seam_positions=positions, seam_head=head,
                                   seam_head_backward=backward)

    @classmethod
    def of_teacher(cls, teacher: Teacher) -> LMShape:
        """A loaded `cocomix.teacher.Teacher`'s shape: a cocomix run's from its config (`from_run`; `Teacher.run`,
        which `Teacher.from_pretrained` sets: a cocomix model wrapped by hand without it counts as a plain
        decoder), any other model's from its modules (`from_module`)."""
        run = getattr(teacher, "run", None)
        if run is not None:
            return cls.from_run(run)
        return cls.from_module(teacher.model, teacher.blocks, teacher.width, teacher.output_vocab)

    @property
    def attention(self) -> int:
        """Query·key plus value width: a query attending one key costs 2·this forward (QKᵀ and AV)."""
        return (self.attn_qk or self.d_model) + (self.attn_v or self.d_model)

    def positions_at(self, block: int) -> int:
        """Positions per token that block index `block` processes."""
        return self.seam_positions if self.seam_layer is not None and block >= self.seam_layer else 1

    def keys_at(self, block: int, seq_len: int) -> int:
        """Keys a query of block index `block` attends in a window of seq_len tokens: all its positions, its
        sliding window or chunk when that is shorter, none without softmax attention."""
        keys = self.positions_at(block) * seq_len
        limit = self.key_limits[block] if block < len(self.key_limits) else 0
        return 0 if limit < 0 else min(limit, keys) if limit > 0 else keys

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON (a target cache's `teacher_shape`; `recorded_teacher` reads it back)."""
        out: dict[str, Any] = {"version": SHAPE_VERSION, "block_params": list(self.block_params),
                               "d_model": self.d_model, "vocab_size": self.vocab_size}
        if self.attn_qk or self.attn_v:
            out.update(attn_qk=self.attn_qk, attn_v=self.attn_v)
        if self.key_limits:
            out["key_limits"] = list(self.key_limits)
        if self.seam_layer is not None:
            out.update(seam_layer=self.seam_layer, seam_positions=self.seam_positions, seam_head=self.seam_head,
                       seam_head_backward=self.seam_head_backward)
        return out

    @classmethod
    def from_module(cls, model: object, blocks: object, d_model: int, vocab_size: int) -> LMShape:
        """Count the matmul weights a token uses in each block of a loaded model (`_block_weights`) and the
        attention widths and per-block key limits its config gives (`_attention_widths`, `_key_limits`)."""
        from cocomix.teacher_blocks import text_config

        config = text_config(model) if isinstance(model, nn.Module) else None
        top_k = _setting(config, "num_experts_per_tok")
        counts = [_block_weights(block, top_k if isinstance(top_k, int) else None) for block in blocks]
        qk, v = _attention_widths(config, d_model)
        return cls(tuple(counts), d_model, vocab_size, attn_qk=qk, attn_v=v,
                   key_limits=_key_limits(config, len(counts)))

    @property
    def n_layer(self) -> int:
        return len(self.block_params)

    def summary(self) -> dict[str, Any]:
        """What the count takes this model to be, for `cocomix flops`: blocks, widths, the matmul weights a token
        uses (a mixture of experts' router and top_k experts only), and where set the blocks that attend a window
        or no keys and a cocomix run's slot seam."""
        out: dict[str, Any] = {"blocks": self.n_layer, "d_model": self.d_model, "vocab_size": self.vocab_size,
                               "matmul_weights_per_token": sum(self.block_params),
                               "attention_widths": {"query_key": self.attn_qk or self.d_model,
                                                    "value": self.attn_v or self.d_model}}
        if self.key_limits:
            out["windowed_blocks"] = sum(1 for k in self.key_limits if k > 0)
            out["blocks_without_attention"] = sum(1 for k in self.key_limits if k < 0)
        if self.seam_layer is not None:
            out["slots_from_block"] = self.seam_layer
        return out


def _block_weights(block: nn.Module, top_k: int | None) -> int:
    """Matmul weights a token uses in one block: the 2-D weight of every nn.Linear (subclasses included: Falcon's
    FalconLinear) and HF Conv1D, and of a mixture of experts what a token runs: its router (a module with a `top_k`
    and a 2-D `weight`, when it is no nn.Linear) in full, and top_k of the E experts, held as 3-D parameters of E
    matrices in a module with `num_experts` (`transformers` 5), as 2-D stacks of E matrices in one with
    `moe_num_experts` (DBRX), or as an `experts` ModuleList of E MLPs (4). top_k
    is a module's own (the router's, or the MoE block's), else `top_k` (the config's `num_experts_per_tok`);
    experts whose top_k cannot be told are counted whole (a list) or not at all (3-D)."""
    own = [m.top_k for m in block.modules() if isinstance(getattr(m, "top_k", None), int)]
    k = own[0] if own else top_k
    share: dict[int, float] = {}  # id(layer) -> the share of a list expert's layer a token uses
    for module in block.modules():
        experts = getattr(module, "experts", None)
        if k is not None and isinstance(experts, nn.ModuleList) and len(experts) > 0:
            share.update((id(layer), k / len(experts)) for layer in experts.modules())
    n = 0.0
    for module in block.modules():
        w = module._parameters.get("weight")
        linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if w is not None and w.dim() == 2 and (linear or isinstance(getattr(module, "top_k", None), int)):
            n += w.numel() * share.get(id(module), 1.0)  # a layer, or a router's logits
        experts = getattr(module, "num_experts", None)
        if k is not None and not linear and isinstance(experts, int) and experts > 0:
            n += sum(p[0].numel() * k for p in module.parameters(recurse=False)
                     if p.dim() == 3 and p.shape[0] == experts)  # a token's top_k experts
        stacked = getattr(module, "moe_num_experts", None)  # DBRX: the E experts' matrices stacked as 2-D (E·m, d)
        if k is not None and isinstance(stacked, int) and stacked > 0:
            n += sum(p.numel() * k / stacked for p in module.parameters(recurse=False) if p.dim() == 2)
    return round(n)


def _attention_widths(config: Any, d_model: int) -> tuple[int, int]:
    """(query·key, value) widths over the query heads of an HF config (head_dim · heads; an MLA config's
    qk_head_dim / v_head_dim), each 0 where it is d_model or the config does not say."""
    heads = _setting(config, "num_attention_heads")
    if not isinstance(heads, int) or heads < 1:
        return 0, 0
    head = _setting(config, "head_dim")
    head = head if isinstance(head, int) and head > 0 else d_model // heads
    qk, v = _setting(config, "qk_head_dim"), _setting(config, "v_head_dim")
    qk = heads * (qk if isinstance(qk, int) and qk > 0 else head)
    v = heads * (v if isinstance(v, int) and v > 0 else head)
    return (0 if qk == d_model else qk), (0 if v == d_model else v)


# `layer_types` of transformers' configs (legacy names remapped) whose queries attend fewer keys than all
_WINDOWED = ("sliding_attention", "hybrid_sliding")
_CHUNKED = ("chunked_attention",)
_NO_SOFTMAX_ATTENTION = ("linear_attention", "mamba", "conv", "moe", "mlp", "recurrent")
# anything else attends all keys: "full_attention", "hybrid" (attention beside a state-space mixer), and the sparse
# kinds ("indexed_attention", "compressed_sparse_attention", ...), whose queries read fewer keys than counted


def _setting(config: Any, name: str) -> Any:
    """A config field, None where it is missing or cannot be read as one value (a transformers config with
    per-layer settings raises for a field that differs between layers)."""
    try:
        return getattr(config, name, None)
    except Exception:  # noqa: BLE001 - e.g. AmbiguousGlobalPerLayerAttributeError
        return None


def _key_limits(config: Any, n_layer: int) -> tuple[int, ...]:
    """Per-block key limits (`LMShape.key_limits`) of an HF config: its `layer_types` with `sliding_window` for
    sliding blocks and `attention_chunk_size` for chunked ones (or transformers 4's `layers_block_type`, whose
    "attention" blocks are windowed by `attention_window_size` where one is set: RecurrentGemma; or GPT-Neo's
    `attention_layers`, whose "local" blocks see `window_size` keys);
    `sliding_window` on every block of a config without layer types (Mistral); () where all blocks are global
    or the config does not say."""
    window = _setting(config, "sliding_window")
    window = window if isinstance(window, int) and window > 0 else 0
    chunk = _setting(config, "attention_chunk_size")
    chunk = chunk if isinstance(chunk, int) and chunk > 0 else 0
    types = _setting(config, "layer_types")
    if not types:
        types = _setting(config, "layers_block_type")
        local = _setting(config, "attention_window_size")
        if types and isinstance(local, int) and local > 0:
            types = ["sliding_attention" if kind == "attention" else kind for kind in types]
            window = local
    neo, neo_window = _setting(config, "attention_layers"), _setting(config, "window_size")
    if not types and isinstance(neo, (list, tuple)) and isinstance(neo_window, int) and neo_window > 0:  # GPT-Neo
        types, window = ["sliding_attention" if kind == "local" else "full_attention" for kind in neo], neo_window
    if not isinstance(types, (list, tuple)) or len(types) != n_layer:
        return (window,) * n_layer if window and not types else ()
    out = tuple(window if kind in _WINDOWED else chunk if kind in _CHUNKED else
                -1 if kind in _NO_SOFTMAX_ATTENTION else 0 for kind in types)
    return out if any(out) else ()


def concept_predictor(run: RunConfig) -> float:
    """Forward FLOPs per token of a CoCoMix head's prediction: the concept logits (2·d·C), or the `hidden`
    ablation's MLP."""
    d, c = run.model.d_model, run.concept
    return 2.0 * (d * 4 * d + 4 * d * c.d_teacher) if c.target == "hidden" else 2.0 * d * c.n_latents


def gpt2_small() -> LMShape:
    """GPT-2 124M, the paper's teacher (12 × 768, V = 50257)."""
    return LMShape.from_config(ModelConfig(flavour="gpt2", vocab_size=50257, n_layer=12, n_head=12, d_model=768,
                                           context_length=1024))


def teacher_shape(spec: str) -> LMShape | None:
    """The shape of the teacher a config names, without loading its weights: a cocomix run directory (or one of
    its checkpoints, as `Teacher.from_pretrained` takes them), or a Hugging Face causal LM of any architecture
    `transformers` builds (a local folder, or a hub name whose config is already in the HF cache; nothing is
    downloaded), counted as training counts the loaded teacher; GPT-2 small for its hub names otherwise; None
    when it cannot be told."""
    path = Path(spec) if spec else None
    if path is not None and any((path / name).exists() for name in ("config.json", "state.json", "checkpoints")):
        try:
            from cocomix.train.checkpoint import read_run_config, resolve_checkpoint

            run_dir = resolve_checkpoint(path)[0] if (path / "state.json").is_file() else path
            return LMShape.from_run(read_run_config(run_dir))
        except Exception:  # not a cocomix run: a transformers folder
            pass
    shape = _hf_shape(spec) if spec else None
    if shape is None and spec in ("gpt2", "openai-community/gpt2"):
        return gpt2_small()
    return shape


def _hf_shape(spec: str) -> LMShape | None:
    """An HF causal LM built from its config on the meta device (no weights, no memory), counted by
    `LMShape.from_module` through the `Teacher` that training would wrap it in; None if that fails."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from cocomix.teacher import Teacher

        config = AutoConfig.from_pretrained(spec, local_files_only=True)
        with torch.device("meta"):
            teacher = Teacher(AutoModelForCausalLM.from_config(config), 0)
        return LMShape.of_teacher(teacher)
    except Exception:  # not an HF causal LM readable here (no folder, not cached, unknown architecture)
        return None


def recorded_teacher(meta: Mapping[str, Any]) -> LMShape | None:
    """The teacher shape a target cache recorded in its meta.json (`teacher_shape`), None for caches older than
    that record. A record of an older `version` (none: before seams, experts, attention widths and key limits)
    gives way to the teacher the cache names where it can be told here (`teacher_shape`), else it is read."""
    rec = meta.get("teacher_shape")
    if not isinstance(rec, Mapping):
        return None
    if rec.get("version", 1) != SHAPE_VERSION and isinstance(meta.get("teacher"), str):
        named = teacher_shape(meta["teacher"])
        if named is not None:
            return named
    return shape_record(rec)


def shape_record(rec: Mapping[str, Any]) -> LMShape:
    """The LMShape a `teacher_shape` record holds; KeyError, TypeError, ValueError or AttributeError where the
    record is malformed (a damaged or edited meta.json)."""
    seam = rec.get("seam_layer")
    return LMShape(tuple(int(p) for p in rec["block_params"]), int(rec["d_model"]), int(rec["vocab_size"]),
                   None if seam is None else int(seam), int(rec.get("seam_positions", 1)),
                   float(rec.get("seam_head", 0.0)), float(rec.get("seam_head_backward", 0.0)),
                   int(rec.get("attn_qk", 0)), int(rec.get("attn_v", 0)),
                   tuple(int(w) for w in rec.get("key_limits", rec.get("windows", ()))))
