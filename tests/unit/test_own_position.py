"""Own-position attention and the one-pass Eq. 1 gradient: values, per-query gradients, HF teachers, fallbacks."""

from __future__ import annotations

import warnings

import pytest
import torch

from cocomix.model import Transformer
from cocomix.model.own_position import _own_weight, own_position_attention
from cocomix.teacher import Teacher
from tests.conftest import tiny_model_config

transformers = pytest.importorskip("transformers")


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, mask: torch.Tensor | None,
               softcap: float | None) -> torch.Tensor:
    """Plain eager attention: q (B, H, T, hd), k/v (B, H_kv, T, hd), mask a bool (True = attend) or None."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * scaling
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    T = q.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool).tril() if mask is None else mask
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def _qkv(B: int = 2, H: int = 4, H_kv: int = 2, T: int = 7, hd: int = 5) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(B, h, T, hd, dtype=torch.float64, requires_grad=True) for h in (H, H_kv, H_kv))


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("mask_kind", ["causal", "bool", "additive"])
def test_values_are_softmax_attention(mask_kind: str, softcap: float | None) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv()
    T = q.shape[2]
    window = _window(T, 3)
    mask = {"causal": None, "bool": window,
            "additive": torch.zeros(T, T, dtype=torch.float64).masked_fill(~window, float("-inf"))}[mask_kind]
    out = own_position_attention(q, k, v, scaling=0.4, mask=mask, softcap=softcap)
    want = _reference(q, k, v, 0.4, None if mask_kind == "causal" else window, softcap)
    assert out.shape == want.shape and torch.allclose(out, want, atol=1e-12)


def _window(T: int, width: int) -> torch.Tensor:
    """(T, T) bool: causal, each query seeing its `width` most recent positions (itself included)."""
    return torch.ones(T, T, dtype=torch.bool).tril() & ~torch.ones(T, T, dtype=torch.bool).tril(-width)


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_each_query_is_differentiated_along_its_own_key_and_value_only(softcap: float | None, sliding: bool) -> None:
    """∂(Σ_u w_u·out_u)/∂(q, k, v) equals Σ_u of the gradient of w_u·out_u computed with every other position's
    key and value detached (grouped-query heads included: a key head collects the gradients of its group)."""
    torch.manual_seed(1)
    q, k, v = _qkv()
    w = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    mask = _window(7, 3) if sliding else None
    got = torch.autograd.grad((own_position_attention(q, k, v, scaling=0.4, mask=mask, softcap=softcap) * w).sum(),
                              (q, k, v))
    want = [torch.zeros_like(x) for x in (q, k, v)]
    for u in range(q.shape[2]):
        keep = torch.zeros(1, 1, q.shape[2], 1, dtype=torch.float64)
        keep[:, :, u] = 1
        ku, vu = k * keep + k.detach() * (1 - keep), v * keep + v.detach() * (1 - keep)  # only position u live
        out_u = _reference(q, ku, vu, 0.4, mask, softcap)[:, :, u]  # (B, H, hd)
        for acc, g in zip(want, torch.autograd.grad((out_u * w[:, :, u]).sum(), (q, k, v)), strict=True):
            acc += g
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    # and it is not the ordinary gradient (which also counts later queries' use of a key/value)
    full = torch.autograd.grad((_reference(q, k, v, 0.4, mask, softcap) * w).sum(), k)[0]
    assert not torch.allclose(full, got[1], atol=1e-6)


def test_own_weights_are_the_attention_diagonal_in_any_chunking() -> None:
    torch.manual_seed(4)
    q, k, _ = _qkv(H_kv=4)
    q, k = q.detach(), k.detach()
    scores = q @ k.transpose(-1, -2) * 0.4
    for mask, causal in ((_window(7, 3), False), (_window(7, 3)[None, None].expand(2, 1, 7, 7), False),
                         (None, True)):
        want = torch.softmax(scores.masked_fill(~(_window(7, 7) if mask is None else mask), float("-inf")), -1)
        want = want.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)  # (B, H, T, 1)
        for budget in (1, 4 * 7 * 3, 4 * 7 * 7 * 2, 1 << 26):  # one row at a time ... everything at once
            got = _own_weight(q, k, 0.4, mask, causal, budget=budget)
            assert torch.allclose(got, want, atol=1e-14), (budget, mask is None)
    nothing = _window(7, 3).clone()
    nothing[4] = False  # a query that may attend to nothing has no own weight (not NaN)
    got = _own_weight(q, k, 0.4, nothing, False)
    assert torch.equal(got[:, :, 4], torch.zeros_like(got[:, :, 4])) and torch.isfinite(got).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_own_weights_from_the_flash_kernels_log_sum_exp_equal_the_chunked_ones(dtype: torch.dtype) -> None:
    """On CPU the own weights come from the flash kernel's log-sum-exp (`_flash_cpu`); they equal the chunked
    computation (`_own_weight`) for a causal, a sliding-window bool, an additive, a batched mask, a query whose own
    key is masked and one that may attend to nothing, and its output is SDPA's."""
    from cocomix.model.own_position import _flash_cpu

    torch.manual_seed(5)
    q, k, v = (x.detach().to(dtype) for x in _qkv(H_kv=4))
    own_masked = _window(7, 3).clone()
    own_masked[2, 2] = False
    own_masked[4] = False
    masks = [None, _window(7, 3), torch.zeros(7, 7, dtype=dtype).masked_fill(~_window(7, 4), float("-inf")),
             _window(7, 3)[None, None].expand(2, 1, 7, 7), own_masked]
    for mask in masks:
        causal = mask is None
        found = _flash_cpu(q, k, v, 0.4, mask, causal)
        assert found is not None
        out, p_own = found
        want = _own_weight(q, k, 0.4, mask, causal)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert p_own.dtype == want.dtype and torch.allclose(p_own, want, atol=tol), mask
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=0.4)
        assert torch.allclose(out.float(), sdpa.float(), atol=tol, equal_nan=True)
    assert torch.equal(p_own[:, :, 4], torch.zeros_like(p_own[:, :, 4])) and (p_own[:, :, 2] == 0).all()
    padding = torch.ones(2, 1, 1, 7, dtype=torch.bool)  # a key-padding mask (one row for every query)
    padding[0, ..., 5:] = False
    out, p_own = _flash_cpu(q, k, v, 0.4, padding, False)
    assert torch.allclose(p_own, _own_weight(q, k, 0.4, padding.expand(2, 1, 7, 7), False), atol=tol)
    assert torch.allclose(p_own, _own_weight(q, k, 0.4, padding, False, budget=4 * 7 * 3), atol=tol)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast chooses its own kernel: the chunked path
        assert _flash_cpu(q, k, v, 0.4, None, True) is None
    # a head dimension that is not contiguous: SDPA would not run this kernel (it reads it as contiguous)
    qt = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert torch.equal(qt, q) and _flash_cpu(qt, k, v, 0.4, None, True) is None


