"""The naive CoCoMix training step: the official code's way of computing the same function (the baseline
`step_cost.py` measures the optimised path against; official-implementation.md §2.1, §2.4, bug 3).

- Teacher with parameter gradients: its parameters require grad and `loss.backward()` runs the whole backward,
  down to the embeddings, accumulating ~124M weight gradients that nobody reads; the residual's gradient is
  read from a retained hook tensor.
- Full attribution matmul: the SAE code is dense (B, T, C) with autograd on, and the scores are
  `(grad @ W_dec) * z` over all C latents, then a dense `topk`.
- Dense compression: the TopK logits are scattered into a (B, T, C) tensor and multiplied by the (C, d)
  compression matrix.
- Unfused, unchunked concept cross-entropy: the (B, T, C) logits kept for the backward and one full
  log-softmax over them per label (four for k_attr = 4).

Everything here computes the same targets and losses as `cocomix` (checked by `step_cost.py` before timing).
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F

from cocomix.concepts.attribution import INVALID


class NaiveTargets:
    """Official-style target computation; `model` is a causal LM without the library's capture hook (a copy of
    the teacher's weights), `layer` the block whose output the SAE reads."""

    def __init__(self, model: torch.nn.Module, layer: int, sae: Any, k_attr: int) -> None:
        from cocomix.teacher import find_blocks

        self.model, self.sae, self.k_attr = model.eval(), sae, k_attr
        for p in list(self.model.parameters()) + list(sae.parameters()):
            p.requires_grad_(True)
        self._act: torch.Tensor | None = None
        find_blocks(model)[layer].register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        act = output[0] if isinstance(output, tuple) else output
        act.retain_grad()
        self._act = act

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        kw = {"use_cache": False} if hasattr(getattr(self.model, "config", None), "use_cache") else {}
        out = self.model(ids, **kw)  # no HF KV cache: nothing reads it (the library's teacher builds none either)
        logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        loss.backward()  # weight gradients of the whole teacher, as the official code
        act, self._act = self._act, None
        z, _ = self.sae.encode_dense(act.detach())  # (B, T, C), autograd on (SAE parameters require grad)
        scores = (act.grad.to(self.sae.W_dec.dtype) @ self.sae.W_dec) * z  # (B, T, C)
        targets = torch.topk(scores, self.k_attr, dim=-1).indices  # (B, T, k_attr)
        targets[:, -1] = INVALID
        return targets


