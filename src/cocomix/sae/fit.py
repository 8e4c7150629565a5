"""Does an SAE belong to this teacher and block? Its reconstruction error on the teacher's own activations.

An SAE of the right width but of another teacher, another block or another normalisation loads without complaint
and yields concept targets that mean nothing (paper §2.1: the concepts are c = TopK(E(h)) of *this* teacher's
residual stream h). Names cannot settle it (`gpt2`, `openai-community/gpt2` and TransformerLens's `gpt2-small` are
one model; a local path depends on the folder it was given from), so the check is functional: the fraction of
variance unexplained,

    FVU = Σ‖x_n − x̂_n‖² / Σ‖x_n − mean(x_n)‖²,   x̂ = D(TopK(E(x)))

in the SAE's input space (after its own normalisation, as `train-sae` reports `fvu_normalized`), over one window of
the teacher's block output, position 0 left out (GPT-2-like teachers give the first position a residual norm tens
of times the others', which an SAE may not have been trained on). An SAE of the right teacher and block stays well
under `FVU_WARN` (the demo's: 0.05); one of another model of the same width gives about 1 or more (a cocomix
student read by the demo's SAE: 1.66).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from cocomix.errors import CocomixWarning

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher

FVU_WARN = 0.5
"""Above this FVU the SAE explains less than half of the teacher's activations: a warning names the likely causes."""


class FVUSums:
    """The FVU over many batches: running float64 sums of ‖x_n − x̂_n‖², x_n and ‖x_n‖², and the row count; in
    the SAE's normalised input space, or with `raw` in the activations' own (x against x̂)."""

    def __init__(self, raw: bool = False) -> None:
        self.raw = raw
        self.err = self.sq = 0.0
        self.total: torch.Tensor | None = None  # Σ x_n, (d,)
        self.rows = 0

    @torch.no_grad()
    def add(self, sae: TopKSAE, x: torch.Tensor, values: torch.Tensor | None = None,
            indices: torch.Tensor | None = None, info: dict[str, torch.Tensor] | None = None) -> None:
        """Rows x (N, d), with their encoding (values, indices (N, k), info) when the caller already has it."""
        if values is None or indices is None or info is None:
            values, indices, info = sae.encode(x)
        recon = sae.decode_sparse(values, indices, info)  # (N, d), raw space
        if self.raw:
            x_n, recon_n = x.to(recon.dtype), recon
        else:
            x_n, _ = sae.preprocess(x)  # (N, d)
            recon_n = (recon - info["mu"]) / info["std"]  # to x_n's space (mu 0, std 1 where it is the raw space)
        x64 = x_n.double()
        self.err += float((x64 - recon_n.double()).pow(2).sum())
        self.sq += float(x64.pow(2).sum())
        self.total = x64.sum(0) if self.total is None else self.total + x64.sum(0)
        self.rows += x.shape[0]

    def reduce(self, sum_over: Callable[[torch.Tensor], torch.Tensor], width: int) -> None:
        """Replace the sums by `sum_over` of them (e.g. over the ranks of a torchrun job: every rank calls this;
        `width` is the rows' width, for a rank that saw none)."""
        total = self.total if self.total is not None else torch.zeros(width, dtype=torch.float64)
        summed = sum_over(torch.cat((torch.tensor([self.err, self.sq, float(self.rows)], dtype=torch.float64),
                                     total.double().cpu())))  # (3 + width,)
        self.err, self.sq, self.rows = float(summed[0]), float(summed[1]), int(summed[2])
        self.total = summed[3:] if self.rows else None

    def value(self) -> float:
        """Σ‖x_n − x̂_n‖² / Σ‖x_n − mean(x_n)‖² (NaN before any row, or for constant rows)."""
        if self.total is None or self.rows == 0:
            return float("nan")
        variance = self.sq - float(self.total.pow(2).sum()) / self.rows
        return self.err / variance if variance > 0 else float("nan")


def sae_fvu(sae: TopKSAE, x: torch.Tensor) -> float:
    """FVU of `sae` on activations x (N, d), in the SAE's normalised input space (float64 sums)."""
    sums = FVUSums()
    sums.add(sae, x)
    return sums.value()


def check_sae_fit(teacher: Teacher, sae: TopKSAE, ids: torch.Tensor, sae_field: str) -> float:
    """FVU of `sae` on `teacher`'s block-`teacher.layer` output for ids (B, T); warns (naming `sae_field`)
    when it exceeds FVU_WARN. Returns the FVU."""
    h = teacher.hidden(ids)  # (B, T, d)
    x = (h[:, 1:] if h.shape[1] > 1 else h).reshape(-1, h.shape[-1])  # (B·(T-1), d): position 0 left out
    fvu = sae_fvu(sae, x.to(sae.W_enc.dtype))
    warn_if_unfit(fvu, sae, teacher.layer, sae_field)
    return fvu


def warn_if_unfit(fvu: float, sae: torch.nn.Module, layer: int, sae_field: str) -> None:
    """The warning of an FVU above FVU_WARN (or NaN), naming `sae_field` and the model the SAE's config names."""
    if fvu <= FVU_WARN:
        return
    named = getattr(sae, "model_name", None)
    trained = f" (its config names the model {named!r})" if named else ""
    warnings.warn(f"{sae_field}: the SAE leaves {fvu:.2f} of the variance of the teacher's block {layer} output "
                  "unexplained (FVU; one trained there leaves far less, the demo's 0.05): it was likely trained on "
                  f"another teacher, block or normalisation{trained}, or barely trained, and its concepts will not "
                  "describe this teacher", CocomixWarning, stacklevel=3)
