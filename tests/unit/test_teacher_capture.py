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


def test_close_leaves_the_model_as_it_was_and_checkpointing_keeps_a_blocks_own_forward() -> None:
    """A forward set on a block before the Teacher (accelerate's device hooks are such instance attributes) stays
    in the path while the blocks are checkpointed, through the next_token decision (which undoes checkpointing for
    its reference pass) and after `close`, which also removes the capture hook."""
    model = _models()["hf-gpt2"].eval()
    calls: list[int] = []
    block = model.transformer.h[2]
    plain = block.forward

    def own(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return plain(*args, **kwargs)

    block.forward = own
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(3))
    teacher = Teacher(model, layer=0)
    teacher.checkpoint_blocks()
    teacher.residual_and_grad(ids, "next_token")
    assert teacher.next_token_mode == "own_position" and teacher.checkpointed
    calls.clear()
    teacher.residual_and_grad(ids, "next_token")
    assert calls, "the block's own forward was dropped"
    hooks = len(model.transformer.h[0]._forward_hooks)
    teacher.close()
    assert block.__dict__["forward"] is own and len(model.transformer.h[0]._forward_hooks) == hooks - 1
    assert not teacher.checkpointed


def test_bad_ids_are_one_line_errors_and_decide_nothing() -> None:
    """Ids that are no (batch, tokens) integer tensor, or windows without a next token, are refused up front; an
    id the model cannot embed fails the next_token decision as a plain forward fails, without switching the
    teacher to per-position passes for good (or dropping its checkpointing)."""
    from cocomix.errors import ConfigError

    model = _models()["hf-gpt2"].eval()
    teacher = Teacher(model, layer=1)
    teacher.checkpoint_blocks()
    for ids, call in ((torch.arange(8), teacher.hidden), (torch.zeros(2, 8), teacher.logits),
                      (torch.zeros(2, 1, dtype=torch.long), teacher.residual_and_grad)):
        with pytest.raises(ConfigError, match=r"^teacher: expected integer token ids of shape \(batch, tokens\)"):
            call(ids)
    bad = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(4))
    bad[0, 3] = 100  # beyond the 97-row embedding
    with pytest.raises(IndexError):
        teacher.residual_and_grad(bad, "next_token")
    assert teacher.next_token_mode is None and teacher.checkpointed and teacher._leaf is None
    bad[0, 3] = 5
    want = teacher.residual_and_grad(bad, "next_token")  # int32 ids too: taken as int64, the same gradient
    assert teacher.next_token_mode == "own_position"
    assert torch.equal(teacher.residual_and_grad(bad.int(), "next_token").grad, want.grad)
    assert torch.equal(teacher.hidden(bad.to(torch.int16)), teacher.hidden(bad))


def test_a_non_finite_first_window_leaves_the_split_undecided() -> None:
    """The trunk + chunked head split is checked once against the whole model's loss; a first window whose loss
    overflows cannot tell (NaN is close to nothing), so the check waits for a finite one instead of holding whole
    logits for the rest of the run."""
    model = _models()["hf-gpt2"].eval()
    teacher = Teacher(model, layer=1)
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(5))
    wte = model.get_input_embeddings().weight
    saved = wte.data[ids[0, 0]].clone()
    wte.data[ids[0, 0]] = float("inf")
    assert not torch.isfinite(teacher.residual_and_grad(ids).loss)
    assert teacher._split_ok is None
    wte.data[ids[0, 0]] = saved
    assert torch.isfinite(teacher.residual_and_grad(ids).loss) and teacher._split_ok is True
