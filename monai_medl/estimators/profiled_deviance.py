# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Exact Gaussian linear mixed model: the profiled (RE)ML deviance over the relative covariance factor.

The formulation is lme4's (Bates, Maechler, Bolker & Walker 2015, J. Stat. Softw. 67(1), sections 3.2-3.4): with
``b = Lambda_theta u``, ``u ~ N(0, sigma^2 I)``, the penalised least-squares problem
``min_{beta, u} ||y - X beta - Z Lambda u||^2 + ||u||^2`` is solved through the Cholesky factor of
``A = Lambda^T Z^T Z Lambda + I``; ``beta`` and ``sigma`` are profiled out and the deviance is a function of ``theta``
alone:

- ML: ``d(theta) = log|A| + n (1 + log(2 pi r^2 / n))``
- REML: ``d_R(theta) = log|A| + log|R_X^T R_X| + (n - p) (1 + log(2 pi r^2 / (n - p)))``

where ``r^2`` is the minimum penalised residual sum of squares and ``R_X^T R_X = X^T X - X^T Z Lambda A^{-1}
Lambda^T Z^T X`` (the Schur complement). The code keeps the cross products ``Z^T Z``, ``Z^T X``, ``Z^T y`` and
factorises ``A`` densely for small ``q``; a larger ``A`` through its block structure
(:class:`~monai_medl.estimators.block_solver.BlockSchurSolver`: the largest factor's block-diagonal block and a dense
Schur complement for the other factors' columns) when those are few, a sparse LU (SuperLU,
``scipy.sparse.linalg.splu``) otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg, optimize, sparse
from scipy.sparse.linalg import splu

from monai_medl.estimators.block_solver import BlockSchurSolver

__all__ = [
    "RandomTerm",
    "ProfiledDeviance",
    "ExactLmmFit",
    "fit_exact_lmm",
    "exact_fit_at",
    "per_term_effects",
    "symmetric_solver",
]

_QUASI_NEWTON_MIN_Q = 100  # random-effect columns above which several covariance parameters are fitted by
# L-BFGS-B rather than Nelder-Mead (measured, 100,000 x (2,000 x 200) crossed: 48 evaluations, 6.8 s, against
# 273, 52.9 s; deviance 1.5e-8 apart)
_DENSE_MAX = 100  # random-effect columns up to which A is formed and factorised densely (measured: dense wins at
# q = 40, sparse at q = 120 (11x) and q = 550 (200x))


