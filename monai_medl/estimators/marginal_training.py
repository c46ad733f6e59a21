# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Train a Gaussian mixed-effects network on the exact marginal likelihood given its fixed-effects output."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from monai_medl.estimators.elbo_training import train_elbo
from monai_medl.estimators.gaussian_marginal import LevelDesign, gaussian_conditional_modes, gaussian_marginal_nll

if TYPE_CHECKING:  # the networks package imports MONAI; the estimators import without it
    from monai_medl.networks.layers.correlated_random_effects import CorrelatedRandomEffects
    from monai_medl.networks.nets.grouped_mixed_effects_net import GroupedMixedEffectsNet

__all__ = ["MarginalObjective", "train_marginal"]


class MarginalObjective:
    """The negative marginal log-likelihood per row of ``(x, clusters, y)`` given the network's output ``f(x)``,
    with the one grouping factor's random effects integrated out (:func:`gaussian_marginal_nll`).

    Args:
        network: a :class:`GroupedMixedEffectsNet` with one grouping factor (one output channel) and a learned noise
            s.d.; its prior covariance is the variance-component estimate, its posterior receives the conditional
            modes (:meth:`set_modes`).
        x, clusters, y: rows, ``(n, p)``, ``(n, 1)`` level indices and ``(n,)``.

    Called with ``levels`` (a LongTensor of level indices) it returns the loss on all rows of those levels, scaled by
    ``K / len(levels)`` so that a mini-batch of whole levels is an unbiased estimate of the full loss (None: all).
    """

    def __init__(self, network: GroupedMixedEffectsNet, x: torch.Tensor, clusters: torch.Tensor, y: torch.Tensor):
        factors = network.random_effects.factors
        if len(factors) != 1 or clusters.dim() != 2 or clusters.shape[1] != 1:
            raise ValueError(
                f"method='marginal' integrates out one grouping factor, got {len(factors)} ({list(factors)}): "
                "use method='elbo' for crossed or nested factors."
            )
        ((self.name, layer),) = factors.items()
        self.layer = cast("CorrelatedRandomEffects", layer)  # nn.ModuleDict types its items as Module
        self.network, self.x, self.y, self.clusters = network, x, y, clusters[:, 0]
        self.design = network.random_effects.design(self.name, x)

    def _parts(self, rows: torch.Tensor | None):
        if rows is None:
            return self.x, self.clusters, self.y, self.design
        return self.x[rows], self.clusters[rows], self.y[rows], self.design[rows]

    def __call__(self, levels: torch.Tensor | None = None) -> torch.Tensor:
        rows, scale = None, 1.0
        if levels is not None:
            chosen = torch.zeros(self.layer.num_clusters, dtype=torch.bool, device=self.clusters.device)
            chosen[levels] = True
            rows = torch.nonzero(chosen[self.clusters])[:, 0]
            scale = self.layer.num_clusters / len(levels)
        x, clusters, y, design = self._parts(rows)
        residual = y - self.network.fixed(x)[:, 0]
        log_sd = cast(torch.Tensor, self.network.log_noise_scale)  # a regressor's network learns the noise s.d.
        grouping = LevelDesign(clusters, design, self.layer.num_clusters)
        nll = gaussian_marginal_nll(residual, grouping, self.layer.prior_cholesky(), log_sd)
        return nll * scale / len(self.y)

    @torch.no_grad()
    def set_modes(self) -> None:
        """Put the conditional modes (and conditional covariances) of the effects given every row into the layer."""
        residual = self.y - self.network.fixed(self.x)[:, 0]
        log_sd = cast(torch.Tensor, self.network.log_noise_scale)
        grouping = LevelDesign(self.clusters, self.design, self.layer.num_clusters)
        loc, chol = gaussian_conditional_modes(residual, grouping, self.layer.prior_cholesky(), log_sd)
        self.layer.set_posterior(loc, chol)


def train_marginal(network: GroupedMixedEffectsNet, x, clusters, y, validation=None, **train_args) -> dict:
    """Minimise :class:`MarginalObjective` over the fixed-effects network, the noise s.d. and the variance
    components with :func:`train_elbo` (``batch_size`` counts whole levels for Adam); the layer's posterior is
    then set to the conditional modes given the rows.

    ``validation``: held-out ``(x, clusters, y)`` for early stopping, monitored by the squared error of the
    conditional prediction (fixed part plus the modes given the training rows).
    """
    objective = MarginalObjective(network, x, clusters, y)
    posterior = [p for p in objective.layer.posterior_parameters() if p.requires_grad]
    for p in posterior:
        p.requires_grad_(False)  # integrated out, not optimised
    monitor = None
    if validation is not None:
        xv, cv, yv = validation

        def monitor() -> float:
            objective.set_modes()
            with torch.no_grad():
                mean, _ = network.moments(xv, cv)
                return float((yv - mean[:, 0]).square().mean())

    try:
        info = train_elbo(
            objective, list(network.parameters()), objective.layer.num_clusters, monitor=monitor, **train_args
        )
    finally:
        for p in posterior:
            p.requires_grad_(True)
    objective.set_modes()
    with torch.no_grad():
        info["loglik"] = -float(objective()) * len(y)
    return info
