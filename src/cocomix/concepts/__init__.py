"""Concepts: attribution scores and concept targets from a frozen teacher and a TopK SAE (paper §2.2, Eq. 1)."""

from cocomix.concepts.attribution import (
    MULTIPLIERS,
    SELECTIONS,
    active_attribution,
    compute_targets,
    select_targets,
)

__all__ = ["MULTIPLIERS", "SELECTIONS", "active_attribution", "compute_targets", "select_targets"]
