# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Issue 7 acceptance: the learned prior s.d.s of a linear ME-MLP trained on the ELBO are variance components."""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("statsmodels") is None:
    pytest.skip("statsmodels is needed for the reference fits (pip install monai-medl[stats])", allow_module_level=True)

from benchmarks.variance_components import fit_linear_mixed_elbo, fit_mixedlm, simulate_linear_mixed  # noqa: E402
from monai_medl.utils import summary, variance_components  # noqa: E402


def _fit(truth: dict, seed: int, **kwargs):
    data = simulate_linear_mixed(seed, num_clusters=100, obs=(20, 50), **truth)
    return data, fit_linear_mixed_elbo(data["x"], data["groups"], data["y"], seed=seed, **kwargs)


def test_elbo_recovers_random_intercept_and_slope_sd():
    truth = {"intercept_sd": 1.0, "slope_sd": 0.5, "noise_sd": 1.0}
    data, fit = _fit(truth, seed=0)
    net = fit.model
    # honest estimator: the prior s.d.s are trainable parameters that started far from the truth (0.1 in
    # standardised units, i.e. 0.1 * sd(y) ~ 0.24 here) and were moved there by the ELBO alone
    for layer in (net.head.intercept, net.linear_slopes):
        assert layer.learn_prior_scale and isinstance(layer.log_prior_scale, torch.nn.Parameter)
    y_sd = float(data["y"].std())
    assert fit.intercept_sd / (0.1 * y_sd) > 3 and fit.slope_sd[0] / (0.1 * y_sd) > 1.5
    assert fit.intercept_sd == pytest.approx(truth["intercept_sd"], rel=0.2)
    assert fit.slope_sd[0] == pytest.approx(truth["slope_sd"], rel=0.2)
    assert fit.residual_sd == pytest.approx(truth["noise_sd"], rel=0.05)
    assert fit.slopes[0] == pytest.approx(2.0, rel=0.05)
    # it is the maximum-likelihood (empirical-Bayes) estimate: same numbers as statsmodels MixedLM(reml=False)
    ml = fit_mixedlm(data["x"], data["groups"], data["y"], reml=False)
    assert fit.intercept_sd == pytest.approx(ml.intercept_sd, rel=0.03)
    assert fit.slope_sd[0] == pytest.approx(ml.slope_sd[0], rel=0.03)
    assert fit.residual_sd == pytest.approx(ml.residual_sd, rel=0.02)
    # at the optimum the prior variance is the M-step value mean(mu^2 + sigma^2) of each layer
    for layer in (net.head.intercept, net.linear_slopes):
        second_moment = float((layer.loc.square() + layer.scale.square()).mean().detach())
        assert float(layer.prior_scale.detach()) ** 2 == pytest.approx(second_moment, rel=0.05)
    # the read-outs report exactly these (standardised-unit) values
    vc = variance_components(net, sd=True)
    assert vc["head.intercept"] == pytest.approx(fit.intercept_sd / y_sd, rel=1e-5)
    assert vc["Residual"] == pytest.approx(fit.residual_sd / y_sd, rel=1e-5)
    s = summary(net)
    assert s.random_effects[0].prior_learned and s.random_effects[0].num_clusters == 100


def test_estimate_follows_the_truth_and_beats_the_posterior_mean_spread():
    # a weaker random effect (more shrinkage): the learned prior s.d. still finds it; the ARMED-style read-out
    # (spread of the posterior means) is biased low by the shrinkage, the prior s.d. is not
    truth = {"intercept_sd": 0.5, "slope_sd": 0.25, "noise_sd": 1.0}
    _, fit = _fit(truth, seed=1)
    assert fit.intercept_sd == pytest.approx(truth["intercept_sd"], rel=0.2)
    assert fit.slope_sd[0] == pytest.approx(truth["slope_sd"], rel=0.2)
    assert fit.slope_spread[0] < 0.9 * fit.slope_sd[0]
    assert abs(fit.slope_sd[0] / truth["slope_sd"] - 1) < abs(fit.slope_spread[0] / truth["slope_sd"] - 1)


def test_fixed_prior_with_regulariser_kl_weight_does_not_estimate_the_variance():
    # ARMED-style: prior s.d. fixed at 0.1 (standardised units), KL weight 1e-3, MSE on both heads. The prior is not
    # an estimate and the strong, mis-scaled prior shrinks the cluster effects far below their true spread.
    truth = {"intercept_sd": 1.0, "slope_sd": 0.5, "noise_sd": 1.0}
    _, fit = _fit(truth, seed=0, learn_prior_scale=False, task="mse", kl_weight=1e-3, lambda_fixed=1.0)
    assert fit.intercept_sd is None and fit.slope_sd is None
    assert float(fit.model.head.intercept.prior_scale) == pytest.approx(0.1)
    assert fit.intercept_spread < 0.5 * truth["intercept_sd"]
    assert fit.slope_spread[0] < 0.5 * truth["slope_sd"]
