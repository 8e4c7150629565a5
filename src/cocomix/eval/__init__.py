"""Evaluation: perplexity on prepared splits (`perplexity`), lm-eval-harness tasks (`harness`), run comparison
(`compare`)."""

from cocomix.eval.perplexity import evaluate_loss

__all__ = ["evaluate_loss"]
