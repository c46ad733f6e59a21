# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The arms of the MRI cohort: how the label relates to the disease and the site beyond the base rate.

:func:`~monai_medl.data.synthetic.mri_cohort.generate_mri_cohort` takes ``arm`` (one of :data:`COHORT_ARMS`) and one
number, ``arm_effect`` (its meaning depends on the arm; :data:`ARM_EFFECT_DEFAULTS` when None):

* ``"nuisance"`` (default): the site changes the image (scanner effects) and the base rate only; P(label | anatomy)
  is the same at every site. ``arm_effect`` is unused.
* ``"threshold"``: site-specific diagnostic thresholds. Each subject has a latent severity ``s = Phi(z)`` in (0, 1),
  ``z ~ N(m_site, 1)``; the image shows ``s`` continuously (the atrophy of a diseased subject of severity ``s``) and
  the label is ``1[s + e > t_site]``, ``e ~ N(0, THRESHOLD_LABEL_NOISE)``. The seen sites' thresholds are
  ``0.5 + arm_effect * linspace(-1, 1)`` in a seeded order; ``threshold_layout="symmetric"`` puts the unseen sites'
  thresholds at ``mean(seen) + arm_effect * linspace(-0.5, 0.5)`` (the mean itself for one unseen site),
  ``"asymmetric"`` at ``max(seen) + arm_effect * linspace(0.5, 1)`` (all above the seen range). ``m_site`` is solved
  so that the site's prevalence is the requested one, and subjects are drawn given their label (rejection), so the
  site's P(label | severity) is exactly the threshold model.
* ``"slope"``: a site-specific disease effect size (a true random slope): every disease effect of the atrophy model
  (medial temporal grey-matter loss, ventricular expansion, white-matter hyperintensities) is multiplied by the
  site's factor ``max(0.1, 1 + arm_effect * N(0, 1))``; unseen sites get fresh draws of the same law.
