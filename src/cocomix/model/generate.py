"""Autoregressive generation with the KV cache: greedy, temperature, top-k and top-p (nucleus) sampling
(no paper equation; CoCoMix generation mixes a concept vector at every new position, §2.2)."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from cocomix.errors import ConfigError
from cocomix.model.transformer import Transformer


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); temperature 0 is greedy."""
    if temperature < torch.finfo(torch.float32).tiny:  # 0, or so small that it underflows in fp32: the limit
        return logits.argmax(dim=-1)
    # shifted so the largest logit is 0 first: a tiny temperature sends the others to -inf, never the top to +inf
    logits = (logits.float() - logits.float().amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix with mass >= top_p (HF's rule)
        drop[:, 0] = False  # and always the most likely token (a top_p below fp32's range compares as 0 >= 0)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def restrict_vocab(logits: torch.Tensor, vocab_limit: int | None) -> torch.Tensor:
    """logits (B, V) with the ids at and above `vocab_limit` (the tokenizer's size) set to −inf, in place: a model
    whose vocabulary is padded beyond its tokenizer's never samples an id nothing decodes."""
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits[:, vocab_limit:] = float("-inf")
    return logits


def check_ids(ids: torch.Tensor, vocab_size: int, what: str = "prompt") -> None:
    """ConfigError for a token id outside the model's vocabulary [0, vocab_size) (an embedding lookup's IndexError
    otherwise)."""
    lo, hi = (int(ids.min()), int(ids.max())) if ids.numel() else (0, 0)
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ConfigError(f"{what}: token id {bad} is outside the model's vocabulary [0, {vocab_size})")


def whole_number(x: object) -> bool:
    """An integer of any integral type (numpy's too), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                   vocab_limit: int | None = None) -> None:
    """ConfigError naming the first sampling argument outside its range."""
    if not whole_number(max_new_tokens) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens: expected an integer >= 1, got {max_new_tokens!r}")
    if not 0.0 <= temperature < float("inf"):
        raise ConfigError(f"temperature: expected a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and (not whole_number(top_k) or top_k < 1):
        raise ConfigError(f"top_k: expected an integer >= 1, got {top_k!r}")
    if vocab_limit is not None and (not whole_number(vocab_limit) or vocab_limit < 1):  # (every logit −inf otherwise)
        raise ConfigError(f"vocab_limit: expected the tokenizer's size, an integer >= 1, got {vocab_limit!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p: expected a number in (0, 1], got {top_p}")


@torch.no_grad()
def generate(model: Transformer, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             stop: Callable[[torch.Tensor], bool] | None = None, vocab_limit: int | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue prompt (B, P) by up to max_new_tokens.

    Returns (tokens (B, P + N), step_logits (B, N, V)): the logits each new token was drawn from. Without the
    cache every step recomputes the whole prefix (the reference the cache is tested against). Generation stops
    early once every row has produced eos_id, or once `stop(tokens so far)` is true (checked after every token).
    `vocab_limit` (the tokenizer's size) gives the ids at and above it logit −inf: a model whose vocabulary is
    padded beyond its tokenizer's (`model.vocab_size` larger, as nanoGPT's 50304) never emits an id the tokenizer
    cannot decode; those logits stay −inf in step_logits.
    """
    if prompt.dim() != 2 or prompt.shape[1] == 0 or prompt.is_floating_point() or prompt.is_complex() or \
            prompt.dtype == torch.bool:
        raise ConfigError("prompt: expected a non-empty (B, P) tensor of integer token ids")
    check_ids(prompt, model.cfg.vocab_size)
    prompt = prompt.long()  # (B, P) the embedding takes int64 / int32 ids only (an int16 / uint8 prompt is fine too)
    check_sampling(max_new_tokens, temperature, top_k, top_p, vocab_limit)
    limit = model.cfg.context_length
    if prompt.shape[1] >= limit:  # (no --max-new-tokens would do: the prompt is what to change)
        raise ConfigError(f"prompt: {prompt.shape[1]} tokens fill the model's context_length {limit} and leave no "
                          "room for a new token; shorten the prompt")
    if prompt.shape[1] + max_new_tokens > limit:
        n = prompt.shape[1]
        raise ConfigError(f"max_new_tokens: {max_new_tokens} new tokens after a prompt of {n} token{'s' * (n != 1)} "
                          f"exceed the model's context_length {limit}; shorten the prompt or generate fewer tokens")
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache() if use_cache else None
        tokens, step_logits = prompt, []
        done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
        feed = prompt
        for _ in range(max_new_tokens):
            out = model(feed if use_cache else tokens, cache=cache)
            # (B, V), a copy: a view would keep the prompt's (B, P, V) logits alive until the end
            last = restrict_vocab(out.logits[:, -1].float().clone(), vocab_limit)
            nxt = sample_next(last, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            step_logits.append(last)
            tokens = torch.cat((tokens, nxt[:, None]), dim=1)
            feed = nxt[:, None]
            if (eos_id is not None and bool(done.all())) or (stop is not None and stop(tokens)):
                break
    finally:  # a stop callback or an interrupted step leaves the model in the mode it came in
        model.train(was_training)
    return tokens, torch.stack(step_logits, dim=1)
