"""Under `train.compile` the row-chunk loops (the fused concept head, the seam's inference TopK, the chunked LM
loss and KD loss) run eagerly: traced, each loop is unrolled once per chunk, and at the 69M preset's shapes
(64 concept-head chunks forward and backward) a CoCoMix run on an H200 logged no step in about three minutes of
compilation. The compiled model still gives the eager model's outputs."""

from __future__ import annotations

import pytest
import torch

from cocomix.config import ModelConfig
from cocomix.model import Transformer
from cocomix.model import chunked_nll as cn
from cocomix.model import concept_head as ch
from cocomix.model.concept import ConceptSeam

V, C, K, A = 97, 300, 8, 4


def _traced_ops(fn: object, *args: object, **kwargs: object) -> tuple[object, list[str]]:
    """fn's result under torch.compile with a backend that records every captured graph, and the names of
    the functions and methods those graphs call, nested graphs included (a traced autograd.Function's forward
    and backward are subgraphs)."""
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=record)(*args, **kwargs)
    names = [getattr(n.target, "__name__", str(n.target)) for gm in graphs for sub in gm.modules()
             if isinstance(sub, torch.fx.GraphModule) for n in sub.graph.nodes
             if n.op in ("call_function", "call_method")]
    assert graphs, "nothing was traced: the check below would be empty"
    return out, names


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Transformer:
    monkeypatch.setattr(ch, "CHUNK_ELEMENTS", 7 * C)  # 7 rows per chunk: 9 chunks for 3 × 20 positions
    monkeypatch.setattr(cn, "CHUNK_ELEMENTS", 7 * V)
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=V, n_layer=3, n_head=4, d_model=32, context_length=64))
    m.set_seam(ConceptSeam(1, 32, C, K))
    return m


def test_training_forward_traces_no_chunk_loop(model: Transformer) -> None:
    ids = torch.randint(0, V, (3, 20))
    t = torch.randint(0, C, (3, 20, A))
    out, names = _traced_ops(model, ids, concept_targets=t, lm_loss=True)
    assert not {"topk", "logsumexp"} & set(names), names  # the blocks are traced, the chunks are not
    assert "linear" in names or "addmm" in names or "matmul" in names
    ref = model(ids, concept_targets=t, lm_loss=True)
    assert torch.allclose(out.loss, ref.loss, atol=1e-6)
    assert torch.allclose(out.aux["concept_loss"], ref.aux["concept_loss"], atol=1e-6)


def test_inference_and_kd_forwards_trace_no_chunk_loop(model: Transformer) -> None:
    ids = torch.randint(0, V, (3, 20))
    out, names = _traced_ops(model, ids)  # no targets: the seam's TopK over row chunks
    assert "topk" not in names, names
    assert torch.allclose(out.logits, model(ids).logits, atol=1e-6)
    teacher = torch.randn(3, 20, V)
    out, names = _traced_ops(model, ids, lm_loss=True, teacher_logits=teacher, lambda_kd=0.1)
    assert "logsumexp" not in names and "log_softmax" not in names, names
    ref = model(ids, lm_loss=True, teacher_logits=teacher, lambda_kd=0.1)
    assert torch.allclose(out.loss, ref.loss, atol=1e-6)


def test_the_seam_breaks_the_compiled_graph_between_the_two_halves_not_at_every_block(model: Transformer) -> None:
    """The fused concept head runs eagerly, so the compiled forward breaks there: into the blocks below the seam
    and the blocks above it, each half one graph (a break inside the block loop would compile block by block)."""
    model.blocks.extend(Transformer(ModelConfig(vocab_size=V, n_layer=3, n_head=4, d_model=32,
                                                context_length=64)).blocks)  # 6 blocks, the seam at 1
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    ids, t = torch.randint(0, V, (3, 20)), torch.randint(0, C, (3, 20, A))
    out = torch.compile(model, backend=record)(ids, concept_targets=t, lm_loss=True)
    attention = [sum(n.op == "call_function" and "scaled_dot_product" in str(n.target) for n in gm.graph.nodes)
                 for gm in graphs]  # attention calls captured per graph
    assert sorted(a for a in attention if a) == [1, 5], attention  # block 0 | blocks 1-5
    assert torch.allclose(out.loss, model(ids, concept_targets=t, lm_loss=True).loss, atol=1e-6)
