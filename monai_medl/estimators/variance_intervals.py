# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Confidence intervals for the parameters of an exact fit: profile likelihood and parametric bootstrap.

The parameters are lme4's ``confint`` ones: per grouping factor the random effects' standard deviations and
correlations (in the order of the relative covariance factor ``theta``: column-major lower triangle, a diagonal
entry giving an s.d. and an off-diagonal one a correlation), then the residual s.d. ``sigma`` (Gaussian fits), then
the fixed effects.

- **Profile** (Gaussian fits, lme4's ``confint(method = "profile")``): for each parameter, the ML deviance
  minimised over all the others at fixed values of it; the interval is where that profile lies within
  ``chi2_1(level)`` of the minimum. As lme4's ``profile`` (which calls ``refitML``), a REML fit is profiled on the ML
  deviance. Each limit is a root of the profile found by Brent's method (lme4 interpolates a spline through a grid
  of profile points: the two agree to the accuracy of that spline). An s.d. whose profile stays below the cut-off
  at zero gets the lower limit 0, a correlation the limit -1 or 1.
- **Parametric bootstrap** (every family, lme4's ``confint(method = "boot")`` with ``boot.type = "perc"``): refits
  on responses simulated from the fitted model; percentile intervals.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import optimize, stats

from monai_medl.estimators.grouping import pd
from monai_medl.estimators.laplace_glmm import FAMILIES, fit_laplace_glmm
from monai_medl.estimators.profiled_deviance import ExactLmmFit, ProfiledDeviance, fit_exact_lmm

__all__ = ["sdcor_parameters", "profile_intervals", "bootstrap_intervals", "interval_table"]

_EDGE = 1 - 1e-7  # the largest |correlation| profiled (a correlation of +-1 makes the relative factor singular)


def _structure(fit: ExactLmmFit) -> ProfiledDeviance:
    """The Gaussian deviance of a fit, or the layout (``x``, ``y``, terms) of a Laplace one."""
    if fit.model is not None:
        return fit.model
    if fit.laplace is None:
        raise ValueError("the fit keeps neither its data nor its deviance: refit it to compute intervals.")
    return fit.laplace.structure


def sdcor_parameters(fit: ExactLmmFit) -> tuple[np.ndarray, np.ndarray]:
    """``(values, kinds)``: the s.d.s and correlations of every term in ``theta``'s order, then ``sigma`` for a
    Gaussian fit; ``kinds`` is ``"sd"``, ``"cor"`` or ``"sigma"`` per entry."""
    model, values, kinds = _structure(fit), [], []
    for i, term in enumerate(model.terms):
        cov = fit.covariances[i]
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        rows, cols = term.template()
        for r, c in zip(rows, cols):
            if r == c:
                values.append(sd[r])
                kinds.append("sd")
            else:
                values.append(cov[r, c] / (sd[r] * sd[c]) if sd[r] * sd[c] > 0 else 0.0)
                kinds.append("cor")
    if fit.family == "gaussian":
        values.append(fit.sigma)
        kinds.append("sigma")
    return np.asarray(values, float), np.asarray(kinds)


def _theta(model: ProfiledDeviance, psi: np.ndarray) -> np.ndarray:
    """``theta`` of the s.d./correlation vector ``psi`` (its last entry ``sigma``): ``T = diag(sd) chol(R) / sigma``
    (raises ``LinAlgError`` for a correlation matrix that is not positive definite)."""
    sigma, theta = psi[-1], np.zeros(len(model.lower))
    for i, (term, (rows, cols)) in enumerate(zip(model.terms, model.templates)):
        part = psi[model.theta_slices[i]]
        diagonal = rows == cols
        sd = np.zeros(term.k)
        sd[rows[diagonal]] = part[diagonal]
        corr = np.eye(term.k)
        corr[rows[~diagonal], cols[~diagonal]] = part[~diagonal]
        factor = np.diag(sd) @ np.linalg.cholesky(np.tril(corr) + np.tril(corr, -1).T) / sigma
        theta[model.theta_slices[i]] = factor[rows, cols]
    return theta


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")


def _ml_deviance(model: ProfiledDeviance, psi: np.ndarray) -> float:
    """ML deviance at ``psi`` (``beta`` profiled out): ``log|A| + n log(2 pi sigma^2) + r^2 / sigma^2``."""
    try:
        parts = model.solve(_theta(model, psi))
    except (np.linalg.LinAlgError, ValueError):
        return np.inf
    sigma2 = psi[-1] ** 2
    return float(parts["logdet_a"] + model.n * np.log(2 * np.pi * sigma2) + parts["r2"] / sigma2)


class _Profile:
    """The ML deviance of one parameter minimised over the others (warm-started from the nearest solved point)."""

    def __init__(self, model: ProfiledDeviance, psi: np.ndarray, kinds: np.ndarray) -> None:
        self.model, self.psi, self.kinds = model, psi, kinds
        self.scale = np.where(np.abs(psi) > 1e-8, np.abs(psi), np.where(kinds == "cor", 1.0, psi[-1]))
        self.bounds = [(-1.0, 1.0) if k == "cor" else (0.0, None) for k in kinds]
        self.solved: dict[int, list[tuple[float, np.ndarray]]] = {}

    def __call__(self, index: int, value: float) -> float:
        free = np.delete(np.arange(len(self.psi)), index)
        history = self.solved.setdefault(index, [(self.psi[index], self.psi[free])])
        start = min(history, key=lambda h: abs(h[0] - value))[1]
        scale = self.scale[free]

        def objective(z: np.ndarray) -> float:
            psi = self.psi.copy()
            psi[index], psi[free] = value, z * scale
            return _ml_deviance(self.model, psi) if psi[-1] > 0 else np.inf

        bounds = [
            (lo if lo is None else lo / s, hi if hi is None else hi / s)
            for (lo, hi), s in zip([self.bounds[j] for j in free], scale)
        ]
        options = {"xatol": 1e-9, "fatol": 1e-11, "maxfev": 4000 * len(free), "adaptive": len(free) > 4}
        best = optimize.minimize(objective, start / scale, method="Nelder-Mead", bounds=bounds, options=options)
        history.append((value, best.x * scale))
        return float(best.fun)


def _limit(excess: Callable[[float], float], estimate: float, far: float, step: float) -> float:
    """The root of ``excess`` (negative at ``estimate``) on the way from ``estimate`` towards ``far`` (``far`` itself
    where ``excess`` is still negative there). The profile is walked outwards in doubling steps from ``step`` (so each
    inner fit starts next to a solved one), then the last interval is bisected by Brent's method."""
    direction, near, distance = np.sign(far - estimate), estimate, step
    for _ in range(60):
        point = estimate + direction * distance
        if direction * (point - far) >= 0:
            point = far
        if excess(point) >= 0:
            return optimize.brentq(excess, near, point, xtol=1e-12, rtol=1e-8)
        if point == far:
            return far
        near, distance = point, 2 * distance
    return far


def _fixed_profile(model: ProfiledDeviance, index: int, value: float, theta: np.ndarray) -> float:
    """ML deviance with fixed effect ``index`` held at ``value`` (an offset), everything else refitted (from the
    ML fit's ``theta``)."""
    x = np.delete(model.x, index, axis=1)
    return fit_exact_lmm(
        x, model.y - value * model.x[:, index], model.terms, reml=False, start=theta, device=model.device
    ).deviance


def _variance_limits(excess: Callable[[float], float], estimate: float, kind: str, sigma: float) -> tuple:
    """Both limits of an s.d. (lower limit 0 at the latest), a correlation (within [-1, 1]) or ``sigma`` (searched
    on the log scale towards 0) from its profile's ``excess`` over the cut-off."""
    if kind == "cor":
        step = 0.1 * (1 - abs(estimate))
        low, high = _limit(excess, estimate, -_EDGE, step), _limit(excess, estimate, _EDGE, step)
        return (-1.0 if low == -_EDGE else low), (1.0 if high == _EDGE else high)
    step = 0.25 * (estimate if estimate > 0 else sigma)
    if kind == "sigma":
        low = float(np.exp(_limit(lambda t: excess(np.exp(t)), np.log(estimate), -np.inf, 0.25)))
    else:
        low = _limit(excess, estimate, 0.0, step)
    return low, _limit(excess, estimate, np.inf, step)


def profile_intervals(fit: ExactLmmFit, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimates, lower, upper)`` of :func:`sdcor_parameters` then the fixed effects, at the ML fit, from the
    profiled ML deviance (Gaussian fits; lme4's ``confint(profile(refitML(fit)))``)."""
    _check_level(level)
    if fit.model is None:
        raise ValueError(f"profile intervals need a Gaussian fit, not {fit.family}: use method='bootstrap'.")
    model = fit.model
    ml = fit if not fit.reml else fit_exact_lmm(model.x, model.y, model.terms, reml=False, device=model.device)
    psi, kinds = sdcor_parameters(ml)
    cutoff = stats.chi2.ppf(level, 1)
    profile = _Profile(ProfiledDeviance(model.x, model.y, model.terms, reml=False, device=model.device), psi, kinds)
    lower, upper = [], []
    for j, kind in enumerate(kinds):

        def excess_variance(v: float, j: int = j) -> float:
            return profile(j, v) - ml.deviance - cutoff

        low, high = _variance_limits(excess_variance, psi[j], kind, psi[-1])
        lower.append(low)
        upper.append(high)
    se = np.sqrt(np.diag(ml.cov_beta))
    for j, (beta, s) in enumerate(zip(ml.beta, se)):

        def excess(v: float, j: int = j) -> float:
            return _fixed_profile(model, j, v, ml.theta) - ml.deviance - cutoff

        lower.append(_limit(excess, beta, -np.inf, s))
        upper.append(_limit(excess, beta, np.inf, s))
    return np.concatenate([psi, ml.beta]), np.asarray(lower), np.asarray(upper)


def _simulate(fit: ExactLmmFit, rng: np.random.Generator) -> np.ndarray:
    """One response drawn from the fitted model: ``eta = X beta + Z Lambda v`` (``v ~ N(0, sigma^2 I)``) and the
    family's noise (Gaussian ``sigma``, Bernoulli, Poisson)."""
    model = _structure(fit)
    lam = model.lam(fit.theta)
    eta = model.x @ fit.beta + fit.sigma * np.asarray(model.z @ (lam @ rng.standard_normal(model.q))).reshape(-1)
    if fit.family == "gaussian":
        return eta + fit.sigma * rng.standard_normal(len(eta))
    mean = FAMILIES[fit.family].mean(eta)
    return (rng.random(len(eta)) < mean).astype(float) if fit.family == "binomial" else rng.poisson(mean).astype(float)


def bootstrap_intervals(
    fit: ExactLmmFit, nsim: int = 200, level: float = 0.95, random_state: int | None = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimates, lower, upper)`` as :func:`profile_intervals`, by percentile parametric bootstrap: ``nsim``
    refits (REML, ML or Laplace as the fit) on responses simulated from the fit (every family)."""
    _check_level(level)
    if nsim < 2:
        raise ValueError(f"nsim must be at least 2 bootstrap refits, got {nsim}.")
    model, rng = _structure(fit), np.random.default_rng(random_state)
    draws = []
    for _ in range(nsim):
        y = _simulate(fit, rng)
        if fit.family == "gaussian":
            refit = fit_exact_lmm(model.x, y, model.terms, reml=fit.reml, device=model.device)
        else:
            refit = fit_laplace_glmm(model.x, y, model.terms, fit.family)
        draws.append(np.concatenate([sdcor_parameters(refit)[0], refit.beta]))
    tail = 100 * (1 - level) / 2
    lower, upper = np.percentile(np.asarray(draws), [tail, 100 - tail], axis=0)
    return np.concatenate([sdcor_parameters(fit)[0], fit.beta]), lower, upper


def interval_table(
    fit: ExactLmmFit,
    factors: list[tuple[str, list[str]]],
    fixed_names: list[str],
    method: str = "profile",
    level: float = 0.95,
    nsim: int = 200,
    random_state: int | None = 0,
):
    """lme4's ``confint(fit, oldNames = FALSE)`` as a DataFrame: rows ``sd_<term>|<group>``,
    ``cor_<term>.<term>|<group>``, ``sigma`` and the fixed effects; columns ``estimate`` and the two limits
    (``"2.5 %"``, ``"97.5 %"`` at ``level`` 0.95). ``factors``: per term of the fit, its group label and term names."""
    if method == "profile":
        estimate, lower, upper = profile_intervals(fit, level)
    elif method == "bootstrap":
        estimate, lower, upper = bootstrap_intervals(fit, nsim, level, random_state)
    else:
        raise ValueError(f"method must be 'profile' or 'bootstrap', got {method!r}.")
    names = []
    for term, (group, terms) in zip(_structure(fit).terms, factors):
        for r, c in zip(*term.template()):
            names.append(f"sd_{terms[r]}|{group}" if r == c else f"cor_{terms[r]}.{terms[c]}|{group}")
    names += ["sigma"] * (fit.family == "gaussian") + list(fixed_names)
    tail = 100 * (1 - level) / 2
    return pd.DataFrame({"estimate": estimate, f"{tail:g} %": lower, f"{100 - tail:g} %": upper}, index=names)
