"""The frozen teacher (the paper's concept-extraction model M_con, §2.1): residual stream and its loss gradient.

A teacher is any Hugging Face causal LM (GPT-2, Llama, GPT-NeoX/Pythia, Qwen, ...) or a cocomix checkpoint.
`Teacher.residual_and_grad(ids)` runs it on a batch of windows and returns the residual stream at the output of
block `teacher_layer` (transformer_lens `blocks.{L}.hook_resid_post`) together with the gradient of the window's
mean next-token NLL with respect to it — the official attribution's ∂L/∂h (official-implementation.md §2.1) —
or, with `loss="next_token"`, the paper's Eq. 1 gradient: at each position t, ∂(−log p(x_{t+1} | x_≤t)) / ∂h_t, the
effect of h_t on its own next-token loss only (the window mean also counts its effect on later tokens' losses
through attention). Those per-position gradients (one backward pass through own-position attention, checked once
against per-position passes; Eq. 1 run from the SAE reconstruction) are in `cocomix.teacher_eq1`, a mixin.
Teacher parameters never require grad: the hidden state at `teacher_layer` is made a fresh leaf, so the backward
pass runs only through activations above it. For the window mean, the LM head and its NLL run in row chunks
(`cocomix.model.chunked_nll`, which forms ∂L/∂(final hidden) while each chunk's logits exist) on the final hidden
states of the model's trunk (an HF model's `base_model`), so the (B, T, V) logits never exist at once; the split
is checked once against the whole model's loss and abandoned for models whose head does more than a linear map.
`Teacher.hidden(ids)` (SAE training, concept descriptions, the activation-selection ablation) stops the forward
at the capture block: the blocks above it and the LM head are never run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cocomix.config import ATTRIBUTION_LOSSES, RunConfig
from cocomix.errors import CheckpointError, CocomixWarning, ConfigError
from cocomix.model.chunked_nll import chunked_nll
from cocomix.model.transformer import checkpointed
from cocomix.teacher_blocks import find_blocks, text_config
from cocomix.teacher_eq1 import PerPositionGradients, TeacherPass

if TYPE_CHECKING:
    from cocomix.data.store import TokenStore
    from cocomix.sae.topk import TopKSAE


class _Captured(BaseException):
    """Raised by the capture hook to end a forward that only wants the hidden state at `teacher_layer` (a
    BaseException, so that no `except Exception` inside a model's forward swallows it)."""


# config fields with which transformers' causal LMs change logits after the LM head (the split then runs the whole
# model instead): soft-capping of any value, and a scale other than 1
_SOFTCAPS = ("final_logit_softcapping", "softcap")
_LOGIT_SCALES = ("logit_scale", "logits_scaling", "output_multiplier")


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]  # HF ModelOutput or cocomix ModelOutput


def split_rtol(logits: torch.Tensor) -> float:
    """How closely trunk + chunked head must give the whole model's loss: 1e-4, or twice the rounding unit of the
    logits' matmuls where that is coarser (bf16; TF32 for fp32 on CUDA), where chunks of other row counts may run
    other kernels and round otherwise."""
    eps = torch.finfo(logits.dtype).eps  # fp32 1.2e-7, bf16 7.8e-3
    if logits.is_cuda and logits.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        eps = 2.0 ** -10  # TF32: a 10-bit mantissa
    return max(1e-4, 2 * eps)


def as_token_ids(ids: torch.Tensor, min_tokens: int = 1) -> torch.Tensor:
    """`ids` as int64 (what embeddings and the next-token loss take), or a ConfigError unless it is a (batch, tokens)
    tensor of integer token ids with at least `min_tokens` tokens."""
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] >= min_tokens
            and not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool)):
        got = f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ConfigError(f"teacher: expected integer token ids of shape (batch, tokens) with at least {min_tokens} "
                          f"token{'s' * (min_tokens != 1)}, got {got}")
    return ids.long()


