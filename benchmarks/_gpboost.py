# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""GPBoost as a benchmark baseline: gradient-boosted trees for the fixed effects + grouped random effects.

GPBoost (PyPI ``gpboost``, the ``baselines`` extra) is what a statistician who wants trees with random effects
would pick instead of this package. The trees use LightGBM's defaults (31 leaves, 20 samples per leaf, learning
rate 0.1), the same as scikit-learn's ``HistGradientBoosting*`` defaults, so against such a baseline on the same
features GPBoost differs only by its random effects. The covariance parameters are fitted by GPBoost itself
(Laplace approximation for binary likelihoods) during boosting.

Prediction: a level seen in training gets its predicted random effect (the posterior mean); a level GPBoost has
not seen gets random effect 0 (checked: ``predict(..., pred_latent=True)`` returns ``random_effect_mean == 0``
for a new level). The response mean of a new level is the fixed part's mean for a Gaussian likelihood and
``Phi(F / sqrt(1 + sigma^2))`` for ``bernoulli_probit`` (the random effect integrated out), a strictly
increasing function of the fixed part ``F`` that is 0.5 where ``F = 0``: accuracy at 0.5 and AUROC are those of
the fixed part alone, i.e. the population prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GPBOOST_TREE_PARAMS", "fit_gpboost", "predict_gpboost"]

GPBOOST_TREE_PARAMS = {"learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 20, "max_depth": -1}
"""GPBoost's (LightGBM's) tree defaults, written out so the benchmarks' configs record them."""


def _gpboost():
    try:
        import gpboost
    except ImportError as err:  # an optional baseline: say how to get it
        raise ImportError(
            "the gpboost baseline needs the 'gpboost' package: pip install 'monai-medl[baselines]'."
        ) from err
    return gpboost


def fit_gpboost(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    likelihood: str,
    num_boost_round: int = 100,
    tree_params: dict[str, Any] | None = None,
    slopes: np.ndarray | None = None,
    seed: int = 0,
):
    """Fit boosted trees + a grouped random intercept (and optional random slopes) with ``gpboost.train``.

    Args:
        x: fixed-effects features ``(n, p)``.
        y: outcome ``(n,)`` (0/1 for a Bernoulli likelihood).
        groups: the grouping factor ``(n,)`` (any hashable labels GPBoost accepts: integers here).
        likelihood: GPBoost likelihood, e.g. ``"gaussian"``, ``"bernoulli_probit"``, ``"bernoulli_logit"``.
        num_boost_round: boosting iterations. Defaults to 100.
        tree_params: tree parameters. Defaults to :data:`GPBOOST_TREE_PARAMS`.
        slopes: ``(n, q)`` covariates with a random slope per group (GPBoost's ``group_rand_coef_data``), or None.
        seed: the booster's seed.

    Returns:
        The fitted booster (its ``gp_model`` holds the random effects).

    Example::

        >>> rng = np.random.default_rng(0)
        >>> g = rng.integers(0, 5, 200)
        >>> x = rng.normal(size=(200, 2))
        >>> booster = fit_gpboost(x, x[:, 0] + g + rng.normal(size=200), g, "gaussian")  # doctest: +SKIP
    """
    gpb = _gpboost()
    groups = np.asarray(groups)
    kwargs: dict[str, Any] = {}
    if slopes is not None:
        slopes = np.asarray(slopes, dtype=float).reshape(len(groups), -1)
        kwargs = {"group_rand_coef_data": slopes, "ind_effect_group_rand_coef": [1] * slopes.shape[1]}
    gp_model = gpb.GPModel(group_data=groups, likelihood=likelihood, num_parallel_threads=1, **kwargs)
    params = {**(GPBOOST_TREE_PARAMS if tree_params is None else tree_params), "num_threads": 1, "verbose": -1}
    params["seed"] = int(seed)
    data = gpb.Dataset(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return gpb.train(params=params, train_set=data, gp_model=gp_model, num_boost_round=num_boost_round)


def predict_gpboost(booster, x: np.ndarray, groups: np.ndarray, slopes: np.ndarray | None = None) -> np.ndarray:
    """GPBoost's response mean (probability for Bernoulli, mean for Gaussian) at ``x`` for ``groups``.

    Levels seen in training use their predicted random effects; new levels get random effect 0 (the population
    prediction, see the module docstring).
    """
    kwargs = {} if slopes is None else {"group_rand_coef_data_pred": np.asarray(slopes, float).reshape(len(x), -1)}
    pred = booster.predict(data=np.asarray(x, dtype=float), group_data_pred=np.asarray(groups), **kwargs)
    return np.asarray(pred["response_mean"], dtype=float)
