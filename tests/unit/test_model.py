"""Student transformer: shapes, causality, KV-cache generation parity, seam mechanics, init and determinism."""

from __future__ import annotations

import pytest
import torch

from cocomix.errors import ConfigError
from cocomix.model import KVCache, Seam, Transformer, generate, interleave, read_slots
from cocomix.model.generate import sample_next
from tests.conftest import tiny_model_config


def _perturbed(model: Transformer) -> Transformer:
    """Give norms and biases non-default values so every parameter influences the output."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_logits_shape_and_param_count(flavour: str) -> None:
    cfg = tiny_model_config(flavour)
    model = Transformer(cfg)
    out = model(torch.randint(0, cfg.vocab_size, (2, 10)))
    assert out.logits.shape == (2, 10, cfg.vocab_size)
    d, L, V = cfg.d_model, cfg.n_layer, cfg.vocab_size
    if flavour == "gpt2":  # 12d^2 + 13d per block, tied embeddings, positions, final LN
        expected = L * (12 * d * d + 13 * d) + V * d + cfg.context_length * d + 2 * d
    else:  # qkv+proj 4d^2, SwiGLU 3·d·m, two RMSNorm weights; final RMSNorm
        m = cfg.mlp_width
        expected = L * (4 * d * d + 3 * d * m + 2 * d) + V * d + d
    assert model.num_params() == expected


def test_tied_embeddings_share_storage() -> None:
    model = Transformer(tiny_model_config())
    assert model.lm_head.weight is model.wte.weight
    untied = Transformer(tiny_model_config(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_causality_future_token_never_changes_past_logits(flavour: str) -> None:
    cfg = tiny_model_config(flavour)
    model = _perturbed(Transformer(cfg)).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    base = model(ids).logits
    for t in (0, 5, 22):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1 + torch.arange(2)) % cfg.vocab_size
        out = model(changed).logits
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"position <= {t} changed"
        assert not torch.allclose(out[:, t + 1], base[:, t + 1]), "changed token had no effect at all"


@pytest.mark.parametrize("prompt_len", [1, 7])
def test_kv_cache_generation_matches_full_recompute(flavour: str, prompt_len: int) -> None:
    cfg = tiny_model_config(flavour)
    model = _perturbed(Transformer(cfg))
    prompt = torch.randint(0, cfg.vocab_size, (3, prompt_len))
    toks_c, logits_c = generate(model, prompt, 20, temperature=0.0, use_cache=True)
    toks_f, logits_f = generate(model, prompt, 20, temperature=0.0, use_cache=False)
    assert torch.equal(toks_c, toks_f)
    assert (logits_c - logits_f).abs().max().item() < 1e-5


def test_generation_stops_when_the_stop_callback_says_so(flavour: str) -> None:
    cfg = tiny_model_config(flavour)
    model = _perturbed(Transformer(cfg))
    prompt = torch.randint(0, cfg.vocab_size, (1, 4))
    full, _ = generate(model, prompt, 12, temperature=0.0)
    seen = []
    tokens, logits = generate(model, prompt, 12, temperature=0.0,
                              stop=lambda t: seen.append(t.shape[1]) or t.shape[1] == 7)
    assert seen == [5, 6, 7] and torch.equal(tokens, full[:, :7]) and logits.shape[1] == 3


def test_generation_never_samples_ids_beyond_the_tokenizer() -> None:
    torch.manual_seed(0)
    model = _perturbed(Transformer(tiny_model_config()))  # vocab 97, as if padded past a 40-token tokenizer
    prompt = torch.randint(0, 40, (4, 3))
    free, _ = generate(model, prompt, 30, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert int(free[:, 3:].max()) >= 40  # without the limit, the padded ids are sampled
    for temperature in (2.0, 0.0):
        limited, logits = generate(model, prompt, 30, temperature=temperature, vocab_limit=40,
                                   generator=torch.Generator().manual_seed(0))
        assert int(limited[:, 3:].max()) < 40 and bool(torch.isneginf(logits[..., 40:]).all())


def test_generation_takes_any_integer_prompt_dtype_and_refuses_bools() -> None:
    model = Transformer(tiny_model_config()).eval()
    prompt = torch.randint(0, 97, (2, 3))
    want, _ = generate(model, prompt, 4, temperature=0.0)
    for dtype in (torch.int32, torch.int16, torch.uint8):  # the embedding itself takes int64 / int32 only
        got, _ = generate(model, prompt.to(dtype), 4, temperature=0.0)
        assert torch.equal(got, want)
    with pytest.raises(ConfigError, match="prompt: expected a non-empty"):
        generate(model, prompt > 40, 4)


def test_generation_keeps_one_row_of_logits_per_step_not_the_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step's (B, V) logits own their memory: a view of the prompt's (B, P, V) logits would hold all of them
    (at GPT-2's vocabulary, 200 MB a row for a 1000-token prompt) until generation ends."""
    import importlib

    gen = importlib.import_module("cocomix.model.generate")  # (the package's `generate` is the function)
    torch.manual_seed(0)
    model, sizes = Transformer(tiny_model_config()), []
    real = gen.sample_next
    monkeypatch.setattr(gen, "sample_next", lambda logits, *a: sizes.append(logits.untyped_storage().nbytes())
                        or real(logits, *a))
    generate(model, torch.randint(0, 97, (2, 12)), 3)
    assert sizes == [2 * 97 * 4] * 3


