# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""GPBoost as a benchmark baseline: gradient-boosted trees for the fixed effects + grouped random effects.

GPBoost (PyPI ``gpboost``, the ``baselines`` extra) is what a statistician who wants trees with random effects
would pick instead of this package. The trees use LightGBM's defaults (31 leaves, 20 samples per leaf, learning
rate 0.1), the same as scikit-learn's ``HistGradientBoosting*`` defaults. The covariance parameters are fitted by
GPBoost itself (Laplace approximation for binary likelihoods) during boosting.

The number of boosting rounds is chosen as GPBoost's documentation prescribes (it has no usable default): early
stopping on a validation split of the *training* rows (:func:`gpboost_rounds`; a share of every group's rows, scored
with the random effects, ``use_gp_model_for_validation=True``), then a refit on all training rows with that number.
A fixed 100 rounds is not enough: with a grouped random effect GPBoost's Gaussian gradient steps are scaled by the
inverse error variance, so the trees learn far more slowly than plain boosting and the random effects (a random
slope in particular) absorb fixed-effect signal; with many rounds and no stopping the trees overfit (error variance
estimated well below the truth). Test rows are never used.

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

from monai_medl.estimators.grouping import validation_rows

__all__ = ["GPBOOST_TREE_PARAMS", "GPBOOST_EARLY_STOPPING", "gpboost_rounds", "fit_gpboost", "predict_gpboost"]

GPBOOST_TREE_PARAMS = {"learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 20, "max_depth": -1}
"""GPBoost's (LightGBM's) tree defaults, written out so the benchmarks' configs record them."""

GPBOOST_EARLY_STOPPING = {"max_rounds": 1000, "patience": 20, "valid_fraction": 0.2}
"""How :func:`gpboost_rounds` picks the number of rounds: at most ``max_rounds``, stop after ``patience`` rounds
without improvement of the validation loss, validation = ``valid_fraction`` of every group's training rows."""


def _gpboost():
    try:
        import gpboost
    except ImportError as err:  # an optional baseline: say how to get it
        raise ImportError(
            "the gpboost baseline needs the 'gpboost' package: pip install 'monai-medl[baselines]'."
        ) from err
    return gpboost


def _gp_model(gpb, groups: np.ndarray, likelihood: str, slopes: np.ndarray | None):
    kwargs: dict[str, Any] = {}
    if slopes is not None:
        kwargs = {"group_rand_coef_data": slopes, "ind_effect_group_rand_coef": [1] * slopes.shape[1]}
    return gpb.GPModel(group_data=groups, likelihood=likelihood, num_parallel_threads=1, **kwargs)


def _params(tree_params: dict[str, Any] | None, likelihood: str, seed: int) -> dict[str, Any]:
    metric = "l2" if likelihood == "gaussian" else "binary_logloss"
    tree = GPBOOST_TREE_PARAMS if tree_params is None else tree_params
    return {**tree, "num_threads": 1, "verbose": -1, "seed": int(seed), "metric": metric}


def gpboost_rounds(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    likelihood: str,
    tree_params: dict[str, Any] | None = None,
    slopes: np.ndarray | None = None,
    seed: int = 0,
    early_stopping: dict[str, Any] | None = None,
) -> int:
    """Number of boosting rounds by early stopping on a validation split of the training rows (see module docstring).

    Arguments as :func:`fit_gpboost`; ``early_stopping`` defaults to :data:`GPBOOST_EARLY_STOPPING`.
    """
    gpb = _gpboost()
    stop = GPBOOST_EARLY_STOPPING if early_stopping is None else early_stopping
    valid = validation_rows(groups, stop["valid_fraction"], seed)
    fit = np.setdiff1d(np.arange(len(y)), valid)
    gp_model = _gp_model(gpb, groups[fit], likelihood, None if slopes is None else slopes[fit])
    gp_model.set_prediction_data(
        group_data_pred=groups[valid], group_rand_coef_data_pred=None if slopes is None else slopes[valid]
    )
    train_set = gpb.Dataset(x[fit], y[fit])
    booster = gpb.train(
        params=_params(tree_params, likelihood, seed),
        train_set=train_set,
        num_boost_round=stop["max_rounds"],
        gp_model=gp_model,
        valid_sets=[gpb.Dataset(x[valid], y[valid], reference=train_set)],
        early_stopping_rounds=stop["patience"],
        use_gp_model_for_validation=True,
        verbose_eval=False,
    )
    return max(1, int(booster.best_iteration))


def fit_gpboost(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    likelihood: str,
    num_boost_round: int | None = None,
    tree_params: dict[str, Any] | None = None,
    slopes: np.ndarray | None = None,
    seed: int = 0,
    early_stopping: dict[str, Any] | None = None,
):
    """Fit boosted trees + a grouped random intercept (and optional random slopes) with ``gpboost.train``.

    Args:
        x: fixed-effects features ``(n, p)``.
        y: outcome ``(n,)`` (0/1 for a Bernoulli likelihood).
        groups: the grouping factor ``(n,)`` (integer labels).
        likelihood: GPBoost likelihood, e.g. ``"gaussian"``, ``"bernoulli_probit"``, ``"bernoulli_logit"``.
        num_boost_round: boosting rounds; None chooses them with :func:`gpboost_rounds` on the training rows.
            Defaults to None.
        tree_params: tree parameters. Defaults to :data:`GPBOOST_TREE_PARAMS`.
        slopes: ``(n, q)`` covariates with a random slope per group (GPBoost's ``group_rand_coef_data``,
            independent of the intercept), or None.
        seed: the booster's seed and that of the validation split.
        early_stopping: settings of :func:`gpboost_rounds`. Defaults to :data:`GPBOOST_EARLY_STOPPING`.

    Returns:
        The booster fitted on all rows (``booster.current_iteration()`` is its number of rounds).

    Example::

        >>> rng = np.random.default_rng(0)
        >>> g = rng.integers(0, 5, 200)
        >>> x = rng.normal(size=(200, 2))
        >>> booster = fit_gpboost(x, x[:, 0] + g + rng.normal(size=200), g, "gaussian")  # doctest: +SKIP
    """
    gpb = _gpboost()
    x, y, groups = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(groups)
    if slopes is not None:
        slopes = np.asarray(slopes, dtype=float).reshape(len(groups), -1)
    if num_boost_round is None:
        num_boost_round = gpboost_rounds(x, y, groups, likelihood, tree_params, slopes, seed, early_stopping)
    gp_model = _gp_model(gpb, groups, likelihood, slopes)
    params = _params(tree_params, likelihood, seed)
    return gpb.train(params=params, train_set=gpb.Dataset(x, y), gp_model=gp_model, num_boost_round=num_boost_round)


def predict_gpboost(booster, x: np.ndarray, groups: np.ndarray, slopes: np.ndarray | None = None) -> np.ndarray:
    """GPBoost's response mean (probability for Bernoulli, mean for Gaussian) at ``x`` for ``groups``.

    Levels seen in training use their predicted random effects; new levels get random effect 0 (the population
    prediction, see the module docstring).
    """
    kwargs = {} if slopes is None else {"group_rand_coef_data_pred": np.asarray(slopes, float).reshape(len(x), -1)}
    pred = booster.predict(data=np.asarray(x, dtype=float), group_data_pred=np.asarray(groups), **kwargs)
    return np.asarray(pred["response_mean"], dtype=float)
