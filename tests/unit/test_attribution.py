"""Teacher capture and attribution: official anchor parity, finite differences, target selection, frozen teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cocomix.concepts import active_attribution, compute_targets, select_targets
from cocomix.errors import ConfigError
from cocomix.model import Transformer
from cocomix.sae import TopKSAE
from cocomix.teacher import Teacher
from tests.conftest import tiny_model_config

ANCHOR = Path(__file__).resolve().parents[1] / "fixtures" / "official-anchor"


def _random_sae(d: int, C: int, k: int, dtype: torch.dtype = torch.float32) -> TopKSAE:
    sae = TopKSAE(d, C, k).to(dtype)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        sae.W_dec.div_(sae.W_dec.norm(dim=0, keepdim=True))
    return sae


def _perturbed(model: Transformer, b: int, t: int, delta: torch.Tensor, fn):  # noqa: ANN202
    """fn() with delta added to the output of block 1 at (b, t)."""
    def hook(module, args, output):
        output = output.clone()
        output[b, t] += delta
        return output

    handle = model.blocks[1].register_forward_hook(hook)
    try:
        return fn()
    finally:
        handle.remove()


def test_teacher_gets_no_parameter_gradients_and_grad_is_zero_at_the_end() -> None:
    model = Transformer(tiny_model_config(n_layer=3))
    teacher = Teacher(model, layer=1)
    ids = torch.randint(0, 97, (2, 12))
    out = teacher.residual_and_grad(ids)
    assert out.hidden.shape == (2, 12, 32) and out.grad.shape == (2, 12, 32)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.count_nonzero(out.grad[:, -1]) == 0 and torch.count_nonzero(out.grad[:, :-1]) > 0


def test_attribution_matches_finite_differences_in_float64() -> None:
    """score(b,t,i) ≈ dL/dε for h[b,t] += ε·z_i·W_dec[:, i]: the first-order effect of scaling concept i."""
    torch.manual_seed(3)
    model = Transformer(tiny_model_config(n_layer=3, d_model=32)).double()
    teacher = Teacher(model, layer=1)
    sae = _random_sae(32, 128, 8, torch.float64)
    ids = torch.randint(0, 97, (2, 10))
    tp = teacher.residual_and_grad(ids)
    values, indices, _ = sae.encode(tp.hidden)
    scores = active_attribution(tp.grad, values, indices, sae.W_dec)  # (B, T, k)
    eps, checked = 1e-4, 0
    for b, t, j in [(0, 2, 0), (1, 5, 1), (0, 8, 3), (1, 0, 2), (0, 4, 7)]:
        i = int(indices[b, t, j])
        direction = values[b, t, j] * sae.W_dec[:, i]  # (d,)

        def loss_with(sign: float, b: int = b, t: int = t, direction: torch.Tensor = direction) -> float:
            return _perturbed(model, b, t, sign * eps * direction, lambda: float(teacher.residual_and_grad(ids).loss))

        fd = (loss_with(1.0) - loss_with(-1.0)) / (2 * eps)
        score = float(scores[b, t, j].detach())
        assert abs(fd - score) <= 1e-6 * max(1.0, abs(fd)), (b, t, i, fd, score)  # central differences, fp64
        checked += abs(fd) > 1e-8
    assert checked >= 4


def _own_nll(model: torch.nn.Module, ids: torch.Tensor, b: int, t: int) -> float:
    logits = model(ids).logits  # (B, T, V)
    return float(torch.nn.functional.cross_entropy(logits[b, t], ids[b, t + 1]))


@pytest.mark.parametrize("mode", ["own_position", "vmap", "loop"])
@pytest.mark.parametrize("split", [True, False])
def test_next_token_gradient_matches_finite_differences_of_the_own_position_loss(
        mode: str, split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paper Eq. 1: grad[b, t] = ∂NLL_t/∂h_t (the own next-token loss only), checked against central differences;
    in one backward pass through own-position attention and in per-position backward passes (batched, or one
    call each); from the trunk's output with the LM head's gradient formed in chunks (`split`, models with a
    linear head), and from whole logits (other models)."""
    if mode == "loop":  # exercise the per-position loop used when a model op has no vmap rule
        real = torch.autograd.grad

        def no_vmap(*args, **kwargs):
            if kwargs.get("is_grads_batched"):
                raise RuntimeError("no batching rule (simulated)")
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    torch.manual_seed(5)
    model = Transformer(tiny_model_config(n_layer=3, d_model=32)).double()
    teacher = Teacher(model, layer=1)
    teacher._split_ok = None if split else False  # False: as for a model whose head is not a plain linear map
    teacher.next_token_mode = None if mode == "own_position" else "per_position"
    ids = torch.randint(0, 97, (2, 10))
    tp = teacher.residual_and_grad(ids, loss="next_token")
    assert teacher.next_token_mode == ("own_position" if mode == "own_position" else "per_position")
    assert (tp.logits is None) == split
    mean_grad = teacher.residual_and_grad(ids).grad
    assert torch.count_nonzero(tp.grad[:, -1]) == 0
    assert not torch.allclose(tp.grad[:, :-2] * 18, mean_grad[:, :-2])  # later losses are not counted
    eps = 1e-5
    for b, t in [(0, 0), (1, 3), (0, 6), (1, 8)]:
        direction = torch.randn(32, dtype=torch.float64)

        def nll_with(sign: float, b: int = b, t: int = t, direction: torch.Tensor = direction) -> float:
            with torch.no_grad():
                return _perturbed(model, b, t, sign * eps * direction, lambda: _own_nll(model, ids, b, t))

        fd = (nll_with(1.0) - nll_with(-1.0)) / (2 * eps)
        analytic = float(tp.grad[b, t] @ direction)
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (b, t, fd, analytic)
    # the final position of the window-mean gradient also carries the effect on later losses: they differ
    assert not torch.allclose(tp.grad[:, 0], mean_grad[:, 0] * 18)


