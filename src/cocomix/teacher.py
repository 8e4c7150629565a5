"""The frozen teacher (the paper's concept-extraction model M_con, §2.1): residual stream and its loss gradient.

A teacher is any Hugging Face causal LM (GPT-2, Llama, GPT-NeoX/Pythia, Qwen, ...) or a cocomix checkpoint.
`Teacher.residual_and_grad(ids)` runs it on a batch of windows and returns the residual stream at the output of
block `teacher_layer` (transformer_lens `blocks.{L}.hook_resid_post`) together with the gradient of the window's
mean next-token NLL with respect to it — the official attribution's ∂L/∂h (official-implementation.md §2.1).
Teacher parameters never require grad: the hidden state at `teacher_layer` is made a fresh leaf, so the backward
pass runs only through activations above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cocomix.errors import CheckpointError, ConfigError


@dataclass
class TeacherPass:
    hidden: torch.Tensor
    """(B, T, d_con): residual stream at the output of block teacher_layer (detached)."""
    grad: torch.Tensor
    """(B, T, d_con): ∂(mean next-token NLL of the batch) / ∂hidden; zero at the final position."""
    loss: torch.Tensor
    """(): the teacher's mean next-token NLL over B·(T−1) positions."""
    logits: torch.Tensor
    """(B, T, V): teacher logits (detached), e.g. for distillation."""


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder-block list of an HF causal LM or a cocomix Transformer (the ModuleList of n_layer blocks)."""
    if hasattr(model, "blocks") and isinstance(model.blocks, nn.ModuleList):
        return model.blocks
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            return module
    raise CheckpointError(f"{type(model).__name__}: cannot find its list of decoder blocks")


def _logits(out: object) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]  # HF ModelOutput or cocomix ModelOutput


class Teacher:
    """A frozen causal LM with a capture point at the output of block `layer`."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.blocks = find_blocks(model)
        if not 0 <= layer < len(self.blocks):
            raise ConfigError(f"teacher_layer: expected a block index in [0, {len(self.blocks) - 1}], got {layer}")
        self.layer = layer
        self._leaf: torch.Tensor | None = None
        self.blocks[layer].register_forward_hook(self._capture)

    @property
    def vocab_size(self) -> int:
        """Rows of the teacher's token embedding: every token id fed to it must be below this."""
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else self.model.wte
        return int(emb.num_embeddings)

    def check_store(self, store: object) -> None:
        """ConfigError when a token store holds ids the teacher cannot embed (a different tokenizer)."""
        if store.vocab_size > self.vocab_size:
            raise ConfigError(f"{store.path}: token store vocab_size {store.vocab_size} exceeds the teacher's "
                              f"{self.vocab_size}; prepare the data with the teacher's tokenizer")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _capture(self, module: nn.Module, args: tuple, output: object) -> object:
        """Replace the block's hidden-state output by a leaf that requires grad (the attribution point)."""
        hidden = output[0] if isinstance(output, tuple) else output
        leaf = hidden.detach().requires_grad_(True)
        self._leaf = leaf
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, layer: int, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> Teacher:
        """An HF causal LM (`AutoModelForCausalLM.from_pretrained`, name or local folder) or a cocomix run/checkpoint
        directory (one holding `config.json` of a cocomix run or `checkpoints/`)."""
        path = Path(name_or_path)
        if (path / "checkpoints").is_dir() or (path / "state.json").is_file():
            from cocomix.runs import load_run

            _, _, model, _ = load_run(path, device=device)
            return cls(model.to(dtype), layer)
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise ConfigError("teacher: loading a Hugging Face teacher needs transformers (pip install "
                              "transformers)") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{name_or_path}: cannot load a causal LM teacher ({e})") from None
        return cls(model.to(device), layer)

    @torch.no_grad()
    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> residual stream (B, T, d_con) at the output of block teacher_layer (no gradient)."""
        self.model(ids)
        leaf, self._leaf = self._leaf, None
        if leaf is None:
            raise RuntimeError("teacher forward did not pass through the capture block")
        return leaf.detach()

    def residual_and_grad(self, ids: torch.Tensor) -> TeacherPass:
        """ids (B, T) -> hidden and ∂L/∂hidden at teacher_layer, L = mean CE(logits[:, :-1], ids[:, 1:])."""
        with torch.enable_grad():
            logits = _logits(self.model(ids))  # (B, T, V)
            leaf, self._leaf = self._leaf, None
            if leaf is None:
                raise RuntimeError("teacher forward did not pass through the capture block")
            V = logits.shape[-1]
            flat = logits[:, :-1].reshape(-1, V)
            flat = flat if flat.dtype == torch.float64 else flat.float()  # fp32 at least, keep fp64
            loss = F.cross_entropy(flat, ids[:, 1:].reshape(-1))
            (grad,) = torch.autograd.grad(loss, leaf)
        return TeacherPass(hidden=leaf.detach(), grad=grad, loss=loss.detach(), logits=logits.detach())