def test_kv_cache_sampling_matches_with_same_generator(flavour: str) -> None:
    cfg = tiny_model_config(flavour)
    model = _perturbed(Transformer(cfg))
    prompt = torch.randint(0, cfg.vocab_size, (2, 5))
    a = generate(model, prompt, 15, temperature=1.0, top_k=20, top_p=0.9,
                 generator=torch.Generator().manual_seed(3))[0]
    b = generate(model, prompt, 15, temperature=1.0, top_k=20, top_p=0.9, use_cache=False,
                 generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_chunked_prefill_with_cache_equals_single_pass(flavour: str) -> None:
    """Feeding 5 tokens, then 6 more (query length > 1 against a non-empty cache) needs bottom-right masking."""
    cfg = tiny_model_config(flavour)
    model = _perturbed(Transformer(cfg)).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    full = model(ids).logits
    cache = model.new_cache()
    first = model(ids[:, :5], cache=cache).logits
    second = model(ids[:, 5:], cache=cache).logits
    assert (torch.cat((first, second), 1) - full).abs().max().item() < 1e-5
    assert cache.tokens == 11 and cache.lengths == [11] * cfg.n_layer


class _PauseSeam(Seam):
    """Test seam: a learned vector after every token, next token read from the slots (pause-token style)."""

    def __init__(self, layer: int, d: int) -> None:
        super().__init__(layer)
        self.slot = torch.nn.Parameter(torch.randn(d))

    def insert(self, h, pos):
        slots = self.slot.expand_as(h) + 0.1 * h  # depends on h_t, like a concept vector would
        return interleave(h, slots), pos.repeat_interleave(2), {"n_slots": h.shape[1]}

    def read(self, h):
        return read_slots(h)


def test_identity_seam_leaves_model_unchanged() -> None:
    model = Transformer(tiny_model_config()).eval()
    ids = torch.randint(0, 97, (2, 9))
    before = model(ids).logits
    model.set_seam(Seam(1))
    assert torch.equal(model(ids).logits, before)


def test_interleaving_seam_is_causal_and_cache_exact(flavour: str) -> None:
    cfg = tiny_model_config(flavour)
    model = _perturbed(Transformer(cfg))
    model.set_seam(_PauseSeam(1, cfg.d_model))
    model.eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    out = model(ids)
    assert out.logits.shape == (2, 12, cfg.vocab_size) and out.aux == {"n_slots": 12}
    changed = ids.clone()
    changed[:, 8] = (changed[:, 8] + 1) % cfg.vocab_size
    assert torch.equal(model(changed).logits[:, :8], out.logits[:, :8])
    toks_c, logits_c = generate(model, ids[:, :4], 10, temperature=0.0)
    toks_f, logits_f = generate(model, ids[:, :4], 10, temperature=0.0, use_cache=False)
    assert torch.equal(toks_c, toks_f)
    assert (logits_c - logits_f).abs().max().item() < 1e-5


def test_interleave_and_read_slots_roundtrip() -> None:
    h, s = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mixed = interleave(h, s)
    assert torch.equal(mixed[:, 0::2], h) and torch.equal(mixed[:, 1::2], s)
    assert torch.equal(read_slots(mixed), s)


def test_kv_cache_grows_past_initial_capacity() -> None:
    cache = KVCache(1)
    for _ in range(50):
        k = torch.randn(1, 2, 3, 4)
        all_k, _ = cache.update(0, k, k)
    assert all_k.shape == (1, 2, 150, 4) and torch.equal(all_k[:, :, -3:], k)


def test_init_is_deterministic_and_gpt2_scaled() -> None:
    cfg = tiny_model_config(n_layer=8, d_model=64)
    torch.manual_seed(5)
    a = Transformer(cfg)
    torch.manual_seed(5)
    b = Transformer(cfg)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    proj = a.blocks[0].mlp.proj.weight
    # 0.02 / sqrt(2 · 8) for residual projections; ~16k-sample estimates are within ~1.2% (2σ)
    assert abs(proj.std().item() / (0.02 / 4) - 1) < 0.03
    assert abs(a.blocks[0].attn.qkv.weight.std().item() / 0.02 - 1) < 0.03
    assert torch.equal(a.blocks[0].ln_1.weight, torch.ones(64))


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, top_k=2, generator=gen)) for _ in range(200)}
    assert draws == {0, 1}
    # softmax mass of token 0 is ~0.72: top_p=0.5 keeps only it, top_p=0.9 keeps tokens 0 and 1
    assert {int(sample_next(logits, 1.0, top_p=0.5, generator=gen)) for _ in range(100)} == {0}
    assert {int(sample_next(logits, 1.0, top_p=0.9, generator=gen)) for _ in range(300)} == {0, 1}
    # a prefix whose mass is exactly top_p is enough (HF's TopPLogitsWarper): .5 + .25 = .75 keeps two tokens
    exact = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()
    assert {int(sample_next(exact, 1.0, top_p=0.75, generator=gen)) for _ in range(300)} == {0, 1}
    assert int(sample_next(logits, 0.0)) == 0
    # a top_p below float32's smallest number (0 in the comparison): the top token, not an empty support
    assert {int(sample_next(logits[:, [1, 0, 2]], 1.0, top_p=1e-300, generator=gen)) for _ in range(20)} == {1}
    # a temperature so small that logits / T overflows: the top token, not a NaN distribution
    assert int(sample_next(torch.tensor([[-40.0, -30.0, -50.0]]), 1e-38, generator=gen)) == 1


