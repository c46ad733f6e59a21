# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Clustered two-spiral classification data: the ARMED spiral simulation, optionally with a site confounder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SpiralData", "make_spirals", "spiral_points"]


@dataclass(frozen=True)
class SpiralData:
    """Clustered spiral samples and the ground truth that generated them.

    Attributes:
        x: features, ``(n, 2 + num_confounders)`` float32: the two spiral coordinates, then the probe features.
        y: binary labels ``(n,)`` int64 (1 = the second spiral arm).
        site: cluster index of every sample ``(n,)`` int64, ``0 .. num_clusters - 1``.
        radius: the radius drawn for each cluster ``(num_clusters,)`` (the true random effect).
        prevalence: the fraction of label 1 in each cluster ``(num_clusters,)``.
        probe_columns: the columns of ``x`` that hold the site-confounded probe features (empty when none).
    """

    x: np.ndarray
    y: np.ndarray
    site: np.ndarray
    radius: np.ndarray
    prevalence: np.ndarray
    probe_columns: tuple[int, ...]

    @property
    def num_clusters(self) -> int:
        return len(self.radius)

    def to_datalist(self) -> list[dict]:
        """MONAI-style datalist ``[{"image": x_i, "label": y_i, "site": k_i}, ...]`` (``image`` a float32 vector)."""
        return [
            {"image": xi, "label": int(yi), "site": int(si)}
            for xi, yi, si in zip(self.x, self.y, self.site, strict=True)
        ]


def spiral_points(
    rng: np.random.Generator, num_points: int, label: int, radius: float, degrees: float = 360.0, noise: float = 0.1
) -> np.ndarray:
    """``num_points`` noisy points of spiral arm ``label`` (0 or 1) with outer radius ``radius``, shape ``(n, 2)``.

    The angle ``theta`` is a whole number of degrees drawn uniformly in ``[0, degrees)``; arm ``c`` has phase
    ``pi * c``; the point is ``radius * theta / max(theta) * (-cos(theta - phase), sin(theta - phase))`` plus
    ``N(0, noise^2)`` on each coordinate (``max`` over the arm's own sample, as in the reference generator).
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label}.")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}.")
    theta = np.deg2rad(rng.integers(0, int(degrees), size=num_points).astype(np.float64))
    phase = np.pi * label
    r = radius * theta / max(theta.max(), 1e-12)
    xy = np.stack([-np.cos(theta - phase) * r, np.sin(theta - phase) * r], axis=1)
    return xy + rng.normal(0.0, noise, size=xy.shape)


def make_spirals(
    num_clusters: int = 10,
    points_per_cluster: int = 1000,
    mean_radius: float = 1.0,
    radius_sd: float = 0.3,
    degrees: float = 360.0,
    noise: float = 0.1,
    prevalence_sd: float = 0.0,
    num_probes: int = 0,
    probe_sd: float = 0.2,
    seed: int = 0,
) -> SpiralData:
    """Two interleaved spirals per cluster, each cluster with its own radius (a random effect on the input scale).

    Equivalent to the random-radius spiral simulation of ARMED (Nguyen et al., TPAMI 2023; defaults = its
    10 clusters x 1000 points, radius ``~N(1, 0.3^2)``, noise 0.1, 360 degrees). The confounded variant
    (``prevalence_sd > 0``) draws a label prevalence ``p_k ~ N(0.5, prevalence_sd^2)`` clipped to ``[0.1, 0.9]``
    for every cluster, keeps ``round(n p_k)`` positive and the rest negative points, and (``num_probes > 0``)
    appends probe features ``~N(p_k, probe_sd^2)``: they carry no information about the spiral, only about the
    cluster and hence, spuriously, about the label. A model that generalises should not rely on them. (The
    reference draws the class-0 fraction; as the distribution of ``p_k`` is symmetric about 0.5 this is the same
    simulation with the classes swapped.)

    Args:
        num_clusters: number of clusters ``K``. Defaults to 10.
        points_per_cluster: samples per cluster (half per arm when there is no confounding). Defaults to 1000.
        mean_radius: mean of the cluster radius distribution. Defaults to 1.0.
        radius_sd: s.d. of the cluster radius distribution. Defaults to 0.3.
        degrees: arc length of each arm in degrees. Defaults to 360.
        noise: s.d. of the Gaussian noise added to each coordinate. Defaults to 0.1.
        prevalence_sd: s.d. of the per-cluster label prevalence; 0 gives balanced clusters. Defaults to 0.0.
        num_probes: number of site-confounded probe features appended to ``x``. Defaults to 0.
        probe_sd: s.d. of the probe features around the cluster prevalence. Defaults to 0.2.
        seed: seed of the ``numpy.random.Generator`` that draws everything. Defaults to 0.

    Returns:
        :class:`SpiralData`, samples ordered by cluster, then by label.

    Example::

        >>> data = make_spirals(num_clusters=4, points_per_cluster=100, prevalence_sd=0.2, num_probes=2, seed=1)
        >>> data.x.shape, data.probe_columns
        ((400, 4), (2, 3))
        >>> data.prevalence.tolist()  # label prevalence of each cluster
        [0.68, 0.59, 0.39, 0.62]
    """
    if num_clusters < 1 or points_per_cluster < 2:
        raise ValueError(
            f"need num_clusters >= 1 and points_per_cluster >= 2, got {num_clusters} and {points_per_cluster}."
        )
    if radius_sd < 0 or noise < 0 or prevalence_sd < 0 or probe_sd < 0:
        raise ValueError("radius_sd, noise, prevalence_sd and probe_sd must be >= 0.")
    if num_probes < 0:
        raise ValueError(f"num_probes must be >= 0, got {num_probes}.")
    if degrees < 1:
        raise ValueError(f"degrees must be >= 1, got {degrees}.")
    rng = np.random.default_rng(seed)
    radius = rng.normal(mean_radius, radius_sd, size=num_clusters)
    if prevalence_sd > 0:
        prevalence = np.clip(rng.normal(0.5, prevalence_sd, size=num_clusters), 0.1, 0.9)
    else:
        prevalence = np.full(num_clusters, 0.5)
    xs, ys, sites = [], [], []
    for k in range(num_clusters):
        n_pos = int(round(points_per_cluster * prevalence[k]))
        for label, count in ((0, points_per_cluster - n_pos), (1, n_pos)):
            if count == 0:
                continue
            xs.append(spiral_points(rng, count, label, radius[k], degrees, noise))
            ys.append(np.full(count, label))
            sites.append(np.full(count, k))
    x = np.concatenate(xs)
    site = np.concatenate(sites).astype(np.int64)
    if num_probes > 0:
        probes = rng.normal(prevalence[site][:, None], probe_sd, size=(len(site), num_probes))
        x = np.concatenate([x, probes], axis=1)
    y = np.concatenate(ys).astype(np.int64)
    prevalence = np.array([y[site == k].mean() for k in range(num_clusters)])
    return SpiralData(
        x=x.astype(np.float32),
        y=y,
        site=site,
        radius=radius,
        prevalence=prevalence,
        probe_columns=tuple(range(2, 2 + num_probes)),
    )
