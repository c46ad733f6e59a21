# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Metrics that a site's base rate cannot reach, and the statistics of a study replicated over cohorts.

A score made of each site's disease prevalence alone, with no image, reaches a high *pooled* AUROC on multi-site
data whose sites differ in prevalence; its AUROC *within* every site is 0.5. The within-site AUROC (the mean over
sites of the AUROC computed inside each site) therefore measures what a model learnt from the image.
:func:`resample_prevalence` subsamples a site to a chosen prevalence, so that calibration and thresholded metrics
can be read at prevalences other than the generated one. :func:`holm` and :func:`tost` are the multiplicity
correction and the equivalence test of a study's paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CalibrationErrorMetric
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

__all__ = [
    "within_site_auroc",
    "prevalence_only_score",
    "expected_calibration_error",
    "balanced_accuracy_at",
    "resample_prevalence",
    "paired_t_pvalue",
    "holm",
    "tost",
]


def _arrays(y_true: Sequence[Any], y_score: Sequence[Any], sites: Sequence[Any] | None = None):
    y = np.asarray(y_true, dtype=float).reshape(-1)
    s = np.asarray(y_score, dtype=float).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"y_true and y_score need one entry per item, got {len(y)} and {len(s)}.")
    if not set(np.unique(y).tolist()) <= {0.0, 1.0}:
        raise ValueError(f"y_true must hold binary 0/1 labels, got values {sorted(set(y.tolist()))[:5]}.")
    if sites is None:
        return y, s
    g = np.asarray([str(v) for v in sites])
    if len(g) != len(y):
        raise ValueError(f"sites needs one entry per item, got {len(g)} for {len(y)} items.")
    return y, s, g


def within_site_auroc(y_true: Sequence[Any], y_score: Sequence[Any], sites: Sequence[Any]) -> dict[str, Any]:
    """Mean over sites of the AUROC computed inside each site (binary labels, scores for the positive class).

    Sites with one class only have no AUROC; they are listed in ``"skipped"`` and left out of the mean. The mean is
    unweighted: every site counts once, whatever its size.

    Returns:
        ``{"mean": float (NaN if no site has both classes), "per_site": {site: auroc}, "skipped": [site, ...]}``.

    Example::

        >>> r = within_site_auroc([0, 1, 0, 1], [0.1, 0.2, 0.8, 0.9], sites=["a", "a", "b", "b"])
        >>> r["mean"], r["per_site"]
        (1.0, {'a': 1.0, 'b': 1.0})
    """
    y, s, g = _arrays(y_true, y_score, sites)
    per_site: dict[str, float] = {}
    skipped: list[str] = []
    for site in sorted(set(g.tolist())):
        mask = g == site
        if len(np.unique(y[mask])) < 2:
            skipped.append(site)
            continue
        per_site[site] = float(roc_auc_score(y[mask], s[mask]))
    mean = float(np.mean(list(per_site.values()))) if per_site else math.nan
    return {"mean": mean, "per_site": per_site, "skipped": skipped}


def prevalence_only_score(train_labels: Sequence[Any], train_sites: Sequence[Any], sites: Sequence[Any]) -> np.ndarray:
    """The score of a model that sees no image: each item's site prevalence in the training data.

    An item of a site absent from the training data gets the pooled training prevalence (such a model knows
    nothing about a new site). This is the reference row of every table: it reaches a pooled AUROC above 0.5 when
    the training sites differ in prevalence, and a within-site AUROC of exactly 0.5.

    Example::

        >>> prevalence_only_score([0, 1, 1, 1], ["a", "a", "b", "b"], ["a", "b", "new"]).tolist()
        [0.5, 1.0, 0.75]
    """
    y = np.asarray(train_labels, dtype=float).reshape(-1)
    g = np.asarray([str(v) for v in train_sites])
    if len(y) != len(g) or len(y) == 0:
        raise ValueError(f"train_labels and train_sites need one entry per item (> 0), got {len(y)} and {len(g)}.")
    rate = {site: float(y[g == site].mean()) for site in set(g.tolist())}
    pooled = float(y.mean())
    return np.asarray([rate.get(str(site), pooled) for site in sites], dtype=float)


def expected_calibration_error(y_true: Sequence[Any], y_prob: Sequence[Any], num_bins: int = 10) -> float:
    """Expected calibration error of the positive-class probability, by MONAI's
    :class:`~monai.metrics.CalibrationErrorMetric`: ``sum_b n_b / n * |mean p_b - mean y_b|`` over ``num_bins``
    equal-width bins of ``[0, 1]`` (NaN without items).

    Example::

        >>> round(expected_calibration_error([0, 1, 1, 1], [0.1, 0.6, 0.6, 0.9], num_bins=2), 4)
        0.25
    """
    y, p = _arrays(y_true, y_prob)
    if len(y) == 0:
        return math.nan
    if np.any(p < 0) or np.any(p > 1):
        raise ValueError("expected_calibration_error needs probabilities in [0, 1] (apply the sigmoid first).")
    metric = CalibrationErrorMetric(num_bins=num_bins, calibration_reduction="expected", metric_reduction="mean")
    metric(y_pred=torch.as_tensor(p, dtype=torch.float32).view(1, 1, -1), y=torch.as_tensor(y).view(1, 1, -1))
    value = metric.aggregate()  # a tensor here (a tuple only when not-nan counts are asked for)
    return float(value[0] if isinstance(value, tuple) else value)