@pytest.mark.parametrize("split", [True, False])
def test_next_token_gradient_of_a_bf16_teacher_is_the_fp32_one_within_bf16_rounding(split: bool) -> None:
    import copy

    torch.manual_seed(5)
    model = Transformer(tiny_model_config(n_layer=3, d_model=32))
    ids = torch.randint(0, 97, (2, 40))
    want = Teacher(model, layer=1).residual_and_grad(ids, loss="next_token").grad
    teacher = Teacher(copy.deepcopy(model).bfloat16(), layer=1)
    teacher._split_ok = None if split else False
    tp = teacher.residual_and_grad(ids, loss="next_token")
    assert tp.grad.dtype == torch.bfloat16 and (tp.logits is None) == split
    assert float((tp.grad.float() - want).norm() / want.norm()) < 2e-2


def test_next_token_targets_differ_from_window_mean_targets_and_are_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = Teacher(Transformer(tiny_model_config(n_layer=3)), layer=1)
    sae = _random_sae(32, 64, 8)
    ids = torch.randint(0, 97, (4, 16))
    own = compute_targets(teacher, sae, ids, k_attr=4, attribution_loss="next_token")
    mean = compute_targets(teacher, sae, ids, k_attr=4)
    assert own.shape == mean.shape and (own[:, -1] == -1).all()
    assert not torch.equal(own, mean)
    with pytest.raises(ConfigError, match="attribution_loss"):
        compute_targets(teacher, sae, ids, attribution_loss="sum")


def test_select_targets_orders_like_a_dense_signed_topk() -> None:
    C, k_attr = 40, 4
    scores = torch.tensor([[[0.5, -0.2, 0.9, 0.0, -1.0, 0.1], [-0.5, -0.2, 0.3, -0.1, -1.0, -0.4]]])
    indices = torch.tensor([[[7, 0, 12, 3, 1, 30], [0, 1, 2, 3, 4, 5]]])
    got = select_targets(scores, indices, k_attr)
    for pos in range(2):
        dense = torch.zeros(C).scatter(0, indices[0, pos], scores[0, pos])
        ranked = torch.topk(dense, k_attr).indices
        positives = {int(i) for i in ranked if dense[i] > 0}
        assert positives <= set(got[0, pos].tolist())
        assert all(dense[int(i)] >= 0 for i in got[0, pos])  # zeros come before any negative score
    assert got[0, 0].tolist()[:3] == [12, 7, 30]
    assert got[0, 1].tolist() == [2, 6, 7, 8]  # then the smallest inactive ids, score 0


