"""Steering (paper §3.2, after Templeton et al. 2024): multiply chosen concepts by α at generation time.

Student: at every position the predicted logits z_t[c] of the chosen concepts are multiplied by α before the TopK
and the compression (`ConceptSeam.steer`), so the concept vector mixed after each token changes. A concept whose
scaled logit still ranks below the mix_k largest is not mixed and steering it has no effect there: that is the
defined behaviour, not an error, and `StudentSteering.mixed` reports how often each concept was mixed, with and
without steering. α = 1 is the unsteered model, α = 0 sets the concept's logit to 0 (the paper's multiplication,
not a mask: where the mix_k-th largest logit is negative, a 0 still ranks among the mix_k largest, which have no
ReLU, and is counted as mixed with weight 0, pushing out the concept that held that slot), α < 0 flips its sign. A
run trained with `concept.mixing=none` never mixes concepts: steering it is refused.

Teacher (the paper's cross-check): the SAE latent c at the teacher's `teacher_layer` is multiplied by α in the
residual stream, h ← h + Σ_c (α_c − 1) · a_c · std · W_dec[:, c] (a_c its TopK activation, std the SAE's input
normalisation), keeping the SAE's reconstruction error; a latent that is not active at a position is unchanged
(`teacher_activity` says where it was). The edit is α × the latent's decoded contribution; re-encoding the edited
state gives less than α × a_c, as the SAE normalises its input by the state's own mean and std, which the edit
changes (on the demo teacher, α = 10 re-encodes at 2.4–5× a_c).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cocomix.errors import CocomixError
from cocomix.interpret.inspect import eval_mode, mixing_seam
from cocomix.model import Transformer, generate
from cocomix.model.generate import check_sampling, restrict_vocab, sample_next

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher

MAX_ALPHA = 1e4  # far beyond the paper's ±10, far below what overflows fp32 / bf16 logits (~1e30 on small models)


def as_list(values: Any) -> list:
    """Concept indices or α values as a list: a numpy array or torch tensor (`np.argsort(...)[-5:]`, `topk`'s
    indices) as Python numbers, a sequence as it is."""
    values = values.tolist() if hasattr(values, "tolist") else values
    return list(values) if hasattr(values, "__iter__") else [values]  # (a 0-d array's tolist: one number)


def check_steering(n_latents: int, concepts: Sequence[int], alphas: Sequence[float]) -> None:
    """CocomixError for concept indices outside [0, n_latents), repeated concepts, a count mismatch or an α that
    is not finite or exceeds MAX_ALPHA in size."""
    concepts, alphas = as_list(concepts), as_list(alphas)
    if not concepts:
        raise CocomixError("--concept: give at least one concept index")
    if len(alphas) != len(concepts):
        raise CocomixError(f"--alpha: expected one α per concept ({len(concepts)}), got {len(alphas)}")
    for c in concepts:
        if not isinstance(c, numbers.Integral) or isinstance(c, bool) or not 0 <= c < n_latents:  # (numpy's too)
            raise CocomixError(f"--concept: expected an index in [0, {n_latents - 1}], got {c!r}")
    if len(set(concepts)) != len(concepts):
        raise CocomixError(f"--concept: each concept at most once, got {list(concepts)}")
    for a in alphas:
        check_alpha(a)


def check_alpha(a: object, flag: str = "--alpha") -> None:
    """CocomixError naming `flag` for an α that is not a finite number or exceeds MAX_ALPHA in size."""
    if not isinstance(a, numbers.Real) or isinstance(a, bool) or not math.isfinite(a):
        raise CocomixError(f"{flag}: expected a finite number, got {a!r}")
    if abs(a) > MAX_ALPHA:
        raise CocomixError(f"{flag}: expected |α| <= {MAX_ALPHA:g}, got {a!r} (the paper steers with -10 ... 10; a "
                           "far larger α overflows the model's floats)")


@dataclass
class StudentSteering:
    tokens: torch.Tensor
    """(B, P + N) prompt and continuation."""
    mixed: torch.Tensor
    """(n,) share of the generating positions (the prompt's last and every generated one but the last, up to
    each row's end-of-text token: not the padding after it) where each steered concept was among the mix_k mixed
    concepts."""
    ever_mixed: torch.Tensor
    """(n,) bool: whether each concept was mixed at any position but the last, prompt included (steering edits
    every position, and an edit in the prompt reaches the continuation through attention): False means
    steering it had no effect."""


@torch.no_grad()
def steer_student(model: Transformer, prompt: torch.Tensor, concepts: Sequence[int], alphas: Sequence[float],
                  max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                  generator: torch.Generator | None = None, eos_id: int | None = None,
                  vocab_limit: int | None = None) -> StudentSteering:
    """Generate from prompt (B, P) with concept logits × α at every position (α = 1 everywhere: unsteered);
    `vocab_limit`: the tokenizer's size, ids at and above it are never sampled (`generate`)."""
    seam = mixing_seam(model, "steering")
    concepts, alphas = as_list(concepts), as_list(alphas)
    check_steering(seam.n_latents, concepts, alphas)
    if not isinstance(prompt, torch.Tensor):
        raise CocomixError("prompt: expected a (batch, tokens) tensor of token ids, the prompts of one length")
    device, P = prompt.device, prompt.shape[1]
    idx = torch.tensor(concepts, device=device)
    seam.steer(idx, torch.tensor([float(a) for a in alphas], device=device))
    try:
        tokens, _ = generate(model, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                             eos_id=eos_id, generator=generator, vocab_limit=vocab_limit)
        with eval_mode(model):  # (generate ran in eval mode too)
            model(tokens)  # one full pass records the TopK at every position (equal to the cached steps)
        hits = (seam.last_topk[:, :tokens.shape[1] - 1, :, None] == idx).any(dim=2)   # (B, S - 1, n)
        # a row that drew the end-of-text token is padded with it until every row ends: no generating positions
        ended = ((tokens[:, P:-1] == eos_id).cumsum(dim=1) > 0 if eos_id is not None
                 else torch.zeros_like(tokens[:, P:-1], dtype=torch.bool))             # (B, N - 1)
        real = torch.cat((torch.ones_like(tokens[:, :P], dtype=torch.bool), ~ended), dim=1)[..., None]  # (B, S - 1, 1)
        mixed = ((hits & real)[:, P - 1:].sum(dim=(0, 1)) / real[:, P - 1:].sum().clamp(min=1)).float()  # (n,)
        ever_mixed = (hits & real).flatten(0, 1).any(dim=0)                             # (n,)
    finally:
        seam.steer(None)
        seam.last_topk = None
    return StudentSteering(tokens, mixed, ever_mixed)


class _LatentScale:
    """Forward hook on the teacher's block `layer`: multiplies SAE latents by α in the residual stream."""

    def __init__(self, sae: TopKSAE, concepts: Sequence[int], alphas: Sequence[float]) -> None:
        self.sae = sae
        self.idx = torch.tensor(list(concepts))
        self.scale = torch.tensor([float(a) - 1.0 for a in alphas])

    def __call__(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output                        # (B, S, d)
        values, indices, info = self.sae.encode(h.to(self.sae.W_dec.dtype))            # (B, S, k)
        idx, scale = self.idx.to(h.device), self.scale.to(h.device, values.dtype)
        # a_c where the latent is active (in the TopK above 0, as `active_rate` counts it; a ReLU SAE's TopK is)
        act = (values.clamp(min=0)[..., None] * (indices[..., None] == idx)).sum(dim=2)  # (B, S, n)
        delta = (act * scale) @ self.sae.W_dec[:, idx].T                                # (B, S, d)
        if "std" in info:
            delta = delta * info["std"]
        h = h + delta.to(h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h


@torch.no_grad()
def teacher_activity(teacher: Teacher, sae: TopKSAE, tokens: torch.Tensor, start: int,
                     concepts: Sequence[int]) -> torch.Tensor:
    """(n,) share of the positions start − 1 … S − 2 of tokens (B, S) where each SAE latent is active. The
    teacher's steering adds to a latent only where it is active, and whether it is depends only on the tokens so
    far (blocks up to `teacher_layer` never see the edit), so this is where `steer_teacher` acted on that text.
    With start the prompt's length these are the generating positions (whose block output is edited before each
    new token is drawn); with start = 1 every position an edit can pass on, prompt included (through attention):
    0 there means steering changed nothing."""
    if not 1 <= start < tokens.shape[1]:
        raise CocomixError(f"start: expected 1 to {tokens.shape[1] - 1} (the prompt's length), got {start}")
    hidden = teacher.hidden(tokens)                                                          # (B, S, d)
    values, indices, _ = sae.encode(hidden.to(sae.W_dec.dtype))                             # (B, S, k)
    return active_rate(values[:, start - 1:-1], indices[:, start - 1:-1], concepts)


def active_rate(values: torch.Tensor, indices: torch.Tensor, concepts: Sequence[int]) -> torch.Tensor:
    """(n,) share of the positions of an SAE encode, values and indices (B, N, k), where each latent of `concepts`
    is active (in the TopK with a value above 0)."""
    idx = torch.tensor(list(concepts), device=indices.device)
    return ((indices[..., None] == idx) & (values[..., None] > 0)).any(dim=2).float().mean(dim=(0, 1))  # (n,)


@torch.no_grad()
def steer_teacher(teacher: Teacher, sae: TopKSAE, prompt: torch.Tensor, concepts: Sequence[int],
                  alphas: Sequence[float], max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                  generator: torch.Generator | None = None, vocab_limit: int | None = None,
                  use_cache: bool = True) -> torch.Tensor:
    """Generate from the teacher with SAE latents × α at teacher_layer; ids at and above `vocab_limit` (the
    tokenizer's size) are never sampled.

    With `use_cache` (default) each new token runs alone against the KV cache (a cocomix teacher's own cache, an HF
    teacher's `cache`, named `past_key_values` before transformers 5.24): the edit at a position depends only on
    the tokens up to it, so the cached keys and values are the ones a full recomputation would give.
    `use_cache=False` recomputes the whole sequence per token (the reference it is tested against), as does a
    model without a KV cache."""
    from cocomix.model.generate import check_ids
    from cocomix.teacher import _logits, as_token_ids

    concepts, alphas = as_list(concepts), as_list(alphas)
    check_steering(sae.n_latents, concepts, alphas)
    check_sampling(max_new_tokens, temperature, top_k, None, vocab_limit)
    prompt = as_token_ids(prompt)
    check_ids(prompt, teacher.vocab_size)
    limit = teacher.max_positions
    if limit is not None and prompt.shape[1] + max_new_tokens > limit:  # (else an error after generating)
        raise CocomixError(f"prompt + max_new_tokens: {prompt.shape[1] + max_new_tokens} tokens exceed the "
                           f"teacher's {limit} positions")
    handle = teacher.blocks[teacher.layer].register_forward_hook(_LatentScale(sae, concepts, alphas))
    own = isinstance(teacher.model, Transformer)
    cache: Any = teacher.model.new_cache() if use_cache and own else None
    # transformers 5.24 renamed the argument and output `past_key_values` to `cache` (the old name goes in 5.40)
    hf_name = "cache" if "cache" in inspect.signature(teacher.model.forward).parameters else "past_key_values"
    # an HF model caches when its config has `use_cache` (the Teacher then passes use_cache=False elsewhere)
    cached, tokens, feed = use_cache and (own or "use_cache" in teacher._kw), prompt, prompt
    try:
        for _ in range(max_new_tokens):
            if not cached:
                out = teacher.model(tokens, **teacher._kw)
            elif own:
                out = teacher.model(feed, cache=cache)
            else:
                out = teacher.model(feed, use_cache=True, **{hf_name: cache})
                cache = getattr(out, hf_name, None)
                cached = cache is not None  # a model without a KV cache recomputes from the next token on
            last = restrict_vocab(_logits(out)[:, -1].float(), vocab_limit)                    # (B, V)
            feed = sample_next(last, temperature, top_k, None, generator)[:, None]           # (B, 1)
            tokens = torch.cat((tokens, feed), dim=1)
    finally:
        handle.remove()
        teacher._leaf = None
    return tokens