* ``"shortcut"``: a scanner cue that predicts the label at the seen sites and the opposite at the unseen ones: a
  bright blob (``SHORTCUT_AMPLITUDE`` of white matter, ``SHORTCUT_SIGMA_MM``) at a site-specific place in the brain,
  present in a scan with probability ``arm_effect`` for diseased and ``1 - arm_effect`` for control subjects at the
  seen sites (so the fraction of cued scans tracks the site's prevalence), and with these two probabilities swapped
  at the unseen sites.

The per-site parameters are recorded in ``ground_truth.json`` (``sites[name]["arm"]``) for seen and unseen sites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special

__all__ = [
    "COHORT_ARMS",
    "THRESHOLD_LAYOUTS",
    "ARM_EFFECT_DEFAULTS",
    "THRESHOLD_LABEL_NOISE",
    "SHORTCUT_AMPLITUDE",
    "SHORTCUT_SIGMA_MM",
    "check_arm",
    "arm_record",
    "draw_arm_sites",
    "threshold_severity",
    "shortcut_cue",
]

COHORT_ARMS = ("nuisance", "threshold", "slope", "shortcut")
"""Names of the cohort arms (see the module docstring)."""
THRESHOLD_LAYOUTS = ("symmetric", "asymmetric")
"""Where the unseen sites' thresholds lie relative to the seen sites' (``arm="threshold"``)."""
ARM_EFFECT_DEFAULTS = {"nuisance": 0.0, "threshold": 0.15, "slope": 0.4, "shortcut": 0.85}
"""Default ``arm_effect`` per arm: threshold spread, s.d. of the slope factor, P(cue | label) at the seen sites."""
THRESHOLD_LABEL_NOISE = 0.05
"""S.d. of the noise ``e`` added to the severity before thresholding (``arm="threshold"``)."""
SHORTCUT_AMPLITUDE = 0.3
"""Intensity of the shortcut cue relative to white matter (``arm="shortcut"``)."""
SHORTCUT_SIGMA_MM = 8.0
"""Gaussian s.d. (mm) of the shortcut cue."""

_HERMITE = np.polynomial.hermite_e.hermegauss(80)  # nodes and weights of E[f(z)], z ~ N(0, 1)


def check_arm(arm: str, threshold_layout: str, arm_effect: float | None) -> dict[str, Any]:
    """The arm's part of the generator config (empty for ``"nuisance"``, so today's cohorts are unchanged), after
    checking the arguments.

    Example::

        >>> check_arm("slope", "symmetric", None)
        {'arm': 'slope', 'arm_effect': 0.4}
    """
    if arm not in COHORT_ARMS:
        raise ValueError(f"arm must be one of {COHORT_ARMS}, got {arm!r}.")
    if threshold_layout not in THRESHOLD_LAYOUTS:
        raise ValueError(f"threshold_layout must be one of {THRESHOLD_LAYOUTS}, got {threshold_layout!r}.")
    if arm == "nuisance":
        if arm_effect is not None:
            raise ValueError(f"arm_effect is not used by arm='nuisance', got {arm_effect!r}.")
        return {}
    effect = ARM_EFFECT_DEFAULTS[arm] if arm_effect is None else float(arm_effect)
    limits = {"threshold": (0.0, 0.25), "slope": (0.0, 2.0), "shortcut": (0.5, 1.0)}[arm]
    if not limits[0] <= effect <= limits[1]:
        raise ValueError(f"arm_effect of arm={arm!r} must be in [{limits[0]}, {limits[1]}], got {effect}.")
    config: dict[str, Any] = {"arm": arm, "arm_effect": effect}
    if arm == "threshold":
        config["threshold_layout"] = threshold_layout
    return config


_DESCRIPTIONS = {
    "threshold": "label = 1[severity + e > sites[name].arm.threshold], e ~ N(0, label_noise); severity = Phi(z), "
    "z ~ N(sites[name].arm.severity_mean, 1) (solved for the site's prevalence); the atrophy shows the severity",
    "slope": "every disease effect (0.45 / 0.22 / 0.8 * disease_strength * severity) is multiplied by "
    "sites[name].arm.disease_scale = max(0.1, 1 + effect * N(0, 1))",
    "shortcut": "a blob of cue_amplitude (of white matter) and cue_sigma_mm at cue_center_mm is added to a scan with "
    "probability p_cue_given_disease / p_cue_given_control (subjects[id].shortcut_cue); the link is reversed at "
    "the unseen sites",
}


def arm_record(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``arm`` record of the ground truth: name, effect (and threshold layout), what the parameters mean.

    Example::

        >>> arm_record({"arm": "slope", "arm_effect": 0.4})["name"]
        'slope'
    """
    arm = config["arm"]
    record: dict[str, Any] = {"name": arm, "effect": config["arm_effect"]}
    if arm == "threshold":
        record.update(threshold_layout=config["threshold_layout"], label_noise=THRESHOLD_LABEL_NOISE)
    record["description"] = _DESCRIPTIONS[arm]
    return record


def _thresholds(rng: np.random.Generator, num_seen: int, num_unseen: int, spread: float, layout: str) -> np.ndarray:
    seen = 0.5 + spread * (np.linspace(-1.0, 1.0, num_seen) if num_seen > 1 else np.zeros(1))
    seen = seen[rng.permutation(num_seen)]
    if layout == "symmetric":
        unseen = seen.mean() + spread * (np.linspace(-0.5, 0.5, num_unseen) if num_unseen > 1 else np.zeros(1))
    else:
        unseen = seen.max() + spread * np.linspace(0.5, 1.0, num_unseen)
    return np.r_[seen, unseen[:num_unseen]]


def _prevalence(mean: float, threshold: float) -> float:
    """P(Phi(z) + e > threshold) for z ~ N(mean, 1), e ~ N(0, THRESHOLD_LABEL_NOISE)."""
    nodes, weights = _HERMITE
    severity = special.ndtr(mean + nodes)
    return float(weights @ special.ndtr((severity - threshold) / THRESHOLD_LABEL_NOISE) / weights.sum())


def _severity_mean(prevalence: float, threshold: float) -> float:
    """The ``m`` (bisection on [-6, 6]) that gives ``prevalence`` at a site with ``threshold``."""
    lo, hi = -6.0, 6.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _prevalence(mid, threshold) < prevalence else (lo, mid)
    return round(0.5 * (lo + hi), 6)


def draw_arm_sites(
    config: Mapping[str, Any], prevalences: Sequence[float], num_seen: int, center: Sequence[float] | np.ndarray
) -> list[dict[str, Any]]:
    """Each site's arm parameters (seen sites first), from a random stream of their own (``[seed, 20]``), so the
    rest of the cohort's draws do not depend on the arm.

    Args:
        config: the generator config (``seed``, and the keys of :func:`check_arm`).
        prevalences: target prevalence of every site, seen sites first.
        num_seen: how many of the sites are seen.
        center: world coordinate (mm) of the brain's centre (where the shortcut cues are placed around).
    """
    arm, effect, n = config.get("arm", "nuisance"), config.get("arm_effect", 0.0), len(prevalences)
    rng = np.random.default_rng([config["seed"], 20])
    if arm == "threshold":
        t = _thresholds(rng, num_seen, n - num_seen, effect, config["threshold_layout"])
        return [
            {"threshold": round(float(t[s]), 6), "severity_mean": _severity_mean(float(prevalences[s]), float(t[s]))}
            for s in range(n)
        ]
    if arm == "slope":
        return [{"disease_scale": float(max(0.1, 1.0 + effect * rng.normal()))} for _ in range(n)]
    if arm == "shortcut":
        out = []
        for s in range(n):
            p_dis = effect if s < num_seen else 1.0 - effect
            out.append(
                {
                    "cue_center_mm": [float(c + d) for c, d in zip(center, rng.uniform(-20.0, 20.0, 3))],
                    "cue_sigma_mm": SHORTCUT_SIGMA_MM,
                    "cue_amplitude": SHORTCUT_AMPLITUDE,
                    "p_cue_given_disease": round(p_dis, 6),
                    "p_cue_given_control": round(1.0 - p_dis, 6),
                }
            )
        return out
    return [{} for _ in range(n)]


def threshold_severity(rng: np.random.Generator, label: int, site_arm: Mapping[str, float]) -> float:
    """A latent severity of a subject with ``label`` at a threshold-arm site: ``(s, e)`` drawn until
    ``1[s + e > t_site]`` equals the label (rejection keeps the site's P(label | severity) exact).

    Example::

        >>> rng = np.random.default_rng(0)
        >>> s = threshold_severity(rng, 1, {"threshold": 0.5, "severity_mean": 0.0})
        >>> bool(0.0 < s < 1.0)
        True
    """
    for _ in range(100000):
        severity = float(special.ndtr(site_arm["severity_mean"] + rng.normal()))
        if int(severity + THRESHOLD_LABEL_NOISE * rng.normal() > site_arm["threshold"]) == label:
            return round(severity, 6)
    raise ValueError(f"no severity gives label {label} at a site with {dict(site_arm)} (prevalence 0 or 1?).")


def shortcut_cue(rng: np.random.Generator, label: int, site_arm: Mapping[str, float]) -> int:
    """Whether a subject's scan carries the site's shortcut cue (1) or not (0)."""
    p = site_arm["p_cue_given_disease"] if label else site_arm["p_cue_given_control"]
    return int(rng.random() < p)
