# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Interpretation read-outs of a trained mixed-effects network that relate its random effects to the data."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.stats import pearsonr
from torch import nn

from monai_medl.utils.summary import random_intercepts

__all__ = ["InterceptPrevalence", "random_intercept_vs_prevalence"]


class InterceptPrevalence(NamedTuple):
    """Per-cluster random intercepts against the clusters' positive rates.

    Attributes:
        r: Pearson correlation over the clusters used.
        p_value: two-sided p-value of ``r`` (scipy's exact test under bivariate normality).
        clusters: indices (columns of ``z``) of the clusters used.
        intercepts: their random intercepts (posterior means) for the chosen output channel.
        prevalence: their rate of ``labels == positive``.
        counts: their numbers of samples.
    """

    r: float
    p_value: float
    clusters: np.ndarray
    intercepts: np.ndarray
    prevalence: np.ndarray
    counts: np.ndarray


def random_intercept_vs_prevalence(
    model: nn.Module,
    sites,
    labels,
    channel: int = 0,
    positive: int = 1,
    min_count: int = 1,
    layer: str | None = None,
) -> InterceptPrevalence:
    """Pearson r of the per-cluster random intercepts against each cluster's positive rate.

    In a classifier trained on data where prevalence differs by site, a positive correlation shows the random
    intercept absorbing the site's base rate (the part of the label the fixed effects should not explain). Use the
    training samples: clusters with fewer than ``min_count`` samples and samples with a negative site index
    (``UNSEEN_SITE``) are left out.

    Args:
        model: a trained mixed-effects network with one random-intercept layer.
        sites: per-sample cluster index (column of ``z``), array-like of ints.
        labels: per-sample class label, array-like.
        channel: output channel of the intercept (0 for a one-logit binary model, the positive class for a
            ``ce`` model). Defaults to 0.
        positive: the label counted as positive. Defaults to 1.
        min_count: minimum number of samples for a cluster to enter the correlation. Defaults to 1.
        layer: qualified name of the intercept layer when the model has several. Defaults to None.

    Example::

        >>> import torch
        >>> from monai_medl.data.synthetic.spirals import make_spirals
        >>> from monai_medl.engines import TabularTrainer
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> data = make_spirals(num_clusters=6, points_per_cluster=50, prevalence_sd=0.25, seed=0)  # site base rates
        >>> x_train, y_train = torch.from_numpy(data.x), torch.from_numpy(data.y).float().unsqueeze(1)
        >>> site_train = torch.from_numpy(data.site)
        >>> net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=6)
        >>> history = TabularTrainer(net, epochs=20, lr=1e-2).fit(x_train, y_train, z=torch.eye(6)[site_train])
        >>> res = random_intercept_vs_prevalence(net, site_train, y_train)
        >>> len(res.clusters), res.r > 0.5  # the intercepts absorbed the sites' prevalences
        (6, True)
    """
    sites = np.asarray(torch.as_tensor(sites).cpu()).reshape(-1).astype(np.int64)
    labels = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1)
    if sites.shape != labels.shape:
        raise ValueError(f"sites and labels must have one entry per sample, got {sites.size} and {labels.size}.")
    intercepts = random_intercepts(model, layer)
    num_clusters, channels = intercepts.shape
    if not 0 <= channel < channels:
        raise ValueError(f"channel must be in [0, {channels}), got {channel}.")
    if sites.size and sites.max() >= num_clusters:
        raise ValueError(f"site indices must be < num_clusters={num_clusters}, got {int(sites.max())}.")
    keep = sites >= 0
    counts = np.bincount(sites[keep], minlength=num_clusters)
    positives = np.bincount(sites[keep], weights=(labels[keep] == positive).astype(float), minlength=num_clusters)
    clusters = np.flatnonzero(counts >= max(min_count, 1))
    if clusters.size < 3:
        raise ValueError(f"need >= 3 clusters with >= {min_count} samples for a correlation, got {clusters.size}.")
    prevalence = positives[clusters] / counts[clusters]
    values = intercepts[clusters, channel].numpy().astype(float)
    if np.ptp(prevalence) == 0 or np.ptp(values) == 0:
        raise ValueError("prevalence or intercepts are constant across clusters: the correlation is undefined.")
    result = pearsonr(values, prevalence)
    return InterceptPrevalence(
        float(result.statistic), float(result.pvalue), clusters, values, prevalence, counts[clusters]
    )
