# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Likelihood-ratio test between nested exact mixed-model fits, laid out like lme4's ``anova(fit0, fit1)``."""

from __future__ import annotations

from scipy import stats

from monai_medl.estimators.grouping import pd

__all__ = ["anova"]


def anova(*fits, names=None):
    """lme4-style comparison of nested exact fits: Df, AIC, BIC, logLik, deviance, Chisq, Chi Df, Pr(>Chisq).

    Fits are ordered by their number of parameters; each row's chi-square statistic is twice the log-likelihood
    gain over the previous row, referred to a chi-square with the difference in parameters as degrees of freedom
    (conservative for variance components on the boundary, as in lme4). Every fit must be an exact ML fit
    (``method="ml"``), or all REML fits with the same fixed-effects terms (REML likelihoods of different fixed
    effects are not comparable; lme4 refits them with ML, here refit with ``method="ml"``).

    Args:
        fits: two or more fitted :class:`~monai_medl.estimators.MixedEffectsRegressor` with an exact fit, same data.
        names: row labels (default ``model0``, ``model1``, ... in the order given).

    Returns:
        A ``pandas.DataFrame``, one row per fit.

    Example::

        >>> import numpy as np
        >>> from monai_medl.estimators import MixedEffectsRegressor
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(20), 6)
        >>> x = rng.normal(size=(120, 1))
        >>> y = 1 + 0.5 * x[:, 0] + rng.normal(0, 1, 20)[g] + rng.normal(0, 1, 120)
        >>> small = MixedEffectsRegressor(method="ml").fit(x, y, groups=g)
        >>> big = MixedEffectsRegressor(method="ml", random_slopes=[0]).fit(x, y, groups=g)
        >>> table = anova(small, big, names=["intercept", "slope"])
        >>> list(table.columns)[-3:]
        ['Chisq', 'Chi Df', 'Pr(>Chisq)']
    """
    if len(fits) < 2:
        raise ValueError(f"anova needs two or more fits, got {len(fits)}.")
    names = list(names) if names is not None else [f"model{i}" for i in range(len(fits))]
    if len(names) != len(fits):
        raise ValueError(f"names has {len(names)} entries for {len(fits)} fits.")
    exact = [f._exact_fit("anova") for f in fits]
    if len({f.n_obs_ for f in fits}) > 1:
        raise ValueError(f"the fits have different numbers of rows {[f.n_obs_ for f in fits]}: fit the same data.")
    reml = {e.reml for e in exact}
    if reml == {True, False}:
        raise ValueError("anova: some fits are REML and some ML; fit all with method='ml'.")
    if reml == {True} and len({tuple(f.feature_names_in_) for f in fits}) > 1:
        raise ValueError("anova: REML fits with different fixed effects are not comparable; fit with method='ml'.")
    order = sorted(range(len(fits)), key=lambda i: fits[i].n_params_)
    rows, previous = [], None
    for i in order:
        fit = fits[i]
        row = {
            "Df": fit.n_params_,
            "AIC": fit.aic_,
            "BIC": fit.bic_,
            "logLik": fit.loglik_,
            "deviance": fit.deviance_,
            "Chisq": None,
            "Chi Df": None,
            "Pr(>Chisq)": None,
        }
        if previous is not None:
            chisq = max(previous.deviance_ - fit.deviance_, 0.0)
            df = fit.n_params_ - previous.n_params_
            row.update({"Chisq": chisq, "Chi Df": df, "Pr(>Chisq)": float(stats.chi2.sf(chisq, df)) if df else None})
        rows.append(row)
        previous = fit
    return pd.DataFrame(rows, index=[names[i] for i in order])
