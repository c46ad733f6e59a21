# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The exact ELBO optimum of a Gaussian linear mixed model's random-effects posterior, in closed form."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the networks package imports MONAI; the estimators import without it
    from monai_medl.networks.layers.correlated_random_effects import CorrelatedRandomEffects

__all__ = ["ConjugatePosterior"]


class ConjugatePosterior:
    """Sets a random-effects layer's posterior to the ELBO's optimum given every other parameter (Gaussian case).

    For ``y_i = f(x_i) + d_i^T u_{k(i)} + e_i`` with ``e_i ~ N(0, s^2)``, prior ``u_k ~ N(0, Sigma)`` and one
    grouping factor, the expected log-likelihood is quadratic in ``u``, so the ELBO's optimum over a joint Gaussian
    posterior per cluster is the exact conditional posterior (conjugacy):

    ``P_k = (Sigma^-1 + G_k / s^2)^-1``, ``m_k = P_k b_k / s^2``, with ``G_k = sum_{i in k} d_i d_i^T`` and
    ``b_k = sum_{i in k} d_i (y_i - f(x_i))``.

    At that optimum the ELBO equals the marginal log-likelihood of ``(f, s, Sigma)``, and its gradient in those
    parameters, taken with the posterior held fixed, is the gradient of the collapsed objective (the posterior is
    a stationary point, so its own change does not contribute). An optimiser therefore only iterates over the
    fixed effects, the noise s.d. and the variance components, and calls :meth:`update` before every evaluation
    of the ELBO. ``G_k`` depends on the design only and is computed once.

    Args:
        layer: the factor's random effects (one output channel, all clusters seen in ``clusters``); its posterior
            must be able to hold the optimum: ``posterior="full"``, or a single term.
        clusters: level index per sample, ``(n,)``, all ``>= 0``.
        design: design rows ``d_i``, ``(n, q)``.

    Example::

        >>> from monai_medl.networks.layers.correlated_random_effects import CorrelatedRandomEffects
        >>> layer = CorrelatedRandomEffects(num_clusters=2, num_terms=1, prior_scale=1.0)
        >>> clusters, design = torch.tensor([0, 0, 1]), torch.ones(3, 1)
        >>> ConjugatePosterior(layer, clusters, design).update(torch.tensor([1.0, 1.0, -2.0]), noise_var=1.0)
        >>> layer.loc.detach().squeeze(-1).tolist()  # (sum of residuals) / (n_k + s^2 / sigma^2)
        [0.6666666865348816, -1.0]
    """

    def __init__(self, layer: CorrelatedRandomEffects, clusters: torch.Tensor, design: torch.Tensor) -> None:
        if layer.posterior != "full" and layer.num_terms > 1:
            raise ValueError(
                "a closed-form posterior update needs posterior='full' (a diagonal posterior cannot hold the exact "
                f"optimum of {layer.num_terms} correlated terms)."
            )
        if clusters.dim() != 1 or clusters.is_floating_point() or bool((clusters < 0).any()):
            raise ValueError("clusters must be (n,) integer level indices >= 0 (every training level seen).")
        if design.dim() != 2 or design.shape != (clusters.shape[0], layer.num_terms):
            raise ValueError(f"design must be (n, {layer.num_terms}), got {list(design.shape)}.")
        self.layer = layer
        self.clusters = clusters
        self.design = design.to(layer.loc.dtype)
        outer = self.design[:, :, None] * self.design[:, None, :]
        self.gram = outer.new_zeros(layer.num_clusters, layer.num_terms, layer.num_terms).index_add_(0, clusters, outer)

    @torch.no_grad()
    def update(self, residual: torch.Tensor, noise_var: torch.Tensor | float) -> None:
        """Set the layer's posterior to its optimum for residuals ``y - f(x)`` ``(n,)`` and noise variance ``s^2``."""
        layer = self.layer
        noise_var = torch.as_tensor(noise_var, dtype=self.design.dtype, device=self.design.device)
        score = torch.zeros_like(layer.loc).index_add_(
            0, self.clusters, self.design * residual.to(self.design)[:, None]
        )
        prior_precision = torch.cholesky_inverse(layer.prior_cholesky().detach())
        precision_chol = torch.linalg.cholesky(prior_precision + self.gram / noise_var)
        loc = torch.cholesky_solve((score / noise_var).unsqueeze(-1), precision_chol).squeeze(-1)
        chol = torch.linalg.cholesky(torch.cholesky_inverse(precision_chol))
        layer.set_posterior(loc, chol)
