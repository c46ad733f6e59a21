# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Laplace approximation of a binomial (logit) generalised linear mixed model, glmer's default (``nAGQ = 1``).

With ``b = Lambda_theta u``, ``u ~ N(0, I)``, penalised iteratively reweighted least squares (Newton steps on
``u``) finds the conditional mode ``u_hat`` of ``log p(y | u) - ||u||^2 / 2`` at given ``(theta, beta)``; the Laplace
deviance ``-2 log p(y | u_hat) + ||u_hat||^2 + log|Lambda^T Z^T W Z Lambda + I|`` (``W`` the binomial weights at the
mode) is then minimised over ``theta`` and ``beta`` jointly (Bates et al. 2015 describe the same objective for
glmer). Standard errors of ``beta`` come from the finite-difference Hessian of that deviance, as lme4's default.
Dense factorisation: meant for the small-to-moderate numbers of levels of a tabular GLMM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import linalg, optimize, special

from monai_medl.estimators.profiled_deviance import ExactLmmFit, ProfiledDeviance, RandomTerm

__all__ = ["LaplaceBinomial", "fit_laplace_binomial"]


class LaplaceBinomial:
    """Laplace deviance of a logit GLMM for 0/1 responses, as a function of ``(theta, beta)``.

    Args:
        x: ``(n, p)`` fixed-effects design (with the intercept column).
        y: ``(n,)`` 0/1 response.
        terms: the grouping factors (:class:`~monai_medl.estimators.profiled_deviance.RandomTerm`).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, terms: Sequence[RandomTerm]) -> None:
        self.structure = ProfiledDeviance(x, y, terms, reml=False)  # Lambda_theta's layout and bounds
        self.x, self.y = np.asarray(x, float), np.asarray(y, float)
        self.z = self.structure.z.toarray()
        self.u = np.zeros(self.structure.q)  # warm start of PIRLS between evaluations
        self.num_theta = len(self.structure.lower)

    def mode(self, theta: np.ndarray, beta: np.ndarray, max_iter: int = 50) -> dict:
        """PIRLS: the conditional mode ``u_hat`` with the Laplace deviance and its parts."""
        zl = self.z @ self.structure.lam(theta)
        offset = self.x @ beta
        u = self.u.copy()

        def objective(u):  # -2 (log-likelihood - ||u||^2 / 2)
            eta = offset + zl @ u
            return -2 * (self.y @ eta - np.logaddexp(0, eta).sum()) + u @ u

        current = objective(u)
        for _ in range(max_iter):
            mu = special.expit(offset + zl @ u)
            hessian = zl.T @ (zl * (mu * (1 - mu))[:, None]) + np.eye(len(u))
            step = linalg.cho_solve(linalg.cho_factor(hessian), zl.T @ (self.y - mu) - u)
            for _ in range(30):  # step halving keeps every Newton step an ascent
                trial = objective(u + step)
                if trial <= current + 1e-12:
                    break
                step = step / 2
            u, change, current = u + step, current - trial, trial
            if abs(change) < 1e-10:
                break
        mu = special.expit(offset + zl @ u)
        hessian = zl.T @ (zl * (mu * (1 - mu))[:, None]) + np.eye(len(u))
        logdet = 2 * np.log(np.diag(linalg.cholesky(hessian))).sum()
        self.u = u
        return {"u": u, "deviance": current + logdet, "hessian": hessian}

    def __call__(self, params: np.ndarray) -> float:
        theta, beta = params[: self.num_theta], params[self.num_theta :]
        try:
            return float(self.mode(theta, beta)["deviance"])
        except (np.linalg.LinAlgError, ValueError):
            return np.inf


def _logistic_start(x: np.ndarray, y: np.ndarray, iterations: int = 25) -> np.ndarray:
    """Fixed effects of the logistic regression without random effects (Newton), the start of ``beta``."""
    beta = np.zeros(x.shape[1])
    for _ in range(iterations):
        mu = special.expit(x @ beta)
        info = x.T @ (x * (mu * (1 - mu))[:, None]) + 1e-8 * np.eye(x.shape[1])
        beta = beta + np.linalg.solve(info, x.T @ (y - mu))
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


def fit_laplace_binomial(x: np.ndarray, y: np.ndarray, terms: Sequence[RandomTerm], tol: float = 1e-10) -> ExactLmmFit:
    """Minimise the Laplace deviance over ``(theta, beta)`` (bounded Nelder-Mead, restarted once) and return the fit
    in :class:`~monai_medl.estimators.profiled_deviance.ExactLmmFit`'s layout (``sigma = 1``: no residual)."""
    model = LaplaceBinomial(x, y, terms)
    lower = model.structure.lower
    start = np.concatenate([model.structure.theta0(), _logistic_start(model.x, model.y)])
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
    cov = np.linalg.inv(hessian / 2)[k:, k:]
    lam = model.structure.lam(theta)
    b_all, b, covs, offset = np.asarray(lam @ mode["u"]).reshape(-1), [], [], 0
    for i, t in enumerate(model.structure.terms):
        b.append(b_all[offset : offset + t.num_levels * t.k].reshape(t.num_levels, t.k))
        offset += t.num_levels * t.k
        factor = model.structure.factor(theta, i)
        covs.append(factor @ factor.T)
    return ExactLmmFit(
        reml=False,
        theta=theta,
        beta=beta,
        cov_beta=cov,
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
        family="binomial",
    )
