"""The Teacher's capture hook acts only during the Teacher's own forwards: two Teachers on one model capture at
their own blocks without cutting each other's gradient path, and the model run by itself is left as it was."""

from __future__ import annotations

import copy

import pytest
import torch

from cocomix.model import Transformer
from cocomix.teacher import Teacher
from tests.conftest import tiny_model_config


def _models() -> dict[str, torch.nn.Module]:
    import transformers

    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=97, n_embd=16, n_layer=3, n_head=2,
                                                                n_positions=64))
    return {"cocomix": Transformer(tiny_model_config("gpt2", n_layer=3)), "hf-gpt2": gpt2}


@pytest.mark.parametrize("kind", ["cocomix", "hf-gpt2"])
@pytest.mark.parametrize("loss", ["window_mean", "next_token"])
def test_two_teachers_on_one_model_each_give_their_own_layer(kind: str, loss: str) -> None:
    model = _models()[kind].eval()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    low_alone = Teacher(copy.deepcopy(model), layer=0).residual_and_grad(ids, loss)
    high_alone = Teacher(copy.deepcopy(model), layer=2).residual_and_grad(ids, loss)
    low, high = Teacher(model, layer=0), Teacher(model, layer=2)  # both hooks on the same blocks
    for teacher, alone in ((low, low_alone), (high, high_alone), (low, low_alone)):
        got = teacher.residual_and_grad(ids, loss)
        assert torch.equal(got.hidden, alone.hidden) and torch.equal(got.loss, alone.loss)
        assert torch.allclose(got.grad, alone.grad, rtol=1e-5, atol=1e-8) and got.grad.abs().sum() > 0
        assert torch.equal(teacher.hidden(ids), alone.hidden)
    assert low._leaf is None and high._leaf is None  # no capture held on between calls


def test_the_model_run_by_itself_keeps_its_gradient_path() -> None:
    model = _models()["hf-gpt2"].eval()
    teacher = Teacher(model, layer=1)
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(2))
    teacher.residual_and_grad(ids)
    embedding = model.get_input_embeddings().weight.requires_grad_(True)  # a user fine-tuning the model later
    model(ids).logits.sum().backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0  # the hook at block 1 did not detach it
    assert teacher._leaf is None
