# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects head: fixed logits plus cluster-specific random slopes and intercepts on any feature vector."""

from __future__ import annotations

import math

import torch
from torch import nn

from monai_medl.networks.layers.random_effects import RandomEffects

__all__ = ["MixedEffectsHead"]


class MixedEffectsHead(nn.Module):
    """Fixed and mixed linear read-outs of penultimate features ``h``.

    ``fixed = W h + b`` and ``mixed = W [h * (1 + u_s(z))] + b + u_0(z)``, where ``u_s`` (random slopes, one per
    feature) and ``u_0`` (random intercept, one per output channel) are :class:`RandomEffects` layers. The fixed
    read-out needs no cluster information; with ``z`` None or all zeros the mixed read-out equals it exactly.

    Args:
        in_features: length of the feature vector ``h``.
        out_channels: number of outputs (classes, or 1 for binary / regression).
        num_clusters: number of training clusters (width of ``z``).
        random_slopes: multiply ``h`` by ``1 + u_s(z)``. Defaults to True.
        random_intercept: add ``u_0(z)``. Defaults to True.
        slope_prior_scale: prior s.d. of the random slopes. Defaults to 0.1.
        intercept_prior_scale: prior s.d. of the random intercept. Defaults to 0.1.
        learn_prior_scale: learn the prior s.d.s (variance components). Defaults to False.
        post_loc_init_scale: s.d. of the initial posterior means. Defaults to 0.1.
        learn_noise_scale: hold a learned Gaussian noise s.d. for regression trained with a likelihood loss
            (``MixedEffectsLoss(task="gaussian_nll")``). Defaults to False.

    Example::

        >>> head = MixedEffectsHead(in_features=16, out_channels=2, num_clusters=3).eval()
        >>> mixed, fixed = head(torch.randn(4, 16), torch.zeros(4, 3))
        >>> torch.equal(mixed, fixed)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        num_clusters: int,
        random_slopes: bool = True,
        random_intercept: bool = True,
        slope_prior_scale: float = 0.1,
        intercept_prior_scale: float = 0.1,
        learn_prior_scale: bool = False,
        post_loc_init_scale: float = 0.1,
        learn_noise_scale: bool = False,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_channels)
        common = {"num_clusters": num_clusters, "learn_prior_scale": learn_prior_scale}
        self.slopes: RandomEffects | None = (
            RandomEffects(
                units=in_features, prior_scale=slope_prior_scale, post_loc_init_scale=post_loc_init_scale, **common
            )
            if random_slopes
            else None
        )
        self.intercept: RandomEffects | None = (
            RandomEffects(
                units=out_channels,
                prior_scale=intercept_prior_scale,
                post_loc_init_scale=post_loc_init_scale,
                **common,
            )
            if random_intercept
            else None
        )
        self.log_noise_scale: nn.Parameter | None = (
            nn.Parameter(torch.tensor(math.log(1.0))) if learn_noise_scale else None
        )

    def forward(self, h: torch.Tensor, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mixed, fixed)`` logits, each ``(batch, out_channels)``."""
        fixed = self.linear(h)
        if z is None:
            return fixed, fixed
        return self._mixed(h, z, fixed), fixed

    def predict(self, h: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The mixed logits alone (inference: the fixed head is not evaluated when the slopes replace it)."""
        if z is None or self.slopes is None:
            return self.forward(h, z)[0]
        return self._mixed(h, z, None)

    def _mixed(self, h: torch.Tensor, z: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
        slopes = self.slopes
        if slopes is not None:
            mixed = self.linear(h * (1 + slopes(z)))
        else:
            assert fixed is not None
            mixed = fixed
        intercept = self.intercept
        if intercept is not None:
            mixed = mixed + intercept(z)
        return mixed
