"""Evaluation: perplexity on prepared splits (lm-eval-harness and run comparison arrive with later work)."""

from cocomix.eval.perplexity import evaluate_loss

__all__ = ["evaluate_loss"]
