# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Exact Gaussian marginal likelihood of residuals ``y - f(x)`` with one grouping factor's random effects integrated
out, differentiable in torch (the collapsed objective of :class:`MixedEffectsRegressor` with ``method="marginal"``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["LevelDesign", "gaussian_marginal_nll", "gaussian_conditional_modes"]


class LevelDesign(NamedTuple):
    """The grouping of the rows, fixed while the network and the variance parameters change.

    Attributes:
        clusters: level of every row, ``(n,)`` integers in ``[0, num_levels)``.
        design: random-effects design rows ``(1, slopes...)``, ``(n, q)``.
        num_levels: number of levels ``K``.
    """

    clusters: torch.Tensor
    design: torch.Tensor
    num_levels: int


def _blocks(residual: torch.Tensor, levels: LevelDesign, prior_chol: torch.Tensor, log_noise_scale: torch.Tensor):
    """Per level ``C_k`` (Cholesky of ``M_k = I + Lam^T D_k^T D_k Lam``), ``w_k = C_k^-1 Lam^T D_k^T r_k`` and
    ``Lam = L / s``; a level without rows has ``M_k = I``, ``w_k = 0``."""
    clusters, design, num_levels = levels
    if residual.dim() != 1 or design.dim() != 2 or clusters.shape != residual.shape or len(design) != len(residual):
        raise ValueError(
            f"gaussian_marginal: residual and clusters must be (n,) and design (n, q), got {list(residual.shape)}, "
            f"{list(clusters.shape)} and {list(design.shape)}."
        )
    q = design.shape[1]
    if tuple(prior_chol.shape) != (q, q):
        raise ValueError(f"gaussian_marginal: prior_chol must be ({q}, {q}) for {q} design columns.")
    lam = prior_chol / torch.exp(log_noise_scale)
    zl = design @ lam  # (n, q): the design in units of the relative covariance factor
    gram = zl.new_zeros(num_levels, q, q).index_add_(0, clusters, zl[:, :, None] * zl[:, None, :])
    score = zl.new_zeros(num_levels, q).index_add_(0, clusters, zl * residual[:, None])
    chol = torch.linalg.cholesky(gram + torch.eye(q, dtype=zl.dtype, device=zl.device))
    w = torch.linalg.solve_triangular(chol, score[:, :, None], upper=False)[:, :, 0]
    return chol, w, lam


def gaussian_marginal_nll(
    residual: torch.Tensor, levels: LevelDesign, prior_chol: torch.Tensor, log_noise_scale: torch.Tensor
) -> torch.Tensor:
    """``-log p(r)`` for ``r = Z b + e``, ``b_k ~ N(0, L L^T)`` per level, ``e ~ N(0, s^2 I)``, summed over rows.

    With ``Lam = L / s`` and ``M_k = I + Lam^T D_k^T D_k Lam`` (``q x q``) the covariance of a level's residuals is
    ``V_k = s^2 (I + D_k Lam Lam^T D_k^T)``, so by the matrix determinant lemma and Woodbury's identity
    ``log|V_k| = n_k log s^2 + log|M_k|`` and ``r^T V_k^-1 r = (r^T r - |C_k^-1 Lam^T D_k^T r|^2) / s^2``: one batch
    of ``q x q`` Cholesky factors per evaluation, exact and differentiable in ``r`` (the network), ``L`` and ``s``.

    Args:
        residual: ``y - f(x)``, ``(n,)``.
        levels: the rows' levels and random-effects design (:class:`LevelDesign`).
        prior_chol: lower Cholesky factor ``L`` of the random effects' covariance, ``(q, q)``.
        log_noise_scale: ``log s`` (a 0-d tensor).

    Example::

        >>> r, g, d = torch.tensor([1.0, 3.0, -1.0]), torch.tensor([0, 0, 1]), torch.ones(3, 1)
        >>> nll = gaussian_marginal_nll(r, LevelDesign(g, d, 2), torch.eye(1), torch.tensor(0.0))
        >>> v = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 2.0]])  # Z Z^T + I
        >>> dense = -torch.distributions.MultivariateNormal(torch.zeros(3), v).log_prob(r)
        >>> bool(torch.isclose(nll, dense))
        True
    """
    chol, w, _ = _blocks(residual, levels, prior_chol, log_noise_scale)
    n = residual.shape[0]
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum()
    quad = (residual.square().sum() - w.square().sum()) * torch.exp(-2 * log_noise_scale)
    return 0.5 * (n * math.log(2 * math.pi) + 2 * n * log_noise_scale + logdet + quad)


@torch.no_grad()
def gaussian_conditional_modes(
    residual: torch.Tensor, levels: LevelDesign, prior_chol: torch.Tensor, log_noise_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional modes (BLUPs) ``E[b_k | r]`` ``(K, q)`` and the Cholesky factors of ``Var[b_k | r]``
    ``(K, q, q)`` for the model of :func:`gaussian_marginal_nll`: ``E = Lam M_k^-1 Lam^T D_k^T r`` and
    ``Var = s^2 Lam M_k^-1 Lam^T``; a level without rows gets the prior ``N(0, L L^T)``.

    Example::

        >>> r, g, d = torch.tensor([1.0, 3.0, -1.0]), torch.tensor([0, 0, 1]), torch.ones(3, 1)
        >>> loc, _ = gaussian_conditional_modes(r, LevelDesign(g, d, 2), torch.eye(1), torch.tensor(0.0))
        >>> [round(v, 4) for v in loc[:, 0].tolist()]  # sum of residuals / (n_k + s^2 / sigma^2)
        [1.3333, -0.5]
    """
    chol, w, lam = _blocks(residual, levels, prior_chol, log_noise_scale)
    inv_t = torch.linalg.solve_triangular(chol.transpose(-1, -2), torch.eye(chol.shape[-1]).to(chol), upper=True)
    loc = (lam @ (inv_t @ w[:, :, None]))[:, :, 0]
    factor = torch.exp(log_noise_scale) * lam @ inv_t  # (K, q, q): Var = factor factor^T
    cov = factor @ factor.transpose(-1, -2)
    return loc, torch.linalg.cholesky(0.5 * (cov + cov.transpose(-1, -2)))
