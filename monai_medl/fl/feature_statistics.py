# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Invariance without pooled features: class-conditional feature statistics shared by the sites, and the penalty.

An adversary on the features needs every site's features in one place. The federated form shares, per label class,
the count, mean and covariance of a site's (per-item layer-normalised) features; the server pools them into the
federation's class-conditional moments, and each site adds a CORAL-style penalty pulling the moments of its batches
towards them (the same mismatch :class:`~monai_medl.losses.SiteAlignmentLoss` measures between sites in one batch).
What this reveals about a site: its number of training items per class (its label prevalence) and, per class, the
``d`` means and ``d (d + 1) / 2`` covariance entries of its ``d``-dimensional normalised features; no item's
features, no label of an item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.losses.adversarial_regularizer import label_indices
from monai_medl.losses.feature_scaling import scale_invariant
from monai_medl.losses.site_alignment import SiteAlignmentLoss

__all__ = ["STATS_PREFIX", "FEATURE_SCALING", "class_statistics", "pool_statistics", "FederatedAlignmentLoss"]

STATS_PREFIX = "__feature_stats__."
"""Prefix of the statistics entries a site sends (``<prefix>count``, ``<prefix>mean``, ``<prefix>cov``)."""

FEATURE_SCALING = "layer"
"""Per-item normalisation: batch statistics would differ between sites and remove the very shift to be aligned."""


def _class_members(features: torch.Tensor, labels: torch.Tensor | None, label_classes: int) -> torch.Tensor:
    classes = max(label_classes, 1)
    if label_classes:
        cls = label_indices(labels, features.shape[0], classes, features.device)
    else:
        cls = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
    return F.one_hot(cls, classes).to(features.dtype)


@torch.no_grad()
def class_statistics(
    features: torch.Tensor, labels: torch.Tensor | None = None, label_classes: int = 0
) -> dict[str, torch.Tensor]:
    """Counts ``(C,)``, means ``(C, d)`` and covariances ``(C, d, d)`` of the normalised ``(n, d)`` features per class.

    ``label_classes=0`` gives one unconditional class. Keys carry :data:`STATS_PREFIX`.

    Example::

        >>> h, y = torch.randn(10, 3), torch.tensor([0, 1] * 5)
        >>> stats = class_statistics(h, y, label_classes=2)
        >>> stats["__feature_stats__.count"].tolist(), tuple(stats["__feature_stats__.cov"].shape)
        ([5.0, 5.0], (2, 3, 3))
    """
    z = scale_invariant(features.flatten(1).double(), FEATURE_SCALING)
    count, mean, cov = SiteAlignmentLoss._moments(z, _class_members(z, labels, label_classes))
    return {f"{STATS_PREFIX}count": count, f"{STATS_PREFIX}mean": mean, f"{STATS_PREFIX}cov": cov}


def pool_statistics(site_stats: Sequence[Mapping[str, object]]) -> dict[str, torch.Tensor]:
    """The federation's per-class moments from the sites' (exactly those of the union of their items).

    Pooled covariance ``(sum_k (n_k - 1) C_k + n_k (m_k - m)(m_k - m)^T) / (N - 1)`` with ``m`` the pooled mean.

    Example::

        >>> h, y = torch.randn(12, 2), torch.tensor([0, 1] * 6)
        >>> pooled = pool_statistics([class_statistics(h[:5], y[:5], 2), class_statistics(h[5:], y[5:], 2)])
        >>> all_at_once = class_statistics(h, y, 2)
        >>> all(torch.allclose(pooled[k], all_at_once[k]) for k in pooled)
        True
    """
    if not site_stats:
        raise ValueError("pool_statistics needs the statistics of at least one site.")
    counts = torch.stack([torch.as_tensor(s[f"{STATS_PREFIX}count"], dtype=torch.float64) for s in site_stats])
    means = torch.stack([torch.as_tensor(s[f"{STATS_PREFIX}mean"], dtype=torch.float64) for s in site_stats])
    covs = torch.stack([torch.as_tensor(s[f"{STATS_PREFIX}cov"], dtype=torch.float64) for s in site_stats])
    total = counts.sum(0)  # (C,)
    mean = (counts[..., None] * means).sum(0) / total.clamp_min(1.0)[:, None]
    offset = means - mean[None]
    scatter = (counts - 1).clamp_min(0)[..., None, None] * covs
    scatter = scatter + counts[..., None, None] * offset[..., :, None] * offset[..., None, :]
    cov = scatter.sum(0) / (total - 1).clamp_min(1.0)[:, None, None]
    return {f"{STATS_PREFIX}count": total, f"{STATS_PREFIX}mean": mean, f"{STATS_PREFIX}cov": cov}


class FederatedAlignmentLoss(nn.Module):
    """``lambda_align`` times the CORAL mismatch of a batch's class-conditional moments and the federation's.

    Per class present in the batch: mean squared difference of the means plus (with two items of the class) mean
    squared difference of the covariance entries, averaged over the classes, on the same per-item normalisation as
    :func:`class_statistics`.

    Args:
        target: the federation's statistics (:func:`pool_statistics`, as the server sends them).
        label_classes: 0 (unconditional) or the number of label classes. Defaults to 0.
        lambda_align: weight of the returned term. Defaults to 1.0.

    Example::

        >>> target = class_statistics(torch.randn(40, 3), torch.tensor([0, 1] * 20), label_classes=2)
        >>> loss = FederatedAlignmentLoss(target, label_classes=2, lambda_align=0.5)
        >>> h = torch.randn(8, 3, requires_grad=True)
        >>> term = loss(h, torch.tensor([0, 1] * 4))
        >>> term.backward(); bool(term > 0)
        True
    """

    def __init__(self, target: Mapping[str, object], label_classes: int = 0, lambda_align: float = 1.0) -> None:
        super().__init__()
        mean = torch.as_tensor(target[f"{STATS_PREFIX}mean"], dtype=torch.float32)
        classes = max(label_classes, 1)
        if mean.dim() != 2 or mean.shape[0] != classes:
            raise ValueError(
                f"FederatedAlignmentLoss: the federation's statistics have means of shape {list(mean.shape)}, "
                f"expected ({classes}, features) for label_classes={label_classes}."
            )
        if not lambda_align >= 0:
            raise ValueError(f"FederatedAlignmentLoss: lambda_align must be >= 0, got {lambda_align!r}.")
        self.label_classes, self.lambda_align = label_classes, float(lambda_align)
        self.target_mean: torch.Tensor
        self.target_cov: torch.Tensor
        self.register_buffer("target_mean", mean)
        self.register_buffer("target_cov", torch.as_tensor(target[f"{STATS_PREFIX}cov"], dtype=torch.float32))

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = scale_invariant(features.flatten(1), FEATURE_SCALING)
        if z.shape[1] != self.target_mean.shape[1]:
            raise ValueError(
                f"FederatedAlignmentLoss: features have {z.shape[1]} columns, "
                f"the federation's {self.target_mean.shape[1]}."
            )
        count, mean, cov = SiteAlignmentLoss._moments(z, _class_members(z, labels, self.label_classes))
        has_mean, has_cov = (count >= 1).to(z.dtype), (count >= 2).to(z.dtype)
        mean_term = (mean - self.target_mean).pow(2).mean(1)
        cov_term = (cov - self.target_cov).pow(2).mean((1, 2))
        mismatch = (mean_term * has_mean).sum() / has_mean.sum().clamp_min(1.0)
        mismatch = mismatch + (cov_term * has_cov).sum() / has_cov.sum().clamp_min(1.0)
        return self.lambda_align * mismatch