def test_compute_targets_marks_the_final_position_and_supports_activation_selection() -> None:
    teacher = Teacher(Transformer(tiny_model_config(n_layer=3)), layer=1)
    sae = _random_sae(32, 64, 8)
    ids = torch.randint(0, 97, (2, 9))
    t_attr = compute_targets(teacher, sae, ids, k_attr=4)
    t_act = compute_targets(teacher, sae, ids, k_attr=4, selection="activation")
    assert t_attr.shape == (2, 9, 4) and (t_attr[:, -1] == -1).all() and (t_attr[:, :-1] >= 0).all()
    values, indices, _ = sae.encode(teacher.residual_and_grad(ids).hidden)
    assert torch.equal(t_act[:, :-1], indices[:, :-1, :4])  # SAE topk is sorted by activation
    assert not torch.equal(t_act, t_attr)


@pytest.mark.parametrize("selection", ["attribution", "activation"])
def test_row_chunks_give_the_same_targets(selection: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import cocomix.concepts.attribution as attribution

    teacher = Teacher(Transformer(tiny_model_config(n_layer=3)), layer=1)
    sae = _random_sae(32, 64, 8)
    ids = torch.randint(0, 97, (3, 11))
    whole = compute_targets(teacher, sae, ids, k_attr=4, selection=selection)
    monkeypatch.setattr(attribution, "SAE_CHUNK_ELEMENTS", 2 * 64 * 5)  # 5 positions per SAE chunk: 7 chunks
    assert torch.equal(compute_targets(teacher, sae, ids, k_attr=4, selection=selection), whole)


@pytest.mark.skipif(not ANCHOR.is_dir(), reason="tests/fixtures/official-anchor missing")
def test_matches_the_official_implementation_on_the_anchor() -> None:
    import transformers
    from safetensors.torch import load_file

    from cocomix.sae import load_openai

    cfg = json.loads((ANCHOR / "config.json").read_text())
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg["teacher"]["hf_config"])).eval()
    missing = hf.load_state_dict(load_file(str(ANCHOR / "teacher_hf.safetensors")), strict=False).missing_keys
    assert set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    teacher = Teacher(hf, layer=cfg["teacher"]["sae_layer_index"])
    sae = load_openai(ANCHOR / "sae_openai.safetensors", k=cfg["sae"]["activation_state_dict"]["k"])
    ids = load_file(str(ANCHOR / "inputs.safetensors"))["input_ids"]
    ref = load_file(str(ANCHOR / "outputs.safetensors"))

    tp = teacher.residual_and_grad(ids)
    assert abs(float(tp.loss) - float(ref["teacher.loss"])) < 1e-5
    assert (tp.grad - ref["teacher.resid_post_grad"]).abs().max() < 1e-6
    values, indices, _ = sae.encode(tp.hidden)
    assert torch.equal(indices, ref["sae.topk_indices"])
    ours = active_attribution(tp.grad, values, indices, sae.W_dec)  # (B, T, k)
    official = torch.gather(ref["attribution"], -1, indices)
    assert (ours - official).abs().max() < 1e-6 * max(1.0, float(official.abs().max())) + 1e-9
    dense = torch.zeros_like(ref["attribution"]).scatter(-1, indices, ours)
    assert (dense - ref["attribution"]).abs().max() < 1e-6

    targets = compute_targets(teacher, sae, ids, k_attr=4)
    want = ref["concept_labels"]
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            assert set(targets[b, t].tolist()) == set(want[b, t].tolist()), (b, t)
    assert (targets[:, -1] == -1).all()


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_hf_teacher_folder_gives_the_same_residual_and_grad_as_our_model(tmp_path: Path, flavour: str) -> None:
    """A transformers folder (written by our exporter) and the same weights in our Transformer agree."""
    from cocomix.export import export_hf

    model = Transformer(tiny_model_config(flavour, n_layer=3)).eval()
    export_hf(model, tmp_path / "hf")
    hf_teacher = Teacher.from_pretrained(tmp_path / "hf", layer=1)
    ours = Teacher(model, layer=1)
    ids = torch.randint(0, 97, (2, 16))
    a, b = hf_teacher.residual_and_grad(ids), ours.residual_and_grad(ids)
    assert (a.hidden - b.hidden).abs().max() < 1e-5
    assert (a.grad - b.grad).abs().max() < 1e-7 and abs(float(a.loss) - float(b.loss)) < 1e-5
    assert all(not p.requires_grad for p in hf_teacher.model.parameters())


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_hidden_stops_the_forward_at_the_capture_block(tmp_path: Path, flavour: str) -> None:
    """`Teacher.hidden` gives the full forward's residual bit for bit without running anything above the capture
    block; the teacher works as before afterwards (the next full pass still runs every block)."""
    from cocomix.export import export_hf

    model = Transformer(tiny_model_config(flavour, n_layer=3)).eval()
    export_hf(model, tmp_path / "hf")
    ids = torch.randint(0, 97, (2, 16))
    for teacher in (Teacher(model, layer=1), Teacher.from_pretrained(tmp_path / "hf", layer=1)):
        ran: list[str] = []
        teacher.blocks[2].register_forward_hook(lambda *a, ran=ran: ran.append("block 2"))
        head = teacher.model.get_output_embeddings() if hasattr(teacher.model, "get_output_embeddings") \
            else teacher.model.lm_head
        head.register_forward_hook(lambda *a, ran=ran: ran.append("head"))
        _, full = teacher.forward_pass(ids)
        assert ran == ["block 2", "head"]
        ran.clear()
        assert torch.equal(teacher.hidden(ids), full) and ran == []
        _, again = teacher.forward_pass(ids)
        assert torch.equal(again, full) and ran == ["block 2", "head"]


