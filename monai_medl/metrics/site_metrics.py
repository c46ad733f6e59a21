# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Metrics overall, per site and for seen vs unseen sites (sklearn implementations)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
    roc_curve,
)

__all__ = ["SITE_METRICS", "compute_site_metrics", "youden_threshold"]


def _labels(y_score: np.ndarray, threshold: float) -> np.ndarray:
    return (y_score >= threshold).astype(int) if y_score.ndim == 1 else y_score.argmax(1)


def _auroc(y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> float:
    if y_score.ndim == 1:
        return float(roc_auc_score(y_true, y_score))
    return float(roc_auc_score(y_true, y_score, multi_class="ovr", labels=np.arange(y_score.shape[1])))


SITE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, float], float]] = {
    "auroc": _auroc,
    "balanced_accuracy": lambda y, s, t: float(balanced_accuracy_score(y, _labels(s, t))),
    "accuracy": lambda y, s, t: float(accuracy_score(y, _labels(s, t))),
    "mse": lambda y, s, t: float(mean_squared_error(y, s)),
    "mae": lambda y, s, t: float(mean_absolute_error(y, s)),
}
"""Metric name -> ``fn(y_true, y_score, threshold)``. Scores are probabilities: ``(n,)`` for a binary task (the
positive class, thresholded at ``threshold``), ``(n, C)`` for ``C`` classes (argmax); regression values for
``mse``/``mae``."""

_NEEDS_CLASSES = ("auroc", "balanced_accuracy")


def youden_threshold(y_true: Sequence[Any], y_score: Sequence[float]) -> float:
    """Threshold maximising Youden's J (sensitivity + specificity - 1) on binary scores.

    Choose it on training predictions and apply it to validation and test sets (recomputing it on each evaluated
    set gives optimistic balanced accuracies).

    Example::

        >>> youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.8
    """
    fpr, tpr, thresholds = roc_curve(np.asarray(y_true).ravel(), np.asarray(y_score, dtype=float).ravel())
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def _one_group(metrics: Sequence[str], y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    out: dict[str, float] = {"n": float(len(y))}
    for name in metrics:
        classes = len(np.unique(y))
        defined = len(y) > 0 and (name not in _NEEDS_CLASSES or classes > 1)
        if name == "auroc" and s.ndim == 2:
            defined = defined and classes == s.shape[1]  # one-vs-rest needs every class present
        out[name] = SITE_METRICS[name](y, s, threshold) if defined else math.nan
    return out


def compute_site_metrics(
    y_true: Sequence[Any],
    y_score: Sequence[Any],
    sites: Sequence[int],
    metrics: Sequence[str] = ("auroc", "balanced_accuracy"),
    threshold: float = 0.5,
    groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Metrics over all items, over seen-site items (index ``>= 0``), unseen-site items (``-1``), and per site.

    A metric that is undefined for a group (no items; one class only for AUROC/balanced accuracy; a class missing
    for multi-class AUROC) is NaN.

    Args:
        y_true: targets, ``(n,)`` class indices/0-1 labels (or regression targets).
        y_score: probabilities ``(n,)`` / ``(n, 1)`` for a binary task, ``(n, C)`` for ``C`` classes, or
            regression predictions.
        sites: site indices from :class:`~monai_medl.transforms.SiteToIndexd` (``-1`` = not seen in training).
        metrics: names from :data:`SITE_METRICS`. Defaults to ``("auroc", "balanced_accuracy")``.
        threshold: decision threshold for binary scores (take it from training data, e.g.
            :func:`youden_threshold`). Defaults to 0.5.
        groups: per-item site names for the per-site breakdown (e.g. the raw site kept by
            ``SiteToIndexd(raw_key_postfix="raw")``, so that unseen sites are reported one by one); defaults to
            ``sites``.

    Returns:
        ``{"overall": {...}, "seen": {...}, "unseen": {...}, "per_site": {name: {...}}}``; each inner dict maps the
        metric names and ``"n"`` (item count) to floats.

    Example::

        >>> res = compute_site_metrics([0, 1, 0, 1], [0.2, 0.9, 0.6, 0.7], sites=[0, 0, -1, -1])
        >>> res["seen"]["auroc"], res["unseen"]["auroc"]
        (1.0, 1.0)
    """
    unknown = [m for m in metrics if m not in SITE_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {sorted(SITE_METRICS)}.")
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    y = y.reshape(len(y), -1)[:, 0] if y.ndim > 1 and y.size == len(y) else y
    site = np.asarray(sites).reshape(-1).astype(int)
    group = np.asarray(site if groups is None else [str(g) for g in groups])
    if not len(y) == len(s) == len(site) == len(group):
        raise ValueError(
            f"y_true, y_score, sites and groups need one entry per item, got {len(y)}, {len(s)}, {len(site)}, "
            f"{len(group)}."
        )
    seen = site >= 0
    result: dict[str, Any] = {
        "overall": _one_group(metrics, y, s, threshold),
        "seen": _one_group(metrics, y[seen], s[seen], threshold),
        "unseen": _one_group(metrics, y[~seen], s[~seen], threshold),
        "per_site": {},
    }
    for g in sorted(set(group.tolist()), key=str):
        mask = group == g
        result["per_site"][str(g)] = _one_group(metrics, y[mask], s[mask], threshold)
    return result
