# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Laplace approximation of a generalised linear mixed model (binomial logit, Poisson log), glmer's default.

With ``b = Lambda_theta u``, ``u ~ N(0, I)``, penalised iteratively reweighted least squares (Newton steps on
``u``) finds the conditional mode ``u_hat`` of ``log p(y | u) - ||u||^2 / 2`` at given ``(theta, beta)``; the Laplace
deviance ``-2 log p(y | u_hat) + ||u_hat||^2 + log|Lambda^T Z^T W Z Lambda + I|`` (``W`` the family's variance at the
mode, the canonical link's IRLS weights) is then minimised over ``theta`` and ``beta`` jointly (``nAGQ = 1``; Bates et
al. 2015 describe the same objective for glmer). Standard errors of ``beta`` come from the finite-difference Hessian
of that deviance, as lme4's default. ``A`` is factorised densely for few random-effect columns and by a sparse LU
otherwise (:func:`~monai_medl.estimators.profiled_deviance.symmetric_solver`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse, special

from monai_medl.estimators.profiled_deviance import (
    ExactLmmFit,
    ProfiledDeviance,
    RandomTerm,
    per_term_effects,
    symmetric_solver,
)

__all__ = ["GlmFamily", "FAMILIES", "LaplaceGlmm", "fit_laplace_glmm"]


@dataclass(frozen=True)
class GlmFamily:
    """A canonical-link exponential family: what PIRLS and the Laplace deviance need of it.

    Attributes:
        name: ``"binomial"`` or ``"poisson"``.
        mean: inverse link, ``mu(eta)``.
        link: ``eta(mu)``.
        variance: ``V(mu)``, also ``d mu / d eta`` under the canonical link (the IRLS weight).
        log_density: ``log p(y | eta)`` per row, with every constant (so the log-likelihood is lme4's).
        start: R's ``mustart``, the mean the GLM iterations start from.
    """

    name: str
    mean: Callable[[np.ndarray], np.ndarray]
    link: Callable[[np.ndarray], np.ndarray]
    variance: Callable[[np.ndarray], np.ndarray]
    log_density: Callable[[np.ndarray, np.ndarray], np.ndarray]
    start: Callable[[np.ndarray], np.ndarray]


FAMILIES = {
    "binomial": GlmFamily(
        "binomial",
        special.expit,
        special.logit,
        lambda mu: mu * (1 - mu),
        lambda y, eta: y * eta - np.logaddexp(0, eta),  # 0/1 rows: the binomial coefficient is 1
        lambda y: (y + 0.5) / 2,
    ),
    "poisson": GlmFamily(
        "poisson",
        np.exp,
        np.log,
        lambda mu: mu,
        lambda y, eta: y * eta - np.exp(eta) - special.gammaln(y + 1),
        lambda y: y + 0.1,
    ),
}


class LaplaceGlmm:
    """Laplace deviance of a GLMM as a function of ``(theta, beta)``.

    Args:
        x: ``(n, p)`` fixed-effects design (with the intercept column).
        y: ``(n,)`` response (0/1 for ``"binomial"``, counts for ``"poisson"``).
        terms: the grouping factors (:class:`~monai_medl.estimators.profiled_deviance.RandomTerm`).
        family: a key of :data:`FAMILIES`.

    Example::

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(8), 10)
        >>> y = rng.poisson(np.exp(1 + rng.normal(0, 0.5, 8)[g])).astype(float)
        >>> model = LaplaceGlmm(np.ones((80, 1)), y, [RandomTerm(g, np.ones((80, 1)), 8)], "poisson")
        >>> bool(np.isfinite(model(np.array([0.5, 1.0]))))
        True
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, terms: Sequence[RandomTerm], family: str = "binomial") -> None:
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}.")
        self.structure = ProfiledDeviance(x, y, terms, reml=False)  # Lambda_theta's layout and bounds
        self.family = FAMILIES[family]
        self.x, self.y = np.asarray(x, float), np.asarray(y, float)
        self.u = np.zeros(self.structure.q)  # warm start of PIRLS between evaluations
        self.num_theta = len(self.structure.lower)

    def _hessian(self, zl, mu: np.ndarray):
        """``Lambda^T Z^T W Z Lambda + I``, dense or sparse as ``Z Lambda``."""
        w = self.family.variance(mu)
        if sparse.issparse(zl):
            return (zl.T @ sparse.diags(w) @ zl + sparse.identity(zl.shape[1])).tocsc()
        return zl.T @ (zl * w[:, None]) + np.eye(zl.shape[1])

    def mode(self, theta: np.ndarray, beta: np.ndarray, max_iter: int = 50) -> dict:
        """PIRLS: the conditional mode ``u_hat`` and the Laplace deviance there."""
        zl = self.structure.z @ self.structure.lam(theta)
        offset = self.x @ beta
        u = self.u.copy()

        def objective(u):  # -2 (log-likelihood - ||u||^2 / 2)
            with np.errstate(over="ignore"):  # a trial Newton step may overflow exp: it is then halved
                return -2 * self.family.log_density(self.y, offset + zl @ u).sum() + u @ u

        current = objective(u)
        for _ in range(max_iter):
            mu = self.family.mean(offset + zl @ u)
            solve, _ = symmetric_solver(self._hessian(zl, mu))
            step = solve(zl.T @ (self.y - mu) - u)
            for _ in range(30):  # step halving keeps every Newton step an ascent
                trial = objective(u + step)
                if trial <= current + 1e-12:
                    break
                step = step / 2
            u, change, current = u + step, current - trial, trial
            if abs(change) < 1e-10:
                break
        _, logdet = symmetric_solver(self._hessian(zl, self.family.mean(offset + zl @ u)))
        self.u = u
        return {"u": u, "deviance": current + logdet}

    def __call__(self, params: np.ndarray) -> float:
        theta, beta = params[: self.num_theta], params[self.num_theta :]
        try:
            value = float(self.mode(theta, beta)["deviance"])
        except (np.linalg.LinAlgError, ValueError, RuntimeError):
            return np.inf
        return value if np.isfinite(value) else np.inf


def _glm_start(x: np.ndarray, y: np.ndarray, family: GlmFamily, iterations: int = 25) -> np.ndarray:
    """Fixed effects of the GLM without random effects (IRLS from R's ``mustart``), the start of ``beta``."""
    eta, beta = family.link(family.start(y)), np.zeros(x.shape[1])
    for _ in range(iterations):
        mu = family.mean(eta)
        w = np.sqrt(family.variance(mu))
        beta = np.linalg.lstsq(x * w[:, None], w * eta + (y - mu) / w, rcond=None)[0]
        eta = x @ beta
    return beta


def _hessian(f, point: np.ndarray, step: float = 1e-4) -> np.ndarray:
    """Central finite-difference Hessian of ``f`` at ``point``."""
    k = len(point)
    h = np.zeros((k, k))
    for i in range(k):
        for j in range(i, k):
            ei, ej = np.eye(k)[i] * step, np.eye(k)[j] * step
            value = (f(point + ei + ej) - f(point + ei - ej) - f(point - ei + ej) + f(point - ei - ej)) / (4 * step**2)
            h[i, j] = h[j, i] = value
    return h


def fit_laplace_glmm(
    x: np.ndarray, y: np.ndarray, terms: Sequence[RandomTerm], family: str = "binomial", tol: float = 1e-10
) -> ExactLmmFit:
    """Minimise the Laplace deviance over ``(theta, beta)`` (bounded Nelder-Mead, restarted once) and return the fit
    in :class:`~monai_medl.estimators.profiled_deviance.ExactLmmFit`'s layout (``sigma = 1``: no residual)."""
    model = LaplaceGlmm(x, y, terms, family)
    lower = model.structure.lower
    start = np.concatenate([model.structure.theta0(), _glm_start(model.x, model.y, model.family)])
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower] + [(None, None)] * x.shape[1]
    options = {"xatol": 1e-8, "fatol": tol, "maxfev": 2000 * len(start), "adaptive": len(start) > 4}
    first = optimize.minimize(model, start, method="Nelder-Mead", bounds=bounds, options=options)
    best = optimize.minimize(model, first.x, method="Nelder-Mead", bounds=bounds, options=options)
    best = best if best.fun <= first.fun else first
    k = model.num_theta
    theta, beta = np.where(np.isfinite(lower), np.maximum(best.x[:k], 0.0), best.x[:k]), best.x[k:]
    mode = model.mode(theta, beta)
    # lme4's default s.e.: the inverse of half the deviance's Hessian over (theta, beta), its beta block
    hessian = _hessian(model, np.concatenate([theta, beta]))
    b, covs = per_term_effects(model.structure, theta, mode["u"])
    return ExactLmmFit(
        reml=False,
        theta=theta,
        beta=beta,
        cov_beta=np.linalg.inv(hessian / 2)[k:, k:],
        sigma=1.0,
        covariances=covs,
        b=b,
        deviance=float(mode["deviance"]),
        n=len(y),
        p=x.shape[1],
        num_theta=k,
        nfev=int(first.nfev + best.nfev),
        converged=bool(first.fun - best.fun < 1e-6),
        model=None,
        family=family,
        laplace=model,
    )
