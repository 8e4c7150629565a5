"""CoCoMix / pause students: an independent llama reference forward, causality over the interleaved sequence,
NTP equivalence with mixing off and λ = 0, and cached generation equal to full recomputation."""

from __future__ import annotations

import math

import pytest
import torch

from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
from cocomix.methods import NTP, Batch, CoCoMix, Pause
from cocomix.model import Transformer, generate
from cocomix.model.concept import ConceptSeam, normalize


def _run(method: str = "cocomix", flavour: str = "gpt2", **concept) -> RunConfig:
    model = ModelConfig(flavour=flavour, vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64)
    c = {"n_latents": 80, "concept_layer": 2, "mix_k": 8, "k_attr": 4, **concept}
    return RunConfig(method=method, model=model, data=DataConfig(seq_len=16), concept=ConceptConfig(**c))


def _randomize(model: torch.nn.Module) -> None:
    """Non-trivial norms and biases so that no term of the forward can hide behind a default value."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)


# ------------------------------------------------------------------ independent reference (llama flavour)


def _ref_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _ref_rotate(x: torch.Tensor, positions: list[int], theta: float) -> torch.Tensor:
    """Rotate pairs (i, i + hd/2) of x (S, hd) by angle pos · theta^(−2i/hd), one position at a time."""
    S, hd = x.shape
    half = hd // 2
    freqs = torch.tensor([theta ** (-2.0 * i / hd) for i in range(half)], dtype=torch.float64)
    out = torch.empty_like(x)
    for s, p in enumerate(positions):
        cos, sin = torch.cos(p * freqs).to(x.dtype), torch.sin(p * freqs).to(x.dtype)
        a, b = x[s, :half], x[s, half:]
        out[s, :half] = a * cos - b * sin
        out[s, half:] = b * cos + a * sin
    return out


def _ref_block(x: torch.Tensor, blk: torch.nn.Module, positions: list[int], cfg: ModelConfig) -> torch.Tensor:
    """One llama block on a single sequence x (S, d) with a plain causal mask over its order."""
    S, d = x.shape
    H, hd = cfg.n_head, cfg.d_model // cfg.n_head
    h = _ref_rmsnorm(x, blk.ln_1.weight, cfg.norm_eps)
    Wq, Wk, Wv = blk.attn.qkv.weight.split(d, dim=0)
    heads = []
    for j in range(H):
        sl = slice(j * hd, (j + 1) * hd)
        q = _ref_rotate(h @ Wq[sl].T, positions, cfg.rope_theta)
        k = _ref_rotate(h @ Wk[sl].T, positions, cfg.rope_theta)
        v = h @ Wv[sl].T
        scores = q @ k.T / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(S, S).triu(1).bool(), float("-inf"))
        heads.append(scores.softmax(-1) @ v)
    x = x + torch.cat(heads, dim=-1) @ blk.attn.proj.weight.T
    h = _ref_rmsnorm(x, blk.ln_2.weight, cfg.norm_eps)
    g = h @ blk.mlp.gate.weight.T
    return x + ((g * torch.sigmoid(g)) * (h @ blk.mlp.up.weight.T)) @ blk.mlp.proj.weight.T


def _ref_cocomix_llama(model: Transformer, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (T, V) and concept logits (T, C) of one sequence, written from the paper's equations."""
    cfg, seam = model.cfg, model.seam
    T = ids.shape[0]
    x = model.wte.weight[ids]
    for i in range(seam.layer):
        x = _ref_block(x, model.blocks[i], list(range(T)), cfg)
    mu = x.mean(-1, keepdim=True)
    sd = torch.sqrt(((x - mu) ** 2).sum(-1, keepdim=True) / (x.shape[-1] - 1))
    z = ((x - mu) / (sd + 1e-5) - seam.pre_bias) @ seam.predictor.weight.T + seam.predictor.bias
    rows = []
    for t in range(T):
        top = torch.topk(z[t], seam.mix_k).indices
        dense = torch.zeros_like(z[t])
        dense[top] = z[t, top]
        rows.append(dense @ seam.compress_weight + seam.compress_bias + seam.pre_bias)
    c = torch.stack(rows) * sd + mu
    if seam.mixing == "add":  # the addition ablation: h + ĉ at every token, no extra slots
        y, positions = x + c, list(range(T))
    else:
        seq, positions = [], []
        for t in range(T):
            seq += [x[t], c[t]]
            positions += [t, t]
        y = torch.stack(seq)
    for i in range(seam.layer, cfg.n_layer):
        y = _ref_block(y, model.blocks[i], positions, cfg)
    slots = y if seam.mixing == "add" else y[1::2]
    return _ref_rmsnorm(slots, model.ln_f.weight, cfg.norm_eps) @ model.lm_head.weight.T, z


