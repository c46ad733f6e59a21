# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Reversible instance normalisation (RevIN) with per-cluster intensity statistics for counterfactual decoding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

__all__ = ["ReversibleInstanceNorm"]


class ReversibleInstanceNorm(nn.Module):
    """Normalise each item and channel by its own mean and s.d., and restore them on the way out.

    After the idea of reversible instance normalisation (Kim et al., "Reversible instance normalization for accurate
    time-series forecasting against distribution shift", ICLR 2022): a network sees ``(x - mean) / sd`` per item
    and channel (statistics over the spatial dims), so its features carry no per-item brightness/contrast, and its
    output is mapped back with the same item's statistics, so the output does not have to carry them either.

    The statistics are kept as ``(mean, log sd)`` pairs of shape ``(batch, channels, 2)``. For counterfactual
    decoding the layer also accumulates, in training mode, the average statistics of each cluster (imaging batch)
    from the cluster design ``z`` (exact running sums, weighted by ``z``; soft designs allowed): :meth:`shift` moves
    an item's statistics from its cluster to another one by the difference of the two clusters' offsets from the
    overall average (``z = 0``, an unseen cluster, is taken to sit at the overall average). Clusters never seen in
    training have offset 0. Under DistributedDataParallel (default ``broadcast_buffers``) the sums of rank 0 are kept.

    Args:
        channels: number of channels of the input.
        num_clusters: number of clusters of ``z`` (0 disables the cluster statistics).
        eps: added to the variance before the square root. Defaults to 1e-5.

    Example::

        >>> norm = ReversibleInstanceNorm(channels=1, num_clusters=3)
        >>> x = torch.rand(2, 1, 8, 8)
        >>> xn, stats = norm.normalize(x)
        >>> torch.allclose(norm.denormalize(xn, stats), x, atol=1e-5)
        True
    """

    if TYPE_CHECKING:  # buffers, for the type checker only (TorchScript reads no postponed annotations)
        cluster_sum: torch.Tensor
        cluster_count: torch.Tensor

    def __init__(self, channels: int, num_clusters: int, eps: float = 1e-5) -> None:
        super().__init__()
        if channels < 1 or num_clusters < 0:
            raise ValueError(f"channels must be >= 1 and num_clusters >= 0, got {channels} and {num_clusters}.")
        self.channels = channels
        self.num_clusters = num_clusters
        self.eps = eps
        self.register_buffer("cluster_sum", torch.zeros(num_clusters, channels, 2))
        self.register_buffer("cluster_count", torch.zeros(num_clusters))

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, channels, 2)`` per-item ``(mean, log sd)`` over the spatial dims of ``x``."""
        flat = x.flatten(2)
        mean = flat.mean(2)
        var = flat.var(2, unbiased=False)
        return torch.stack([mean, 0.5 * torch.log(var + self.eps)], dim=2)

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``((x - mean) / sd, statistics)``."""
        stats = self.statistics(x)
        view = [x.shape[0], x.shape[1]] + [1] * (x.dim() - 2)
        return (x - stats[..., 0].view(view)) * torch.exp(-stats[..., 1]).view(view), stats

    def denormalize(self, y: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """``y * sd + mean`` with the statistics of :meth:`normalize` (or shifted ones)."""
        view = [y.shape[0], y.shape[1]] + [1] * (y.dim() - 2)
        return y * torch.exp(stats[..., 1]).view(view) + stats[..., 0].view(view)

    def update(self, stats: torch.Tensor, z: torch.Tensor) -> None:
        """Add the statistics of a training batch to the cluster sums (weights ``z``, ``(batch, num_clusters)``)."""
        with torch.no_grad():
            w = z.detach().to(stats.dtype)
            self.cluster_sum.add_((w.t() @ stats.detach().flatten(1)).view(self.cluster_sum.shape))
            self.cluster_count.add_(w.sum(0))

    def cluster_offsets(self) -> torch.Tensor:
        """``(num_clusters, channels, 2)`` average statistics of each cluster minus the overall average."""
        count = self.cluster_count.view(-1, 1, 1)
        overall = self.cluster_sum.sum(0, keepdim=True) / self.cluster_count.sum().clamp(min=1e-12)
        offsets = self.cluster_sum / count.clamp(min=1e-12) - overall
        return torch.where(count > 0, offsets, torch.zeros_like(offsets))

    def shift(
        self,
        stats: torch.Tensor,
        z: Optional[torch.Tensor],
        z_target: torch.Tensor,
    ) -> torch.Tensor:
        """Statistics of items of cluster design ``z`` (None: population) moved to the design ``z_target``."""
        offsets = self.cluster_offsets().flatten(1)
        delta = z_target.to(stats.dtype) @ offsets
        if z is not None:
            delta = delta - z.to(stats.dtype) @ offsets
        return stats + delta.view(stats.shape)