def test_refuses_sequences_longer_than_context(flavour: str) -> None:
    model = Transformer(tiny_model_config(flavour, context_length=8))
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_a_temperature_too_small_for_fp32_samples_the_argmax() -> None:
    """1e-300 underflows to 0 in fp32 (0/0 would be NaN): the limit of sampling as T -> 0, the argmax."""
    logits = torch.tensor([[0.5, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert sample_next(logits, 1e-300).tolist() == [1, 0]
    from cocomix.errors import ConfigError
    from cocomix.model.generate import check_sampling

    with pytest.raises(ConfigError, match="temperature: expected a finite number"):
        check_sampling(1, float("inf"), None, None)


def test_counts_that_are_not_integers_and_an_empty_vocabulary_are_refused_before_generating() -> None:
    """A fractional max_new_tokens or top_k, or a vocab_limit < 1 (every logit −inf), is a ConfigError up front, in
    `generate` and `generate_ragged` alike (a ragged row never reached 2.5 new tokens and ran to the context
    limit; greedy decoding over an empty vocabulary returned token 0)."""
    from cocomix.model.generate_ragged import generate_ragged

    model = Transformer(tiny_model_config("gpt2")).eval()
    for kw, field in (({"max_new_tokens": 2.5}, "max_new_tokens"), ({"top_k": 2.5}, "top_k"),
                      ({"vocab_limit": 0, "temperature": 0.0}, "vocab_limit")):
        args = {"max_new_tokens": 3, **kw}
        with pytest.raises(ConfigError, match=f"^{field}: expected"):
            generate(model, torch.tensor([[1, 2]]), **args)
        with pytest.raises(ConfigError, match=f"^{field}: expected"):
            generate_ragged(model, [[1, 2], [3]], **args)


def test_temperature_sharpens_or_flattens_the_distribution() -> None:
    """Logits [1, 0]: token 0 is drawn with probability σ(1/T): 0.881 at T = 0.5, 0.731 at T = 1, 0.622 at T = 2."""
    logits = torch.tensor([[1.0, 0.0]]).expand(4000, 2)
    gen = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0, 2.0):
        share = float((sample_next(logits, temperature, generator=gen) == 0).float().mean())
        assert abs(share - float(torch.sigmoid(torch.tensor(1.0 / temperature)))) < 0.03, (temperature, share)


def test_generation_pads_finished_rows_with_the_end_token_and_stops_when_all_are_done() -> None:
    """A row that has produced eos_id produces only eos_id from then on, while the others go on unchanged;
    generation ends once every row has produced it."""
    model = _perturbed(Transformer(tiny_model_config()))
    prompt = torch.randint(0, 97, (2, 4))

    def sample(rows: torch.Tensor, **kw: int) -> torch.Tensor:  # sampled: the tiny model repeats one token greedily
        return generate(model, rows, 16, temperature=1.0, generator=torch.Generator().manual_seed(1), **kw)[0]

    full = sample(prompt)  # (2, 20), no end token; each row's draws do not depend on the other row's
    eos = int(full[0, 6])  # what row 0 emits at its third step
    assert len(set(full[0, 4:].tolist())) > 3  # a varied continuation, so that the padding below shows
    got = sample(prompt, eos_id=eos)
    firsts = [next((t for t in range(4, 20) if int(full[r, t]) == eos), None) for r in range(2)]
    end = 20 if None in firsts else max(firsts) + 1  # stops after the step on which the last row finished
    assert firsts[0] is not None and firsts[0] <= 6 and got.shape == (2, end)
    for r, first in enumerate(firsts):
        stop = end if first is None else first + 1
        assert torch.equal(got[r, :stop], full[r, :stop])          # unchanged up to its own end token
        assert bool((got[r, stop:] == eos).all())                  # then the end token only
    alone = sample(prompt[:1])  # one row (other draws than in a batch of two)
    eos = int(alone[0, 6])
    first = next(t for t in range(4, 20) if int(alone[0, t]) == eos)
    assert torch.equal(sample(prompt[:1], eos_id=eos), alone[:, :first + 1])  # stops right after its end token


def test_attention_dropout_is_applied_in_training_only() -> None:
    """With every nn.Dropout off, the model's dropout acts on the attention probabilities alone (SDPA's
    dropout_p): a training-mode forward differs from the evaluation-mode one, and two training forwards differ."""
    model = Transformer(tiny_model_config(dropout=0.5))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ids = torch.randint(0, 97, (2, 12))
    model.eval()
    with torch.no_grad():
        plain = model(ids).logits
        model.train()
        a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, plain) and not torch.allclose(a, b)