def test_a_multimodal_causal_lm_is_hooked_in_its_text_decoder(tmp_path: Path) -> None:
    """`AutoModelForCausalLM` loads Gemma 3 as `Gemma3ForConditionalGeneration`, whose first block list is the
    vision tower's: the capture must sit on the language model's block, with the text width."""
    import transformers as tf

    text = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=8)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                  patch_size=14)
    tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(text_config=text, vision_config=vision,
                                                      mm_tokens_per_image=4)).save_pretrained(tmp_path / "g3")
    teacher = Teacher.from_pretrained(tmp_path / "g3", layer=1)
    assert len(teacher.blocks) == 3 and teacher.width == 32
    assert teacher.max_positions is None  # rotary: max_position_embeddings is no hard limit on the window
    assert teacher.blocks is teacher.model.get_decoder().layers
    ids = torch.randint(0, 97, (2, 10))
    hidden = teacher.model(ids, output_hidden_states=True).hidden_states[2]  # the output of block 1
    assert torch.allclose(teacher.hidden(ids), hidden, atol=1e-6)
    assert teacher.residual_and_grad(ids).grad.shape == (2, 10, 32)
    # use_cache sits in the text config: off all the same, or blocks recomputed by activation checkpointing would
    # append their keys and values to the cache a second time (a shape error in the sliding-window layers)
    assert teacher._kw == {"use_cache": False}
    ref = {loss: teacher.residual_and_grad(ids, loss=loss) for loss in ("window_mean", "next_token")}
    teacher.checkpoint_blocks()
    for loss, tp in ref.items():
        again = teacher.residual_and_grad(ids, loss=loss)
        assert torch.allclose(again.grad, tp.grad, atol=1e-7) and torch.allclose(again.loss, tp.loss)
    assert teacher.next_token_mode == "own_position"


def test_a_teacher_path_may_start_with_a_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.export import export_hf

    export_hf(Transformer(tiny_model_config(n_layer=2)).eval(), tmp_path / "models" / "hf")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(Teacher.from_pretrained("~/models/hf", layer=1).blocks) == 2


