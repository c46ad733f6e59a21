# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MLP fixed effects trained on the exact Gaussian marginal likelihood given the network (method="marginal")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_medl.estimators import MixedEffectsClassifier, MixedEffectsRegressor
from monai_medl.estimators.gaussian_marginal import LevelDesign, gaussian_conditional_modes, gaussian_marginal_nll

torch.set_num_threads(1)


def _dense(residual, clusters, design, num_levels, chol, log_sd):
    """``-log N(r; 0, Z G Z^T + s^2 I)`` and ``G Z^T V^-1 r`` from the dense ``n x n`` covariance."""
    n, q = design.shape
    z = torch.zeros(n, num_levels * q, dtype=design.dtype)
    for i in range(n):
        z[i, clusters[i] * q : (clusters[i] + 1) * q] = design[i]
    big_g = torch.block_diag(*[chol @ chol.T] * num_levels)
    v = z @ big_g @ z.T + torch.exp(2 * log_sd) * torch.eye(n, dtype=design.dtype)
    nll = -torch.distributions.MultivariateNormal(torch.zeros(n, dtype=design.dtype), v).log_prob(residual)
    return nll, (big_g @ z.T @ torch.linalg.solve(v, residual)).reshape(num_levels, q)


def test_marginal_nll_and_modes_match_the_dense_formulas():
    gen = torch.Generator().manual_seed(0)
    n, levels = 30, 5
    clusters = torch.cat([torch.arange(4).repeat_interleave(7), torch.tensor([1, 2])])  # level 4 has no rows
    design = torch.cat([torch.ones(n, 1), torch.randn(n, 1, generator=gen, dtype=torch.float64)], 1).double()
    residual = torch.randn(n, generator=gen, dtype=torch.float64)
    chol = torch.tensor([[0.8, 0.0], [-0.3, 0.5]], dtype=torch.float64)
    log_sd = torch.tensor(-0.4, dtype=torch.float64)
    nll = gaussian_marginal_nll(residual, LevelDesign(clusters, design, levels), chol, log_sd)
    dense_nll, dense_modes = _dense(residual, clusters, design, levels, chol, log_sd)
    assert torch.isclose(nll, dense_nll, rtol=1e-10)
    loc, cond_chol = gaussian_conditional_modes(residual, LevelDesign(clusters, design, levels), chol, log_sd)
    assert torch.allclose(loc, dense_modes, atol=1e-10)
    assert torch.allclose(cond_chol[4] @ cond_chol[4].T, chol @ chol.T, atol=1e-10)  # no rows: the prior
    with pytest.raises(ValueError, match="prior_chol must be"):
        gaussian_marginal_nll(residual, LevelDesign(clusters, design, levels), torch.eye(3).double(), log_sd)
    with pytest.raises(ValueError, match="residual and clusters must be"):
        gaussian_marginal_nll(residual[:-1], LevelDesign(clusters, design, levels), chol, log_sd)


def _simulate(seed: int, levels: int = 40, rows: int = 20):
    """Nonlinear ``f``, random intercept s.d. 1 and slope s.d. 0.5 on ``x0``, noise s.d. 0.5."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(levels), rows)
    x = rng.uniform(-2, 2, size=(levels * rows, 2))
    f = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2
    y = f + rng.normal(0, 1.0, levels)[group] + rng.normal(0, 0.5, levels)[group] * x[:, 0]
    return x, y + rng.normal(0, 0.5, levels * rows), group, f


def _sds(fit) -> np.ndarray:
    """Intercept s.d., slope s.d., residual s.d."""
    table = fit.var_corr()
    return table[table["var2"].isna()]["sdcor"].to_numpy()


def test_marginal_mlp_recovers_the_variance_components():
    x, y, group, f = _simulate(0)
    # reference: the exact ML fit of the same random effects on y - f(x) with the true f
    reference = _sds(MixedEffectsRegressor(method="ml", random_slopes=[0]).fit(x[:, :1], y - f, groups=group))
    kwargs = {"fixed_effects": "mlp", "random_slopes": [0], "hidden": (32, 32), "max_iter": 500}
    marginal = MixedEffectsRegressor(**kwargs).fit(x, y, groups=group)  # the default for an MLP, one factor
    assert marginal.fit_info_["method"] == "exact marginal likelihood given the network"
    error = np.abs(_sds(marginal) / reference - 1)
    assert error.max() < 0.05, (error, reference)  # every s.d. within 5% of the true-f exact fit
    elbo = MixedEffectsRegressor(method="elbo", **kwargs).fit(x, y, groups=group)
    assert error.max() <= np.abs(_sds(elbo) / reference - 1).max() + 1e-6
    # mini-batches of whole levels (Adam): the same objective, estimated without bias
    kwargs.update(optimizer="adam", batch_size=10, max_iter=60, lr=0.01)
    batched = MixedEffectsRegressor(method="marginal", **kwargs).fit(x, y, groups=group)
    assert np.abs(_sds(batched) / reference - 1).max() < 0.05
    text = str(marginal.summary())
    assert "fitted by exact marginal likelihood given the network" in text and "logLik given the network" in text
    new = np.full(5, 999)  # an unseen level: the population prediction
    assert np.array_equal(marginal.predict(x[:5], groups=new), marginal.predict(x[:5]))
    seen = marginal.predict(x[:5], groups=group[:5]) - marginal.predict(x[:5])
    modes = marginal.random_effects("group").to_numpy()[group[:5]]
    assert np.allclose(seen, modes[:, 0] + modes[:, 1] * x[:5, 0])


def test_linear_network_matches_the_exact_ml_fit():
    x, y, group, _ = _simulate(1, levels=30, rows=10)
    exact = MixedEffectsRegressor(method="ml", random_slopes=[0]).fit(x, y, groups=group)
    marginal = MixedEffectsRegressor(method="marginal", random_slopes=[0]).fit(x, y, groups=group)
    assert np.allclose(_sds(marginal), _sds(exact), rtol=1e-3)
    assert np.allclose(marginal.fixed_effects_, exact.fixed_effects_, rtol=1e-4, atol=1e-6)
    assert np.allclose(marginal.covariance("group"), exact.covariance("group"), rtol=2e-3, atol=1e-5)
    assert np.isclose(marginal.fit_info_["loglik"], exact.loglik_, rtol=1e-6)
    assert np.allclose(marginal.random_effects("group"), exact.random_effects("group"), atol=1e-3)


def test_marginal_bad_inputs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 2)), rng.normal(size=40)
    crossed = {"a": np.repeat(np.arange(4), 10), "b": np.tile(np.arange(5), 8)}
    with pytest.raises(ValueError, match="method='marginal' integrates out one grouping factor"):
        MixedEffectsRegressor(method="marginal", fixed_effects="mlp").fit(x, y, groups=crossed)
    with pytest.raises(ValueError, match="method='marginal' integrates out one grouping factor"):
        MixedEffectsRegressor(method="marginal", nested="a/b").fit(x, y, groups=crossed)
    with pytest.raises(ValueError, match="method='marginal' needs a Gaussian response"):
        MixedEffectsClassifier(method="marginal").fit(x, (y > 0).astype(int), groups=crossed["a"])
    fit = MixedEffectsRegressor(fixed_effects="mlp", hidden=(4,), max_iter=5).fit(x, y, groups=crossed)
    assert fit.fit_info_["method"] == "variational ELBO"  # nothing exact with two factors: the default stays
    linear = MixedEffectsRegressor(method="marginal", max_iter=5).fit(x, y, groups=crossed["a"])
    with pytest.raises(AttributeError, match="not the exact marginal likelihood given the network"):
        _ = linear.loglik_