def balanced_accuracy_at(y_true: Sequence[Any], y_score: Sequence[Any], threshold: float) -> float:
    """Balanced accuracy of ``y_score >= threshold``; choose the threshold on training data (e.g. with
    :func:`~monai_medl.metrics.youden_threshold`), not on the scored set. NaN when a class is missing.

    Example::

        >>> balanced_accuracy_at([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9], threshold=0.5)
        0.75
    """
    y, s = _arrays(y_true, y_score)
    if len(np.unique(y)) < 2:
        return math.nan
    return float(balanced_accuracy_score(y, (s >= threshold).astype(float)))


def resample_prevalence(
    y_true: Sequence[Any], sites: Sequence[Any], prevalence: float, seed: int = 0, size: int | None = None
) -> np.ndarray:
    """Indices of a subsample of every site with its disease prevalence set to ``prevalence``.

    Each site keeps the largest subsample (or ``size`` items, when given and possible) whose positive fraction is
    ``prevalence`` up to rounding: ``n_pos = round(prevalence * n)`` positives and ``n - n_pos`` negatives, drawn
    without replacement. Sites too small for one item of each class at that prevalence are dropped.

    Example::

        >>> idx = resample_prevalence([0] * 6 + [1] * 6, ["a"] * 12, prevalence=0.25, seed=0)
        >>> len(idx), int(sum(i >= 6 for i in idx))
        (8, 2)
    """
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"resample_prevalence needs 0 < prevalence < 1, got {prevalence}.")
    y = np.asarray(y_true, dtype=float).reshape(-1)
    g = np.asarray([str(v) for v in sites])
    if len(y) != len(g):
        raise ValueError(f"y_true and sites need one entry per item, got {len(y)} and {len(g)}.")
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for site in sorted(set(g.tolist())):
        pos, neg = np.flatnonzero((g == site) & (y == 1)), np.flatnonzero((g == site) & (y == 0))
        n = int(math.floor(min(len(pos) / prevalence, len(neg) / (1 - prevalence)) + 1e-9))
        n = n if size is None else min(n, int(size))
        n_pos = int(round(prevalence * n))
        n_pos = min(n_pos, len(pos))
        n_neg = min(n - n_pos, len(neg))
        if n_pos < 1 or n_neg < 1:
            continue
        keep += [rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def paired_t_pvalue(differences: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of ``mean(differences) = 0`` (NaN for fewer than two values; 0
    or 1 when every difference is equal, by the sign of their common value).

    Example::

        >>> round(paired_t_pvalue([0.01, 0.02, 0.03]), 4)
        0.0742
    """
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.std(d) == 0:
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(p_values: Mapping[str, float], alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate at ``alpha``).

    Sorted ascending, the ``i``-th of ``m`` p-values (``i`` from 0) is multiplied by ``m - i``; the adjusted values
    are made monotone (a running maximum) and capped at 1; a hypothesis is rejected when its adjusted p-value is
    ``<= alpha``. NaN p-values are left out of the family (adjusted NaN, not rejected).

    Returns:
        ``{name: {"p": raw, "p_holm": adjusted, "reject": bool}}``.

    Example::

        >>> r = holm({"a": 0.01, "b": 0.04, "c": 0.03})
        >>> [round(r[k]["p_holm"], 2) for k in "abc"], [r[k]["reject"] for k in "abc"]
        ([0.03, 0.06, 0.06], [True, False, False])
    """
    finite = sorted((p, name) for name, p in p_values.items() if not math.isnan(p))
    out = {name: {"p": float(p), "p_holm": math.nan, "reject": False} for name, p in p_values.items()}
    running = 0.0
    for i, (p, name) in enumerate(finite):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"holm needs p-values in [0, 1], got {name}={p}.")
        running = max(running, min(1.0, (len(finite) - i) * p))
        out[name].update(p_holm=running, reject=bool(running <= alpha))
    return out


def tost(differences: Sequence[float], margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """Two one-sided t-tests of equivalence of paired differences within ``+-margin``.

    ``p = max(p_lower, p_upper)``, the p-values of ``H0: mean <= -margin`` and ``H0: mean >= +margin``; equivalence
    is concluded when ``p <= alpha``, i.e. when the ``1 - 2 alpha`` (90 %) t-interval lies inside ``+-margin``.

    Returns:
        ``{"mean", "p", "p_lower", "p_upper", "ci90": [lo, hi], "margin", "equivalent": bool}``.

    Example::

        >>> r = tost([0.001, -0.004, 0.003, 0.0, -0.002], margin=0.02)
        >>> r["equivalent"], r["p"] < 0.001
        (True, True)
    """
    d = np.asarray(differences, dtype=float)
    if margin <= 0:
        raise ValueError(f"tost needs a positive margin, got {margin}.")
    if len(d) < 2:
        raise ValueError(f"tost needs at least two paired differences, got {len(d)}.")
    mean, se, df = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1
    if se == 0:
        inside = -margin < mean < margin
        p_lower = p_upper = 0.0 if inside else 1.0
    else:
        p_lower = float(stats.t.sf((mean + margin) / se, df))
        p_upper = float(stats.t.cdf((mean - margin) / se, df))
    half = float(stats.t.ppf(1 - alpha, df) * se)
    p = max(p_lower, p_upper)
    return {
        "mean": mean,
        "p": p,
        "p_lower": p_lower,
        "p_upper": p_upper,
        "ci90": [mean - half, mean + half],
        "margin": float(margin),
        "equivalent": bool(p <= alpha),
    }
