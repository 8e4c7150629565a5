"""The loss-curve plots of `cocomix compare`: validation loss against training tokens or training FLOPs, one line
per group of seeds with a ±1 std band (no paper equation)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cocomix.atomic import atomic_writer
from cocomix.errors import CocomixError

if TYPE_CHECKING:
    from cocomix.eval.compare import Group


def plot(groups: list[Group], out: Path, axis: str) -> Path:
    """Validation loss against tokens or training FLOPs, one line (±std band) per group; returns the PNG path."""
    try:  # a Figure on the Agg canvas: no pyplot, so a caller's backend is left alone
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CocomixError("compare: plots need matplotlib (pip install matplotlib)") from None
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for g in groups:
        xs, means, stds = g.mean_curve(axis)
        name = g.label.replace("$", r"\$")  # a directory name, not mathtext (`a$\x$b` would not parse)
        name = "\u200b" + name if name.startswith("_") else name  # matplotlib leaves `_`-labels out of the legend
        label = f"{name} ({len(g.runs)} seeds, mean ± 1 std)" if len(g.runs) > 1 else name
        (line,) = ax.plot(xs, means, marker="o", markersize=3, label=label)
        if len(g.runs) > 1:
            ax.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training tokens" if axis == "tokens" else "training FLOPs (student + teacher + SAE)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"Validation loss vs {'tokens' if axis == 'tokens' else 'training FLOPs'}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / f"loss_vs_{axis}.png"
    with atomic_writer(path) as fh:
        fig.savefig(fh, format="png")
    return path
