# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Simulated linear mixed-model data with crossed or nested grouping factors and known variance components."""

from __future__ import annotations

import numpy as np
from monai.utils import optional_import

pd, has_pandas = optional_import("pandas")

__all__ = ["simulate_crossed", "simulate_nested"]


def _outcome(rng, x: np.ndarray, effects: list[np.ndarray], noise_sd: float, fixed: tuple[float, float]) -> np.ndarray:
    return fixed[0] + fixed[1] * x + sum(effects) + rng.normal(0.0, noise_sd, len(x))


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
