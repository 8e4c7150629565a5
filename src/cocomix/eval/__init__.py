"""Evaluation: perplexity on prepared splits (`perplexity`), lm-eval-harness tasks (the adapter `harness`, the
task runner `tasks`, lm-eval's batch size `batch_size`), run comparison (`compare`, its plots `compare_plot`).

`evaluate_loss` is imported on first use (PEP 562), so that the command line can read `eval.batch_size` to parse
its options without importing torch: `cocomix --help` answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see; at run time `__getattr__` imports it on first use
    from cocomix.eval.perplexity import evaluate_loss

__all__ = ["evaluate_loss"]


def __getattr__(name: str) -> Any:
    if name == "evaluate_loss":
        from cocomix.eval.perplexity import evaluate_loss

        return evaluate_loss
    raise AttributeError(f"module 'cocomix.eval' has no attribute {name!r}")
