# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The profiled deviance's penalised least-squares solve in torch float64, so an exact fit can run on a GPU.

:class:`~monai_medl.estimators.profiled_deviance.ProfiledDeviance` keeps its cross products, ``Lambda_theta``'s
layout and the profiling algebra (:func:`~monai_medl.estimators.profiled_deviance.profile_pls`, shared with the
numpy path); this module only factorises ``A = Lambda^T Z^T Z Lambda + I`` on the device: densely
(``torch.linalg.cholesky``) for a moderate number of random-effect columns, else by the block structure of
:class:`~monai_medl.estimators.block_solver.BlockSchurSolver` (a batch of ``k x k`` Cholesky factors for the largest
factor's levels and a dense Schur complement for the other factors' columns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai_medl.estimators.block_solver import SCHUR_MAX, BlockSchurSolver
from monai_medl.estimators.profiled_deviance import profile_pls

if TYPE_CHECKING:
    from monai_medl.estimators.profiled_deviance import ProfiledDeviance

__all__ = ["TorchPls", "check_device", "TORCH_DENSE_MAX"]

TORCH_DENSE_MAX = 4000  # random-effect columns up to which A may be factorised densely (a 128 MB float64 matrix)
_BLOCK_MIN = 100  # columns above which the block structure is used where it applies (the numpy path's dense limit)


def check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that holds float64 tensors, else a ``ValueError`` naming it."""
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"exact fit: device={device!r} is not a torch device ({err}); use None, 'cpu' or 'cuda'."
        ) from err
    available = torch.cuda.is_available()
    if out.type == "cuda" and not available:
        raise ValueError(
            f"exact fit: device={device!r} is unavailable (torch.cuda.is_available() is False); use device=None "
            "(numpy/scipy) or 'cpu'."
        )
    try:
        torch.zeros(1, dtype=torch.float64, device=out)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(
            f"exact fit: device={device!r} cannot hold a float64 tensor (torch.cuda.is_available() is {available}): "
            f"{err}"
        ) from err
    return out


class TorchPls:
    """``ProfiledDeviance.solve`` in torch float64 on ``device``: the factorisation of ``A`` and the profiling.

    Args:
        model: the deviance whose cross products and ``Lambda`` layout are used.
        device: a torch device (checked by :func:`check_device`).
        solver: ``"dense"``, ``"block"`` or ``"auto"`` (default: the block structure above 100 random-effect
            columns where it applies, dense otherwise up to :data:`TORCH_DENSE_MAX` columns).

    Example::

        >>> import numpy as np
        >>> from monai_medl.estimators.profiled_deviance import ProfiledDeviance, RandomTerm
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(10), 5)
        >>> y = rng.normal(0, 1, 10)[g] + rng.normal(0, 1, 50)
        >>> terms = [RandomTerm(g, np.ones((50, 1)), 10)]
        >>> on_cpu = ProfiledDeviance(np.ones((50, 1)), y, terms, device="cpu")
        >>> bool(np.isclose(on_cpu(np.array([0.7])), ProfiledDeviance(np.ones((50, 1)), y, terms)(np.array([0.7]))))
        True
    """

    def __init__(self, model: ProfiledDeviance, device: Any, solver: str = "auto") -> None:
        if solver not in ("auto", "dense", "block"):
            raise ValueError(f"TorchPls solver must be 'auto', 'dense' or 'block', got {solver!r}.")
        self.device = check_device(device)
        self.q, self.p = model.q, model.p
        self.xtx, self.xty, self.yty = self._tensor(model.xtx), self._tensor(model.xty), self._tensor(model.yty)
        sizes = [(t.num_levels, t.k) for t in model.terms]
        block = BlockSchurSolver(sizes, model.ztz) if solver != "dense" else None
        use_block = block is not None and block.applies and (solver == "block" or self.q > _BLOCK_MIN)
        if solver == "block" and not use_block:
            raise ValueError(f"TorchPls solver='block': the other factors have more than {SCHUR_MAX} columns.")
        if not use_block and self.q > TORCH_DENSE_MAX:
            raise ValueError(
                f"exact fit on device={device!r}: {self.q} random-effect columns, the block structure does not apply "
                f"(the other factors have more than {SCHUR_MAX} columns) and a dense factor is limited to "
                f"{TORCH_DENSE_MAX}; use device=None (sparse numpy/scipy)."
            )
        self.order = np.arange(self.q) if block is None or not use_block else block.order
        ztxy = np.column_stack([model.ztx, model.zty])[self.order]  # Z^T [X, y], the largest factor's columns first
        self.ztxy = self._tensor(ztxy)
        position = np.empty(self.q, dtype=np.int64)
        position[self.order] = np.arange(self.q)
        self._triplets = (position[model._rows], position[model._cols], model._which)
        self._lam_index = tuple(self._index(a) for a in self._triplets)
        self.block = block if use_block else None
        if self.block is None:
            self.ztz = self._tensor(model.ztz.toarray())
        else:
            self._block_setup(model, self.block)

    @property
    def backend(self) -> str:
        """The solver, e.g. ``"torch float64 on cuda:0 (block Schur)"``."""
        return f"torch float64 on {self.device} ({'dense' if self.block is None else 'block Schur'} Cholesky)"

    def _tensor(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, float), dtype=torch.float64, device=self.device)

    def _index(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.long, device=self.device)

    def _block_setup(self, model: ProfiledDeviance, block: BlockSchurSolver) -> None:
        """Device copies of the block structure: ``G11`` (batched), ``G12`` (sparse), ``G22`` and the index maps
        of the largest factor's relative factor ``T`` and of ``Lambda`` restricted to the other factors."""
        self.m, self.k, self.q1, self.q2 = block.levels, block.k, block.q1, block.q2
        self.g11 = self._tensor(block.g11)
        g12 = block.g12.tocoo()
        indices = self._index(np.vstack([g12.row, g12.col]))
        self.g12 = torch.sparse_coo_tensor(indices, self._tensor(g12.data), g12.shape, check_invariants=True)
        self.g12 = self.g12.coalesce()
        self.g22 = self._tensor(block.g22)
        rows, cols = model.templates[model._big]
        self._t_index = (self._index(rows), self._index(cols), model.theta_slices[model._big])
        rows, cols, which = self._triplets
        rest = rows >= self.q1
        self._rest = (self._index(rows[rest] - self.q1), self._index(cols[rest] - self.q1), self._index(which[rest]))

    def _dense(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, A^{-1} B, log|A|)`` for ``B = Lambda^T Z^T [X, y]`` by one dense Cholesky factor of ``A``."""
        rows, cols, which = self._lam_index
        lam = torch.zeros(self.q, self.q, dtype=torch.float64, device=self.device)
        lam[rows, cols] = theta[which]
        chol = torch.linalg.cholesky(lam.T @ self.ztz @ lam + torch.eye(self.q, dtype=lam.dtype, device=self.device))
        b = lam.T @ self.ztxy
        return b, torch.cholesky_solve(b, chol), 2.0 * torch.log(chol.diagonal()).sum()

    def _block_solve(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_dense`'s output by the block structure (rows in the block order): ``A11``'s ``k x k`` blocks
        ``T^T G_j T + I`` by a batched Cholesky, the other factors through the Schur complement ``S = A22 - A21
        A11^{-1} A12``."""
        m, k, q1, q2 = self.m, self.k, self.q1, self.q2
        rows, cols, part = self._t_index
        t = torch.zeros(k, k, dtype=torch.float64, device=self.device)
        t[rows, cols] = theta[part]
        eye_k = torch.eye(k, dtype=t.dtype, device=self.device)
        chol11 = torch.linalg.cholesky(torch.einsum("ba,jbc,cd->jad", t, self.g11, t) + eye_k)
        logdet = 2.0 * torch.log(chol11.diagonal(dim1=-2, dim2=-1)).sum()

        def first(b: torch.Tensor) -> torch.Tensor:  # A11^{-1} b, level by level
            return torch.cholesky_solve(b.reshape(m, k, -1), chol11).reshape(q1, -1)

        def first_t(b: torch.Tensor) -> torch.Tensor:  # blockdiag(T)^T b
            return torch.einsum("ba,jbr->jar", t, b.reshape(m, k, -1)).reshape(q1, -1)

        b1 = first_t(self.ztxy[:q1])
        x1 = first(b1)
        if not q2:
            return b1, x1, logdet
        lam2 = torch.zeros(q2, q2, dtype=torch.float64, device=self.device)
        lam2[self._rest[0], self._rest[1]] = theta[self._rest[2]]
        b2 = lam2.T @ self.ztxy[q1:]
        a12 = first_t(self.g12 @ lam2)  # Lambda_1^T G12 Lambda_2
        m12 = first(a12)
        eye2 = torch.eye(q2, dtype=t.dtype, device=self.device)
        chol_s = torch.linalg.cholesky(lam2.T @ self.g22 @ lam2 + eye2 - a12.T @ m12)
        logdet = logdet + 2.0 * torch.log(chol_s.diagonal()).sum()
        x2 = torch.cholesky_solve(b2 - a12.T @ x1, chol_s)
        return torch.cat([b1, b2]), torch.cat([x1 - m12 @ x2, x2]), logdet

    def solve(self, theta: np.ndarray) -> dict:
        """:meth:`ProfiledDeviance.solve`'s output (numpy arrays and floats) at ``theta``."""
        th = self._tensor(theta)
        b, c, logdet_a = self._dense(th) if self.block is None else self._block_solve(th)
        p = self.p
        parts = profile_pls(torch, b[:, :p], b[:, p], c[:, :p], c[:, p], self.xtx, self.xty, self.yty)
        out = {key: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for key, v in parts.items()}
        u = np.empty(self.q)
        u[self.order] = out["u"]  # back from the block order
        out.update(u=u, r2=float(out["r2"]), logdet_x=float(out["logdet_x"]), logdet_a=float(logdet_a))
        return out
