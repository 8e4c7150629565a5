"""Analytic training FLOPs per token for every method, teacher and SAE included, and parameter matching
(paper §3 "Training setup": parameter-matched NTP; no paper equation).

Conventions (stated so that a hand count can reproduce every number):
* A matmul (m × k)·(k × n) costs 2·m·k·n FLOPs. Norms, activations, softmax, TopK and elementwise work are not
  counted (as in Kaplan et al. / PaLM "model FLOPs").
* Attention: a query attending S keys costs 4·S·d forward (QKᵀ and AV), counted over the full window S (PaLM's
  convention, not halved for causality); 2·S·(d_qk + d_v) for a teacher whose heads are not d wide in all
  (head_dim · heads of Qwen 3 or Gemma, MLA's own query·key and value widths). A sliding-window or chunked block
  attends min(window, S) keys (a kernel that masks the rest out of a full S × S product computes more than this);
  a block without softmax attention (linear attention, Mamba, an MLP-only block) none, and its recurrence is not
  counted; sparse attention (an indexer's or compressed keys) is counted as if it read all of them.
* Training a module costs 3× its forward (backward = activation gradients + weight gradients, each 1× forward).
* A frozen teacher's backward down to `teacher_layer` computes activation gradients only: 1× the forward of its
  matmuls above that layer and 2× its attention there (dQ, dK, dV, dP), nothing for weights.
* Per token of the training window T. Embedding lookups are free; the LM head is a matmul (2·d·V). A mixture of
  experts counts its router and the top_k experts a token is sent to.

Student forward per token: Σ_blocks (2·P_block + 4·S·d) + 2·d·V, with P_block the block's matmul weights. In a
pause student, and a CoCoMix one that inserts its concept vectors (`mixing="insert"`, the paper's), the blocks
from `concept_layer` on see two positions per token over a 2T sequence: 2·(2·P_block) + 2·4·(2T)·d (`add` and
`none` keep one). The concept head adds 2·d·C (predictor) and 2·mix_k·d (the gathered compression); the `hidden`
ablation's head adds its MLP and compression matmuls instead. A cocomix run used as a teacher is counted the same
way (`LMShape.from_run`): its slots and head in the forward, and in the backward to `teacher_layer` the head's
activation gradients (1× its forward) when the LM loss reaches it through the concept vectors (any mixing but
`none`).

Targets online (CoCoMix): teacher forward + backward to `teacher_layer` (above), SAE encode 2·d_con·C and the
attribution gather 2·k·d_con (the pre-activation multiplier instead takes the gradient against every latent's
decoder column, 2·d_con·C, and gathers nothing; the per-position "next_token"
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
from pathlib import Path
from typing import Any

from cocomix import json_text
from cocomix.config import ModelConfig, RunConfig
from cocomix.lm_shape import LMShape, concept_predictor, gpt2_small, recorded_teacher, teacher_shape
from cocomix.methods import DISTILLING, PAUSING

__all__ = ["LMShape", "active_params", "config_parts", "gpt2_small", "lm_forward", "lm_prefix_forward",
           "ntp_width_for", "plugin_note", "recorded_teacher", "run_flops", "student_params", "teacher_flops",
           "teacher_shape"]


def _block_forward(shape: LMShape, block: int, seq_len: int) -> float:
    """Forward FLOPs per token of one block: n positions per token, each attending `keys_at` keys."""
    n = shape.positions_at(block)
    return n * (2.0 * shape.block_params[block] + 2.0 * shape.keys_at(block, seq_len) * shape.attention)


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
            total += n * (2.0 * shape.block_params[i] + 4.0 * shape.keys_at(i, seq_len) * shape.attention)
        if shape.seam_layer is not None and shape.seam_layer > layer:
            total += shape.seam_head_backward
    return total


def config_parts(run: RunConfig) -> tuple[LMShape | None, int, str]:
    """What training would count for `run`'s teacher and SAE, read from files without loading the teacher (for
    `cocomix flops`; training counts the loaded parts, `train.setup.flops_per_token`): the teacher shape a target
    cache recorded (None otherwise: `run_flops` then counts the named teacher), the SAE's k — concept.sae_k, else
    the cache's, else the SAE file's — and where k came from (32, the paper's, when none of these says)."""
    c = run.concept
    if run.method != "cocomix" or c.target != "concepts":
        return None, c.sae_k or 32, ""
    meta: Any = {}
    if c.cache:
        try:
            meta = json_text.loads((Path(c.cache) / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        if meta:  # (a record that reads but is damaged: said, not a traceback below)
            from cocomix.concepts.cache import check_meta_types

            check_meta_types(Path(c.cache) / "meta.json", meta)
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
    if run.method == "cocomix" and c.mixing == "none" and c.target == "concepts" and c.lambda_concept > 0:
        forward += concept_predictor(run)  # its concept logits feed the concept loss only
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
            if c.gradient_at == "reconstruction":
                out["teacher"] += lm_forward(teacher, T)
                out["sae"] += 2.0 * d_con * c.n_latents + 2.0 * sae_k * d_con
            # the gradient against the active latents' decoder columns, or against all of them (pre-activation)
            out["sae"] += 2.0 * d_con * (c.n_latents if c.multiplier == "pre_activation" else sae_k)
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
