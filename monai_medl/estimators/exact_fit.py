# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The estimators' exact (RE)ML path: their grouping factors as :class:`RandomTerm`\\ s, prediction and inference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from monai_medl.estimators.grouping import pd
from monai_medl.estimators.laplace_glmm import fit_laplace_glmm
from monai_medl.estimators.profiled_deviance import ExactLmmFit, RandomTerm, fit_exact_lmm

__all__ = ["METHODS", "METHOD_LABELS", "fit_estimator_exact", "exact_linear_predictor", "fixed_effects_table"]

METHODS = ("reml", "ml", "laplace", "marginal", "elbo")
METHOD_LABELS = {
    "reml": "exact REML",
    "ml": "exact ML",
    "laplace": "Laplace approximation",
    "marginal": "exact marginal likelihood given the network",
    "elbo": "variational ELBO",
}


def _terms(
    x: np.ndarray,
    clusters: np.ndarray,
    factors: Sequence[str],
    num_levels: Mapping[str, int],
    slopes: Mapping[str, Sequence[int]],
    correlated: Mapping[str, bool],
) -> list[RandomTerm]:
    """One :class:`RandomTerm` per factor: an intercept column and the factor's slope columns in data units."""
    terms = []
    for i, factor in enumerate(factors):
        design = np.column_stack([np.ones(len(x)), x[:, list(slopes.get(factor, []))]])
        terms.append(RandomTerm(clusters[:, i], design, num_levels[factor], correlated[factor]))
    return terms


def fit_estimator_exact(
    x, y, clusters, factors, num_levels, slopes, correlated, method: str, family: str = "gaussian", device=None
) -> ExactLmmFit:
    """``method`` ``"reml"``/``"ml"`` (Gaussian, exact) or ``"laplace"`` (``family`` ``"binomial"``, 0/1 ``y``, or
    ``"poisson"``, counts) fit of ``y ~ 1 + x + random terms`` in data units (``clusters``: ``(n, factors)`` level
    indices); ``device``: where a Gaussian fit's deviance is evaluated (None: numpy/scipy, else torch float64)."""
    design = np.column_stack([np.ones(len(x)), x])
    rank = np.linalg.matrix_rank(design)
    if rank < design.shape[1]:
        raise ValueError(
            f"X with an intercept has rank {rank} < {design.shape[1]} columns: drop collinear (or constant) columns "
            "for the exact fit."
        )
    terms = _terms(x, clusters, factors, num_levels, slopes, correlated)
    if method == "laplace":
        return fit_laplace_glmm(design, y, terms, family)
    return fit_exact_lmm(design, y, terms, reml=method == "reml", device=device)


def exact_linear_predictor(fit: ExactLmmFit, x: np.ndarray, clusters, factors, slopes) -> np.ndarray:
    """``X beta`` plus, where ``clusters`` is given, every known level's conditional mode (an unseen level, ``-1``,
    contributes its factor's population value 0)."""
    out = np.column_stack([np.ones(len(x)), x]) @ fit.beta
    if clusters is None:
        return out
    for i, factor in enumerate(factors):
        design = np.column_stack([np.ones(len(x)), x[:, list(slopes.get(factor, []))]])
        level = clusters[:, i]
        known = level >= 0
        out[known] += (design[known] * fit.b[i][level[known]]).sum(1)
    return out


def fixed_effects_table(fit: ExactLmmFit, names: Sequence[str], level: float = 0.95):
    """lme4's fixed-effects table plus Wald intervals: estimate, s.e., t value (z for a binomial fit) and the
    ``level`` interval."""
    se = np.sqrt(np.diag(fit.cov_beta))
    z = stats.norm.ppf(0.5 + level / 2)
    return pd.DataFrame(
        {
            "estimate": fit.beta,
            "std_error": se,
            "t_value": fit.beta / se,
            "ci_lower": fit.beta - z * se,
            "ci_upper": fit.beta + z * se,
        },
        index=list(names),
    )