def test_the_chunked_fallback_gives_the_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    import cocomix.model.own_position as op

    torch.manual_seed(7)
    q, k, v = _qkv()
    w = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    for mask in (None, _window(7, 3)):
        flash = torch.autograd.grad((own_position_attention(q, k, v, scaling=0.4, mask=mask) * w).sum(), (q, k, v))
        with monkeypatch.context() as m:
            m.setattr(op, "_flash_cpu", lambda *a: None)
            chunked = torch.autograd.grad((own_position_attention(q, k, v, scaling=0.4, mask=mask) * w).sum(),
                                          (q, k, v))
        assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(flash, chunked, strict=True))


def test_sixteen_bit_scores_are_formed_in_fp32() -> None:
    """fp16 q·k beyond 65504 overflows in fp16; the own-path term stays finite and the output is SDPA's."""
    torch.manual_seed(6)
    q = (100 + torch.randn(1, 2, 5, 8)).half()
    k, v = (100 + torch.randn(1, 2, 5, 8)).half(), torch.randn(1, 2, 5, 8).half()
    assert not torch.isfinite((q * k).sum(-1)).all()  # the overflow this guards against (q·k ≈ 80000)
    out = own_position_attention(q, k, v, scaling=1.0)
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=1.0)
    assert torch.isfinite(out).all() and torch.allclose(out.float(), want, atol=2e-2)


def _hf_model(name: str) -> torch.nn.Module:
    tf = transformers
    common = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                                bos_token_id=0, eos_token_id=0))
    if name == "llama":  # grouped-query attention, rotary positions, SDPA by default
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=2, **common))
    if name == "gpt_neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**common))
    if name == "gemma2":  # eager by default; attention-logit soft-capping, sliding-window layers, capped final logits
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(num_key_value_heads=2, head_dim=8, attn_logit_softcapping=5.0,
                                                    final_logit_softcapping=30.0, sliding_window=4, **common))
    if name == "mistral":  # sliding window in every layer
        return tf.MistralForCausalLM(tf.MistralConfig(num_key_value_heads=2, sliding_window=5, **common))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt_neox", "gemma2", "mistral"])
