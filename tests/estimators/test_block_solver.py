# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Block-Schur factorisation of the exact LMM against SuperLU and dense algebra; the optimiser paths agree."""

from __future__ import annotations

import numpy as np
import pytest

import monai_medl.estimators.profiled_deviance as pdev
from monai_medl.estimators.block_solver import BlockSchurSolver
from monai_medl.estimators.profiled_deviance import ProfiledDeviance, RandomTerm, fit_exact_lmm


def _design(seed: int, slopes: bool, n: int = 1500):
    rng = np.random.default_rng(seed)
    g1, g2, g3 = rng.integers(0, 150, n), rng.integers(0, 20, n), rng.integers(0, 5, n)
    x = np.column_stack([np.ones(n), rng.normal(size=n)])
    big = np.column_stack([np.ones(n), x[:, 1]]) if slopes else np.ones((n, 1))
    y = x @ [1.0, 2.0] + rng.normal(0, 0.7, 150)[g1] + rng.normal(0, 0.4, 20)[g2] + rng.normal(size=n)
    terms = [RandomTerm(g2, np.ones((n, 1)), 20), RandomTerm(g1, big, 150), RandomTerm(g3, np.ones((n, 1)), 5)]
    return x, y, terms


@pytest.mark.parametrize("slopes", [False, True])
def test_block_solver_matches_superlu_and_dense(slopes):
    x, y, terms = _design(0, slopes)
    block = ProfiledDeviance(x, y, terms, reml=True)
    general = ProfiledDeviance(x, y, terms, reml=True)
    general._block = None  # SuperLU
    matrices = ProfiledDeviance(x, y, terms, reml=True)
    matrices._fast_diagonal = False  # the block solver on Lambda as a sparse matrix
    assert block._fast_diagonal is not slopes
    assert block._block is not None and block._block.q2 == 25  # the 150-level factor is the block-diagonal one
    rng = np.random.default_rng(1)
    for _ in range(3):
        theta = np.abs(rng.normal(size=len(block.lower))) * np.where(np.isfinite(block.lower), 1, 0.3)
        np.testing.assert_allclose(block(theta), general(theta), rtol=1e-11)
        np.testing.assert_allclose(matrices(theta), general(theta), rtol=1e-11)
        lam = block.lam(theta)
        a = (lam.T @ block.ztz @ lam).toarray() + np.eye(block.q)
        solve, logdet = block._factorise(lam, theta)
        b = rng.normal(size=(block.q, 2))
        np.testing.assert_allclose(a @ solve(b), b, atol=1e-9)
        assert logdet == pytest.approx(np.linalg.slogdet(a)[1], rel=1e-11)


def test_one_factor_has_no_schur_complement():
    from scipy import sparse

    ztz = sparse.csc_matrix(np.diag([1.0, 2.0, 3.0, 4.0]))
    solver = BlockSchurSolver([(4, 1)], ztz)
    assert solver.applies and solver.q2 == 0
    solve, logdet = solver.factorise(sparse.identity(4, format="csc") * 0.5, np.array([[0.5]]))
    a = 0.25 * np.diag([1.0, 2.0, 3.0, 4.0]) + np.eye(4)
    np.testing.assert_allclose(solve(np.ones(4)), np.linalg.solve(a, np.ones(4)))
    assert logdet == pytest.approx(np.log(np.linalg.det(a)))


def test_quasi_newton_and_nelder_mead_reach_the_same_optimum(monkeypatch):
    x, y, terms = _design(2, slopes=False)
    monkeypatch.setattr(pdev, "_QUASI_NEWTON_MIN_Q", 10_000)
    nelder_mead = fit_exact_lmm(x, y, terms, reml=False)
    monkeypatch.setattr(pdev, "_QUASI_NEWTON_MIN_Q", 10)
    quasi_newton = fit_exact_lmm(x, y, terms, reml=False)
    assert quasi_newton.nfev < nelder_mead.nfev
    assert quasi_newton.deviance == pytest.approx(nelder_mead.deviance, abs=1e-5)
    np.testing.assert_allclose(quasi_newton.theta, nelder_mead.theta, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(quasi_newton.beta, nelder_mead.beta, rtol=1e-6)
