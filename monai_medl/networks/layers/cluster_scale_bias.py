# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Cluster scale/bias block: random slopes and intercepts on feature maps."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.layers.factories import Norm
from torch import nn

from monai_medl.networks.layers.random_effects import RandomEffects

__all__ = ["ClusterScaleBias"]


class ClusterScaleBias(nn.Module):
    """Instance norm followed by a cluster-specific affine map ``(1 + gamma(z)) * x + beta(z)``.

    ``gamma`` and ``beta`` are :class:`RandomEffects` layers with one unit per channel, broadcast over the spatial
    axes, so each training cluster gets its own contrast and offset per feature map while the population-level
    (``z = 0``) path is a plain instance-normalised map. Put the activation after this block.

    Args:
        spatial_dims: number of spatial dimensions (0 for ``(batch, channels)`` vectors, 1, 2 or 3).
        channels: number of feature channels.
        num_clusters: number of training clusters (width of ``z``).
        prior_scale: prior s.d. of ``gamma`` and ``beta``. Defaults to 0.25.
        learn_prior_scale: learn the prior s.d. (variance component). Defaults to False.
        post_loc_init_scale: s.d. of the initial posterior means. Defaults to 0.1.
        post_scale_init: initial posterior s.d. range. Defaults to ``(6e-5, 0.01)`` as in the ARMED reference.
        affine: learnable population-level affine of the instance norm. Defaults to True.

    Example::

        >>> block = ClusterScaleBias(spatial_dims=3, channels=8, num_clusters=5).eval()
        >>> x, z = torch.randn(2, 8, 4, 4, 4), torch.eye(5)[[1, 3]]
        >>> block(x, z).shape
        torch.Size([2, 8, 4, 4, 4])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_clusters: int,
        prior_scale: float = 0.25,
        learn_prior_scale: bool = False,
        post_loc_init_scale: float = 0.1,
        post_scale_init: tuple[float, float] = (6e-5, 0.01),
        affine: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"spatial_dims must be 0, 1, 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        if spatial_dims == 0:
            self.norm: nn.Module = nn.LayerNorm(channels, elementwise_affine=affine)
        else:
            self.norm = Norm[Norm.INSTANCE, spatial_dims](channels, affine=affine)
        kwargs: dict[str, Any] = dict(
            num_clusters=num_clusters,
            units=channels,
            prior_scale=prior_scale,
            learn_prior_scale=learn_prior_scale,
            post_loc_init_scale=post_loc_init_scale,
            post_scale_init=post_scale_init,
        )
        self.gamma = RandomEffects(**kwargs)
        self.beta = RandomEffects(**kwargs)

    @classmethod
    def around(
        cls,
        norm: nn.Module,
        channels: int,
        spatial_dims: int,
        num_clusters: int,
        prior_scale: float = 0.25,
        learn_prior_scale: bool = False,
    ) -> ClusterScaleBias:
        """A block that keeps an existing normalisation layer ``norm`` (the backbone's own module and weights, so that
        ``z = 0`` reproduces the backbone exactly) and adds the cluster scale/bias to its output."""
        block = cls(spatial_dims, channels, num_clusters, prior_scale=prior_scale, learn_prior_scale=learn_prior_scale)
        block.norm = norm
        return block

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if z is None:
            return x
        return self.modulate(x, z)

    def modulate(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The cluster-specific affine map ``(1 + gamma(z)) * x + beta(z)`` of an already normalised ``x`` (what
        :meth:`forward` applies after the norm; a caller that needs the norm's output too runs the norm once)."""
        shape = [x.shape[0], x.shape[1]] + [1] * self.spatial_dims
        # the bias is added in place: one feature-map-sized allocation fewer (the product is not saved for backward);
        # addcmul(beta, x, 1 + gamma) would be one pass, but its broadcast first operand makes it ~3x slower on CPU
        return ((1 + self.gamma(z).view(shape)) * x).add_(self.beta(z).view(shape))
