"""KD (the paper's knowledge-distillation baseline): KL(teacher ‖ student) over next-token distributions at
positions 0 … T−2, against the formula written out, and the total NTP + λ_KD · KL."""

from __future__ import annotations

import pytest
import torch

from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
from cocomix.methods import KD, Batch, next_token_loss
from cocomix.methods.kd import kl_teacher_student
from cocomix.model import Transformer
from cocomix.teacher import Teacher


def _kl_by_hand(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Σ_v p_t(v) (log p_t(v) − log p_s(v)), averaged over the B·(T−1) positions that predict a next token."""
    pt = torch.softmax(teacher_logits[:, :-1].double(), -1)
    ps = torch.softmax(student_logits[:, :-1].double(), -1)
    return (pt * (pt.log() - ps.log())).sum(-1).mean()


def test_kl_is_teacher_to_student_per_position() -> None:
    torch.manual_seed(0)
    t, s = torch.randn(3, 7, 11) * 2, torch.randn(3, 7, 11) * 2
    got = kl_teacher_student(t, s)
    assert float(got) == pytest.approx(float(_kl_by_hand(t, s)), rel=1e-5)
    assert float(got) != pytest.approx(float(_kl_by_hand(s, t)), rel=1e-2)  # the direction matters here
    s2 = s.clone()
    s2[:, -1] = 0.0  # the last position predicts nothing: ignored
    assert torch.equal(kl_teacher_student(t, s2), got)
    assert float(kl_teacher_student(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_is_ntp_plus_lambda_kl() -> None:
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=2, d_model=16, context_length=32)
    run = RunConfig(method="kd", model=cfg, data=DataConfig(seq_len=16), concept=ConceptConfig(lambda_kd=0.3))
    method = KD(run)
    torch.manual_seed(1)
    method.teacher = Teacher(Transformer(cfg), layer=0)
    student = method.build_model()
    ids = torch.randint(0, 97, (2, 16))
    total, metrics = method.loss(student, Batch(ids))
    with torch.no_grad():
        s_logits, t_logits = student(ids).logits, method.teacher.model(ids).logits
    assert float(metrics["loss"]) == pytest.approx(float(next_token_loss(s_logits, ids)), rel=1e-6)
    assert float(metrics["kd_loss"]) == pytest.approx(float(_kl_by_hand(t_logits, s_logits)), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(metrics["loss"]) + 0.3 * float(metrics["kd_loss"]), rel=1e-6)


def test_kd_pause_distils_into_the_pause_student() -> None:
    """KD+Pause: the pause student (slots after every token from concept_layer on, next token read from the
    slots) with the same NTP + λ_KD · KL loss; its NTP term equals the Pause method's loss on the same weights."""
    from cocomix.methods import KDPause, Pause
    from cocomix.model.concept import PauseSeam

    cfg = ModelConfig(vocab_size=97, n_layer=3, n_head=2, d_model=16, context_length=32)
    run = RunConfig(method="kd-pause", model=cfg, data=DataConfig(seq_len=16),
                    concept=ConceptConfig(lambda_kd=0.3, concept_layer=1))
    method = KDPause(run)
    torch.manual_seed(1)
    method.teacher = Teacher(Transformer(cfg), layer=0)
    student = method.build_model()
    assert isinstance(student.seam, PauseSeam)
    ids = torch.randint(0, 97, (2, 16))
    total, metrics = method.loss(student, Batch(ids))
    pause_loss, _ = Pause(RunConfig(method="pause", model=cfg, data=DataConfig(seq_len=16),
                                    concept=ConceptConfig(concept_layer=1))).loss(student, Batch(ids))
    with torch.no_grad():
        s_logits, t_logits = student(ids).logits, method.teacher.model(ids).logits
    assert float(metrics["loss"]) == pytest.approx(float(pause_loss.detach()), rel=1e-6)
    assert float(metrics["kd_loss"]) == pytest.approx(float(_kl_by_hand(t_logits, s_logits)), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(metrics["loss"]) + 0.3 * float(metrics["kd_loss"]), rel=1e-6)


def test_kd_takes_a_teacher_shallower_than_concept_teacher_layer(tmp_path) -> None:  # noqa: ANN001
    """KD reads logits only: a 2-block teacher is fine although concept.teacher_layer defaults to 5."""
    from types import SimpleNamespace

    from cocomix.export import export_hf

    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=2, d_model=16, context_length=32)
    export_hf(Transformer(cfg).eval(), tmp_path / "hf")
    run = RunConfig(method="kd", model=cfg, data=DataConfig(seq_len=16),
                    concept=ConceptConfig(teacher=str(tmp_path / "hf")))
    assert run.concept.teacher_layer == 5
    method = KD(run)
    method.prepare(torch.device("cpu"), SimpleNamespace(vocab_size=97, path=tmp_path))
    total, _ = method.loss(method.build_model(), Batch(torch.randint(0, 97, (2, 16))))
    assert torch.isfinite(total)


class _StackedStreams(torch.nn.Module):
    """A causal LM whose blocks pass a stack of (B, T, d) streams (as Gemma 3n's AltUp does): no one residual
    stream to capture, logits all the same (each position sees itself and the past only)."""

    def __init__(self, vocab: int = 97, d: int = 16) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(2))
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor, **_: object) -> tuple[torch.Tensor]:
        x = self.emb(ids)
        streams = torch.stack([x, x.cumsum(1)])  # (2, B, T, d)
        for block in self.blocks:
            streams = torch.tanh(block(streams))
        return (self.head(streams[0] + streams[1]),)


def test_kd_distils_a_teacher_whose_blocks_pass_no_single_residual_stream() -> None:
    """KD reads the teacher's logits only: a teacher whose capture block outputs a stack of streams (an error for
    concept targets, which read the residual stream) distils as any other."""
    from cocomix.errors import ConfigError

    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=2, d_model=16, context_length=32)
    method = KD(RunConfig(method="kd", model=cfg, data=DataConfig(seq_len=16), concept=ConceptConfig(lambda_kd=0.3)))
    torch.manual_seed(1)
    method.teacher = Teacher(_StackedStreams().eval(), layer=0)
    ids = torch.randint(0, 97, (2, 16))
    with pytest.raises(ConfigError, match=r"outputs a tensor of shape \(2, 2, 16, 16\), not one"):
        method.teacher.forward_pass(ids)  # what concept targets need: refused
    student = method.build_model()
    _, metrics = method.loss(student, Batch(ids))
    with torch.no_grad():
        s_logits, t_logits = student(ids).logits, method.teacher.model(ids)[0]
    assert float(metrics["kd_loss"]) == pytest.approx(float(_kl_by_hand(t_logits, s_logits)), rel=1e-5)