def dense_compression(seam: Any) -> None:
    """Make a `ConceptSeam` compress its TopK logits with a dense (B, T, C) @ (C, d) matmul."""

    def concept_vector(self: Any, logits: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(logits, self.mix_k, dim=-1)  # (B, T, K)
        masked = torch.zeros_like(logits).scatter(-1, indices, values)  # (B, T, C)
        rows = masked @ self.compress_weight.to(masked.dtype)  # (B, T, d)
        return (rows + self.compress_bias + self.pre_bias) * sd + mu

    seam.concept_vector = types.MethodType(concept_vector, seam)


def unchunked_concept_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The concept CE as the official code computes it: one full log-softmax over (B·T, C) per label."""
    flat = logits.reshape(-1, logits.shape[-1]).float()  # (B·T, C)
    labels = targets.reshape(-1, targets.shape[-1])  # (B·T, k_attr), −1 ignored (the masked last position)
    return sum(F.cross_entropy(flat, labels[:, i], ignore_index=INVALID) for i in range(labels.shape[1])) / (
        labels.shape[1])


def naive_loss(method: Any, targets_fn: NaiveTargets) -> Any:
    """A `Method.loss` for CoCoMix computed the naive way: official targets, unfused head, full CE."""
    from cocomix.methods import next_token_loss

    def loss(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(batch.ids.device.type, enabled=False):  # the official teacher is never autocast
            targets = targets_fn(batch.ids)
        out = model(batch.ids, concept_logits=True)  # whole (B, T, C) concept logits; compression patched dense
        ntp = next_token_loss(out.logits, batch.ids)
        aux = unchunked_concept_loss(out.aux["concept_logits"], targets)
        total = ntp + method.run.concept.lambda_concept * aux
        return total, {"loss": ntp.detach(), "concept_loss": aux.detach()}

    return loss


def naive_flops(run: Any, optimised: dict[str, float], teacher: Any, sae_k: int = 32) -> dict[str, float]:
    """Analytic FLOPs per token of the naive step from the optimised step's (`cocomix.flops.run_flops`) and the
    teacher's shape (`cocomix.flops.LMShape`): dense compression (2·C·d instead of a 2·mix_k·d gather, forward and
    backward), the teacher's full backward with weight gradients (3× its forward instead of the activation-only
    backward above teacher_layer) and the dense attribution matmul (2·d_teacher·C) in place of the gather of the
    sae_k active decoder columns (2·sae_k·d_teacher)."""
    from cocomix.flops import lm_forward

    m, c, T = run.model, run.concept, run.data.seq_len
    student = optimised["student"] + 3.0 * (2.0 * c.n_latents * m.d_model - 2.0 * c.mix_k * m.d_model)
    teacher_total = 3.0 * lm_forward(teacher, T)
    sae = optimised["sae"] - 2.0 * sae_k * teacher.d_model + 2.0 * teacher.d_model * c.n_latents  # dense, no gather
    return {"student": student, "teacher": teacher_total, "sae": sae, "total": student + teacher_total + sae}


def _batch(ids: torch.Tensor) -> Any:
    from cocomix.methods import Batch

    return Batch(ids, None)


def same_function(optimised: Any, naive: Any, ids: torch.Tensor, chunked: bool, autocast: bool = False,
                  ) -> dict[str, Any]:
    """Both steps compute the same function: the same targets (as sets per position: ties among zero scores may
    be ordered differently), the same first losses and, after that step, the same weights (the model's own
    rounding apart; `autocast`: the steps ran under bf16 autocast, whose rounding flips the sign of a few near-zero
    gradient entries). Exits when they do not: a speed ratio between different functions means nothing."""
    with torch.no_grad():
        a = optimised.method.targets(_batch(ids))                                   # (B, T, k_attr)
    b = naive.naive_targets(ids)                                                          # (B, T, k_attr)
    same = (a.sort(-1).values == b.sort(-1).values).all(-1).double().mean().item()        # share of positions
    losses = {n: (s(ids, 0), float(s.metrics["concept_loss"])) for n, s in (("opt", optimised), ("naive", naive))}
    wa, wb = optimised.model.state_dict(), naive.model.state_dict()
    weight_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    lr = optimised.run.train.lr
    apart = sum(int(((wa[k] - wb[k]).abs() > lr).sum()) for k in wa) / sum(wa[k].numel() for k in wa)
    check = {"targets_match": same, "first_loss_optimised": losses["opt"][0], "first_loss_naive": losses["naive"][0],
             "concept_loss_optimised": losses["opt"][1], "concept_loss_naive": losses["naive"][1],
             "max_weight_diff_after_one_step": weight_diff,
             # Adam's first step moves a weight by up to lr: a different label moves rows by ~lr, rounding in a
             # near-zero gradient by a small share of it
             "max_weight_diff_over_lr": weight_diff / lr,
             "share_of_weights_apart_by_over_lr": apart,
             "comparable": not chunked}  # the naive step keeps the student's unchunked LM loss
    # a bf16 teacher's two backward orders round differently: near-tied scores swap labels at a few positions
    least = 0.99 if optimised.run.concept.teacher_dtype == "float32" else 0.95
    why = []
    if same < least:
        why.append(f"targets equal at {same:.2%} of the positions, fewer than {least:.0%}")
    for i, what in ((1, "concept"), (0, "first total")):
        if abs(losses["opt"][i] - losses["naive"][i]) > 1e-4 * abs(losses["opt"][i]):
            why.append(f"{what} losses differ by more than 1e-4 relative")
    # Adam's first step is ~lr · sign(gradient): rounding moves weights whose gradient is near 0 by a share of lr
    # (0.02–0.08 measured), a different gradient by up to 2·lr. Under bf16 autocast on a CPU, rounding flips the
    # sign of some near-zero gradient entries (0.07% of the weights at the 69M shapes), each then 2·lr apart
    if same == 1.0 and not autocast and check["max_weight_diff_over_lr"] > 0.5:
        why.append("the same labels but weights after one step apart by more than 0.5·lr")
    if same == 1.0 and autocast and apart > 0.01:
        why.append(f"the same labels but {apart:.2%} of the weights more than lr apart after one step (bf16 "
                   "rounding flips fewer than 1%)")
    if why:
        sys.exit(f"naive and optimised CoCoMix steps compute different things ({'; '.join(why)}): "
                 f"{json.dumps(check)}")
    return check
