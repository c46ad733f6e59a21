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

import numpy as np
from scipy import linalg, sparse

__all__ = ["BlockSchurSolver"]

SCHUR_MAX = 2500  # the other factors' columns up to which the dense Schur complement is used (a Cholesky of S)


class BlockSchurSolver:
    """``(solve, log|A|)`` of a sparse ``A`` laid out as the random terms' columns (level-major within a term).

    Args:
        sizes: per term ``(num_levels, k)``, in column order.

    ``applies`` says whether the other terms' columns are few enough (:data:`SCHUR_MAX`) for the dense Schur
    complement; :meth:`__call__` factorises one ``A``.

    Example::

        >>> import numpy as np
        >>> from scipy import sparse
        >>> a = sparse.csc_matrix(np.array([[2.0, 0, 1], [0, 3, 1], [1, 1, 4]]))  # terms of 2 levels and 1 level
        >>> solve, logdet = BlockSchurSolver([(2, 1), (1, 1)])(a)
        >>> bool(np.allclose(a @ solve(np.ones(3)), 1)), bool(np.isclose(logdet, np.log(np.linalg.det(a.toarray()))))
        (True, True)
    """

    def __init__(self, sizes: Sequence[tuple[int, int]]) -> None:
        widths = [m * k for m, k in sizes]
        big = int(np.argmax(widths))
        start = sum(widths[:big])
        self.levels, self.k = sizes[big]
        first = np.arange(start, start + widths[big])
        rest = np.setdiff1d(np.arange(sum(widths)), first)
        self.order = np.concatenate([first, rest])  # the largest term's columns first
        self.q1, self.q2 = len(first), len(rest)
        self.applies = self.q2 <= SCHUR_MAX
        base = np.arange(self.levels)[:, None, None] * self.k
        self._rows = (base + np.arange(self.k)[None, :, None]).repeat(self.k, axis=2).reshape(-1)
        self._cols = (base + np.arange(self.k)[None, None, :]).repeat(self.k, axis=1).reshape(-1)

    def __call__(self, a) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
        a = sparse.csr_matrix(a)[self.order][:, self.order]
        q1, k = self.q1, self.k
        a11 = a[:q1, :q1]
        if k == 1:  # scalar blocks: numpy's batched LAPACK calls cost more than the arithmetic
            diagonal = a11.diagonal()
            if not (diagonal > 0).all():
                raise np.linalg.LinAlgError("A is not positive definite")
            logdet, inverse = float(np.log(diagonal).sum()), (1.0 / diagonal)[:, None, None]
        else:
            blocks = np.asarray(a11[self._rows, self._cols]).reshape(self.levels, k, k)
            chol = np.linalg.cholesky(blocks)  # raises LinAlgError when A is not positive definite
            logdet = 2.0 * float(np.log(np.diagonal(chol, axis1=1, axis2=2)).sum())
            inverse = np.linalg.inv(blocks)
        inv11 = sparse.bsr_matrix((inverse, np.arange(self.levels), np.arange(self.levels + 1)), shape=(q1, q1))
        if self.q2 == 0:
            schur = None
        else:
            a12 = a[:q1, q1:].tocsc()
            m = (inv11 @ a12).tocsc()  # A11^{-1} A12
            s = a[q1:, q1:].toarray() - (a12.T @ m).toarray()
            schur = linalg.cho_factor(s, lower=True)
            logdet += 2.0 * float(np.log(np.diag(schur[0])).sum())
        order = self.order

        def solve(b: np.ndarray) -> np.ndarray:
            b = np.asarray(b, float)
            permuted = b[order]
            y1 = inv11 @ permuted[:q1]
            if schur is None:
                x = y1
            else:
                x2 = linalg.cho_solve(schur, permuted[q1:] - a12.T @ y1)
                x = np.concatenate([y1 - m @ x2, x2])
            out = np.empty_like(x)
            out[order] = x
            return out

        return solve, logdet
