"""Batched generation from prompts of different lengths: every row equals one-row `generate` for every method
and flavour, rows end on their own (end-of-text, stop, length) and leave the batch, sampling arguments act as in
`generate`, and bad arguments are one-line errors."""

from __future__ import annotations

import pytest
import torch

from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
from cocomix.errors import ConfigError
from cocomix.methods import METHODS
from cocomix.model import KVCache, Transformer, generate, generate_ragged

LENGTHS = (5, 1, 9, 3, 9)


def _model(method: str, flavour: str = "gpt2") -> Transformer:
    """A random student whose greedy continuations vary (init_std 0.3: a default-initialised tiny model repeats
    one token)."""
    torch.manual_seed(0)
    cfg = ModelConfig(flavour=flavour, vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64,
                      init_std=0.3)
    run = RunConfig(method=method, model=cfg, data=DataConfig(seq_len=16),
                    concept=ConceptConfig(n_latents=80, concept_layer=2, mix_k=8, k_attr=4))
    return METHODS[method](run).build_model().eval()


def _prompts(seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=gen).tolist() for n in LENGTHS]


def _alone(model: Transformer, prompt: list[int], n: int, **kw: object) -> list[int]:
    tokens, _ = generate(model, torch.tensor([prompt]), n, **kw)
    return tokens[0, len(prompt):].tolist()


@pytest.mark.parametrize("method", ["ntp", "cocomix", "pause"])
def test_every_row_equals_generating_its_prompt_alone(method: str, flavour: str) -> None:
    model, prompts = _model(method, flavour), _prompts()
    got = generate_ragged(model, prompts, 12, temperature=0.0)
    want = [_alone(model, p, 12, temperature=0.0) for p in prompts]
    assert got == want
    assert len({tuple(w) for w in want}) == len(want) and len({t for w in want for t in w}) > 8  # varied rows


def test_rows_end_on_their_own_and_leave_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 0 ends at an end-of-text token (kept as its last token), row 2 when `stop` says so after 3 tokens,
    the rest after max_new_tokens; the cache drops the rows that ended and the others are unchanged."""
    model, prompts = _model("cocomix"), _prompts()
    want = [_alone(model, p, 12, temperature=0.0) for p in prompts]
    eos = want[0][4]
    assert all(eos not in w[:12] for w in want[1:]), "pick another prompt seed: eos would end other rows too"
    kept: list[int] = []
    real = KVCache.keep_rows

    def record(cache: KVCache, index: torch.Tensor) -> None:
        kept.append(index.numel())
        real(cache, index)

    monkeypatch.setattr(KVCache, "keep_rows", record)
    asked: list[tuple[int, int]] = []

    def stop(row: int, new: list[int]) -> bool:
        asked.append((row, len(new)))
        return row == 2 and len(new) == 3

    got = generate_ragged(model, prompts, 12, temperature=0.0, eos_id=eos, stop=stop)
    assert got[0] == want[0][:want[0].index(eos) + 1]
    assert got[2] == want[2][:3]
    assert [got[i] for i in (1, 3, 4)] == [want[i] for i in (1, 3, 4)]
    ends = [len(p) + len(g) for p, g in zip(prompts, got, strict=True)]  # the step after each row's last token
    # the batch shrinks after each step on which rows ended, to the rows that end later; the last step needs none
    assert kept == [sum(e > t for e in ends) for t in sorted(set(ends))[:-1]] and kept[0] < 5
    assert (0, 5) not in asked and (2, 4) not in asked  # an ended row is never asked again
    assert all(n >= 1 for _, n in asked)  # nor is a row still reading its prompt


def test_sampling_arguments_act_as_in_generate() -> None:
    """Equal-length prompts with the same seed draw exactly what `generate` draws for the stacked batch (no row
    is forced or leaves), with temperature, top-k and top-p; `vocab_limit` bars the ids at and above it."""
    model = _model("cocomix")
    rows = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(2))
    kw = {"temperature": 1.3, "top_k": 20, "top_p": 0.9, "vocab_limit": 50}
    tokens, _ = generate(model, rows, 15, generator=torch.Generator().manual_seed(3), **kw)
    got = generate_ragged(model, rows.tolist(), 15, generator=torch.Generator().manual_seed(3), **kw)
    assert got == tokens[:, 6:].tolist()
    assert max(max(g) for g in got) < 50 and len({t for g in got for t in g}) > 5


def test_bad_arguments_are_errors_and_the_mode_is_restored() -> None:
    model = _model("ntp").train()
    for prompts, match in (([], "at least one prompt"), ([[1, 2], []], "at least one prompt"),
                           ([[1] * 60, [2]], r"max_new_tokens: 5 new tokens after a prompt of 60 tokens exceed"),
                           ([[2], [1] * 64], "prompts: the longest has 64 tokens, which fill the model's "
                                             "context_length 64 and leave no room"),
                           ([[1, 2], [model.cfg.vocab_size]], rf"prompts: token id {model.cfg.vocab_size} is outside "
                                                              rf"the model's vocabulary \[0, {model.cfg.vocab_size}\)"),
                           ([[-1]], "prompts: token id -1 is outside"), ([[1.5]], "integer token ids"),
                           ([[[1]]], "integer token ids")):
        with pytest.raises(ConfigError, match=match):
            generate_ragged(model, prompts, 5)
    for prompt, match in ((torch.tensor([[1, model.cfg.vocab_size + 3]]), "prompt: token id"),
                          (torch.tensor([[-2]]), "token id -2 is outside"), (torch.tensor([[1.0]]), "integer token")):
        with pytest.raises(ConfigError, match=match):  # (torch's embedding lookup would raise IndexError)
            generate(model, prompt, 2)
    with pytest.raises(ConfigError, match="top_p"):
        generate_ragged(model, [[1]], 5, top_p=1.5)

    def interrupt(row: int, new: list[int]) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_ragged(model, [[1], [2, 3]], 5, stop=interrupt)
    assert model.training
    assert generate_ragged(model, [[4, 5, 6]], 4, temperature=0.0) == [_alone(model, [4, 5, 6], 4, temperature=0.0)]
    assert model.training
