# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Correlated random effects: a joint Gaussian intercept and slopes per cluster with a learned covariance prior."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.networks.layers.random_effects import _SIGMA_FLOOR, inverse_softplus

__all__ = ["CorrelatedRandomEffects", "lower_triangular", "gaussian_kl_cholesky"]


def lower_triangular(diag: torch.Tensor, offdiag: torch.Tensor | None) -> torch.Tensor:
    """Lower-triangular matrices from their diagonals ``(..., q)`` and strict lower parts ``(..., q(q-1)/2)``.

    ``offdiag`` None gives diagonal matrices. The strict lower part is filled row by row (``torch.tril_indices``).
    """
    q = diag.shape[-1]
    out = torch.diag_embed(diag)
    if offdiag is not None and q > 1:
        rows, cols = torch.tril_indices(q, q, offset=-1, device=diag.device)
        out = _fill_lower(out, offdiag, rows, cols)
    return out


def _fill_lower(out: torch.Tensor, offdiag: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    # functional scatter keeps autograd through ``offdiag``
    flat = out.reshape(*out.shape[:-2], -1)
    q = out.shape[-1]
    index = (rows * q + cols).expand(*offdiag.shape[:-1], -1)
    return flat.scatter(-1, index, offdiag).reshape(out.shape)


def gaussian_kl_cholesky(loc: torch.Tensor, post_chol: torch.Tensor, prior_chol: torch.Tensor) -> torch.Tensor:
    """``sum_k KL(N(loc_k, C_k C_k^T) || N(0, L L^T))`` in closed form.

    Per cluster ``KL = 1/2 [tr(S^-1 P) + m^T S^-1 m - q + log|S| - log|P|]`` with prior covariance ``S = L L^T`` and
    posterior ``P = C C^T``. Summed over clusters the first two terms are ``tr(S^-1 M)`` with the scatter matrix
    ``M = sum_k (P_k + m_k m_k^T)``, so only ``q x q`` solves are needed whatever the number of clusters.

    Args:
        loc: posterior means, ``(K, q)``.
        post_chol: posterior Cholesky factors, ``(K, q, q)`` lower triangular, positive diagonal.
        prior_chol: prior Cholesky factor, ``(q, q)`` lower triangular, positive diagonal.
    """
    num, q = loc.shape
    scatter = (post_chol @ post_chol.transpose(-1, -2)).sum(0) + loc.T @ loc
    # cholesky_inverse rather than triangular solves: the solves' backward calls ``tril``, which costs ~10 ms per
    # call on some CPU builds (measured with torch 2.13), more than the whole rest of a small fit's step
    trace = (torch.cholesky_inverse(prior_chol) * scatter).sum()  # tr(S^-1 M)
    log_det_prior = 2.0 * prior_chol.diagonal().log().sum()
    log_det_post = 2.0 * post_chol.diagonal(dim1=-2, dim2=-1).log().sum()
    return 0.5 * (trace - num * q + num * log_det_prior - log_det_post)


class CorrelatedRandomEffects(nn.Module):
    """Random intercept and slopes per cluster with a joint Gaussian posterior and a prior ``N(0, Sigma)``.

    For one grouping factor with ``K`` clusters and ``q`` terms (e.g. an intercept and ``q - 1`` slopes), cluster
    ``k`` has the effect vector ``u_k`` (length ``q``) and contributes ``d^T u_k`` to a sample whose design row is
    ``d`` (``d = (1, x_slopes)`` for lme4's ``(x | g)``). The posterior is ``q(u_k) = N(mu_k, C_k C_k^T)`` with a
    full lower-triangular ``C_k`` (``posterior="full"``, the exact family for a linear Gaussian model) or a diagonal
    one (``posterior="diagonal"``, mean field as in :class:`~monai_medl.networks.layers.RandomEffects`). The prior
    covariance ``Sigma = L L^T`` is learned through its Cholesky factor ``L`` (empirical Bayes: its optimum is the
    maximum-likelihood variance-component estimate); ``correlated=False`` keeps ``L`` diagonal, i.e. independent
    terms with one prior s.d. each (lme4's ``(x || g)``).

    Clusters are given either as integer indices ``(batch,)`` (``-1``: a cluster not seen in training, whose effect
    is the population value 0) or as a design matrix ``z`` ``(batch, K)`` (one-hot, soft or zero rows, as for
    ``RandomEffects``). Training mode draws one reparameterised sample of each used ``u_k`` per forward call; eval
    mode uses the posterior means. :meth:`moments` gives the exact posterior mean and variance of ``d^T u`` per
    sample, which makes a Gaussian expected log-likelihood closed-form (no sampling noise).

    Args:
        num_clusters: number of training clusters ``K``.
        num_terms: number of effects per cluster ``q`` (intercept plus slopes). Defaults to 2.
        correlated: learn a full prior covariance (else a diagonal one). Defaults to True.
        posterior: ``"full"`` (joint Gaussian per cluster) or ``"diagonal"``. Defaults to ``"full"``.
        prior_scale: initial (or fixed) prior s.d. of every term, or one value per term. Defaults to 0.5.
        learn_prior_scale: learn the prior covariance (empirical Bayes). Defaults to True.
        post_loc_init_scale: s.d. of the initial posterior means (0 starts them at the population). Defaults to 0.0.
        post_scale_init: initial posterior s.d. of every term. Defaults to 0.1.
        blocks: number of independent prior blocks: the ``q`` terms split into ``blocks`` consecutive groups of
            ``q / blocks`` terms (e.g. the intercept and slopes of each class of a C-class model), each with its
            own prior covariance (full within a block when ``correlated``) and no prior covariance between blocks,
            while the posterior of each cluster stays joint over all ``q`` terms. Defaults to 1.

    Example::

        >>> re = CorrelatedRandomEffects(num_clusters=3, num_terms=2).eval()
        >>> design = torch.tensor([[1.0, 0.5], [1.0, 2.0]])  # (intercept, x) per sample
        >>> re(torch.tensor([0, -1]), design).shape  # the second sample's cluster is unseen
        torch.Size([2, 1])
        >>> re.prior_covariance().shape, bool(re.kl().detach() >= 0)
        (torch.Size([2, 2]), True)
    """

    if TYPE_CHECKING:  # buffers or parameters, for the type checker only (TorchScript reads no postponed annotations)
        _within_block: torch.Tensor
        prior_log_diag: torch.Tensor
        prior_offdiag: Optional[torch.Tensor]

    def __init__(
        self,
        num_clusters: int,
        num_terms: int = 2,
        correlated: bool = True,
        posterior: str = "full",
        prior_scale: float | Sequence[float] = 0.5,
        learn_prior_scale: bool = True,
        post_loc_init_scale: float = 0.0,
        post_scale_init: float = 0.1,
        blocks: int = 1,
    ) -> None:
        super().__init__()
        if num_clusters < 1 or num_terms < 1:
            raise ValueError(f"num_clusters and num_terms must be >= 1, got {num_clusters}, {num_terms}.")
        if blocks < 1 or num_terms % blocks:
            raise ValueError(f"blocks must be a positive divisor of num_terms={num_terms}, got {blocks}.")
        if posterior not in ("full", "diagonal"):
            raise ValueError(f"posterior must be 'full' or 'diagonal', got {posterior!r}.")
        scales = [float(prior_scale)] * num_terms if isinstance(prior_scale, (int, float)) else list(prior_scale)
        if len(scales) != num_terms or min(scales) <= 0:
            raise ValueError(f"prior_scale must be positive, one value or {num_terms}, got {prior_scale}.")
        if post_scale_init <= _SIGMA_FLOOR:
            raise ValueError(f"post_scale_init must exceed {_SIGMA_FLOOR}, got {post_scale_init}.")
        self.num_clusters, self.num_terms = num_clusters, num_terms
        self.correlated, self.posterior = correlated, posterior
        self.learn_prior_scale = learn_prior_scale
        self.blocks = blocks
        num_off = num_terms * (num_terms - 1) // 2
        self.loc = nn.Parameter(torch.randn(num_clusters, num_terms) * post_loc_init_scale)
        self.post_rho = nn.Parameter(torch.full((num_clusters, num_terms), inverse_softplus(post_scale_init)))
        self.post_offdiag = nn.Parameter(torch.zeros(num_clusters, num_off)) if posterior == "full" else None
        prior_log_diag = torch.tensor([math.log(s) for s in scales])
        # positions, in the strict lower triangle, of the entries inside a block (all of them when blocks == 1)
        rows, cols = torch.tril_indices(num_terms, num_terms, offset=-1)
        size = num_terms // blocks
        self.register_buffer("_within_block", torch.nonzero(rows // size == cols // size)[:, 0], persistent=False)
        prior_offdiag = torch.zeros(len(self._within_block)) if correlated else None
        if learn_prior_scale:
            self.prior_log_diag = nn.Parameter(prior_log_diag)
            self.prior_offdiag = None if prior_offdiag is None else nn.Parameter(prior_offdiag)
        else:
            self.register_buffer("prior_log_diag", prior_log_diag)
            self.register_buffer("prior_offdiag", prior_offdiag)

    def prior_cholesky(self) -> torch.Tensor:
        """Cholesky factor ``L`` of the prior covariance, ``(q, q)`` (block diagonal when ``blocks > 1``)."""
        offdiag = self.prior_offdiag
        if offdiag is not None and self.blocks > 1:
            full = offdiag.new_zeros(self.num_terms * (self.num_terms - 1) // 2)
            offdiag = full.scatter(0, self._within_block, offdiag)
        return lower_triangular(self.prior_log_diag.exp(), offdiag)

    def prior_covariance(self) -> torch.Tensor:
        """Prior covariance ``Sigma = L L^T`` (the variance-component estimate when learned), ``(q, q)``."""
        chol = self.prior_cholesky()
        return chol @ chol.T

    def posterior_cholesky(self) -> torch.Tensor:
        """Posterior Cholesky factors ``C_k``, ``(K, q, q)``."""
        return lower_triangular(F.softplus(self.post_rho) + _SIGMA_FLOOR, self.post_offdiag)

    def posterior_covariance(self) -> torch.Tensor:
        """Posterior covariances ``C_k C_k^T`` (conditional variances of the effects), ``(K, q, q)``."""
        chol = self.posterior_cholesky()
        return chol @ chol.transpose(-1, -2)

    def posterior_parameters(self) -> list[nn.Parameter]:
        """The posterior's parameters (means, scales and, for a full posterior, the Cholesky off-diagonals)."""
        return [p for p in (self.loc, self.post_rho, self.post_offdiag) if p is not None]

    @torch.no_grad()
    def set_posterior(self, loc: torch.Tensor, chol: torch.Tensor) -> None:
        """Set every cluster's posterior to ``N(loc_k, chol_k chol_k^T)`` (e.g. a closed-form optimum).

        Args:
            loc: posterior means, ``(K, q)``.
            chol: lower-triangular posterior Cholesky factors with positive diagonals, ``(K, q, q)``; a diagonal
                posterior (``posterior="diagonal"``) keeps only their diagonals. Diagonals below the layer's floor
                (``1e-5``) are raised to just above it.
        """
        shape = (self.num_clusters, self.num_terms)
        if tuple(loc.shape) != shape or tuple(chol.shape) != (*shape, self.num_terms):
            raise ValueError(
                f"loc must be {list(shape)} and chol {[*shape, self.num_terms]}, got {list(loc.shape)}, "
                f"{list(chol.shape)}."
            )
        self.loc.copy_(loc)
        excess = (chol.diagonal(dim1=-2, dim2=-1) - _SIGMA_FLOOR).clamp_min(1e-12)
        self.post_rho.copy_(excess + torch.log(-torch.expm1(-excess)))  # inverse softplus
        if self.post_offdiag is not None:
            rows, cols = torch.tril_indices(self.num_terms, self.num_terms, offset=-1, device=chol.device)
            self.post_offdiag.copy_(chol[:, rows, cols])

    def _check(self, clusters: torch.Tensor, design: torch.Tensor) -> None:
        if design.dim() != 2 or design.shape[1] != self.num_terms:
            raise ValueError(f"design must have shape (batch, {self.num_terms}), got {list(design.shape)}.")
        if clusters.is_floating_point():
            if clusters.dim() != 2 or clusters.shape[1] != self.num_clusters:
                raise ValueError(f"z must have shape (batch, {self.num_clusters}), got {list(clusters.shape)}.")
        elif clusters.dim() != 1:
            raise ValueError(f"cluster indices must have shape (batch,), got {list(clusters.shape)}.")
        if clusters.shape[0] != design.shape[0]:
            raise ValueError(
                f"clusters and design disagree on the batch size: {clusters.shape[0]} vs {design.shape[0]}."
            )

    def moments(self, clusters: torch.Tensor, design: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of ``d^T u`` per sample, each ``(batch, 1)`` (zero for unseen clusters).

        With a soft ``z`` the effect is ``sum_k z_k d^T u_k`` and its variance ``sum_k z_k^2 d^T P_k d``.
        """
        self._check(clusters, design)
        design = design.to(self.loc.dtype)
        chol = self.posterior_cholesky()
        if clusters.is_floating_point():
            z = clusters.to(self.loc.dtype)
            mean = (z @ self.loc * design).sum(-1)
            spread = torch.einsum("bq,kqr->bkr", design, chol).square().sum(-1)  # (batch, K): d^T P_k d
            return mean.unsqueeze(-1), (z.square() * spread).sum(-1).unsqueeze(-1)
        seen = (clusters >= 0).to(design.dtype)
        index = clusters.clamp_min(0)
        mean = (self.loc[index] * design).sum(-1) * seen
        var = (design.unsqueeze(-1) * chol[index]).sum(-2).square().sum(-1) * seen  # |C_k^T d|^2
        return mean.unsqueeze(-1), var.unsqueeze(-1)

    def effects(self) -> torch.Tensor:
        """Effect vectors of every cluster, ``(K, q)``: one posterior sample in training, the means in eval."""
        if not self.training:
            return self.loc
        eps = torch.randn_like(self.loc).unsqueeze(-1)
        return self.loc + (self.posterior_cholesky() @ eps).squeeze(-1)

    def forward(self, clusters: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """Random effect ``d^T u`` per sample, ``(batch, 1)``: a posterior sample in training, the mean in eval."""
        self._check(clusters, design)
        design = design.to(self.loc.dtype)
        effects = self.effects()
        if clusters.is_floating_point():
            return ((clusters.to(effects.dtype) @ effects) * design).sum(-1, keepdim=True)
        seen = (clusters >= 0).to(design.dtype)
        return ((effects[clusters.clamp_min(0)] * design).sum(-1) * seen).unsqueeze(-1)

    def kl(self) -> torch.Tensor:
        """Closed-form ``KL(q || p)`` summed over clusters (differentiable in every parameter)."""
        return gaussian_kl_cholesky(self.loc, self.posterior_cholesky(), self.prior_cholesky())

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, num_terms={self.num_terms}, correlated={self.correlated}, "
            f"posterior={self.posterior!r}, learn_prior_scale={self.learn_prior_scale}"
            + (f", blocks={self.blocks}" if self.blocks > 1 else "")
        )