def test_hf_teachers_get_the_per_position_gradient_in_one_pass(name: str) -> None:
    torch.manual_seed(2)
    model = _hf_model(name).double().eval()
    before = model.config._attn_implementation
    teacher = Teacher(model, layer=0)
    ids = torch.randint(0, 97, (2, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        fast = teacher.residual_and_grad(ids, loss="next_token")
    assert teacher.next_token_mode == "own_position"
    assert model.config._attn_implementation == before  # switched for the pass only
    slow = teacher._per_position_pass(ids)
    tol = 1e-5 if name == "gemma2" else 1e-10  # gemma2's eager attention takes its softmax in fp32
    assert float((fast.grad - slow.grad).norm() / slow.grad.norm()) < tol
    assert abs(float(fast.loss - slow.loss)) < 1e-8
    mean = teacher.residual_and_grad(ids)  # the window mean's gradient also counts later positions' losses
    assert not torch.allclose(fast.grad, mean.grad * 22, atol=1e-6)


def test_a_block_that_mixes_positions_outside_attention_is_not_served_however_small_the_mix() -> None:
    """A block whose positions also meet outside attention (here a causal running sum, as a convolution or a state
    space mixer beside the attention would): the switched pass would leave that path in the gradient. It is far
    below the numeric check's tolerance here (1e-9 of the stream), yet the structural probe finds it and the
    teacher falls back to per-position passes."""
    torch.manual_seed(2)
    model = _hf_model("gpt2").double().eval()
    model.transformer.h[1].register_forward_hook(
        lambda mod, args, out: (out[0] + 1e-9 * out[0].cumsum(dim=1), *out[1:]) if isinstance(out, tuple)
        else out + 1e-9 * out.cumsum(dim=1))
    teacher = Teacher(model, layer=0)
    with pytest.warns(UserWarning, match=r"positions also mix outside attention"):
        teacher.residual_and_grad(torch.randint(0, 97, (2, 12)), loss="next_token")
    assert teacher.next_token_mode == "per_position"


@pytest.mark.parametrize("name", ["mamba", "bloom", "mpt"])
def test_a_model_the_switch_does_not_reach_falls_back_with_a_warning(name: str) -> None:
    """A state-space model (Mamba) has no attention; Bloom and MPT compute theirs in their own code (Bloom would
    even drop its causal mask under the switched mask builder, MPT crashes on it): none runs every block's
    attention through the switch, so the teacher uses per-position backward passes, whatever the precision."""
    tf = transformers
    torch.manual_seed(3)
    build = {"mamba": lambda: tf.MambaForCausalLM(tf.MambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                                                 state_size=4)),
             "bloom": lambda: tf.BloomForCausalLM(tf.BloomConfig(vocab_size=97, hidden_size=32, n_layer=2, n_head=4)),
             "mpt": lambda: tf.MptForCausalLM(tf.MptConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4))}[name]
    for dtype in (torch.float64,) if name == "mamba" else (torch.float64, torch.bfloat16):  # (its CPU path: fp32)
        teacher = Teacher(build().to(dtype).eval(), layer=0)  # a fresh model: a Teacher hooks its block
        teacher.checkpoint_blocks()  # train.activation_checkpointing: undone for the per-position passes
        ids = torch.randint(0, 97, (2, 8))
        with pytest.warns(UserWarning, match=r"own-position attention cannot serve this teacher .* \(about 1 "
                          r"batched call per batch\)"):  # 7 positions with a next token: one chunk
            got = teacher.residual_and_grad(ids, loss="next_token")
        assert teacher.next_token_mode == "per_position" and not teacher.checkpointed
        # as T separate forwards with only position t's residual made a leaf give it
        want = _run_from_reconstruction_one_position_at_a_time(teacher.model, teacher.blocks[0], ids,
                                                               teacher.hidden(ids))
        # bf16: the passes batch positions differently; Mamba's CPU scan runs in fp32 whatever the weights
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-6 if name == "mamba" else 1e-10
        assert torch.count_nonzero(want[:, :-1]) > 0
        assert float((got.grad.double() - want.double()).norm() / want.double().norm()) < tol


def test_a_cocomix_run_with_slots_as_teacher_falls_back() -> None:
    """Above a concept seam a token's stream continues at its slot (another position): not own-position."""
    from cocomix.config import ConceptConfig, DataConfig, RunConfig
    from cocomix.methods import CoCoMix

    run = RunConfig(method="cocomix", model=tiny_model_config(n_layer=4), data=DataConfig(seq_len=16),
                    concept=ConceptConfig(n_latents=80, concept_layer=2, mix_k=8))
    teacher = Teacher(CoCoMix(run).build_model().double(), layer=1)
    ids = torch.randint(0, 97, (2, 10))
    with pytest.warns(UserWarning, match="a cocomix run with concept or pause slots"):
        got = teacher.residual_and_grad(ids, loss="next_token")
    assert teacher.next_token_mode == "per_position" and torch.count_nonzero(got.grad[:, :-1]) > 0