def test_logit_softcapping_or_scaling_in_any_config_runs_the_whole_model(tmp_path: Path) -> None:
    """The trunk + chunked head split is not taken when the config (or a multimodal model's text config) caps
    logits — at any value, 1.0 included — or scales them by other than 1."""
    from types import SimpleNamespace

    from cocomix.export import export_hf

    export_hf(Transformer(tiny_model_config(n_layer=2)).eval(), tmp_path / "hf")
    teacher = Teacher.from_pretrained(tmp_path / "hf", layer=1)
    assert teacher._split() is not None
    cfg = teacher.model.config
    for name, value, split in (("final_logit_softcapping", 1.0, False), ("softcap", 50.0, False),
                               ("output_multiplier", 2.0, False), ("output_multiplier", 1.0, True),
                               ("logits_scaling", 4.0, False)):
        text = SimpleNamespace(**{name: value})
        cfg.get_text_config = lambda text=text, **_: text  # a multimodal config's text part
        assert (teacher._split() is not None) == split, (name, value)
    del cfg.get_text_config


def test_a_block_output_that_is_not_one_residual_stream_is_refused() -> None:
    from cocomix.errors import ConfigError

    teacher = Teacher(Transformer(tiny_model_config(n_layer=2)), layer=0)
    teacher._leaf = torch.zeros(4, 2, 10, 32)  # Gemma 3n's AltUp blocks pass 4 stacked streams
    with pytest.raises(ConfigError, match=r"outputs a tensor of shape \(4, 2, 10, 32\), not one"):
        teacher._take_leaf(torch.zeros(2, 10, dtype=torch.long))


def test_teacher_layer_out_of_range_is_a_config_error() -> None:
    from cocomix.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher_layer"):
        Teacher(Transformer(tiny_model_config(n_layer=3)), layer=3)


@pytest.mark.parametrize("chunk", [3 * 128, 1 << 24])  # 3 positions per chunk (ragged), or all at once
def test_pre_activation_multiplier_is_eq1_over_all_latents(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import cocomix.concepts.attribution as attribution

    monkeypatch.setattr(attribution, "SAE_CHUNK_ELEMENTS", chunk)
    teacher = Teacher(Transformer(tiny_model_config(n_layer=3)), layer=1)
    sae = _random_sae(32, 64, 8)
    ids = torch.randint(0, 97, (2, 9))
    got = compute_targets(teacher, sae, ids, k_attr=4, multiplier="pre_activation")
    tp = teacher.residual_and_grad(ids)
    pre, _ = sae.pre_activation(tp.hidden)
    dense = (tp.grad @ sae.W_dec) * pre  # (B, T, C): the formula written out
    want = torch.topk(dense.detach(), 4, dim=-1).indices
    assert torch.equal(got[:, :-1], want[:, :-1]) and (got[:, -1] == -1).all()
    active = sae.encode(tp.hidden)[1]
    outside = [int(i) not in set(active[b, t].tolist()) for b in range(2) for t in range(8) for i in got[b, t]]
    assert any(outside), "pre-activation attribution should be able to pick inactive latents"


def test_a_cocomix_teacher_captured_above_its_concept_slots_is_refused() -> None:
    """A cocomix run as teacher: its blocks from concept_layer on see 2T positions (tokens and concept slots), so
    capturing there is a one-line config error, not (B, 2T) targets; below the seam it works."""
    from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
    from cocomix.errors import ConfigError
    from cocomix.methods import CoCoMix

    run = RunConfig(method="cocomix", model=ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32,
                                                        context_length=64),
                    data=DataConfig(seq_len=16), concept=ConceptConfig(n_latents=80, concept_layer=2, mix_k=8))
    ids = torch.randint(0, 97, (2, 10))
    sae = TopKSAE(32, 64, 4)
    for layer in (2, 3):
        teacher = Teacher(CoCoMix(run).build_model(), layer=layer)  # a fresh model: a Teacher hooks its block
        with pytest.raises(ConfigError, match="teacher_layer: block .* sees 20 positions for 10 tokens"):
            compute_targets(teacher, sae, ids, k_attr=2)
        with pytest.raises(ConfigError, match="teacher_layer"):
            teacher.hidden(ids)
    named = Teacher(CoCoMix(run).build_model(), layer=3, layer_field="concept.teacher_layer")  # as `train` builds it
    with pytest.raises(ConfigError, match="^concept.teacher_layer: block 3 of this teacher sees 20 positions"):
        named.hidden(ids)
    assert compute_targets(Teacher(CoCoMix(run).build_model(), layer=1), sae, ids, k_attr=2).shape == (2, 10, 2)


