# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Non-adversarial invariance: match the feature distributions of the sites, within each label class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.losses.adversarial_regularizer import label_indices
from monai_medl.losses.feature_scaling import FEATURE_SCALINGS, scale_invariant

__all__ = ["SiteAlignmentLoss"]


class SiteAlignmentLoss(nn.Module):
    """``lambda_align`` times the mismatch between each site's features and the other sites' features, per class.

    For every cell (label class ``c``, site ``s``) of the batch, the seen items of site ``s`` in class ``c`` are
    compared with the seen items of the *other* sites in class ``c``; the loss is the mean over the cells where both
    sides are present. Comparing within a class (``label_classes=C``) aligns ``P(h | site, y)`` across sites, which
    leaves the features free to predict the label even when the label's base rate differs between sites (the
    site-confounded case in which matching ``P(h | site)`` would fight the disease signal); ``label_classes=0`` is the
    unconditional version (one class). There is no adversary to keep up with: the mismatch is measured directly on
    the batch.

    * ``kind="coral"``: mean squared difference of the means plus mean squared difference of the covariance
      entries (CORAL, Sun & Saenko 2016, with the means added); the covariance term needs two items on both sides.
    * ``kind="mmd"``: squared maximum mean discrepancy (biased V-statistic) with a Gaussian kernel whose bandwidth
      is the median pairwise distance of the batch (detached) times each of ``bandwidth_scales`` (kernels averaged).

    Both act on a scale-invariant view of the features (``feature_scaling``, :func:`~monai_medl.losses.scale_invariant`;
    raw features would let the encoder shrink the mismatch by shrinking the features). Items with a negative site
    (the unseen marker) take no part in any cell; an empty or one-sided cell is skipped (and a batch without any
    comparable cell gives 0). No host synchronisation: the cells are one-hot weights, not Python loops.

    Args:
        num_clusters: number of training sites (site indices ``0 .. num_clusters - 1``).
        kind: ``"coral"`` or ``"mmd"``. Defaults to ``"coral"``.
        lambda_align: weight of the returned term. Defaults to 1.0.
        label_classes: 0 (unconditional) or the number of label classes ``C >= 2``. Defaults to 0.
        feature_scaling: :data:`~monai_medl.losses.FEATURE_SCALINGS` mode. Defaults to ``"batch_std"``.
        bandwidth_scales: multipliers of the median bandwidth (``kind="mmd"``). Defaults to ``(0.5, 1.0, 2.0)``.

    Example::

        >>> loss = SiteAlignmentLoss(num_clusters=3, kind="mmd", lambda_align=0.3, label_classes=2)
        >>> h = torch.randn(8, 4, requires_grad=True)
        >>> sites, labels = torch.tensor([0, 1, 2, 0, 1, 2, -1, 0]), torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
        >>> term = loss(h, sites, labels)
        >>> term.dim(), bool(term >= 0)
        (0, True)
        >>> term.backward()
    """

    def __init__(
        self,
        num_clusters: int,
        kind: str = "coral",
        lambda_align: float = 1.0,
        label_classes: int = 0,
        feature_scaling: str = "batch_std",
        bandwidth_scales: tuple[float, ...] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__()
        if type(num_clusters) is not int or num_clusters < 2:
            raise ValueError(f"SiteAlignmentLoss: num_clusters must be an integer >= 2, got {num_clusters!r}.")
        if kind not in ("coral", "mmd"):
            raise ValueError(f"SiteAlignmentLoss: kind must be 'coral' or 'mmd', got {kind!r}.")
        if not lambda_align >= 0:
            raise ValueError(f"SiteAlignmentLoss: lambda_align must be >= 0, got {lambda_align!r}.")
        if type(label_classes) is not int or label_classes < 0 or label_classes == 1:
            raise ValueError(f"SiteAlignmentLoss: label_classes must be 0 or an integer >= 2, got {label_classes!r}.")
        if feature_scaling not in FEATURE_SCALINGS:
            raise ValueError(
                f"SiteAlignmentLoss: feature_scaling must be one of {FEATURE_SCALINGS}, got {feature_scaling!r}."
            )
        if not bandwidth_scales or any(not b > 0 for b in bandwidth_scales):
            raise ValueError(f"SiteAlignmentLoss: bandwidth_scales must be positive numbers, got {bandwidth_scales!r}.")
        self.num_clusters, self.kind, self.lambda_align = num_clusters, kind, float(lambda_align)
        self.label_classes, self.feature_scaling = label_classes, feature_scaling
        self.bandwidth_scales = tuple(float(b) for b in bandwidth_scales)

    def forward(self, features: torch.Tensor, sites: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted mismatch (a 0-dim tensor) of the ``(batch, n)`` ``features`` (``(batch, ...)`` is flattened)."""
        h = features.flatten(1)
        sites = torch.as_tensor(sites).reshape(-1).to(h.device).long()
        if sites.shape[0] != h.shape[0]:
            raise ValueError(f"SiteAlignmentLoss: {h.shape[0]} feature rows but {sites.shape[0]} site indices.")
        if self.lambda_align == 0:
            return h.new_zeros(())
        classes = max(self.label_classes, 1)
        cls = label_indices(labels, h.shape[0], classes, h.device) if self.label_classes else torch.zeros_like(sites)
        seen = (sites >= 0).to(h.dtype)[:, None]
        cell = F.one_hot(cls * self.num_clusters + sites.clamp_min(0), classes * self.num_clusters).to(h.dtype) * seen
        same_class = (F.one_hot(cls, classes).to(h.dtype) * seen).repeat_interleave(self.num_clusters, dim=1)
        rest = same_class - cell  # seen items of the cell's class at the other sites
        z = scale_invariant(h, self.feature_scaling)
        if self.kind == "coral":
            mismatch = self._coral(z, cell, rest)
        else:
            mismatch = self._mmd(z, cell, rest)
        return self.lambda_align * mismatch

    @staticmethod
    def _moments(z: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Counts ``(G,)``, means ``(G, n)`` and unbiased covariances ``(G, n, n)`` of each cell's members."""
        count = member.sum(0)
        mean = member.t() @ z / count.clamp_min(1.0)[:, None]
        centred = z[None] - mean[:, None]  # (G, batch, n)
        cov = torch.einsum("bg,gbi,gbj->gij", member, centred, centred) / (count - 1).clamp_min(1.0)[:, None, None]
        return count, mean, cov

    def _coral(self, z: torch.Tensor, cell: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        n_a, mean_a, cov_a = self._moments(z, cell)
        n_b, mean_b, cov_b = self._moments(z, rest)
        has_mean = ((n_a >= 1) & (n_b >= 1)).to(z.dtype)
        has_cov = ((n_a >= 2) & (n_b >= 2)).to(z.dtype)
        mean_term = (mean_a - mean_b).pow(2).mean(1)
        cov_term = (cov_a - cov_b).pow(2).mean((1, 2))
        return (mean_term * has_mean).sum() / has_mean.sum().clamp_min(1.0) + (cov_term * has_cov).sum() / (
            has_cov.sum().clamp_min(1.0)
        )

    def _mmd(self, z: torch.Tensor, cell: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(z, z).pow(2)
        if z.shape[0] > 1:  # integer indices of the pairs: no device synchronisation, unlike a boolean mask
            i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
            median = d2.detach()[i, j].median().clamp_min(1e-12)
        else:
            median = d2.new_ones(())
        scales = (torch.exp(-d2 / (2 * s * s * median)) for s in self.bandwidth_scales)
        kernel = sum(scales, d2.new_zeros(())) / len(self.bandwidth_scales)  # start from a tensor: 0 + x is exact
        n_a, n_b = cell.sum(0), rest.sum(0)
        a, b = cell / n_a.clamp_min(1.0), rest / n_b.clamp_min(1.0)
        ka, kb = kernel @ a, kernel @ b
        mmd2 = (ka * a).sum(0) + (kb * b).sum(0) - 2 * (ka * b).sum(0)
        valid = ((n_a >= 1) & (n_b >= 1)).to(z.dtype)
        return (mmd2.clamp_min(0.0) * valid).sum() / valid.sum().clamp_min(1.0)