@dataclass
class RandomTerm:
    """One grouping factor: level index per row, its random-effect design and whether the terms are correlated.

    Attributes:
        levels: ``(n,)`` int level index in ``[0, num_levels)``.
        design: ``(n, k)`` columns of the factor's terms (a column of ones for the intercept, then slopes).
        num_levels: number of levels.
        correlated: full ``k x k`` relative covariance factor (lme4 ``(x | g)``) or diagonal (``(x || g)``).
    """

    levels: np.ndarray
    design: np.ndarray
    num_levels: int
    correlated: bool = True

    @property
    def k(self) -> int:
        return self.design.shape[1]

    def template(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the free entries of the lower-triangular ``k x k`` factor (diagonal first, lme4's
        column-major order otherwise)."""
        if not self.correlated:
            return np.arange(self.k), np.arange(self.k)
        rows, cols = np.tril_indices(self.k)
        order = np.lexsort((rows, cols))  # column-major, as lme4's theta
        return rows[order], cols[order]


def symmetric_solver(a) -> tuple:
    """``(solve, log|a|)`` of a symmetric positive-definite matrix: Cholesky for a dense array, a sparse LU with
    symmetric ordering and no pivoting (SuperLU) for a sparse one."""
    if not sparse.issparse(a):
        chol = linalg.cho_factor(a, lower=True)
        return (lambda b: linalg.cho_solve(chol, b)), 2.0 * np.log(np.diag(chol[0])).sum()
    lu = splu(a.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    return lu.solve, float(np.log(np.abs(lu.U.diagonal())).sum())


def _random_design(terms: Sequence[RandomTerm]) -> sparse.csc_matrix:
    """``Z`` (n x q), level-major within each factor: level ``j``'s ``k`` columns are consecutive."""
    blocks = []
    for t in terms:
        n = len(t.levels)
        rows = np.repeat(np.arange(n), t.k)
        cols = (t.levels[:, None] * t.k + np.arange(t.k)[None]).reshape(-1)
        blocks.append(sparse.csc_matrix((t.design.reshape(-1), (rows, cols)), shape=(n, t.num_levels * t.k)))
    return sparse.hstack(blocks, format="csc")


def profile_pls(xp: Any, bx, by, cx, cy, xtx, xty, yty) -> dict:
    """``beta``, spherical ``u``, ``r2``, ``log|R_X^T R_X|`` and ``R_X^T R_X`` from ``B = Lambda^T Z^T [X, y]`` and
    ``A^{-1} B``; ``xp`` is the array module (``numpy`` or ``torch``), so every backend shares this algebra."""
    schur = xtx - bx.T @ cx  # R_X^T R_X
    p = schur.shape[0]
    # p x p: numpy's LAPACK calls carry less overhead than scipy's here (they run once per evaluation)
    logdet_x = 2.0 * xp.log(xp.abs(xp.linalg.cholesky(schur).diagonal())).sum() if p else 0.0
    beta = xp.linalg.solve(schur, xty - bx.T @ cy) if p else xty[:0]
    u = cy - cx @ beta
    rss = yty - 2 * beta @ xty + beta @ xtx @ beta
    return {"beta": beta, "u": u, "r2": rss - (by - bx @ beta) @ u, "logdet_x": logdet_x, "schur": schur}


class ProfiledDeviance:
    """The profiled deviance ``d(theta)`` of a Gaussian linear mixed model and its penalised least-squares solution.

    Args:
        x: ``(n, p)`` fixed-effects design (including the intercept column).
        y: ``(n,)`` response.
        terms: the grouping factors (:class:`RandomTerm`).
        reml: REML criterion (True) or ML deviance (False).
        device: None (default) solves with numpy/scipy on the CPU; a torch device (``"cuda"``, ``"cpu"``) solves
            in torch float64 there (:class:`~monai_medl.estimators.torch_deviance.TorchPls`), the optimiser over
            ``theta`` staying in scipy.

    Example::

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(10), 5)
        >>> y = rng.normal(0, 1, 10)[g] + rng.normal(0, 1, 50)
        >>> dev = ProfiledDeviance(np.ones((50, 1)), y, [RandomTerm(g, np.ones((50, 1)), 10)])
        >>> bool(dev(np.array([1.0])) > 0), dev.lower.tolist()
        (True, [0.0])
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, terms: Sequence[RandomTerm], reml: bool = True, device: Any = None
    ) -> None:
        self.x, self.y, self.terms, self.reml = np.asarray(x, float), np.asarray(y, float), list(terms), reml
        self.n, self.p = self.x.shape
        z = _random_design(self.terms)
        self.q = z.shape[1]
        self.ztz = (z.T @ z).tocsc()
        self.ztx = np.asarray(z.T @ self.x)
        self.zty = np.asarray(z.T @ self.y).reshape(-1)
        self.xtx, self.xty, self.yty = self.x.T @ self.x, self.x.T @ self.y, float(self.y @ self.y)
        self.z = z
        rows, cols, which, lower, offset, start = [], [], [], [], 0, 0
        self.theta_slices = []
        for t in self.terms:
            tr, tc = t.template()
            base = offset + np.arange(t.num_levels)[:, None] * t.k
            rows.append((base + tr[None]).reshape(-1))
            cols.append((base + tc[None]).reshape(-1))
            which.append(np.tile(start + np.arange(len(tr)), t.num_levels))
            lower.append(np.where(tr == tc, 0.0, -np.inf))
            self.theta_slices.append(slice(start, start + len(tr)))
            offset, start = offset + t.num_levels * t.k, start + len(tr)
        self._rows, self._cols, self._which = map(np.concatenate, (rows, cols, which))
        self.lower = np.concatenate(lower)
        self.templates = [t.template() for t in self.terms]
        # CSC layout of Lambda: entry i of the triplets lands at storage position where _lam_order == i
        self._lam_pattern = sparse.csc_matrix(
            (np.arange(1, len(self._rows) + 1, dtype=float), (self._rows, self._cols)), shape=(self.q, self.q)
        )
        self._lam_order = self._lam_pattern.data.astype(np.int64) - 1
        block = BlockSchurSolver([(t.num_levels, t.k) for t in self.terms], self.ztz) if not self.dense else None
        self._block = block if block is not None and block.applies else None
        self._big = int(np.argmax([t.num_levels * t.k for t in self.terms]))
        diagonal = all(t.k == 1 or not t.correlated for t in self.terms)
        self._fast_diagonal = self._block is not None and diagonal and self.terms[self._big].k == 1
        self._torch: Any = None
        self.device = device  # None: numpy/scipy; refits of this model (intervals, bootstrap) use the same
        if device is not None:  # imported here: the numpy path needs no torch
            from monai_medl.estimators.torch_deviance import TorchPls

            self._torch = TorchPls(self, device)

    def theta0(self) -> np.ndarray:
        """lme4's start: identity relative factors (diagonal 1, off-diagonal 0)."""
        return np.where(np.isfinite(self.lower), 1.0, 0.0)

    def factor(self, theta: np.ndarray, term: int) -> np.ndarray:
        """The ``k x k`` lower-triangular relative covariance factor of one term (``Sigma = sigma^2 T T^T``)."""
        t = self.terms[term]
        tr, tc = self.templates[term]
        out = np.zeros((t.k, t.k))
        out[tr, tc] = theta[self.theta_slices[term]]
        return out

    def lam(self, theta: np.ndarray):
        """``Lambda_theta`` (q x q, block diagonal): a dense array for small ``q``, else sparse (CSC)."""
        if self.dense:
            out = np.zeros((self.q, self.q))
            out[self._rows, self._cols] = theta[self._which]
            return out
        # the pattern is fixed: only the values change (building from triplets each time costs more than the solve)
        return sparse.csc_matrix(
            (theta[self._which][self._lam_order], self._lam_pattern.indices, self._lam_pattern.indptr),
            shape=(self.q, self.q),
        )

    @property
    def backend(self) -> str:
        """Where :meth:`solve` runs: ``"numpy/scipy"`` or the torch solver (e.g. ``"torch float64 on cuda:0 (dense
        Cholesky)"``)."""
        return "numpy/scipy" if self._torch is None else self._torch.backend

    @property
    def dense(self) -> bool:
        """Whether ``A`` is formed and factorised densely (small ``q``: sparse bookkeeping would dominate)."""
        return self.q <= _DENSE_MAX

    def _factorise(self, lam, theta: np.ndarray | None = None):
        if self.dense:
            lam = lam.toarray() if sparse.issparse(lam) else lam
            if getattr(self, "_ztz_dense", None) is None:
                self._ztz_dense = self.ztz.toarray()
            return symmetric_solver(lam.T @ self._ztz_dense @ lam + np.eye(self.q))
        if self._block is not None and theta is not None:
            return self._block.factorise(lam, self.factor(theta, self._big))
        return symmetric_solver(lam.T @ self.ztz @ lam + sparse.identity(self.q, format="csc"))

    def _numpy_system(self, theta: np.ndarray) -> tuple:
        """``(Lambda^T Z^T X, Lambda^T Z^T y, A^{-1}, log|A|)`` with numpy/scipy."""
        if self._fast_diagonal and self._block is not None:
            # Lambda diagonal, intercepts on the largest factor: vectors, no sparse algebra
            diag = np.zeros(self.q)
            diag[self._rows] = theta[self._which]
            solve, logdet_a = self._block.factorise_diagonal(diag)
            return diag[:, None] * self.ztx, diag * self.zty, solve, logdet_a
        lam = self.lam(theta)
        solve, logdet_a = self._factorise(lam, theta)
        return np.asarray(lam.T @ self.ztx), np.asarray(lam.T @ self.zty).reshape(-1), solve, logdet_a

    def solve(self, theta: np.ndarray) -> dict:
        """Penalised least squares at ``theta``: ``beta``, spherical ``u``, ``r2``, log-determinants and the solver."""
        theta = np.asarray(theta, float)
        if self._torch is not None:  # the same algebra in torch float64 on the chosen device
            parts = self._torch.solve(theta)
        else:
            bx, by, solve, logdet_a = self._numpy_system(theta)
            parts = profile_pls(np, bx, by, solve(bx), solve(by), self.xtx, self.xty, self.yty)
            parts["logdet_a"] = logdet_a
        parts["r2"] = max(float(parts["r2"]), 1e-300)
        return parts

    def deviance(self, parts: dict) -> float:
        """ML deviance or REML criterion from :meth:`solve`'s output."""
        if self.reml:
            dof = self.n - self.p
            return parts["logdet_a"] + parts["logdet_x"] + dof * (1 + np.log(2 * np.pi * parts["r2"] / dof))
        return parts["logdet_a"] + self.n * (1 + np.log(2 * np.pi * parts["r2"] / self.n))

    def __call__(self, theta: np.ndarray) -> float:
        try:
            return float(self.deviance(self.solve(theta)))
        except (np.linalg.LinAlgError, ValueError, RuntimeError):  # torch.linalg.LinAlgError is a RuntimeError
            return np.inf


@dataclass
class ExactLmmFit:
    """The optimum of :class:`ProfiledDeviance` with the quantities lme4 reports.

    Attributes:
        reml: REML (True) or ML fit.
        theta: relative covariance parameters at the optimum.
        beta: fixed effects; ``cov_beta``: their covariance ``sigma^2 (R_X^T R_X)^{-1}``.
        sigma: residual s.d. (``sqrt(r2 / (n - p))`` for REML, ``sqrt(r2 / n)`` for ML, as lme4).
        covariances: per term, ``sigma^2 T T^T`` (the random effects' covariance, in the design's units).
        b: conditional modes ``Lambda u`` per term, ``(num_levels, k)``.
        deviance: ML deviance or REML criterion (a binomial fit: its Laplace deviance) at the optimum; ``nfev``,
            ``converged``: optimiser report.
        n, p: rows and fixed effects; ``num_theta``: free covariance parameters.
        model: the deviance (None for a Laplace fit); ``family``: ``"gaussian"``, ``"binomial"`` or ``"poisson"``.
        laplace: a Laplace fit's deviance (:class:`~monai_medl.estimators.laplace_glmm.LaplaceGlmm`, its data and
            layout), else None.
    """

    reml: bool
    theta: np.ndarray
    beta: np.ndarray
    cov_beta: np.ndarray
    sigma: float
    covariances: list
    b: list
    deviance: float
    n: int
    p: int
    num_theta: int
    nfev: int
    converged: bool
    model: ProfiledDeviance | None
    family: str = "gaussian"
    laplace: Any = None

    @property
    def loglik(self) -> float:
        """Log-likelihood (ML) or REML log-likelihood, ``-deviance / 2``."""
        return -0.5 * self.deviance

    @property
    def num_params(self) -> int:
        """Parameters counted by AIC/BIC: fixed effects, covariance parameters and the residual variance."""
        return self.p + self.num_theta + (self.family == "gaussian")

    def conditional_covariances(self, term: int, chunk: int = 512) -> np.ndarray:
        """``(num_levels, k, k)`` covariance of each level's effects given the data, ``sigma^2 Lambda A^{-1}
        Lambda^T`` (lme4's ``condVar``: the fixed effects held at their estimate); for a Laplace fit ``A`` is the
        penalised Hessian ``Lambda^T Z^T W Z Lambda + I`` at the conditional mode and ``sigma = 1``."""
        if self.model is not None:
            model = self.model
            lam = model.lam(self.theta)
            solve, _ = model._factorise(lam, self.theta)
        elif self.laplace is not None:
            model = self.laplace.structure
            lam = model.lam(self.theta)
            zl = model.z @ lam
            mode = self.laplace.mode(self.theta, self.beta)
            eta = self.laplace.x @ self.beta + np.asarray(zl @ mode["u"]).reshape(-1)
            solve, _ = symmetric_solver(self.laplace._hessian(zl, self.laplace.family.mean(eta)))
        else:
            raise ValueError(f"the {self.family} fit keeps no deviance to compute conditional variances from.")
        t = model.terms[term]
        offset = sum(s.num_levels * s.k for s in model.terms[:term])
        out = np.zeros((t.num_levels, t.k, t.k))
        cols = np.arange(offset, offset + t.num_levels * t.k)
        for start in range(0, len(cols), chunk):
            block = cols[start : start + chunk]
            rhs = lam.T[:, block]  # columns Lambda^T e_j
            rhs = rhs.toarray() if sparse.issparse(rhs) else rhs
            w = np.asarray(lam[block, :] @ solve(rhs))  # rows/cols of Lambda A^{-1} Lambda^T inside the block
            local = block - offset
            level, term_index = local // t.k, local % t.k
            for i, (lv, ti) in enumerate(zip(level, term_index)):
                same = level == lv
                out[lv, ti, term_index[same]] = w[i, same]
        return self.sigma**2 * out


def per_term_effects(model: ProfiledDeviance, theta: np.ndarray, u: np.ndarray, sigma: float = 1.0) -> tuple:
    """Per term: the conditional modes ``b = Lambda u`` as ``(num_levels, k)`` and the covariance ``sigma^2 T T^T``."""
    b_all, b, covs, offset = np.asarray(model.lam(theta) @ u).reshape(-1), [], [], 0
    for i, t in enumerate(model.terms):
        b.append(b_all[offset : offset + t.num_levels * t.k].reshape(t.num_levels, t.k))
        offset += t.num_levels * t.k
        factor = model.factor(theta, i)
        covs.append(sigma**2 * factor @ factor.T)
    return b, covs


def _nelder_mead(model: ProfiledDeviance, start: np.ndarray, tol: float) -> tuple:
    """Bounded Nelder-Mead from ``start``, restarted once from its end; ``(best, evaluations, converged)``."""
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in model.lower]
    dim = len(model.lower)
    options = {"xatol": 1e-8, "fatol": tol, "maxfev": 1000 * dim, "adaptive": dim > 4}
    first = optimize.minimize(model, start, method="Nelder-Mead", bounds=bounds, options=options)
    polish = optimize.minimize(model, first.x, method="Nelder-Mead", bounds=bounds, options=options)
    best = polish if polish.fun <= first.fun else first
    return best, int(first.nfev + polish.nfev), bool(polish.success and first.fun - polish.fun < 1e-6)