def test_next_token_gradient_out_of_memory_is_an_error_not_a_slow_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.errors import ConfigError

    real = torch.autograd.grad

    def grad(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if kwargs.get("is_grads_batched"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 53.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", grad)
    teacher = Teacher(Transformer(tiny_model_config(n_layer=3)), layer=1)
    teacher.next_token_mode = "per_position"  # as for a teacher that failed the own-position check
    with pytest.raises(ConfigError, match="attribution_loss=next_token: out of memory"):
        teacher.residual_and_grad(torch.randint(0, 97, (2, 9)), loss="next_token")


@pytest.mark.parametrize("option", [{"selection": "activation"}, {"multiplier": "pre_activation"},
                                    {"attribution_loss": "next_token"},
                                    {"attribution_loss": "next_token", "gradient_at": "reconstruction"}])
def test_cocomix_targets_follow_the_concept_options(option: dict) -> None:
    """CoCoMix.targets passes selection / multiplier / attribution_loss on: its online targets equal
    compute_targets with the option, and differ from the default's."""
    from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
    from cocomix.methods import Batch, CoCoMix

    torch.manual_seed(0)
    teacher = Teacher(Transformer(tiny_model_config(n_layer=3)), layer=1)
    sae = _random_sae(32, 64, 8)
    ids = torch.randint(0, 97, (2, 12))
    run = RunConfig(method="cocomix", model=ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32,
                                                        context_length=64),
                    data=DataConfig(seq_len=12), concept=ConceptConfig(n_latents=64, concept_layer=2, mix_k=8,
                                                                       k_attr=4, **option))
    method = CoCoMix(run)
    method.teacher, method.sae = teacher, sae
    got = method.targets(Batch(ids))
    assert torch.equal(got, compute_targets(teacher, sae, ids, k_attr=4, **option))
    assert not torch.equal(got, compute_targets(teacher, sae, ids, k_attr=4))


def test_the_decoder_blocks_are_the_module_list_of_num_hidden_layers() -> None:
    """A model holding another non-empty ModuleList first (adapters, a vision tower's layers) is read at the list
    whose length is its config's num_hidden_layers."""
    import types

    from torch import nn

    from cocomix.teacher_blocks import find_blocks

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = types.SimpleNamespace(num_hidden_layers=3)
            self.adapters = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
            self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    model = Model()
    assert find_blocks(model) is model.layers


def test_decoder_blocks_are_found_where_get_decoder_or_num_hidden_layers_points_elsewhere() -> None:
    """ModernBERT-decoder's `get_decoder()` is its output projection (no blocks there: the model is searched);
    BART's `num_hidden_layers` counts its encoder's layers (the decoder's `layers` are taken). Either is a teacher
    whose block output is captured with its gradient."""
    import transformers as tf

    from cocomix.teacher_blocks import find_blocks

    torch.manual_seed(0)
    modern = tf.ModernBertDecoderForCausalLM(tf.ModernBertDecoderConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_hidden_layers=2,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, cls_token_id=0, sep_token_id=0)).eval()
    bart = tf.BartForCausalLM(tf.BartConfig(vocab_size=97, d_model=32, encoder_layers=4, decoder_layers=2,
                                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                            decoder_ffn_dim=48, max_position_embeddings=64)).eval()
    assert find_blocks(modern) is modern.model.layers and find_blocks(bart) is bart.model.decoder.layers
    ids = torch.randint(1, 97, (2, 8))
    for model in (modern, bart):
        seen: list[torch.Tensor] = []
        handle = find_blocks(model)[1].register_forward_hook(lambda m, a, out, seen=seen: seen.append(
            (out[0] if isinstance(out, tuple) else out).detach().clone()))
        model(ids)
        handle.remove()
        got = Teacher(model, 1).residual_and_grad(ids)
        assert torch.allclose(got.hidden, seen[0]) and got.grad.abs().sum() > 0
