"""The paper's Eq. 1 gradient for a `cocomix.teacher.Teacher`: each position's own next-token loss (§2.2, Eq. 1).

`PerPositionGradients` (a mixin of `Teacher`) computes grad[:, t] = ∂NLL_t/∂h_t at `teacher_layer`:
* `_own_position_pass`: one backward pass with the teacher's attention switched to own-position attention
  (`cocomix.teacher_attention`, `cocomix.model.own_position`): the gradient of Σ_t NLL_t at h_t is ∂NLL_t/∂h_t;
* `_reconstruction_pass` (`gradient_at="reconstruction"`, Eq. 1 as written): the teacher run from the SAE
  reconstruction D(c_t) at position t with the true stream recorded for the others;
* `_per_position_pass`: the reference and the fallback, one backward call per position, batched with
  `is_grads_batched` in chunks of `GRAD_CHUNK` (`_own_position_grad`);
* `decide_next_token` / `_own_position_ok`: the one-time check that chooses between them.
It relies on the Teacher's capture (`_take_leaf`, `_replace`), trunk/head split (`_can_split`, `_split`) and
`_whole_nll`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cocomix.errors import CocomixError, CocomixWarning, ConfigError
from cocomix.model.chunked_nll import chunked_nll
from cocomix.model.own_position import Streams
from cocomix.teacher_attention import Unsupported, own_position

GRAD_CHUNK = 32  # positions per batched backward call of the "next_token" gradient


@dataclass
class TeacherPass:
    hidden: torch.Tensor
    """(B, T, d_con): residual stream at the output of block teacher_layer (detached)."""
    grad: torch.Tensor
    """(B, T, d_con): ∂(mean next-token NLL of the batch) / ∂hidden ("window_mean"), or per position
    ∂NLL_t / ∂hidden_t ("next_token"); zero at the final position."""
    loss: torch.Tensor
    """(): the teacher's mean next-token NLL over B·(T−1) positions."""
    logits: torch.Tensor | None = None
    """(B, T, V): teacher logits (detached) when they were computed whole (not on the chunked path)."""


