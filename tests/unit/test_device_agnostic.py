"""The training step and the concept targets never create a tensor on the CPU behind the model's back: run on the
`meta` device, where any op that mixes a CPU tensor into the computation fails ("Tensor on device cpu is not on the
expected device meta"), as it would fail on a GPU. No GPU is needed, and none of the CPU tests could see such a bug
(on the CPU a tensor made without `device=` lands where the model is anyway).

Meta tensors hold no data, so the one-time checks that read values (trunk/head split, own-position attention) are
decided here by hand, each way; training's own data-dependent steps (gradient clipping's norm, the NaN guard) are
not run. Generation (sampling reads values) and the SAE's sparse backward (`bincount` has no meta kernel) are
covered by the CPU tests only."""

from __future__ import annotations

import contextlib

import pytest
import torch

from cocomix.concepts import compute_targets
from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from cocomix.methods import METHODS, Batch
from cocomix.model import Transformer
from cocomix.sae import TopKSAE
from cocomix.teacher import Teacher

META = torch.device("meta")


@pytest.fixture(autouse=True)
def _no_meta_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch has no autocast state for meta tensors; the regions that leave or enter autocast do nothing here."""
    real = torch.autocast

    def autocast(device_type: str, *args: object, **kwargs: object) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


def test_meta_tensors_refuse_a_cpu_tensor() -> None:
    """The premise of this file: mixing a CPU tensor into a meta computation is an error."""
    with pytest.raises(RuntimeError, match="device"):
        torch.ones(3, device=META) + torch.ones(3)


def _run(method: str, chunked: bool, flavour: str, **concept: object) -> RunConfig:
    model = ModelConfig(flavour=flavour, vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64)
    c = {"n_latents": 80, "concept_layer": 2, "mix_k": 8, "k_attr": 4, "d_teacher": 24, **concept}
    return RunConfig(method=method, model=model, data=DataConfig(seq_len=16), concept=ConceptConfig(**c),
                     train=TrainConfig(chunked_lm_loss=chunked))


def _meta_teacher(d_model: int = 24, vocab: int = 97) -> Teacher:
    with META:
        teacher = Teacher(Transformer(ModelConfig(vocab_size=vocab, n_layer=3, n_head=2, d_model=d_model,
                                                  context_length=64)), layer=1)
    return teacher


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("method,concept", [
    ("ntp", {}), ("pause", {}), ("pause", {"pause_slot": "token"}), ("cocomix", {}), ("cocomix", {"mixing": "add"}),
    ("cocomix", {"mixing": "none"}), ("cocomix", {"target": "hidden"}), ("kd", {}), ("kd-pause", {})])
def test_every_method_trains_a_step_on_the_model_device(method: str, concept: dict, flavour: str,
                                                        chunked: bool) -> None:
    m = METHODS[method](_run(method, chunked, flavour, **concept))
    with META:
        model = m.build_model()
    ids = torch.randint(0, 97, (2, 16), device=META)
    if method == "cocomix" and concept.get("target") != "hidden":
        targets = torch.randint(0, 80, (2, 16, 4), device=META)
        m.targets = lambda batch: targets  # the teacher's labels (the targets are tested below)
    else:
        m.teacher = _meta_teacher()  # KD's logits, the hidden ablation's state
    loss, metrics = m.loss(model, Batch(ids))
    loss.backward()
    assert loss.device == META and all(v.device == META for v in metrics.values())
    assert all(p.grad is None or p.grad.device == META for p in model.parameters())
    with torch.no_grad():
        assert m.eval_loss(model, ids).device == META


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("options", [
    {}, {"multiplier": "pre_activation"}, {"attribution_loss": "next_token"},
    {"attribution_loss": "next_token", "gradient_at": "reconstruction", "multiplier": "pre_activation"},
    {"selection": "activation"}])
def test_concept_targets_are_computed_on_the_teacher_device(options: dict, split: bool) -> None:
    teacher = _meta_teacher()
    teacher._split_ok = split  # trunk + chunked head, or whole logits (decided on values elsewhere)
    teacher.next_token_mode = "own_position"
    with META:
        sae = TopKSAE(24, 80, 8)
    ids = torch.randint(0, 97, (2, 16), device=META)
    targets = compute_targets(teacher, sae, ids, k_attr=4, **options)
    assert targets.device == META and targets.shape == (2, 16, 4)


@pytest.mark.parametrize("split", [True, False])
def test_per_position_gradients_are_computed_on_the_teacher_device(split: bool) -> None:
    """The Eq. 1 fallback (one batched backward call per chunk of positions) for models own-position attention
    cannot serve."""
    teacher = _meta_teacher()
    teacher._split_ok, teacher.next_token_mode = split, "per_position"
    with META:
        sae = TopKSAE(24, 80, 8)
    ids = torch.randint(0, 97, (2, 16), device=META)
    assert compute_targets(teacher, sae, ids, k_attr=4, attribution_loss="next_token").device == META



def test_steering_moves_its_concepts_and_alphas_to_the_model_device() -> None:
    """`steer` takes concept ids and α from the command line (CPU tensors) and applies them on the model's device,
    on the training path (fused head) and the inference path (chunked TopK) alike."""
    from cocomix.model.concept import ConceptSeam

    with META:
        seam = ConceptSeam(1, 32, 80, 8)
    seam.steer(torch.tensor([3, 5]), torch.tensor([10.0, -10.0]))
    h, pos = torch.randn(2, 6, 32, device=META), torch.arange(6, device=META)
    out, _, aux = seam.insert(h, pos, keep_logits=True)
    assert out.device == META and aux["concept_logits"].device == META and seam.last_topk.device == META
    out, _, _ = seam.insert(h, pos)
    assert out.device == META and seam.last_topk.device == META
