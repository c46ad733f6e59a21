# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Simulated linear mixed-model data with crossed or nested grouping factors and known variance components."""

from __future__ import annotations

import numpy as np
from monai.utils import optional_import

pd, has_pandas = optional_import("pandas")

__all__ = ["simulate_random_slope", "simulate_crossed", "simulate_nested"]


def _outcome(rng, x: np.ndarray, effects: list[np.ndarray], noise_sd: float, fixed: tuple[float, float]) -> np.ndarray:
    return fixed[0] + fixed[1] * x + sum(effects) + rng.normal(0.0, noise_sd, len(x))


def simulate_random_slope(
    seed: int,
    num_clusters: int = 100,
    obs: tuple[int, int] = (20, 50),
    intercept_sd: float = 1.0,
    slope_sd: float = 0.5,
    noise_sd: float = 1.0,
    fixed: tuple[float, float] = (1.0, 2.0),
) -> dict[str, np.ndarray]:
    """One factor with an independent random intercept and random slope: ``y = b0 + b1 x + u0 + u1 x + e``.

    Clusters have ``obs[0]`` to ``obs[1]`` observations, ``x ~ N(0, 1)``.

    Returns:
        a dict with ``x`` (n, 1), ``groups`` (n,) cluster indices, ``y`` (n,) and the drawn effects ``u0``, ``u1``.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(obs[0], obs[1] + 1, num_clusters)
    groups = np.repeat(np.arange(num_clusters), sizes)
    x = rng.normal(size=groups.size)
    u0 = rng.normal(0.0, intercept_sd, num_clusters)
    u1 = rng.normal(0.0, slope_sd, num_clusters)
    y = fixed[0] + fixed[1] * x + u0[groups] + u1[groups] * x + rng.normal(0.0, noise_sd, groups.size)
    return {"x": x[:, None], "groups": groups, "y": y, "u0": u0, "u1": u1}


def simulate_crossed(
    seed: int,
    num_subjects: int = 60,
    num_raters: int = 30,
    observed: float = 0.5,
    subject_sd: float = 1.0,
    rater_sd: float = 0.5,
    noise_sd: float = 1.0,
    fixed: tuple[float, float] = (1.0, 2.0),
):
    """Subjects crossed with raters: ``y = b0 + b1 x + u_subject + v_rater + e``.

    Each subject-rater pair is observed once with probability ``observed`` (an unbalanced crossed design).

    Returns:
        ``(frame, truth)``: a DataFrame with columns ``x``, ``subject``, ``rater``, ``y`` and a dict of the true
        s.d.s (``subject``, ``rater``, ``residual``), the fixed effects and the drawn effects.
    """
    rng = np.random.default_rng(seed)
    pairs = np.argwhere(rng.random((num_subjects, num_raters)) < observed)
    subject, rater = pairs[:, 0], pairs[:, 1]
    u, v = rng.normal(0.0, subject_sd, num_subjects), rng.normal(0.0, rater_sd, num_raters)
    x = rng.normal(size=len(pairs))
    y = _outcome(rng, x, [u[subject], v[rater]], noise_sd, fixed)
    frame = pd.DataFrame({"x": x, "subject": subject, "rater": rater, "y": y})
    truth = {"subject": subject_sd, "rater": rater_sd, "residual": noise_sd, "fixed": fixed, "effects": (u, v)}
    return frame, truth


def simulate_nested(
    seed: int,
    num_sites: int = 25,
    subjects_per_site: int = 12,
    obs_per_subject: int = 5,
    site_sd: float = 1.0,
    subject_sd: float = 0.7,
    noise_sd: float = 1.0,
    fixed: tuple[float, float] = (1.0, 2.0),
):
    """Subjects nested in sites: ``y = b0 + b1 x + u_site + v_(site, subject) + e``.

    Subject codes restart at 0 in every site (as in most multi-site studies), so only the ``(site, subject)`` pair
    identifies a subject: lme4's ``(1 | site/subject)``.

    Returns:
        ``(frame, truth)``: a DataFrame with columns ``x``, ``site``, ``subject``, ``y`` and a dict of the true
        s.d.s (``site``, ``subject``, ``residual``), the fixed effects and the drawn effects.
    """
    rng = np.random.default_rng(seed)
    site = np.repeat(np.arange(num_sites), subjects_per_site * obs_per_subject)
    subject = np.tile(np.repeat(np.arange(subjects_per_site), obs_per_subject), num_sites)
    u = rng.normal(0.0, site_sd, num_sites)
    v = rng.normal(0.0, subject_sd, (num_sites, subjects_per_site))
    x = rng.normal(size=len(site))
    y = _outcome(rng, x, [u[site], v[site, subject]], noise_sd, fixed)
    frame = pd.DataFrame({"x": x, "site": site, "subject": subject, "y": y})
    truth = {"site": site_sd, "subject": subject_sd, "residual": noise_sd, "fixed": fixed, "effects": (u, v)}
    return frame, truth