def _quasi_newton(model: ProfiledDeviance, start: np.ndarray) -> tuple:
    """Bounded L-BFGS-B with finite-difference gradients; ``(best, evaluations, converged)``."""
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in model.lower]
    best = optimize.minimize(
        model, start, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-14, "gtol": 1e-8, "maxfun": 3000}
    )
    return best, int(best.nfev), bool(best.success)


def _line_search(model: ProfiledDeviance, start: float) -> tuple:
    """Brent's method for a single relative s.d. (the deviance is even in it, so the line is unbounded; 0, the
    boundary, is compared explicitly); ``(best, evaluations, converged)`` with ``best.x`` of length 1."""
    result = optimize.minimize_scalar(
        lambda t: model(np.array([t])),
        bracket=(0.5 * max(abs(start), 1e-3), max(abs(start), 1e-3)),
        method="brent",
        tol=1e-10,
    )
    theta, value = abs(float(result.x)), float(result.fun)
    at_zero = model(np.zeros(1))
    if at_zero <= value:
        theta, value = 0.0, at_zero
    return optimize.OptimizeResult(x=np.array([theta]), fun=value), int(result.nfev) + 1, bool(result.success)


def fit_exact_lmm(
    x: np.ndarray,
    y: np.ndarray,
    terms: Sequence[RandomTerm],
    reml: bool = True,
    tol: float = 1e-10,
    start: np.ndarray | None = None,
    device: Any = None,
) -> ExactLmmFit:
    """Minimise the profiled deviance over ``theta`` (bounded: diagonal entries >= 0) and return the fit.

    Derivative-free, as lme4 (which uses BOBYQA): bounded Nelder-Mead from lme4's start, restarted once from its
    end (a fresh simplex guards against the premature stops Nelder-Mead is known for); a single relative s.d. (one
    random intercept) by Brent's method on the line instead, and several parameters of a large design (more than
    100 random-effect columns) by L-BFGS-B with finite-difference gradients; ``tol`` is the deviance change at
    which a Nelder-Mead run stops; ``start``: another ``theta`` to start from (a nearby fit's); ``device``: where
    the deviance is evaluated (None: numpy/scipy; a torch device: torch float64, see :class:`ProfiledDeviance`).
    """
    model = ProfiledDeviance(x, y, terms, reml=reml, device=device)
    if len(model.lower) == 1:  # one relative s.d.: d depends on theta^2 alone, Brent's method on the line
        best, nfev, polished = _line_search(model, 1.0 if start is None else float(start[0]))
    elif model.q > _QUASI_NEWTON_MIN_Q:  # every evaluation is costly: fewer of them by quasi-Newton steps
        best, nfev, polished = _quasi_newton(model, model.theta0() if start is None else start)
    else:
        best, nfev, polished = _nelder_mead(model, model.theta0() if start is None else start, tol)
    theta = np.where(np.isfinite(model.lower), np.maximum(best.x, 0.0), best.x)
    return exact_fit_at(model, theta, nfev, polished)


def exact_fit_at(model: ProfiledDeviance, theta: np.ndarray, nfev: int = 0, converged: bool = True) -> ExactLmmFit:
    """The fit's quantities (``beta`` and its covariance, ``sigma``, covariances, conditional modes, criterion) at a
    given ``theta``; ``nfev``, ``converged``: the optimiser's report."""
    parts = model.solve(theta)
    dof = model.n - model.p if model.reml else model.n
    sigma = float(np.sqrt(parts["r2"] / dof))
    b, covs = per_term_effects(model, theta, parts["u"], sigma)
    return ExactLmmFit(
        reml=model.reml,
        theta=theta,
        beta=parts["beta"],
        cov_beta=sigma**2 * linalg.inv(parts["schur"]),
        sigma=sigma,
        covariances=covs,
        b=b,
        deviance=float(model.deviance(parts)),
        n=model.n,
        p=model.p,
        num_theta=len(theta),
        nfev=nfev,
        converged=converged,
        model=model,
    )