def test_our_transformer_switches_back_after_the_pass() -> None:
    model = Transformer(tiny_model_config("llama", n_layer=3)).eval()
    teacher = Teacher(model, layer=1)
    teacher.residual_and_grad(torch.randint(0, 97, (2, 9)), loss="next_token")
    assert teacher.next_token_mode == "own_position"
    assert all(block.attn.own_position is None for block in model.blocks)


def _run_from_reconstruction_one_position_at_a_time(model: torch.nn.Module, block: torch.nn.Module,
                                                    ids: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """grad[:, t] = ∂NLL_t/∂r_t with the residual at `block` replaced by r at position t only: T forwards."""
    grad = torch.zeros_like(r)
    for t in range(ids.shape[1] - 1):
        x = r[:, t].clone().requires_grad_(True)

        def swap(module, args, out, t=t, x=x):  # noqa: ANN001, ANN202
            h = (out[0] if isinstance(out, tuple) else out).clone()
            h[:, t] = x
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = block.register_forward_hook(swap)
        try:
            logits = model(ids).logits  # (B, T, V)
            nll = torch.nn.functional.cross_entropy(logits[:, t], ids[:, t + 1], reduction="sum")
            grad[:, t] = torch.autograd.grad(nll, x)[0]
        finally:
            handle.remove()
    return grad


@pytest.mark.parametrize("name", ["ours", "llama", "gemma2"])
def test_the_reconstruction_gradient_is_eq1_as_written(name: str) -> None:
    """gradient_at=reconstruction: two passes (the true stream recorded, then the stream from D(c)) give at every
    t the gradient of −log p(x_{t+1} | D(c_t), h_<t), as T separate forwards with only position t replaced do."""
    from cocomix.concepts.attribution import reconstruction
    from tests.unit.test_attribution import _random_sae

    torch.manual_seed(5)
    model = (Transformer(tiny_model_config(n_layer=3)) if name == "ours" else _hf_model(name)).double().eval()
    teacher = Teacher(model, layer=1)
    sae = _random_sae(32, 128, 8, torch.float64)
    ids = torch.randint(0, 97, (2, 9))
    got = teacher.residual_and_grad(ids, loss="next_token", reconstruct=lambda h: reconstruction(sae, h))
    tol = 1e-5 if name == "gemma2" else 1e-10  # gemma2's own eager attention takes its softmax in fp32
    assert torch.allclose(got.hidden, teacher.hidden(ids), rtol=0, atol=tol)  # the true residual
    want = _run_from_reconstruction_one_position_at_a_time(model, teacher.blocks[1], ids,
                                                           reconstruction(sae, got.hidden))
    assert float((got.grad - want).norm() / want.norm()) < tol
    at_residual = teacher.residual_and_grad(ids, loss="next_token").grad
    assert float((at_residual - want).norm() / want.norm()) > 0.1  # a different point: a different gradient
    assert abs(float(got.loss) - float(teacher.residual_and_grad(ids).loss)) < tol  # the true stream's loss


def test_the_reconstruction_gradient_needs_own_position_attention() -> None:
    from cocomix.errors import ConfigError

    model = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=97, hidden_size=32,
                                                                   num_hidden_layers=2, state_size=4))
    teacher = Teacher(model.double().eval(), layer=0)
    ids = torch.randint(0, 97, (2, 8))
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="gradient_at=reconstruction: needs own-position"):
        teacher.decide_next_token(ids[:1], "reconstruction")  # what extract-concepts and training call up front
    assert teacher.decide_next_token(ids[:1]) == "per_position"  # decided once
    with pytest.raises(ConfigError, match="gradient_at=reconstruction: needs own-position"):
        teacher.residual_and_grad(ids, loss="next_token", reconstruct=lambda h: h)
    with pytest.raises(ConfigError, match="needs attribution_loss=next_token"):
        teacher.residual_and_grad(torch.randint(0, 97, (2, 8)), reconstruct=lambda h: h)


@pytest.mark.parametrize("kwarg,why", [("s_aux", "attention sinks"), ("sinks", "attention sinks"),
                                       ("indices", "sparse attention"), ("block_indices", "sparse attention")])
def test_attention_arguments_the_switch_cannot_honour_are_refused(kwarg: str, why: str) -> None:
    """An attention call carrying sinks or a sparse selection of keys (DeepSeek-V3.2's indexer): the switched
    attention would compute dense softmax attention instead, so the teacher is not served (it falls back)."""
    from torch import nn

    from cocomix.teacher_attention import Unsupported, _hf_attention

    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(Unsupported, match=why):
        _hf_attention(nn.Module(), q, q, q, None, **{kwarg: torch.zeros(1)})
