# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Issue 7 acceptance: the learned prior s.d.s of a linear ME-MLP trained on the ELBO are variance components.

These tests exercise the network path (``MixedEffectsMLP`` + ``MixedEffectsLoss``, mean-field ``RandomEffects``);
the public estimator (``monai_medl.estimators.MixedEffectsRegressor``) is tested in
``tests/test_mixed_effects_estimators.py``.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

if importlib.util.find_spec("statsmodels") is None:
    pytest.skip("statsmodels is needed for the reference fits (pip install monai-medl[stats])", allow_module_level=True)

import statsmodels.api as sm  # noqa: E402

from monai_medl.data.synthetic.grouped_simulation import simulate_random_slope  # noqa: E402
from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss  # noqa: E402
from monai_medl.networks.nets.me_mlp import MixedEffectsMLP  # noqa: E402
from monai_medl.utils import summary, variance_components  # noqa: E402


@dataclass
class _LinearMixedFit:
    """Estimates of a linear mixed model in the original units of ``x`` and ``y``.

    ``intercept_sd``/``slope_sd`` are the variance-component estimates (None when not estimated, e.g. a fixed
    prior), ``*_spread`` the s.d. of the per-cluster posterior means (conditional modes) across clusters.
    """

    intercept: float
    slopes: list[float]
    intercept_sd: float | None
    slope_sd: list[float] | None
    residual_sd: float | None
    intercept_spread: float | None = None
    slope_spread: list[float] | None = None
    seconds: float = 0.0
    model: torch.nn.Module | None = field(default=None, repr=False)


def _fit_linear_mixed_elbo(
    x: np.ndarray,
    groups: np.ndarray,
    y: np.ndarray,
    num_clusters: int | None = None,
    random_slopes: bool = True,
    steps: int = 800,
    lr: float = 0.1,
    seed: int = 0,
    learn_prior_scale: bool = True,
    prior_scale: float = 0.1,
    task: str = "gaussian_nll",
    kl_weight: float | str = "elbo",
    lambda_fixed: float = 0.0,
) -> _LinearMixedFit:
    """Fit ``y ~ x + (1 | g) + (0 + x | g)`` (uncorrelated) as a linear ME-MLP and return original-unit estimates.

    ``y`` is standardised and every column of ``x`` scaled by its s.d. (and centred too when there are no random
    slopes; centring ``x`` would change what the random intercept means when there are). The model is trained
    full-batch with Adam (cosine-annealed learning rate): with the defaults, on the evidence lower bound
    (Gaussian NLL of the mixed head with a learned noise s.d. + KL / N, ``lambda_fixed=0`` so the noise s.d. sees
    only the mixed head). The estimates are mapped back to the original units (the maximum-likelihood-type
    estimates are equivariant under these affine maps).

    Args:
        x: covariates, ``(n, p)``.
        groups: cluster index per row, ``(n,)``, in ``[0, num_clusters)``.
        y: outcome, ``(n,)``.
        num_clusters: number of clusters. Defaults to ``groups.max() + 1``.
        random_slopes: random slopes on ``x`` (one shared prior s.d. for all columns). Defaults to True.
        steps: full-batch Adam steps. Defaults to 800.
        lr: initial Adam learning rate. Defaults to 0.1.
        seed: torch seed (initialisation and random-effect sampling). Defaults to 0.
        learn_prior_scale: learn the prior s.d.s. Defaults to True.
        prior_scale: initial (or fixed) prior s.d., in standardised units. Defaults to 0.1.
        task: ``"gaussian_nll"`` or ``"mse"``. Defaults to ``"gaussian_nll"``.
        kl_weight: ``"elbo"`` or a float. Defaults to ``"elbo"``.
        lambda_fixed: weight of the fixed-effects head's loss. Defaults to 0.0.
    """
    x = np.asarray(x, dtype=float).reshape(len(y), -1)
    y = np.asarray(y, dtype=float)
    num_clusters = int(groups.max()) + 1 if num_clusters is None else num_clusters
    x_center = np.zeros(x.shape[1]) if random_slopes else x.mean(0)
    x_scale, y_center, y_scale = x.std(0), y.mean(), y.std()
    inputs = torch.tensor((x - x_center) / x_scale, dtype=torch.float32)
    target = torch.tensor((y - y_center) / y_scale, dtype=torch.float32)[:, None]
    z = torch.eye(num_clusters)[torch.as_tensor(groups, dtype=torch.long)]
    torch.manual_seed(seed)
    net = MixedEffectsMLP(
        in_features=x.shape[1],
        out_channels=1,
        num_clusters=num_clusters,
        hidden=(),
        nonlinear_slopes=False,
        linear_slopes=random_slopes,
        slope_prior_scale=prior_scale,
        intercept_prior_scale=prior_scale,
        learn_prior_scale=learn_prior_scale,
        learn_noise_scale=task == "gaussian_nll",
    )
    loss_fn = MixedEffectsLoss(task=task, lambda_fixed=lambda_fixed, kl_weight=kl_weight, num_train_samples=len(y))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(net(inputs, z), target).backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    net.eval()
    w = net.head.linear.weight.detach().numpy()[0] * y_scale / x_scale
    intercept = y_center + y_scale * float(net.head.linear.bias.detach()) - float(w @ x_center)
    re_int, re_slope = net.head.intercept, net.linear_slopes
    noise = net.head.log_noise_scale
    return _LinearMixedFit(
        intercept=intercept,
        slopes=w.tolist(),
        intercept_sd=float(re_int.prior_scale.detach()) * y_scale if learn_prior_scale else None,
        slope_sd=(float(re_slope.prior_scale.detach()) * y_scale / x_scale).tolist()
        if (learn_prior_scale and re_slope is not None)
        else None,
        residual_sd=float(noise.detach().exp()) * y_scale if noise is not None else None,
        intercept_spread=float(re_int.loc.detach().std(unbiased=False)) * y_scale,
        slope_spread=(re_slope.loc.detach().std(0, unbiased=False).numpy() * y_scale / x_scale).tolist()
        if re_slope is not None
        else None,
        seconds=seconds,
        model=net,
    )


def _mixedlm_ml_sds(x, groups, y) -> tuple[float, float, float]:
    """statsmodels ``MixedLM(reml=False)`` with uncorrelated random intercept and slope: (intercept s.d., slope s.d.,
    residual s.d.)."""
    exog = np.column_stack([np.ones(len(y)), x])
    free = sm.regression.mixed_linear_model.MixedLMParams.from_components(np.ones(2), np.eye(2))
    result = sm.MixedLM(y, exog, groups=groups, exog_re=exog).fit(reml=False, free=free, method=["powell", "lbfgs"])
    sds = np.sqrt(np.diag(np.asarray(result.cov_re)))
    return float(sds[0]), float(sds[1]), float(np.sqrt(result.scale))


def _fit(truth: dict, seed: int, **kwargs):
    data = simulate_random_slope(seed, num_clusters=100, obs=(20, 50), **truth)
    return data, _fit_linear_mixed_elbo(data["x"], data["groups"], data["y"], seed=seed, **kwargs)


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
    ml_intercept_sd, ml_slope_sd, ml_residual_sd = _mixedlm_ml_sds(data["x"][:, 0], data["groups"], data["y"])
    assert fit.intercept_sd == pytest.approx(ml_intercept_sd, rel=0.03)
    assert fit.slope_sd[0] == pytest.approx(ml_slope_sd, rel=0.03)
    assert fit.residual_sd == pytest.approx(ml_residual_sd, rel=0.02)
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
