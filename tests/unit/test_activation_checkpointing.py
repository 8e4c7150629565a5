"""`train.activation_checkpointing`: blocks recomputed in the backward give bit-identical losses and gradients
(dropout masks replayed) for every method, and store fewer activations."""

from __future__ import annotations

import pytest
import torch

from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
from cocomix.methods import METHODS, Batch


def _loss_and_grads(method: str, checkpointed: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model_cfg = ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64, dropout=0.1)
    run = RunConfig(method=method, model=model_cfg, data=DataConfig(seq_len=16),
                    concept=ConceptConfig(n_latents=80, concept_layer=2, mix_k=8, k_attr=4))
    m = METHODS[method](run)
    torch.manual_seed(0)
    targets = torch.randint(0, 80, (3, 16, 4))
    m.targets = lambda batch: targets
    model = m.build_model().train()
    model.checkpoint_blocks = checkpointed
    ids = torch.randint(0, 97, (3, 16))
    torch.manual_seed(1)  # the dropout stream
    loss, _ = m.loss(model, Batch(ids))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["ntp", "cocomix", "pause"])
def test_checkpointed_blocks_give_identical_losses_and_gradients(method: str) -> None:
    loss, grads = _loss_and_grads(method, False)
    loss_c, grads_c = _loss_and_grads(method, True)
    assert torch.equal(loss, loss_c)
    for name, g in grads.items():
        assert torch.equal(g, grads_c[name]), name


def test_checkpointing_stores_fewer_activations() -> None:
    """Tensors saved for the backward during the forward: far fewer with the blocks checkpointed."""
    cfg = ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=64, context_length=64)
    saved = {}
    for checkpointed in (False, True):
        model = METHODS["ntp"](RunConfig(model=cfg, data=DataConfig(seq_len=64))).build_model()
        model.checkpoint_blocks = checkpointed
        total = [0]

        def pack(t: torch.Tensor, total: list[int] = total) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randint(0, 97, (4, 64)))
        saved[checkpointed] = total[0]
    assert saved[True] < 0.5 * saved[False], saved


@pytest.mark.parametrize("loss", ["window_mean", "next_token"])
@pytest.mark.parametrize("kind", ["cocomix", "hf"])
def test_teacher_blocks_above_the_layer_checkpointed_give_the_same_gradient(kind: str, loss: str) -> None:
    """`Teacher.checkpoint_blocks`: the attribution gradient is bit-identical and the backward keeps far fewer
    saved tensors (the blocks above teacher_layer keep only their inputs)."""
    from cocomix.model import Transformer
    from cocomix.teacher import Teacher

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        if kind == "hf":
            transformers = pytest.importorskip("transformers")
            return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32,
                                                                        n_layer=4, n_head=4))
        return Transformer(ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64))

    ids = torch.randint(0, 97, (2, 40))
    out, saved = {}, {}
    for checkpointed in (False, True):
        teacher = Teacher(build(), layer=0)
        if checkpointed:
            teacher.checkpoint_blocks()
        total = [0]

        def pack(t: torch.Tensor, total: list[int] = total) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out[checkpointed] = teacher.residual_and_grad(ids, loss=loss)
        saved[checkpointed] = total[0]
        assert teacher.checkpointed == checkpointed  # kept through next_token's own-position check
    assert torch.equal(out[True].grad, out[False].grad) and torch.equal(out[True].loss, out[False].loss)
    assert saved[True] < 0.5 * saved[False], saved
