"""Analytic training FLOPs per token for every method, teacher and SAE included, and parameter matching
(paper §3 "Training setup": parameter-matched NTP; no paper equation).

Conventions (stated so that a hand count can reproduce every number):
* A matmul (m × k)·(k × n) costs 2·m·k·n FLOPs. Norms, activations, softmax, TopK and elementwise work are not
  counted (as in Kaplan et al. / PaLM "model FLOPs").
* Attention: a query attending S keys costs 4·S·d forward (QKᵀ and AV), counted over the full window S (PaLM's
  convention, not halved for causality); 2·S·(d_qk + d_v) for a teacher whose heads are not d wide in all
  (head_dim · heads of Qwen 3 or Gemma, MLA's own query·key and value widths).
* Training a module costs 3× its forward (backward = activation gradients + weight gradients, each 1× forward).
* A frozen teacher's backward down to `teacher_layer` computes activation gradients only: 1× the forward of its
  matmuls above that layer and 2× its attention there (dQ, dK, dV, dP), nothing for weights.
* Per token of the training window T. Embedding lookups are free; the LM head is a matmul (2·d·V). A mixture of
  experts counts its router and the top_k experts a token is sent to.

Student forward per token: Σ_blocks (2·P_block + 4·S·d) + 2·d·V, with P_block the block's matmul weights. In a
CoCoMix or pause student the blocks from `concept_layer` on see two positions per token over a 2T sequence:
2·(2·P_block) + 2·4·(2T)·d. The concept head adds 2·d·C (predictor) and 2·mix_k·d (the gathered compression); the
`hidden` ablation's head adds its MLP and compression matmuls instead. A cocomix run used as a teacher is counted
the same way (`LMShape.from_run`): its slots and head in the forward, and in the backward to `teacher_layer` the
head's activation gradients (1× its forward) when the LM loss reaches it through the mixed slots.

Targets online (CoCoMix): teacher forward + backward to `teacher_layer` (above), SAE encode 2·d_con·C and the
attribution gather 2·k·d_con (2·d_con·C more for the pre-activation multiplier; the per-position "next_token"
gradient costs the same: one backward pass through own-position attention, `Teacher.residual_and_grad`; a teacher
that fails its own-position check instead repeats the backward through the blocks above `teacher_layer` per
position, which is not counted here). `gradient_at="reconstruction"` adds a teacher forward (the first pass, on the
true stream) and the SAE's reconstruction (encode 2·d_con·C, decode 2·k·d_con). Activation-selected targets need
no gradient: the teacher's forward stops at `teacher_layer` (`Teacher.hidden`) and the SAE encodes (the `hidden`
ablation's regression target: the same forward, no SAE). Cached
targets cost nothing at training time; `cached_targets` reports what they would have cost online per token
(comparisons add it, so CoCoMix is charged for its teacher and SAE either way). KD: teacher forward.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cocomix.config import ModelConfig, RunConfig
from cocomix.methods import DISTILLING, PAUSING


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
        head = 0.0
        if run.method == "cocomix" and c.mixing != "none":  # without mixing only training's concept loss runs it
            head = concept_predictor(run)
            head += 2.0 * (c.d_teacher if c.target == "hidden" else c.mix_k) * m.d_model  # the compression
        return dataclasses.replace(base, seam_layer=c.concept_layer, seam_positions=positions, seam_head=head,
                                   seam_head_backward=head)

    @classmethod
    def of_teacher(cls, teacher: Any) -> LMShape:
        """A loaded `cocomix.teacher.Teacher`'s shape: a cocomix run's from its config (`from_run`), any other
        model's from its modules (`from_module`)."""
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

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON (a target cache's `teacher_shape`; `recorded_teacher` reads it back)."""
        out: dict[str, Any] = {"block_params": list(self.block_params), "d_model": self.d_model,
                               "vocab_size": self.vocab_size}
        if self.attn_qk or self.attn_v:
            out.update(attn_qk=self.attn_qk, attn_v=self.attn_v)
        if self.seam_layer is not None:
            out.update(seam_layer=self.seam_layer, seam_positions=self.seam_positions, seam_head=self.seam_head,
                       seam_head_backward=self.seam_head_backward)
        return out

    @classmethod
    def from_module(cls, model: object, blocks: object, d_model: int, vocab_size: int) -> LMShape:
        """Count the 2-D weights of every nn.Linear (subclasses included: Falcon's FalconLinear) / HF Conv1D inside
        each block of a loaded model, a mixture of experts as a token uses it (`_moe_weights`), and the attention
        widths its config gives (`_attention_widths`)."""
        from cocomix.teacher_blocks import text_config

        config = text_config(model) if isinstance(model, nn.Module) else None
        counts = []
        top_k = getattr(config, "num_experts_per_tok", None)
        for block in blocks:
            share = _expert_share(block)
            n = 0.0
            for module in block.modules():
                w = getattr(module, "weight", None)
                if w is not None and w.dim() == 2 and (isinstance(module, nn.Linear) or
                                                       type(module).__name__ == "Conv1D"):
                    n += w.numel() * share.get(id(module), 1.0)
            counts.append(round(n) + _moe_weights(block, top_k))
        qk, v = _attention_widths(config, d_model)
        return cls(tuple(counts), d_model, vocab_size, attn_qk=qk, attn_v=v)

    @property
    def n_layer(self) -> int:
        return len(self.block_params)


def _moe_weights(block: nn.Module, top_k: object) -> int:
    """Matmul weights a token uses in a block's mixture of experts as `transformers` 5 holds one: a router module
    (`top_k`, `num_experts`, a 2-D `weight` of E rows; an nn.Linear router is counted already) and expert modules
    (`num_experts`, 3-D parameters of E matrices), of which each token uses `top_k` (the router's, else the
    model config's `num_experts_per_tok`). 0 for a dense block, and for experts whose top_k cannot be told."""
    for module in block.modules():
        k = getattr(module, "top_k", None)
        if isinstance(k, int) and isinstance(getattr(module, "num_experts", None), int):
            top_k = k
            break
    n = 0
    for module in block.modules():
        experts = getattr(module, "num_experts", None)
        if not isinstance(experts, int) or experts < 1 or isinstance(module, nn.Linear):
            continue
        for name, p in module.named_parameters(recurse=False):
            if p.dim() == 3 and p.shape[0] == experts and isinstance(top_k, int):
                n += p[0].numel() * top_k  # a token's top_k experts
            elif p.dim() == 2 and name == "weight" and p.shape[0] == experts:
                n += p.numel()  # the router's logits
    return n


def _attention_widths(config: Any, d_model: int) -> tuple[int, int]:
    """(query·key, value) widths over the query heads of an HF config (head_dim · heads; an MLA config's
    qk_head_dim / v_head_dim), each 0 where it is d_model or the config does not say."""
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        return 0, 0
    head = getattr(config, "head_dim", None)
    head = head if isinstance(head, int) and head > 0 else d_model // heads
    qk, v = getattr(config, "qk_head_dim", None), getattr(config, "v_head_dim", None)
    qk = heads * (qk if isinstance(qk, int) and qk > 0 else head)
    v = heads * (v if isinstance(v, int) and v > 0 else head)
    return (0 if qk == d_model else qk), (0 if v == d_model else v)


def _expert_share(block: nn.Module) -> dict[int, float]:
    """For experts held as a list of modules (`transformers` 4: a block with `num_experts`, `top_k` and an
    `experts` ModuleList of E MLPs): the share top_k / E of each of their layers that a token uses, by id."""
    share: dict[int, float] = {}
    for module in block.modules():
        experts, k = getattr(module, "experts", None), getattr(module, "top_k", None)
        if isinstance(experts, nn.ModuleList) and isinstance(k, int) and len(experts) > 0:
            for layer in experts.modules():
                share[id(layer)] = k / len(experts)
    return share


def _block_forward(shape: LMShape, block: int, seq_len: int) -> float:
    """Forward FLOPs per token of one block: n positions per token, each attending n·T keys."""
    n = shape.positions_at(block)
    return n * (2.0 * shape.block_params[block] + 2.0 * n * seq_len * shape.attention)


def concept_predictor(run: RunConfig) -> float:
    """Forward FLOPs per token of a CoCoMix head's prediction: the concept logits (2·d·C), or the `hidden`
    ablation's MLP."""
    d, c = run.model.d_model, run.concept
    return 2.0 * (d * 4 * d + 4 * d * c.d_teacher) if c.target == "hidden" else 2.0 * d * c.n_latents


def lm_forward(shape: LMShape, seq_len: int) -> float:
    """Forward FLOPs per token: every block (those from the seam on at its positions per token), the seam's head
    and the LM head."""
    return (2.0 * shape.d_model * shape.vocab_size + shape.seam_head
            + sum(_block_forward(shape, i, seq_len) for i in range(shape.n_layer)))


def lm_prefix_forward(shape: LMShape, seq_len: int, layer: int) -> float:
    """Forward FLOPs per token of blocks 0 … `layer` only (a teacher read at `layer` and stopped there; the seam's
    head runs when the seam is at or below `layer`)."""
    head = shape.seam_head if shape.seam_layer is not None and shape.seam_layer <= layer else 0.0
    return head + sum(_block_forward(shape, i, seq_len) for i in range(layer + 1))


def teacher_flops(shape: LMShape, seq_len: int, layer: int, backward: bool) -> float:
    """Teacher forward per token, plus the activation-only backward from the loss down to block `layer`: 1× the
    forward of the matmuls above it, 2× their attention, and the seam's head when the gradient passes it."""
    total = lm_forward(shape, seq_len)
    if backward:
        total += 2.0 * shape.d_model * shape.vocab_size
        for i in range(layer + 1, shape.n_layer):
            n = shape.positions_at(i)
            total += n * (2.0 * shape.block_params[i] + 4.0 * n * seq_len * shape.attention)
        if shape.seam_layer is not None and shape.seam_layer > layer:
            total += shape.seam_head_backward
    return total


def gpt2_small() -> LMShape:
    """GPT-2 124M, the paper's teacher (12 × 768, V = 50257)."""
    return LMShape.from_config(ModelConfig(flavour="gpt2", vocab_size=50257, n_layer=12, n_head=12, d_model=768,
                                           context_length=1024))


def teacher_shape(spec: str) -> LMShape | None:
    """The shape of the teacher a config names, without loading its weights: a cocomix run directory, or a
    Hugging Face causal LM of any architecture `transformers` builds (a local folder, or a hub name whose config
    is already in the HF cache; nothing is downloaded), counted as training counts the loaded teacher; GPT-2
    small for its hub names otherwise; None when it cannot be told."""
    from pathlib import Path

    path = Path(spec) if spec else None
    if path is not None and (path / "config.json").is_file():
        try:
            from cocomix.train.checkpoint import read_run_config

            return LMShape.from_run(read_run_config(path))
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
        return LMShape.from_module(teacher.model, teacher.blocks, teacher.width, teacher.output_vocab)
    except Exception:  # not an HF causal LM readable here (no folder, not cached, unknown architecture)
        return None


def recorded_teacher(meta: Mapping[str, Any]) -> LMShape | None:
    """The teacher shape a target cache recorded in its meta.json (`teacher_shape`), None for older caches."""
    rec = meta.get("teacher_shape")
    if not isinstance(rec, Mapping):
        return None
    seam = rec.get("seam_layer")
    return LMShape(tuple(int(p) for p in rec["block_params"]), int(rec["d_model"]), int(rec["vocab_size"]),
                   None if seam is None else int(seam), int(rec.get("seam_positions", 1)),
                   float(rec.get("seam_head", 0.0)), float(rec.get("seam_head_backward", 0.0)),
                   int(rec.get("attn_qk", 0)), int(rec.get("attn_v", 0)))


def config_parts(run: RunConfig) -> tuple[LMShape | None, int, str]:
    """What training would count for `run`'s teacher and SAE, read from files without loading the teacher (for
    `cocomix flops`; training counts the loaded parts, `train.loop.flops_per_token`): the teacher shape a target
    cache recorded (None otherwise: `run_flops` then counts the named teacher), the SAE's k — concept.sae_k, else
    the cache's, else the SAE file's — and where k came from (32, the paper's, when none of these says)."""
    c = run.concept
    if run.method != "cocomix" or c.target != "concepts":
        return None, c.sae_k or 32, ""
    meta: Any = {}
    if c.cache:
        try:
            meta = json.loads((Path(c.cache) / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
    shape = recorded_teacher(meta)
    if c.sae_k:
        return shape, c.sae_k, "concept.sae_k"
    if meta.get("sae_k"):
        return shape, int(meta["sae_k"]), f"recorded by the target cache {c.cache}"
    if c.selection == "activation" or c.lambda_concept <= 0:
        return shape, 32, ""  # k is not counted: no attribution
    why = "no concept.sae is named"
    if c.sae:
        from cocomix.errors import CocomixError
        from cocomix.sae import load_sae

        try:
            return shape, load_sae(c.sae, teacher_layer=c.teacher_layer).k, f"the SAE {c.sae}"
        except (CocomixError, OSError) as e:
            why = f"concept.sae could not be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return shape, 32, f"32 assumed (concept.sae_k is unset and {why})"


def plugin_note(run: RunConfig) -> str:
    """What the FLOPs of a method from another package (an entry point) leave out; '' for built-in methods."""
    from cocomix.methods import BUILT_IN

    return "" if run.method in BUILT_IN else (
        f"FLOPs per token count method {run.method!r}'s student as a plain decoder without teacher work (only the "
        "built-in methods' seams, heads and teachers are known here)")


def run_flops(run: RunConfig, teacher: LMShape | None = None, sae_k: int = 32) -> dict[str, float]:
    """Training FLOPs per token of `run`: student, teacher, SAE and their sum (see the module docstring).

    `teacher` defaults to the shape `teacher_shape(concept.teacher)` finds, else GPT-2 small (the paper's);
    `sae_k` is the SAE's TopK. Cached targets (concept.cache) count no teacher or SAE work.
    """
    c, T = run.concept, run.data.seq_len
    forward = lm_forward(LMShape.from_run(run), T)
    if run.method == "cocomix" and c.mixing == "none":
        forward += concept_predictor(run)  # its prediction feeds the concept loss only
    out = {"student": 3.0 * forward, "teacher": 0.0, "sae": 0.0}
    teacher = teacher or teacher_shape(c.teacher) or gpt2_small()
    online = run.method == "cocomix" and c.lambda_concept > 0 and not (c.cache and c.target == "concepts")
    if run.method in DISTILLING:
        out["teacher"] = lm_forward(teacher, T)
    elif online and c.target == "hidden":
        out["teacher"] = lm_prefix_forward(teacher, T, c.teacher_layer)  # stopped at the capture block
    elif online:
        d_con = teacher.d_model
        out["sae"] = 2.0 * d_con * c.n_latents
        if c.selection == "activation":
            out["teacher"] = lm_prefix_forward(teacher, T, c.teacher_layer)
        else:
            out["teacher"] = teacher_flops(teacher, T, c.teacher_layer, True)
            out["sae"] += 2.0 * sae_k * d_con
            if c.gradient_at == "reconstruction":
                out["teacher"] += lm_forward(teacher, T)
                out["sae"] += 2.0 * d_con * c.n_latents + 2.0 * sae_k * d_con
            if c.multiplier == "pre_activation":
                out["sae"] += 2.0 * d_con * c.n_latents
    out["total"] = out["student"] + out["teacher"] + out["sae"]
    out["cached_targets"] = 0.0
    if run.method == "cocomix" and c.cache and c.target == "concepts" and c.lambda_concept > 0:
        online = run_flops(dataclasses.replace(run, concept=dataclasses.replace(c, cache="")), teacher, sae_k)
        out["cached_targets"] = online["teacher"] + online["sae"]  # what the cache saved per training token
    return out


def active_params(run: RunConfig) -> int:
    """Parameters a token uses: the student, plus for CoCoMix the concept head and the mix_k compression rows
    it selects ((C + mix_k)·d + biases: the paper's "activated" parameters), for the `hidden` ablation its MLP
    predictor and compression. With `mixing=none` the predictor never feeds the output and is not counted (the
    paper's Fig. 6d "Concept pred (53M)")."""
    m, c = run.model, run.concept
    base = student_params(m)
    d, d_t = m.d_model, c.d_teacher
    if run.method == "cocomix" and c.mixing == "none":
        pass
    elif run.method == "cocomix" and c.target == "concepts":
        base += (c.n_latents + c.mix_k) * d + c.n_latents + 2 * d
    elif run.method == "cocomix" and c.target == "hidden":  # `HiddenSeam`: pre_bias, d → 4d → d_t MLP, d_t → d
        base += d + (d * 4 * d + 4 * d) + (4 * d * d_t + d_t) + (d_t * d + d)
    elif run.method in PAUSING:
        base += d
    return base


def student_params(m: ModelConfig) -> int:
    """Parameter count of a student from its config without building it (exact for both flavours)."""
    d, b = m.d_model, m.use_bias
    norm = d * (2 if (m.flavour == "gpt2" and b) else 1)
    mlp_w = (2 if m.flavour == "gpt2" else 3) * d * m.mlp_width
    mlp_b = (m.mlp_width + d) if b and m.flavour == "gpt2" else ((2 * m.mlp_width + d) if b else 0)
    attn = 4 * d * d + (4 * d if b else 0)
    block = attn + mlp_w + mlp_b + 2 * norm
    emb = m.vocab_size * d + (m.context_length * d if m.flavour == "gpt2" else 0)
    head = 0 if m.tie_embeddings else m.vocab_size * d
    return emb + m.n_layer * block + norm + head


def ntp_width_for(run: RunConfig, multiple: int = 16) -> int:
    """The NTP width d (a multiple of `multiple` and of n_head) whose parameter count is closest to `run`'s active
    parameters; the paper's rule (it gives 624 / 1072 / 2096 for CoCoMix at 512 / 1024 / 2048)."""
    import math

    target = active_params(run)
    step = math.lcm(multiple, run.model.n_head * (2 if run.model.flavour == "llama" else 1))
    best, best_gap = run.model.d_model, None
    d = step
    while True:
        cfg = dataclasses.replace(run.model, d_model=d)
        n = student_params(cfg)
        gap = abs(n - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = d, gap
        if n > target:
            return best
        d += step
