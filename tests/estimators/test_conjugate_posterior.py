# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The closed-form random-effects posterior of the Gaussian estimator: exact optimum, same fit as by gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("pandas")

from monai_medl.estimators import ConjugatePosterior, MixedEffectsClassifier, MixedEffectsRegressor  # noqa: E402
from monai_medl.networks.layers import CorrelatedRandomEffects  # noqa: E402


def _random_problem(seed: int = 0, clusters: int = 7, n: int = 60):
    gen = torch.Generator().manual_seed(seed)
    layer = CorrelatedRandomEffects(num_clusters=clusters, num_terms=2).double()
    with torch.no_grad():
        layer.prior_log_diag.copy_(torch.tensor([0.3, -0.5], dtype=torch.float64))
        layer.prior_offdiag.fill_(0.4)
    index = torch.randint(0, clusters, (n,), generator=gen)
    design = torch.cat([torch.ones(n, 1), torch.randn(n, 1, generator=gen)], 1).double()
    residual = torch.randn(n, generator=gen).double() * 2
    return layer, index, design, residual


def _negative_elbo(layer, index, design, residual, noise_var):
    mean, var = layer.moments(index, design)
    nll = 0.5 * ((residual - mean[:, 0]).square() + var[:, 0]) / noise_var
    return nll.sum() + layer.kl()


def test_update_is_a_stationary_point_of_the_elbo_in_the_posterior():
    layer, index, design, residual = _random_problem()
    ConjugatePosterior(layer, index, design).update(residual, noise_var=0.7)
    loss = _negative_elbo(layer, index, design, residual, 0.7)
    grads = torch.autograd.grad(loss, layer.posterior_parameters())
    assert max(float(g.abs().max()) for g in grads) < 1e-9
    # and a minimum: moving the posterior means away raises the objective
    with torch.no_grad():
        layer.loc.add_(0.05)
    assert float(_negative_elbo(layer, index, design, residual, 0.7).detach()) > float(loss.detach())


def test_update_matches_the_textbook_posterior():
    layer, index, design, residual = _random_problem(seed=1)
    ConjugatePosterior(layer, index, design).update(residual, noise_var=0.5)
    sigma = layer.prior_covariance().detach()
    for k in range(layer.num_clusters):
        d, r = design[index == k], residual[index == k]
        cov = torch.linalg.inv(torch.linalg.inv(sigma) + d.T @ d / 0.5)
        torch.testing.assert_close(layer.posterior_covariance()[k].detach(), cov)
        torch.testing.assert_close(layer.loc[k].detach(), cov @ d.T @ r / 0.5)


def test_set_posterior_round_trips_and_checks_shapes():
    layer = CorrelatedRandomEffects(num_clusters=3, num_terms=2).double()
    chol = torch.tensor([[0.5, 0.0], [-0.2, 0.3]], dtype=torch.float64).expand(3, 2, 2)
    layer.set_posterior(torch.ones(3, 2, dtype=torch.float64), chol)
    torch.testing.assert_close(layer.posterior_cholesky().detach(), chol)
    with pytest.raises(ValueError, match="loc must be"):
        layer.set_posterior(torch.ones(2, 2), chol)


def test_estimator_reaches_the_same_optimum_as_the_gradient_fit_in_fewer_iterations():
    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(25), 12)
    days = np.tile(np.arange(12.0), 25)
    u = rng.multivariate_normal([0, 0], [[400, -30], [-30, 25]], 25)
    y = 250 + 10 * days + u[subject, 0] + u[subject, 1] * days + rng.normal(0, 10, len(days))
    x = days[:, None]
    fits = {
        flag: MixedEffectsRegressor(method="elbo", random_slopes=[0], conjugate_update=flag).fit(x, y, groups=subject)
        for flag in (None, False)
    }
    assert fits[None].fit_info_["conjugate_update"] and not fits[False].fit_info_["conjugate_update"]
    a, b = fits[None].var_corr(), fits[False].var_corr()
    np.testing.assert_allclose(a.sdcor.to_numpy(), b.sdcor.to_numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(fits[None].fixed_effects_.to_numpy(), fits[False].fixed_effects_.to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(fits[None].random_effects("group"), fits[False].random_effects("group"), atol=0.05)
    assert fits[None].fit_info_["loss"] <= fits[False].fit_info_["loss"] + 1e-7
    assert fits[None].fit_info_["iterations"] < fits[False].fit_info_["iterations"]
    assert math.isclose(
        float(fits[None].predict(x[:3], groups=subject[:3])[0]),
        float(fits[False].predict(x[:3], groups=subject[:3])[0]),
        rel_tol=1e-3,
    )


def test_conjugate_update_true_is_refused_where_it_is_not_exact():
    x, y = np.zeros((8, 1)), np.arange(8.0)
    groups = {"a": [0, 0, 1, 1, 0, 0, 1, 1], "b": [0, 1, 0, 1, 0, 1, 0, 1]}
    with pytest.raises(ValueError, match="conjugate_update=True"):
        MixedEffectsRegressor(method="elbo", conjugate_update=True).fit(x, y, groups=groups)
    with pytest.raises(ValueError, match="conjugate_update=True"):
        MixedEffectsClassifier(conjugate_update=True).fit(x, y > 3, groups=groups["a"])
    fit = MixedEffectsRegressor(method="elbo", max_iter=5).fit(
        x, y, groups=groups
    )  # crossed: the gradient fit, no error
    assert not fit.fit_info_["conjugate_update"]
