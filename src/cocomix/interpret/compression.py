"""Compression analysis (paper §3.3c): how many concepts the compression layer effectively ignores.

The compression maps the TopK concept logits to the concept vector with one d-dimensional row per concept
(`ConceptSeam.compress_weight`, (C, d); the official `compress_layer.weight` transposed). A row with a tiny norm
means the concept contributes almost nothing to the mixed vector even when selected. The paper reports 5.8% of
the rows below 1e-2 at 386M; we report the same fraction and a histogram of log10 row norms.

Rows start at a norm of about init_std·√d (N(0, init_std²) entries) and weight decay shrinks a row slowly: in a
short run, rows of concepts that are rarely selected stay near that initial norm rather than falling below 1e-2
(the demo: 0% below, 57% within 10% of 0.226 = 0.02·√128). So the report also gives the initial norm, marked on the
histogram, and the share of rows within 10% of it (`fraction_near_initial`): concepts training has barely used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from cocomix.atomic import atomic_write_text, atomic_writer
from cocomix.interpret.inspect import mixing_seam
from cocomix.model import Transformer

THRESHOLD = 1e-2


@torch.no_grad()
def compression_norms(model: Transformer) -> torch.Tensor:
    """(C,) L2 norm of each concept's compression row."""
    return mixing_seam(model, "the compression analysis").compress_weight.float().norm(dim=-1).cpu()


def compression_report(model: Transformer, out_dir: str | Path, threshold: float = THRESHOLD) -> dict[str, Any]:
    """compression.json and compression.png (histogram with the threshold marked); returns the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = compression_norms(model)
    initial = model.cfg.init_std * math.sqrt(model.cfg.d_model)  # ≈ E‖row‖ at initialisation
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    q = torch.quantile(norms, torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0])).tolist()
    summary = {"concepts": norms.numel(), "threshold": threshold,
               "fraction_below": float((norms < threshold).double().mean()), "initial_norm": initial,
               "fraction_near_initial": float(((norms - initial).abs() <= 0.1 * initial).double().mean()),
               "quantiles": dict(zip(("min", "p05", "median", "p95", "max"), q, strict=True))}
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(torch.log10(norms.clamp_min(1e-12)).numpy(), bins=60, color="tab:blue")
    ax.axvline(torch.log10(torch.tensor(threshold)).item(), color="tab:red", linestyle="--",
               label=f"{threshold:g}: {summary['fraction_below']:.1%} of concepts below")
    ax.axvline(torch.log10(torch.tensor(initial)).item(), color="tab:gray", linestyle=":",
               label=f"initial norm ≈ init_std·√d = {initial:.3g}: {summary['fraction_near_initial']:.1%} within 10%")
    ax.set_xlabel("log10 L2 norm of the concept's compression row")
    ax.set_ylabel("number of concepts")
    ax.set_title(f"Compression layer: {norms.numel()} concept rows")
    ax.legend(loc="upper left", fontsize=8)  # the rows sit to the right of the 1e-2 line
    fig.tight_layout()
    with atomic_writer(out / "compression.png") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    atomic_write_text(out / "compression.json", json.dumps(summary, indent=1))
    return summary