class Teacher(PerPositionGradients):
    """A frozen causal LM with a capture point at the output of block `layer`."""

    def __init__(self, model: nn.Module, layer: int, layer_field: str = "teacher_layer") -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.blocks = find_blocks(model)
        if not 0 <= layer < len(self.blocks):
            raise ConfigError(f"{layer_field}: expected a block index in [0, {len(self.blocks) - 1}], got {layer}")
        self.layer, self.layer_field = layer, layer_field
        self._leaf: torch.Tensor | None = None
        self._stop_at_capture = False
        self._replace: torch.Tensor | None = None
        self._armed = 0  # >0 while one of this Teacher's own forwards runs: the capture hook acts only then
        self._hook = self.blocks[layer].register_forward_hook(self._capture)
        self._forwards: list[Any] = []  # while checkpointed: the blocks' own forwards (accelerate's hooks) or None
        self._split_ok: bool | None = None  # trunk + chunked head equals the whole model (checked on first use)
        # an HF model builds no KV cache here: it would hold every layer's keys and values for nothing, and blocks
        # recomputed by activation checkpointing would append theirs twice (a multimodal model keeps use_cache in
        # its text config)
        has_cache = any(getattr(c, "use_cache", None) is not None
                        for c in (getattr(model, "config", None), text_config(model)))
        self._kw = {"use_cache": False} if has_cache else {}
        self.checkpointed = False
        self.tokenizer_source: tuple[str, Path | str] | None = None
        """Where the teacher's tokenizer can be checked: ("run", checkpoint) for a cocomix run (its recorded
        tokenizer_sha256), ("hf", folder) for a local HF folder, ("hub", name) for a hub name; None for bare models."""
        self.run: RunConfig | None = None
        """A cocomix run's config when the teacher is one (for `cocomix.flops.LMShape.of_teacher`)."""
        self.next_token_mode: str | None = None
        """How the Eq. 1 gradient is computed: "own_position" (one backward pass), "per_position" (one per
        position), or None before the first `residual_and_grad(loss="next_token")` decides."""

    def checkpoint_blocks(self) -> None:
        """Recompute the activations of the blocks above `layer` in the backward instead of storing them
        (`train.activation_checkpointing`): the attribution backward runs through those blocks only, so the
        teacher's transient memory drops to their inputs; the same gradient. Blocks at and below `layer` run
        without a graph anyway."""
        if self.checkpointed:
            return
        self._forwards = [block.__dict__.get("forward") for block in self.blocks[self.layer + 1:]]
        for block in self.blocks[self.layer + 1:]:
            block.forward = checkpointed(block.forward)
        self.checkpointed = True

    def _uncheckpoint_blocks(self) -> None:
        """Undo `checkpoint_blocks` (the batched per-position backward of a fallback does not go through it); a
        forward set on a block before it (accelerate's device hooks) is put back."""
        if not self.checkpointed:
            return
        for block, own in zip(self.blocks[self.layer + 1:], self._forwards, strict=True):
            if own is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = own
        self.checkpointed = False

    def close(self) -> None:
        """Leave the model as it was before this Teacher: the capture hook removed, checkpointed blocks restored
        (several Teachers on one model, e.g. a sweep over layers, each add a hook until closed; checkpointing ones
        are closed last first, as each restores the forwards it found)."""
        self._hook.remove()
        self._uncheckpoint_blocks()
        self._leaf = None

    @property
    def vocab_size(self) -> int:
        """Rows of the teacher's token embedding: every token id fed to it must be below this."""
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else self.model.wte
        return int(emb.num_embeddings)

    @property
    def width(self) -> int:
        """Residual width d_con at the capture point (the hidden size of the model)."""
        cfg = text_config(self.model)
        for name in ("hidden_size", "n_embd", "d_model"):
            if cfg is not None and isinstance(getattr(cfg, name, None), int):
                return int(getattr(cfg, name))
        return int(self.model.cfg.d_model)  # a cocomix Transformer

    @property
    def dtype_name(self) -> str:
        """The dtype of the teacher's weights, as `teacher_dtype` names it ("float32", "bfloat16")."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def output_vocab(self) -> int:
        """Number of next-token logits the teacher produces."""
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        head = head if head is not None else self.model.lm_head
        return int(head.weight.shape[0])

    @property
    def max_positions(self) -> int | None:
        """The longest window the teacher can read: a cocomix run's context_length, or an HF model's position
        table (`n_positions` / `max_position_embeddings` where a learned position embedding of that size exists);
        None for rotary models, whose max_position_embeddings is a training length, not a limit."""
        if hasattr(self.model, "cfg") and hasattr(self.model.cfg, "context_length"):
            return int(self.model.cfg.context_length)
        cfg = text_config(self.model)
        limit = next((getattr(cfg, k) for k in ("n_positions", "max_position_embeddings")
                      if isinstance(getattr(cfg, k, None), int)), None)
        if limit is None:
            return None
        tokens = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        learned = any(isinstance(m, nn.Embedding) and m is not tokens and limit <= m.num_embeddings <= limit + 2
                      for m in self.model.modules())  # OPT's table has 2 extra rows
        return limit if learned else None

    def check_store(self, store: TokenStore, seq_len: int, length: str = "seq_len") -> None:
        """ConfigError when the teacher cannot read the store's windows (`teacher_tokenizer.check_teacher_store`);
        `length` names the setting that gave `seq_len`, for the message."""
        from cocomix.teacher_tokenizer import check_teacher_store

        check_teacher_store(self, store, seq_len, length)

    @property
    def norm_kind(self) -> str | None:
        """How the teacher's blocks normalise: "layer_norm" (the mean removed), "rms_norm", or None (unknown)."""
        names = [type(m).__name__.lower() for m in self.blocks[0].modules()]
        if any(isinstance(m, nn.LayerNorm) for m in self.blocks[0].modules()) or any(
                n.endswith("layernorm") for n in names):
            return "layer_norm"
        return "rms_norm" if any("rmsnorm" in n for n in names) else None

    def fit_sae(self, sae: TopKSAE) -> TopKSAE:
        """`sae` as this teacher's activations need it. A SAELens SAE trained on TransformerLens activations with
        `center_writing_weights` centres its input (`center_input`); TransformerLens centres LayerNorm models only,
        so for an RMSNorm teacher (Llama, Gemma, Qwen, Mistral) the SAE saw uncentred activations: centring is
        turned off, with a warning."""
        if getattr(sae, "center_input", False) and self.norm_kind == "rms_norm":
            sae.center_input = False
            warnings.warn("SAE: its config asks for TransformerLens's center_writing_weights, which TransformerLens "
                          "applies to LayerNorm models only; this teacher uses RMSNorm, so the SAE's input is not "
                          "centred", CocomixWarning, stacklevel=2)
        return sae

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextmanager
    def _capturing(self) -> Iterator[None]:
        """Arm the capture hook for one of this Teacher's forwards. Outside them the hook leaves the block's output
        alone: the model runs as it would without the Teacher (another Teacher on the same model capturing at
        another block, a user's own forward keeping its gradient path)."""
        self._armed += 1
        try:
            yield
        finally:
            self._armed -= 1

    def _capture(self, module: nn.Module, args: tuple, output: object) -> object:
        """While armed (`_capturing`), replace the block's hidden-state output by a leaf that requires grad (the
        attribution point): the output itself, or `_replace` (the SAE reconstruction, for
        `gradient_at="reconstruction"`)."""
        if not self._armed:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        source = hidden if self._replace is None else self._replace.to(hidden.dtype)
        leaf = source.detach().requires_grad_(True)
        self._leaf = leaf
        if self._stop_at_capture:
            raise _Captured
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, layer: int, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, layer_field: str = "teacher_layer") -> Teacher:
        """An HF causal LM (`AutoModelForCausalLM.from_pretrained`, name or local folder) or a cocomix run/checkpoint
        directory (`cocomix.teacher_load.load_teacher`); `layer_field` names the setting that gave `layer`, for the
        error when the teacher has no such block."""
        from cocomix.teacher_load import load_teacher

        return load_teacher(cls, name_or_path, layer, device, dtype, layer_field)

    @torch.no_grad()
    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> residual stream (B, T, d_con) at the output of block teacher_layer (no gradient); the
        forward ends there (nothing above the capture block runs)."""
        ids = as_token_ids(ids)
        self._stop_at_capture = True
        try:
            with self._capturing():
                self.model(ids, **self._kw)
        except _Captured:
            pass
        finally:
            self._stop_at_capture = False
        return self._take_leaf(ids).detach()

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V), no gradient, nothing captured (KD reads the logits only: a teacher whose
        capture block's output is no (B, T, d) tensor distils all the same)."""
        ids = as_token_ids(ids)
        return _logits(self.model(ids, **self._kw))

    @torch.no_grad()
    def forward_pass(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) -> (logits (B, T, V), residual stream (B, T, d_con) at teacher_layer), no gradient."""
        ids = as_token_ids(ids)
        with self._capturing():
            logits = _logits(self.model(ids, **self._kw))
        return logits, self._take_leaf(ids).detach()

    def residual_and_grad(self, ids: torch.Tensor, loss: str = "window_mean",
                          reconstruct: Callable[[torch.Tensor], torch.Tensor] | None = None) -> TeacherPass:
        """ids (B, T) -> hidden and the loss gradient at teacher_layer (see `TeacherPass.grad`).

        loss="window_mean": ∂L/∂hidden with L = mean CE(logits[:, :-1], ids[:, 1:]) (the official code).
        loss="next_token": grad[:, t] = ∂CE_t/∂hidden[:, t] with CE_t the NLL of ids[:, t + 1] (paper Eq. 1): one
        backward pass through own-position attention where the first window's check allows
        (`next_token_mode`), else batched per-position backward passes.
        With `reconstruct` (hidden (B, T, d) -> the SAE's reconstruction D(c), same shape; next_token only): Eq. 1
        as written, grad[:, t] = ∂CE_t/∂D(c_t) with the teacher run from D(c_t) at position t and the true
        residual stream at the others (`_reconstruction_pass`).
        """
        if loss not in ATTRIBUTION_LOSSES:
            raise ConfigError(f"attribution_loss: expected one of {ATTRIBUTION_LOSSES}, got {loss!r}")
        ids = as_token_ids(ids, 2)  # (a next token to predict)
        if reconstruct is not None:
            if loss != "next_token":
                raise ConfigError("gradient_at=reconstruction: needs attribution_loss=next_token (Eq. 1 runs the "
                                  "teacher from D(c_t) for position t's own loss)")
            return self._reconstruction_pass(ids, reconstruct)
        if loss == "next_token":
            return self._own_position_pass(ids) if self._own_position_ok(ids) else self._per_position_pass(ids)
        if self._can_split(ids):
            trunk, head = self._split()
            with torch.enable_grad():
                final = trunk(ids)  # (B, T, d_final): the trunk's output, in the graph back to the leaf
                leaf = self._take_leaf(ids)
                mean = chunked_nll(final, head.weight, head.bias, ids)
                (grad,) = torch.autograd.grad(mean, leaf)
            return TeacherPass(hidden=leaf.detach(), grad=grad, loss=mean.detach())
        with torch.enable_grad():
            logits, leaf, nll = self._whole_nll(ids)
            mean = nll.mean()
            (grad,) = torch.autograd.grad(mean, leaf)
        return TeacherPass(hidden=leaf.detach(), grad=grad, loss=mean.detach(), logits=logits.detach())

    def _whole_nll(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (B, T) -> (logits (B, T, V), the captured leaf, per-position NLL (B, T-1) in fp32 at least)."""
        with self._capturing():
            logits = _logits(self.model(ids, **self._kw))  # (B, T, V)
        leaf = self._take_leaf(ids)
        B, T, V = logits.shape
        flat = logits[:, :-1].reshape(-1, V)
        flat = flat if flat.dtype == torch.float64 else flat.float()  # fp32 at least, keep fp64
        nll = F.cross_entropy(flat, ids[:, 1:].reshape(-1), reduction="none").view(B, T - 1)  # (B, T-1)
        return logits, leaf, nll

    def _take_leaf(self, ids: torch.Tensor) -> torch.Tensor:
        """The captured residual stream of the forward on ids (B, T): one vector per token, or an error."""
        leaf, self._leaf = self._leaf, None
        if leaf is None:
            raise CheckpointError(f"teacher: its forward on token ids did not pass through block {self.layer} of "
                                  f"the decoder blocks found ({type(self.model).__name__}); give a text causal LM")
        if leaf.dim() != 3:  # e.g. Gemma 3n's blocks pass a stack of (B, T, d) streams (AltUp)
            raise ConfigError(f"teacher: block {self.layer} of {type(self.model).__name__} outputs a tensor of shape "
                              f"{tuple(leaf.shape)}, not one (batch, tokens, width) residual stream; this "
                              "architecture is not supported as a teacher")
        if leaf.shape[:2] != ids.shape:  # e.g. a CoCoMix run as teacher, captured above its concept seam
            raise ConfigError(f"{self.layer_field}: block {self.layer} of this teacher sees {leaf.shape[1]} positions "
                              f"for {ids.shape[1]} tokens (a cocomix run's block at or above its concept/pause "
                              "slots); choose a teacher_layer below the run's concept_layer")
        return leaf

    def _split(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear] | None:
        """(trunk: ids -> final normed hidden states, capturing at `layer`; the linear LM head), or None when the
        model has no such split (no base model, a non-linear head, logit soft-capping or scaling in the config)."""
        m = self.model
        if hasattr(m, "final_hidden") and isinstance(getattr(m, "lm_head", None), nn.Linear):  # cocomix model
            return self._armed_trunk(lambda ids: m.final_hidden(ids)[0]), m.lm_head
        base = getattr(m, "base_model", None)
        head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
        cfg = getattr(m, "config", None)
        if base is None or base is m or not isinstance(head, nn.Linear):
            return None
        for c in (cfg, text_config(m)):  # a multimodal model's logit settings live in its text config
            if any(getattr(c, name, None) is not None for name in _SOFTCAPS):
                return None
            if any(getattr(c, name, None) not in (None, 1, 1.0) for name in _LOGIT_SCALES):
                return None
        return self._armed_trunk(lambda ids: base(ids, **self._kw).last_hidden_state), head

    def _armed_trunk(self, trunk: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(ids: torch.Tensor) -> torch.Tensor:
            with self._capturing():
                return trunk(ids)
        return run

    @torch.no_grad()
    def _can_split(self, ids: torch.Tensor) -> bool:
        """Whether trunk + chunked head gives the whole model's loss (decided once, on the first window)."""
        if self._split_ok is None:
            split = self._split()
            ok = split is not None
            if ok:
                trunk, head = split
                one = ids[:1]
                part = chunked_nll(trunk(one), head.weight, head.bias, one)
                logits = _logits(self.model(one, **self._kw))  # (not captured: the hook is not armed)
                whole = F.cross_entropy(logits[0, :-1].to(part.dtype), one[0, 1:])
                if not bool(torch.isfinite(whole)):  # (the model's own loss overflowed): decided on a later window
                    self._leaf = None
                    return False
                ok = bool(torch.isclose(part, whole, rtol=split_rtol(logits), atol=1e-5))
                if not ok:  # a split that exists but computes another function: said, as it costs memory
                    warnings.warn(f"teacher: its final hidden states through its LM head give loss {float(part):.6g}"
                                  f", the whole model {float(whole):.6g}; the attribution loss is computed from whole "
                                  "logits ((B, T, V) in memory)", CocomixWarning, stacklevel=2)
            self._leaf = None
            self._split_ok = ok
        return self._split_ok