@pytest.mark.parametrize("mixing", ["insert", "add"])
def test_llama_cocomix_matches_an_independent_reference_forward(mixing: str) -> None:
    torch.manual_seed(0)
    model = CoCoMix(_run(flavour="llama", mixing=mixing)).build_model().double().eval()
    _randomize(model)
    ids = torch.randint(0, 97, (2, 9))
    out = model(ids, concept_logits=True)
    for b in range(2):
        logits, z = _ref_cocomix_llama(model, ids[b])
        assert (out.logits[b] - logits).abs().max() < 1e-10
        assert (out.aux["concept_logits"][b] - z).abs().max() < 1e-10
    model.float()
    out32 = model(ids.clone())
    logits, _ = _ref_cocomix_llama(model.double(), ids[0])
    assert (out32.logits[0].double() - logits).abs().max() < 1e-5


def _ref_pause_llama(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """Logits (T, V) of one sequence through a pause student: the pause slot (plus its token's state with
    pause_slot "token") after every token from block `layer` on, the next token read from the slots."""
    cfg, seam = model.cfg, model.seam
    T = ids.shape[0]
    x = model.wte.weight[ids]
    for i in range(seam.layer):
        x = _ref_block(x, model.blocks[i], list(range(T)), cfg)
    seq, positions = [], []
    for t in range(T):
        seq += [x[t], seam.pause + (x[t] if seam.copy_token else 0)]
        positions += [t, t]
    y = torch.stack(seq)
    for i in range(seam.layer, cfg.n_layer):
        y = _ref_block(y, model.blocks[i], positions, cfg)
    return _ref_rmsnorm(y[1::2], model.ln_f.weight, cfg.norm_eps) @ model.lm_head.weight.T


@pytest.mark.parametrize("pause_slot", ["vector", "token"])
def test_llama_pause_matches_an_independent_reference_forward(pause_slot: str) -> None:
    """The pause baseline predicts each next token from its slot, not from the token's own position."""
    torch.manual_seed(0)
    model = Pause(_run("pause", flavour="llama", pause_slot=pause_slot)).build_model().double().eval()
    _randomize(model)
    ids = torch.randint(0, 97, (2, 9))
    logits = model(ids).logits
    for b in range(2):
        assert (logits[b] - _ref_pause_llama(model, ids[b])).abs().max() < 1e-10


# ------------------------------------------------------------------ causality, NTP equivalence, generation


@pytest.mark.parametrize("method,concept", [("cocomix", {}), ("cocomix", {"mixing": "add"}), ("pause", {}),
                                            ("cocomix", {"target": "hidden", "d_teacher": 24})])
def test_changing_a_later_token_never_changes_earlier_outputs(flavour: str, method: str, concept: dict) -> None:
    from cocomix.methods import METHODS

    model = METHODS[method](_run(method, flavour, **concept)).build_model().double().eval()
    _randomize(model)
    ids = torch.randint(0, 97, (1, 14))
    base = model(ids, concept_logits=True)
    for t in (0, 5, 12):
        changed = ids.clone()
        changed[0, t + 1] = (changed[0, t + 1] + 1) % 97
        out = model(changed, concept_logits=True)
        assert torch.equal(out.logits[:, : t + 1], base.logits[:, : t + 1])
        for key, value in base.aux.items():
            assert torch.equal(out.aux[key][:, : t + 1], value[:, : t + 1]), key
        assert not torch.equal(out.logits[:, t + 1:], base.logits[:, t + 1:])


def test_mixing_off_and_lambda_zero_is_exactly_ntp(flavour: str) -> None:
    run = _run(flavour=flavour, mixing="none", lambda_concept=0.0)
    torch.manual_seed(1)
    student = CoCoMix(run).build_model()
    _randomize(student)
    ntp = NTP(run).build_model()
    ntp.load_state_dict({k: v for k, v in student.state_dict().items() if not k.startswith("seam.")})
    ids = torch.randint(0, 97, (3, 16))
    loss_c, _ = CoCoMix(run).loss(student, Batch(ids))
    loss_n, _ = NTP(run).loss(ntp, Batch(ids))
    assert torch.equal(loss_c, loss_n)
    loss_c.backward()
    loss_n.backward()
    theirs = dict(ntp.named_parameters())
    for name, p in student.named_parameters():
        if name.startswith("seam."):
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
        else:
            assert torch.equal(p.grad, theirs[name].grad), name


@pytest.mark.parametrize("method", ["cocomix", "pause"])
def test_cached_generation_equals_full_recomputation_with_a_long_prompt(flavour: str, method: str) -> None:
    from cocomix.methods import METHODS

    model = METHODS[method](_run(method, flavour)).build_model().eval()
    _randomize(model)
    prompt = torch.randint(0, 97, (2, 40))  # longer than half of context_length=64
    gen = torch.Generator().manual_seed(0)
    cached, cached_logits = generate(model, prompt, 20, temperature=0.0, generator=gen)
    full, full_logits = generate(model, prompt, 20, temperature=0.0, use_cache=False)
    assert torch.equal(cached, full)
    assert (cached_logits - full_logits).abs().max() < 1e-5


def test_steering_scales_the_chosen_logits_before_the_topk() -> None:
    seam = ConceptSeam(1, 16, 40, 4)
    h = torch.randn(1, 3, 16)
    logits, mu, sd = seam.concept_logits(h)
    base = seam.concept_vector(logits, mu, sd)
    weakest = int(logits[0, 0].argmin())
    seam.steer(torch.tensor([weakest]), torch.tensor([-50.0]))  # a very negative logit times −50 wins the TopK
    steered = seam.concept_vector(logits, mu, sd)
    assert not torch.allclose(steered[0, 0], base[0, 0])
    # written out: the scaled logit competes in the TopK and enters with its scaled value; the dense compression
    scaled = logits.clone()
    scaled[..., weakest] *= -50.0
    values, indices = torch.topk(scaled, 4, dim=-1)  # (1, 3, 4)
    dense = torch.zeros_like(scaled).scatter(-1, indices, values)  # (1, 3, 40)
    expected = (dense @ seam.compress_weight + seam.compress_bias + seam.pre_bias) * sd + mu
    assert torch.allclose(steered, expected, atol=1e-5)
    assert torch.equal(seam.last_topk, indices) and bool((seam.last_topk[0, 0] == weakest).any())
    with torch.no_grad():  # the chunked TopK the model's forward runs scales the same logits
        x, _, _ = normalize(h)
        chunked_values, chunked_indices = seam.topk_chunked(x - seam.pre_bias)
    assert torch.equal(chunked_indices, indices) and torch.allclose(chunked_values, values, atol=1e-6)
    seam.steer(None)
    assert torch.equal(seam.concept_vector(logits, mu, sd), base)
    with pytest.raises(ValueError, match="alphas of the concepts' shape"):
        seam.steer(torch.tensor([weakest]))  # concepts without their α
    with pytest.raises(ValueError, match=r"\(2,\), got \(1,\)"):
        seam.steer(torch.tensor([1, 2]), torch.tensor([3.0]))
    n = seam.predictor.out_features  # indices checked when set, not at the next forward
    for bad in ([n], [-1], [4, 4]):
        with pytest.raises(ValueError, match=rf"^steer: expected distinct concept indices in \[0, {n - 1}\]"):
            seam.steer(torch.tensor(bad), torch.ones(len(bad)))


@pytest.mark.parametrize("pause_slot", ["vector", "token"])
def test_pause_slots_are_the_pause_vector_or_the_token_plus_it(pause_slot: str) -> None:
    model = Pause(_run("pause", pause_slot=pause_slot)).build_model()
    h = torch.randn(2, 5, 32)
    pos = torch.arange(3, 8)
    seq, seq_pos, _ = model.seam.insert(h, pos)                       # (2, 10, 32), (10,)
    expected = model.seam.pause + (h if pause_slot == "token" else 0)  # (2, 5, 32) or (32,)
    assert torch.equal(seq[:, 0::2], h) and torch.equal(seq_pos, pos.repeat_interleave(2))
    assert torch.allclose(seq[:, 1::2], expected.expand(2, 5, 32))


@pytest.mark.parametrize("target", ["concepts", "hidden"])
def test_cocomix_loss_before_prepare_is_a_clear_error(target: str) -> None:
    method = CoCoMix(_run(target=target, d_teacher=24))
    model = method.build_model()
    with pytest.raises(RuntimeError, match=r"prepare\(\) was not called"):
        method.loss(model, Batch(torch.randint(0, 97, (1, 16)), None))


def test_hidden_ablation_losses_equal_hand_values() -> None:
    """The `hidden` ablation's ℓ1 / ℓ2 / cosine losses: mean over positions of the paper's norms (sum over
    dimensions), or with reduction="mean" also over dimensions."""
    from cocomix.methods.cocomix import hidden_loss

    pred = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # (B=1, T=2, d=2)
    target = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    assert float(hidden_loss(pred, target, "l1")) == pytest.approx((3 + 4 + 1 + 2) / 2)
    assert float(hidden_loss(pred, target, "l2")) == pytest.approx((9 + 16 + 1 + 4) / 2)
    assert float(hidden_loss(pred, target, "l1", "mean")) == pytest.approx((3 + 4 + 1 + 2) / 4)
    assert float(hidden_loss(pred, target, "l2", "mean")) == pytest.approx((9 + 16 + 1 + 4) / 4)
    target = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])  # cosines 3/5 and 1
    assert float(hidden_loss(pred, target, "cosine")) == pytest.approx(((1 - 0.6) + 0.0) / 2)
