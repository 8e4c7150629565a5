"""Batched generation from prompts of different lengths, each row ending on its own (no paper equation; the
concept vector is mixed at every new position as in `generate`, §2.2).

The rows share one KV cache and one position counter, so no padding, per-row positions or attention masks are
needed: the batch starts with the shortest prompt's length, and while a row still has prompt tokens left its
next token is the prompt's (forced) rather than a sampled one. Every row therefore sees exactly its own tokens at
their own positions. A row ends with the end-of-text token, after `max_new_tokens` new tokens, or when `stop`
says so; ended rows leave the batch (their cache rows are dropped), so the remaining steps cost only what the
live rows need. Rounding differs from one-row `generate` (prompt tokens past the shortest run one at a time, and
matmuls see other batch sizes), by ~1e-6 in fp32. With sampling (temperature > 0) the rows draw from one
generator, so a prompt's continuation depends on its batch-mates and their order, not only on the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cocomix.errors import ConfigError
from cocomix.model.attention import KVCache
from cocomix.model.generate import check_ids, check_sampling, restrict_vocab, sample_next, whole_number
from cocomix.model.transformer import Transformer


def last_logits(model: Transformer, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """The next-token logits (B, V) after ids (B, S), in fp32: the LM head runs on the last position only (a
    prompt's other S − 1 rows of logits are never needed). `generate` keeps the whole-logits head, whose rounding
    the demo's recorded steering figures come from."""
    h, _ = model.final_hidden(ids, cache)  # (B, S, d)
    return model.lm_head(h[:, -1]).float()


@torch.no_grad()
def generate_ragged(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    eos_id: int | None = None, stop: Callable[[int, list[int]], bool] | None = None,
                    vocab_limit: int | None = None, generator: torch.Generator | None = None,
                    ) -> list[list[int]]:
    """The new tokens of each prompt (a list of token ids, at least one): up to `max_new_tokens`, ending with
    eos_id where that was drawn, or where `stop(row, new tokens so far)` first returned True (checked after
    every token). Sampling arguments as `generate`; `vocab_limit` the tokenizer's size."""
    lengths = [len(p) for p in prompts]
    if not lengths or min(lengths) == 0:
        raise ConfigError("prompts: expected at least one prompt, each of at least one token id")
    check_sampling(max_new_tokens, temperature, top_k, top_p, vocab_limit)
    flat = [t for p in prompts for t in p]
    if not all(map(whole_number, flat)):
        raise ConfigError("prompts: expected lists of integer token ids")
    check_ids(torch.tensor([int(t) for t in flat]), model.cfg.vocab_size, "prompts")
    limit, longest = model.cfg.context_length, max(lengths)
    if longest >= limit:
        raise ConfigError(f"prompts: the longest has {longest} tokens, which fill the model's context_length {limit} "
                          "and leave no room for a new token; shorten it")
    if longest + max_new_tokens > limit:
        raise ConfigError(f"max_new_tokens: {max_new_tokens} new tokens after a prompt of {longest} tokens exceed "
                          f"the model's context_length {limit}; shorten the prompt or generate fewer tokens")
    device = model.lm_head.weight.device
    buf = torch.zeros(len(prompts), longest, dtype=torch.long)  # (B, P_max) prompts, right-padded
    for row, p in enumerate(prompts):
        buf[row, :len(p)] = torch.tensor(list(p), dtype=torch.long)
    buf = buf.to(device)
    length = torch.tensor(lengths, device=device)  # (B,)
    new: list[list[int]] = [[] for _ in prompts]
    live = torch.arange(len(prompts), device=device)  # (b,) the batch rows' prompt indices

    def ends(row: int, tok: int) -> bool:
        """Record row's new token; whether the row is over."""
        new[row].append(tok)
        return tok == eos_id or len(new[row]) == max_new_tokens or (stop is not None and stop(row, new[row]))

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache()
        feed, t = buf[:, :min(lengths)], min(lengths)  # t: the position whose token is chosen next
        while live.numel():
            last = restrict_vocab(last_logits(model, feed, cache), vocab_limit)  # (b, V)
            forced = length[live] > t  # (b,) rows still reading their prompt
            nxt = sample_next(last, temperature, top_k, top_p, generator)  # (b,)
            if t < longest:
                nxt = torch.where(forced, buf[live, t], nxt)
            keep = [j for j, (row, f, tok) in enumerate(zip(live.tolist(), forced.tolist(), nxt.tolist(),
                                                            strict=True)) if f or not ends(row, tok)]
            if not keep:
                break
            if len(keep) < live.numel():
                index = torch.tensor(keep, dtype=torch.long, device=device)
                live, nxt = live[index], nxt[index]
                cache.keep_rows(index)
            feed, t = nxt[:, None], t + 1  # (b, 1)
    finally:  # a stop callback or an interrupted step leaves the model in the mode it came in
        model.train(was_training)
    return new
