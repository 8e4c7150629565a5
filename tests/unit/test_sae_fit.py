"""The SAE-fit check: FVU of an SAE on a teacher's activations, and the warning for an SAE of another teacher."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from cocomix.sae import TopKSAE
from cocomix.sae.fit import FVU_WARN, check_sae_fit, sae_fvu


class _Teacher:
    """What check_sae_fit reads of a teacher: `layer` and `hidden(ids) -> (B, T, d)`."""

    layer = 2

    def __init__(self, h: torch.Tensor) -> None:
        self.h = h

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return self.h


def _basis_sae(d: int, dims: int, normalize: bool = False) -> TopKSAE:
    """Latents ±e_i for the first `dims` axes, k = dims: reconstructs exactly any x that is zero beyond them."""
    sae = TopKSAE(d, 2 * dims, dims, normalize=normalize)
    eye = torch.eye(d)[:dims]  # (dims, d)
    enc = torch.cat([eye, -eye])  # (2·dims, d)
    return sae.set_weights(pre_bias=torch.zeros(d), W_enc=enc, latent_bias=torch.zeros(2 * dims), W_dec=enc.T)


def _quiet(fn, *args) -> tuple[float, list[str]]:  # noqa: ANN001
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args)
    return value, [str(w.message) for w in caught]


def test_an_sae_that_reconstructs_the_teacher_passes_silently() -> None:
    h = torch.randn(2, 9, 6)
    fvu, said = _quiet(check_sae_fit, _Teacher(h), _basis_sae(6, 6), torch.zeros(2, 9, dtype=torch.long), "--sae")
    assert fvu < 1e-10 and said == []


def test_normalising_sae_is_measured_in_its_own_space() -> None:
    h = torch.randn(40, 6) * 50 + 7  # far from the SAE's unit scale: the raw FVU would still be 0 here
    assert sae_fvu(_basis_sae(6, 6, normalize=True), h) < 1e-6
    assert sae_fvu(_basis_sae(6, 3, normalize=True), h) > 0.3  # half the axes dropped after normalisation


def test_an_sae_of_another_model_is_flagged_with_its_recorded_name() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(6, 32, 4, normalize=False)
    sae.set_weights(pre_bias=torch.randn(6), W_enc=torch.randn(32, 6), latent_bias=torch.zeros(32),
                    W_dec=torch.randn(6, 32))
    sae.model_name = "gpt2-medium"
    with pytest.warns(UserWarning, match=r"concept\.sae: the SAE leaves .* teacher's block 2 output .*'gpt2-medium'"):
        fvu = check_sae_fit(_Teacher(torch.randn(2, 9, 6)), sae, torch.zeros(2, 9, dtype=torch.long), "concept.sae")
    assert fvu > FVU_WARN


def test_position_zero_is_left_out() -> None:
    """A first position far off the SAE's subspace (GPT-2's attention-sink norm) does not count."""
    h = torch.zeros(2, 9, 4)
    h[..., :3] = torch.randn(2, 9, 3)
    h[:, 0, 3] = 1000.0
    fvu, said = _quiet(check_sae_fit, _Teacher(h), _basis_sae(4, 3), torch.zeros(2, 9, dtype=torch.long), "--sae")
    assert fvu < 1e-10 and said == []
    h[:, 4, 3] = 1000.0  # the same row at a later position is counted
    fvu, said = _quiet(check_sae_fit, _Teacher(h), _basis_sae(4, 3), torch.zeros(2, 9, dtype=torch.long), "--sae")
    assert fvu > FVU_WARN and len(said) == 1


def test_non_finite_activations_warn() -> None:
    h = torch.randn(1, 5, 6)
    h[0, 2, 1] = float("nan")
    _, said = _quiet(check_sae_fit, _Teacher(h), _basis_sae(6, 6), torch.zeros(1, 5, dtype=torch.long), "--sae")
    assert len(said) == 1 and "nan of the variance" in said[0]


def test_sums_of_no_rows_are_nan() -> None:
    """A rank or a selection that saw no rows reports NaN (it divided by zero rows)."""
    from cocomix.sae.fit import FVUSums

    sums = FVUSums()
    sums.add(TopKSAE(8, 32, 4), torch.zeros(0, 8))
    assert sums.rows == 0 and math.isnan(sums.value())