class PerPositionGradients:
    """Eq. 1 gradients for `Teacher` (see the module docstring); the methods use the Teacher's state."""

    if TYPE_CHECKING:  # what the methods read from `Teacher` (declared for readers and type checkers only)
        model: nn.Module
        blocks: nn.ModuleList
        checkpointed: bool
        next_token_mode: str | None
        _leaf: torch.Tensor | None
        _replace: torch.Tensor | None
        _kw: dict[str, bool]

        def _can_split(self, ids: torch.Tensor) -> bool: ...
        def _split(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear] | None: ...
        def _take_leaf(self, ids: torch.Tensor) -> torch.Tensor: ...
        def _whole_nll(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
        def checkpoint_blocks(self) -> None: ...
        def _uncheckpoint_blocks(self) -> None: ...

    def _own_position_pass(self, ids: torch.Tensor, streams: Streams | None = None) -> TeacherPass:
        """The Eq. 1 gradient in one backward pass: with own-position attention, the gradient of Σ_t NLL_t at
        hidden_t is ∂NLL_t/∂hidden_t (`cocomix.model.own_position`)."""
        n = ids.shape[0] * (ids.shape[1] - 1)  # positions the mean averages over
        split = self._can_split(ids)
        with own_position(self.model, streams), torch.enable_grad():
            if split:
                trunk, head = self._split()
                final = trunk(ids)  # (B, T, d_final)
                leaf = self._take_leaf(ids)
                mean, logits = chunked_nll(final, head.weight, head.bias, ids), None
            else:
                logits, leaf, nll = self._whole_nll(ids)
                mean, logits = nll.mean(), logits.detach()
            (grad,) = torch.autograd.grad(mean * n, leaf)  # (B, T, d); zero at the final position
        return TeacherPass(hidden=leaf.detach(), grad=grad, loss=mean.detach(), logits=logits)

    def _reconstruction_pass(self, ids: torch.Tensor,
                             reconstruct: Callable[[torch.Tensor], torch.Tensor]) -> TeacherPass:
        """Paper Eq. 1 as written: grad[:, t] = ∂(−log p(x_{t+1} | D(c_t), h_<t)) / ∂D(c_t).

        Pass 1 runs the teacher on the true residual stream, recording every attention layer's keys and values
        (and the loss reported). Pass 2 replaces the residual at `layer` by the reconstruction D(c) everywhere, and
        each query attends to the recorded keys and values of the other positions and to its own live ones: so
        position t's stream above `layer` is exactly that of a teacher run from D(c_t) with h_<t unchanged, and
        one backward gives every position's gradient (`cocomix.model.own_position.Streams`)."""
        if not self._own_position_ok(ids):
            raise ConfigError("gradient_at=reconstruction: needs own-position attention, which this teacher cannot "
                              "run (see the warning above); use gradient_at=residual")
        n = ids.shape[0] * (ids.shape[1] - 1)
        split = self._can_split(ids)
        streams = Streams(record={})
        logits = None
        with own_position(self.model, streams), torch.no_grad():  # pass 1: the true stream
            if split:
                trunk, head = self._split()
                final = trunk(ids)  # (B, T, d_final)
                hidden = self._take_leaf(ids).detach()
                mean = chunked_nll(final, head.weight, head.bias, ids)
            else:
                logits, leaf, nll = self._whole_nll(ids)
                hidden, mean = leaf.detach(), nll.mean()
        self._replace = reconstruct(hidden)  # (B, T, d)
        try:
            with own_position(self.model, Streams(reference=streams.record)), torch.enable_grad():  # pass 2
                if split:
                    final = trunk(ids)
                    leaf = self._take_leaf(ids)
                    own = chunked_nll(final, head.weight, head.bias, ids)
                else:
                    _, leaf, nll = self._whole_nll(ids)
                    own = nll.mean()
                (grad,) = torch.autograd.grad(own * n, leaf)  # (B, T, d); zero at the final position
        finally:
            self._replace = None
        return TeacherPass(hidden=hidden, grad=grad, loss=mean.detach(),
                           logits=logits.detach() if logits is not None else None)

    def _per_position_pass(self, ids: torch.Tensor, positions: list[int] | None = None) -> TeacherPass:
        """The Eq. 1 gradient from one (batched) backward call per position (`positions`, default all T−1);
        the rows of other positions stay zero."""
        if self._can_split(ids):
            trunk, head = self._split()
            with torch.enable_grad():
                final = trunk(ids)  # (B, T, d_final)
                leaf = self._take_leaf(ids)
                # each position's own NLL reads only its own final hidden state, so ∂NLL_t/∂final_t is the mean's
                # gradient there times the B·(T−1) positions it averages over; from there, per-position VJPs
                free = final.detach().requires_grad_(True)
                mean = chunked_nll(free, head.weight, head.bias, ids)
                (at_final,) = torch.autograd.grad(mean, free)  # (B, T, d_final); zero at the final position
                wide = torch.promote_types(at_final.dtype, torch.float32)  # fp32 at least, keep fp64
                at_final = (at_final.to(wide) * (ids.shape[0] * (ids.shape[1] - 1))).to(final.dtype)
                grad = _own_position_grad(final, leaf, at_final, positions)
            return TeacherPass(hidden=leaf.detach(), grad=grad, loss=mean.detach())
        with torch.enable_grad():
            logits, leaf, nll = self._whole_nll(ids)
            grad = _own_position_grad(nll.sum(0), leaf, None, positions)
        return TeacherPass(hidden=leaf.detach(), grad=grad, loss=nll.mean().detach(), logits=logits.detach())

    def decide_next_token(self, ids: torch.Tensor, gradient_at: str = "residual") -> str:
        """Decide, before any output is written, how the Eq. 1 gradient will be computed (`next_token_mode`), on
        `ids`: a fixed window (the store's first), so that every rank and every resume decides alike.
        ConfigError when `gradient_at="reconstruction"` cannot be served (it needs own-position attention)."""
        self._own_position_ok(ids)
        if gradient_at == "reconstruction" and self.next_token_mode != "own_position":
            raise ConfigError("gradient_at=reconstruction: needs own-position attention, which this teacher cannot "
                              "run (see the warning above); use gradient_at=residual")
        return self.next_token_mode

    def _own_position_leak(self, one: torch.Tensor) -> float:
        """Under the switched pass, the largest gradient of position T−2's own loss at the positions before it, on
        one row (1, T): exactly 0, in any precision, when positions meet only in attention (the switch detaches the
        other positions' keys and values); not 0 for a block that mixes them otherwise (a convolution, a state
        space layer beside the attention), which the tolerance of the numeric check could let pass at 16 bits."""
        T = one.shape[1]
        if T < 3:
            return 0.0
        with own_position(self.model, Streams()), torch.enable_grad():
            if self._can_split(one):  # the head on position T−2 alone: no (T, V) logits, as the split intends
                trunk, head = self._split()
                final = trunk(one)  # (1, T, d_final)
                leaf = self._take_leaf(one)
                logit = F.linear(final[0, T - 2], head.weight, head.bias).float()  # (V,)
                loss = F.cross_entropy(logit[None], one[0, T - 1:T])
            else:
                _, leaf, nll = self._whole_nll(one)
                loss = nll[0, T - 2]
            (grad,) = torch.autograd.grad(loss, leaf)  # (1, T, d)
        leak = float(grad[0, :T - 2].abs().max())
        return leak if leak == leak else float("inf")  # (NaN: no proof of zero)

    def _own_position_ok(self, ids: torch.Tensor) -> bool:
        """Whether own-position attention gives this model's Eq. 1 gradient: decided once, on the first row of
        the first batch. Every decoder block's attention must have run through it (a model computing attention
        itself is not switched), no position's own loss may reach earlier positions under it (`_own_position_leak`:
        exact, whatever the precision), and the gradient must match per-position backward passes at three positions
        (relative error ≤ 1e-3 at each; 5e-2 for 16-bit weights, under autocast or with TF32 matmuls). A model it
        cannot serve falls back, with a warning (T/GRAD_CHUNK batched calls)."""
        if self.next_token_mode is None:
            one = ids[:1]
            T = one.shape[1]
            positions = sorted({0, (T - 1) // 2, T - 2})
            streams = Streams()
            try:
                fast = self._own_position_pass(one, streams).grad[0, positions]  # (3, d)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - Unsupported, or a model whose own code breaks when switched
                if isinstance(e, MemoryError) or any(m in str(e) for m in ("out of memory", "can't allocate",
                                                                            "not enough memory")):  # (CPU's)
                    raise
                if isinstance(e, CocomixError) or (not isinstance(e, Unsupported) and _plain_forward_fails(self, one)):
                    self._leaf = None  # the input, the device or the architecture, not the switch: nothing decided
                    raise
                why = str(e) if isinstance(e, Unsupported) else f"{type(e).__name__}: {e}"
            else:
                if len(streams.layers) < len(self.blocks):
                    why = (f"only {len(streams.layers)} of its {len(self.blocks)} blocks ran their attention through "
                           "transformers' attention interface")
                elif (leak := self._own_position_leak(one)) > 0:
                    why = (f"its positions also mix outside attention (the switched pass leaves a gradient of "
                           f"{leak:.2g} from one position's loss at earlier positions)")
                else:
                    checkpointed_blocks = self.checkpointed
                    self._uncheckpoint_blocks()  # the reference: plain per-position backward passes
                    try:
                        slow = self._per_position_pass(one, positions).grad[0, positions]
                    finally:
                        if checkpointed_blocks:
                            self.checkpoint_blocks()
                    err = float(((fast.double() - slow.double()).norm(dim=-1)
                                 / slow.double().norm(dim=-1).clamp_min(1e-30)).max())
                    exact = fast.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(
                        fast.device.type) and (fast.device.type != "cuda" or
                                               torch.get_float32_matmul_precision() == "highest")
                    tol = 1e-3 if exact else 5e-2  # 16-bit weights, autocast or TF32 matmuls: looser
                    why = "" if err <= tol else f"its gradients differ from per-position backward passes ({err:.2g})"
            self._leaf = None
            self.next_token_mode = "per_position" if why else "own_position"
            if why:
                self._uncheckpoint_blocks()
                calls = max(1, -(-(T - 1) // GRAD_CHUNK))  # the T − 1 positions with a next token, in chunks
                warnings.warn(f"attribution_loss=next_token: own-position attention cannot serve this teacher "
                              f"({why}); one backward pass per position instead (about {calls} batched "
                              f"call{'s' * (calls != 1)} per batch)", CocomixWarning, stacklevel=3)
        return self.next_token_mode == "own_position"


def _plain_forward_fails(teacher: PerPositionGradients, one: torch.Tensor) -> bool:
    """Whether the unswitched model fails on `one` too (ids it cannot embed, a device error)."""
    try:
        with torch.no_grad():
            teacher.model(one, **teacher._kw)
    except Exception:  # noqa: BLE001 - any failure: the switched pass's error is then not the switch's
        return True
    return False


def _own_position_grad(out: torch.Tensor, leaf: torch.Tensor, seed: torch.Tensor | None,
                       positions: list[int] | None = None) -> torch.Tensor:
    """∂NLL_t / ∂leaf[:, t] for every position t < T−1 (or those in `positions`), leaf (B, T, d).

    With `seed=None`, `out` is the per-position NLL summed over the batch, (T−1,); otherwise `out` is the
    trunk's final hidden states (B, T, d_final) and `seed` (B, T, d_final) holds ∂NLL_t/∂out[:, t] at each t
    (the LM head and its softmax already applied, in row chunks: no (B, T, V) logit gradient is ever held).
    Batch rows are independent, so one backward serves every row. Positions run in chunks as batched
    vector-Jacobian products (grad_outputs non-zero at one position each, vmapped); if an operator of the model
    has no batching rule, the chunk falls back to one backward call per position. Out of memory is an error (the
    fallback would hide it behind a T-fold slowdown): the batched backward holds GRAD_CHUNK times the teacher's
    gradient graph.
    """
    n = leaf.shape[1] - 1
    todo = list(range(n)) if positions is None else list(positions)
    grad = torch.zeros_like(leaf)  # (B, T, d); the final position keeps zero
    for start in range(0, len(todo), GRAD_CHUNK):
        chunk = todo[start:start + GRAD_CHUNK]
        c, rows, pos = len(chunk), torch.arange(len(chunk), device=leaf.device), \
            torch.tensor(chunk, device=leaf.device)
        if seed is None:
            outputs = torch.zeros(c, n, dtype=out.dtype, device=leaf.device)  # (c, T-1)
            outputs[rows, pos] = 1
        else:
            outputs = torch.zeros(c, *out.shape, dtype=out.dtype, device=leaf.device)  # (c, B, T, d_final)
            outputs[rows, :, pos] = seed[:, pos].transpose(0, 1)
        try:
            (g,) = torch.autograd.grad(out, leaf, grad_outputs=outputs, retain_graph=True,
                                       is_grads_batched=True)  # (c, B, T, d)
            grad[:, pos] = g[rows, :, pos].transpose(0, 1)
        except RuntimeError as e:  # no vmap rule for some operator: one backward per position
            if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e) or "can't allocate" in str(e):
                raise ConfigError(f"attribution_loss=next_token: out of memory in the batched backward of "
                                  f"{c} positions (it holds {c}× the teacher's gradient graph); lower the batch "
                                  "size or use attribution_loss=window_mean") from None
            for i, t in enumerate(chunk):
                (g,) = torch.autograd.grad(out, leaf, grad_outputs=outputs[i], retain_graph=True)  # (B, T, d)
                grad[:, t] = g[:, t]
    return grad
