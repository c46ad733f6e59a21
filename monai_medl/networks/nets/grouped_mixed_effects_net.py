# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Any fixed-effects network plus the random effects of several grouping factors (crossed or nested)."""

from __future__ import annotations

import math

import torch
from torch import nn

from monai_medl.networks.layers.grouped_random_effects import GroupedRandomEffects

__all__ = ["GroupedMixedEffectsNet"]


class GroupedMixedEffectsNet(nn.Module):
    """``fixed(x) + sum_f d_f^T u_f``: a fixed-effects network with additive random effects of several factors.

    ``fixed`` maps ``x`` (``(batch, in_features)``) to ``(batch, C)`` (a linear layer gives a linear mixed model,
    an MLP a mixed model with non-linear fixed effects); the random intercepts and slopes of every grouping factor
    come from a :class:`~monai_medl.networks.layers.GroupedRandomEffects` with ``out_channels=C`` (e.g. ``C``
    logits of a C-class model). ``clusters=None`` (or ``-1`` in a
    factor's column) is the population level of all (or of that) factor(s).

    Args:
        fixed: fixed-effects network, ``x -> (batch, C)``.
        random_effects: the grouped random-effects layer (its slope columns index ``x``).
        learn_noise_scale: hold a learned Gaussian noise s.d. (``exp(log_noise_scale)``) for regression.
            Defaults to False.

    Example::

        >>> re = GroupedRandomEffects({"site": 4, "subject": 20})
        >>> net = GroupedMixedEffectsNet(nn.Linear(3, 1), re).eval()
        >>> net(torch.randn(5, 3), torch.tensor([[0, 1]] * 5)).shape
        torch.Size([5, 1])
        >>> logits = GroupedMixedEffectsNet(nn.Linear(3, 4), GroupedRandomEffects({"site": 4}, out_channels=4))
        >>> logits.eval()(torch.randn(5, 3), torch.zeros(5, 1, dtype=torch.long)).shape
        torch.Size([5, 4])
    """

    def __init__(self, fixed: nn.Module, random_effects: GroupedRandomEffects, learn_noise_scale: bool = False):
        super().__init__()
        self.fixed = fixed
        self.random_effects = random_effects
        self.log_noise_scale = nn.Parameter(torch.tensor(math.log(1.0))) if learn_noise_scale else None

    def forward(self, x: torch.Tensor, clusters: torch.Tensor | None = None) -> torch.Tensor:
        """Prediction (logits for classification), ``(batch, C)``; a posterior sample of the effects in training."""
        fixed = self.fixed(x)
        if clusters is None:
            return fixed
        return fixed + self.random_effects(clusters, x).to(fixed.dtype)

    def moments(
        self, x: torch.Tensor, clusters: torch.Tensor, full_covariance: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean ``(batch, C)`` and variance ``(batch, C)`` of the prediction per sample.

        The fixed part is a point estimate. ``full_covariance=True``: the covariance between the channels,
        ``(batch, C, C)``, instead of the variances.
        """
        mean, spread = self.random_effects.moments(clusters, x, full_covariance=full_covariance)
        return self.fixed(x) + mean, spread

    def kl(self) -> torch.Tensor:
        """KL term of all random effects."""
        return self.random_effects.kl()
