# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Factorisation of ``A = Lambda^T Z^T Z Lambda + I`` by its block structure: the largest grouping factor's block is
block diagonal (one ``k x k`` block per level: a level's effects meet no other level of the same factor), so it is
inverted block by block and the rest of ``A`` enters through a dense Schur complement.

With the largest factor's columns first, ``A = [[A11, A12], [A21, A22]]``; ``log|A| = log|A11| + log|S|`` and
``A^{-1} b`` follow from ``S = A22 - A21 A11^{-1} A12`` (dense, ``q2 x q2`` for the other factors' ``q2`` columns).
One factor (``q2 = 0``) costs a batch of ``k x k`` Cholesky factors; two crossed factors of 10,000 and 1,000 levels
a sparse product and a 1,000 x 1,000 Cholesky factor per evaluation, instead of a general sparse factorisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
from scipy import linalg, sparse

__all__ = ["BlockSchurSolver"]

SCHUR_MAX = 2500  # the other factors' columns up to which the dense Schur complement is used (a Cholesky of S)


class BlockSchurSolver:
    """``(solve, log|A|)`` of ``A = Lambda^T G Lambda + I`` for the random terms' ``G = Z^T Z`` (columns level-major
    within a term), formed block by block: the largest term's blocks ``T^T G_j T + I`` as a batch of ``k x k``
    matrices, the rest through sparse products and the dense Schur complement.

    Args:
        sizes: per term ``(num_levels, k)``, in column order.
        ztz: ``Z^T Z`` (sparse, ``q x q``).

    ``applies`` says whether the other terms' columns are few enough (:data:`SCHUR_MAX`) for the dense Schur
    complement; :meth:`factorise` factorises ``A`` at one ``Lambda``.

    Example::

        >>> import numpy as np
        >>> from scipy import sparse
        >>> ztz = sparse.csc_matrix(np.array([[2.0, 0, 1], [0, 3, 1], [1, 1, 2]]))  # terms of 2 levels and 1 level
        >>> lam = sparse.diags([0.5, 0.5, 2.0]).tocsc()
        >>> solve, logdet = BlockSchurSolver([(2, 1), (1, 1)], ztz).factorise(lam, np.array([[0.5]]))
        >>> a = (lam.T @ ztz @ lam).toarray() + np.eye(3)
        >>> bool(np.allclose(a @ solve(np.ones(3)), 1)), bool(np.isclose(logdet, np.log(np.linalg.det(a))))
        (True, True)
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], ztz) -> None:
        widths = [m * k for m, k in sizes]
        big = int(np.argmax(widths))
        start = sum(widths[:big])
        self.levels, self.k = sizes[big]
        first = np.arange(start, start + widths[big])
        self.rest = np.setdiff1d(np.arange(sum(widths)), first)
        self.order = np.concatenate([first, self.rest])  # the largest term's columns first
        self.q1, self.q2 = len(first), len(self.rest)
        self.applies = self.q2 <= SCHUR_MAX
        if not self.applies:
            return
        k, m = self.k, self.levels
        g = sparse.csr_matrix(ztz)[self.order][:, self.order]
        base = np.arange(m)[:, None, None] * k
        rows = (base + np.arange(k)[None, :, None]).repeat(k, axis=2).reshape(-1)
        cols = (base + np.arange(k)[None, None, :]).repeat(k, axis=1).reshape(-1)
        self.g11 = np.asarray(g[: self.q1, : self.q1][rows, cols]).reshape(m, k, k)
        self.g12 = g[: self.q1, self.q1 :].tocsr()
        self.g22 = g[self.q1 :, self.q1 :].toarray()

    def _first_block(self, t: np.ndarray) -> tuple[np.ndarray, float]:
        """The inverses of the largest term's blocks ``T^T G_j T + I`` and their log-determinants' sum."""
        if self.k == 1:  # scalar blocks: numpy's batched LAPACK calls cost more than the arithmetic
            diagonal = t[0, 0] ** 2 * self.g11[:, 0, 0] + 1.0
            return (1.0 / diagonal)[:, None, None], float(np.log(diagonal).sum())
        blocks = np.einsum("ba,jbc,cd->jad", t, self.g11, t) + np.eye(self.k)
        chol = np.linalg.cholesky(blocks)  # raises LinAlgError when A is not positive definite
        return np.linalg.inv(blocks), 2.0 * float(np.log(np.diagonal(chol, axis1=1, axis2=2)).sum())

    def _diagonal(self, lam) -> bool:
        """Whether ``Lambda`` restricted to the other terms is diagonal (every other term an intercept or ``||``)."""
        rest = sparse.csr_matrix(lam)[self.rest][:, self.rest]
        return rest.nnz == np.count_nonzero(rest.diagonal()) or rest.nnz == 0

    def _coupling(self, lam, t: np.ndarray, inverse: np.ndarray) -> tuple[Any, Any, np.ndarray]:
        """``(A12, A11^{-1} A12, S)`` with ``S = A22 - A21 A11^{-1} A12`` the Schur complement."""
        if self.k == 1 and self._diagonal(lam):
            # intercepts only: A12 = t G12 L2 with L2 diagonal, and A21 A11^{-1} A12 = L2 G12^T diag(v) G12 L2
            l2 = sparse.csr_matrix(lam)[self.rest][:, self.rest].diagonal()
            a12 = (self.g12.multiply(t[0, 0]) @ sparse.diags(l2)).tocsc()
            m12 = (sparse.diags(inverse[:, 0, 0]) @ a12).tocsc()
            v = t[0, 0] ** 2 * inverse[:, 0, 0]
            h = (self.g12.T @ self.g12.multiply(v[:, None]).tocsr()).toarray()
            return a12, m12, l2[:, None] * (self.g22 - h) * l2[None, :] + np.eye(self.q2)
        m = self.levels
        inv11 = sparse.bsr_matrix((inverse, np.arange(m), np.arange(m + 1)), shape=(self.q1, self.q1))
        lam_rest = sparse.csr_matrix(lam)[self.rest][:, self.rest]
        lam_first = sparse.kron(sparse.identity(m), t.T, format="csr")  # Lambda's first block, transposed
        a12 = (lam_first @ self.g12 @ lam_rest).tocsc()
        m12 = (inv11 @ a12).tocsc()
        a22 = np.asarray(lam_rest.T @ (lam_rest.T @ self.g22).T) + np.eye(self.q2)
        return a12, m12, a22 - (a12.T @ m12).toarray()

    def factorise_diagonal(self, diag: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
        """:meth:`factorise` for a diagonal ``Lambda`` (its diagonal ``diag``) and a largest term of intercepts:
        vector arithmetic, plus the Schur complement of the other terms."""
        v1, l2 = diag[self.order[: self.q1]], diag[self.rest]
        a11 = v1**2 * self.g11[:, 0, 0] + 1.0
        inverse, logdet = 1.0 / a11, float(np.log(a11).sum())
        schur = a12 = m12 = cast(Any, None)  # no other terms: A is its first block
        if self.q2:
            a12 = (sparse.diags(v1) @ self.g12 @ sparse.diags(l2)).tocsc()
            m12 = (sparse.diags(inverse) @ a12).tocsc()
            h = (self.g12.T @ self.g12.multiply((v1**2 * inverse)[:, None]).tocsr()).toarray()
            schur = linalg.cho_factor(l2[:, None] * (self.g22 - h) * l2[None, :] + np.eye(self.q2), lower=True)
            logdet += 2.0 * float(np.log(np.diag(schur[0])).sum())

        def solve_first(b1: np.ndarray) -> np.ndarray:
            return inverse.reshape(-1, *([1] * (b1.ndim - 1))) * b1

        return _schur_solve(self.order, self.q1, solve_first, schur, a12, m12), logdet

    def factorise(self, lam, t: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
        """``(solve, log|A|)`` at ``Lambda`` (``lam``, sparse) whose largest term's relative factor is ``t``."""
        q1, m = self.q1, self.levels
        inverse, logdet = self._first_block(t)
        inv11 = sparse.bsr_matrix((inverse, np.arange(m), np.arange(m + 1)), shape=(q1, q1))
        schur = a12 = m12 = cast(Any, None)  # no other terms: A is its first block
        if self.q2:
            a12, m12, s = self._coupling(lam, t, inverse)
            schur = linalg.cho_factor(s, lower=True)
            logdet += 2.0 * float(np.log(np.diag(schur[0])).sum())
        return _schur_solve(self.order, q1, lambda b1: inv11 @ b1, schur, a12, m12), logdet


def _schur_solve(
    order: np.ndarray, q1: int, solve_first: Callable[[np.ndarray], np.ndarray], schur: Any, a12: Any, m12: Any
) -> Callable[[np.ndarray], np.ndarray]:
    """``b -> A^{-1} b`` in the original order, from the first block's solve and (when there are other terms) the
    Schur complement's Cholesky factor with the coupling ``A12`` and ``A11^{-1} A12``."""

    def solve(b: np.ndarray) -> np.ndarray:
        permuted = np.asarray(b, float)[order]
        x = solve_first(permuted[:q1])
        if schur is not None:
            x2 = linalg.cho_solve(schur, permuted[q1:] - a12.T @ x)
            x = np.concatenate([x - m12 @ x2, x2])
        out = np.empty_like(x)
        out[order] = x
        return out

    return solve
