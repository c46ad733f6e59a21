# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Metrics overall, per site and for seen vs unseen sites: the computation (sklearn) and a MONAI cumulative metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
    roc_curve,
)

__all__ = ["SITE_METRICS", "SiteMetric", "compute_site_metrics", "flatten_site_metrics", "youden_threshold"]


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
    sites: Sequence[int] | np.ndarray,
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
    _check_names(metrics)
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


def flatten_site_metrics(
    result: Mapping[str, Any], metrics: Sequence[str], prefix: str = "", per_site: bool = True, sep: str = "_"
) -> dict[str, float]:
    """Flat metric names of a :func:`compute_site_metrics` result: the split is a prefix of the metric name.

    ``prefix + m`` (all items), ``prefix + "seen" + sep + m``, ``prefix + "unseen" + sep + m`` and, with
    ``per_site``, ``prefix + "site" + sep + name + sep + m`` for every site, for each ``m`` in ``metrics``. The
    bundles' tracking names use ``prefix="val/", sep="/"``: ``val/auroc``, ``val/seen/auroc``,
    ``val/site/<name>/auroc``.

    Example::

        >>> res = compute_site_metrics([0, 1, 0, 1], [0.2, 0.9, 0.6, 0.7], sites=[0, 0, -1, -1], metrics=("auroc",))
        >>> flatten_site_metrics(res, ("auroc",), prefix="val_", per_site=False)
        {'val_auroc': 1.0, 'val_seen_auroc': 1.0, 'val_unseen_auroc': 1.0}
        >>> sorted(flatten_site_metrics(res, ("auroc",), prefix="val/", sep="/"))
        ['val/auroc', 'val/seen/auroc', 'val/site/-1/auroc', 'val/site/0/auroc', 'val/unseen/auroc']
    """
    out: dict[str, float] = {}
    for m in metrics:
        out[prefix + m] = result["overall"][m]
        out[f"{prefix}seen{sep}{m}"] = result["seen"][m]
        out[f"{prefix}unseen{sep}{m}"] = result["unseen"][m]
    if per_site:
        for site, values in result["per_site"].items():
            out.update({f"{prefix}site{sep}{site}{sep}{m}": values[m] for m in metrics})
    return out


class SiteMetric(CumulativeIterationMetric):
    """Cumulative metric over all items, seen-site items, unseen-site items and each site.

    Call it once per batch with probabilities, targets and each item's site; :meth:`aggregate` computes the metrics
    of everything accumulated since the last :meth:`reset` with :func:`compute_site_metrics`. A site is *seen* if it
    is in ``seen_sites`` or, without ``seen_sites``, if its :class:`~monai_medl.transforms.SiteToIndexd` index is
    ``>= 0``; ``seen`` given to the call overrides both. Use it directly on tensors/arrays or through
    :class:`~monai_medl.handlers.SiteMetricHandler` in a MONAI engine. Apply the activation before (e.g.
    ``Activationsd(keys="pred", sigmoid=True)``): predictions are probabilities (or regression values).

    Args:
        metrics: names from :data:`SITE_METRICS`. Defaults to ``("auroc", "balanced_accuracy")``.
        seen_sites: names of the sites seen in training; None to decide from integer site indices.
        threshold: decision threshold on binary probabilities (choose it on training data, e.g. with
            :func:`youden_threshold`). Defaults to 0.5.

    Example::

        >>> metric = SiteMetric(metrics=("auroc",), seen_sites=["a"])
        >>> _ = metric(torch.tensor([0.2, 0.9, 0.6]), torch.tensor([0, 1, 0]), sites=["a", "a", "b"])
        >>> _ = metric(torch.tensor([0.7]), torch.tensor([1]), sites=["b"])
        >>> res = metric.aggregate()
        >>> res["seen"]["auroc"], res["unseen"]["auroc"], sorted(res["per_site"])
        (1.0, 1.0, ['a', 'b'])
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("auroc", "balanced_accuracy"),
        seen_sites: Sequence[str] | None = None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        _check_names(metrics)
        self.metrics = tuple(metrics)
        self.seen_sites = None if seen_sites is None else {str(s) for s in seen_sites}
        self.threshold = threshold
        self._site_codes: dict[str, int] = {}

    def reset(self) -> None:
        super().reset()
        self._site_codes = {}

    def __call__(  # type: ignore[override]
        self, y_pred: Any, y: Any, sites: Sequence[Any] | Any, seen: Sequence[Any] | Any | None = None
    ) -> list[torch.Tensor]:
        """Add a batch.

        Args:
            y_pred: probabilities ``(B,)``, ``(B, 1)`` or ``(B, C)`` (a tensor, array or list of per-item values).
            y: targets ``(B,)`` or ``(B, 1)``.
            sites: ``B`` site names or :class:`~monai_medl.transforms.SiteToIndexd` indices (``-1`` = unseen);
                the per-site breakdown groups by them.
            seen: optional ``B`` flags or site indices (``>= 0`` = seen) overriding ``seen_sites``.

        Returns:
            the batch's ``[y_pred (B, C), y (B,), site code (B,), seen (B,)]`` as added to the buffers.
        """
        batch = super().__call__(_batch_first(y_pred, "y_pred"), _batch_first(y, "y"), sites=sites, seen=seen)
        return cast(list[torch.Tensor], batch)  # _compute_tensor's list, as CumulativeIterationMetric hands it back

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, sites: Any = None, seen: Any = None
    ) -> list[torch.Tensor]:
        if y is None or sites is None:
            raise ValueError("SiteMetric needs targets y and the sites of the batch.")
        n = y_pred.shape[0]
        names = _as_list(sites)
        if len(names) != n or y.reshape(n, -1).shape[1] != 1:
            raise ValueError(f"got {n} predictions, {y.numel()} targets and {len(names)} sites; need one per item.")
        if seen is not None:
            flags = [bool(s) if isinstance(s, bool) else int(s) >= 0 for s in _as_list(seen)]
            if len(flags) != n:
                raise ValueError(f"got {len(flags)} seen flags for {n} predictions.")
        elif self.seen_sites is not None:
            flags = [str(s) in self.seen_sites for s in names]
        else:
            bad = [s for s in names if not _is_int(s)]
            if bad:
                raise ValueError(
                    f"sites {bad[:3]} are not site indices: give seen_sites (the training sites) or seen flags."
                )
            flags = [int(s) >= 0 for s in names]
        codes = [self._site_codes.setdefault(str(s), len(self._site_codes)) for s in names]
        return [
            y_pred.float().reshape(n, -1).cpu(),
            y.reshape(n).cpu(),
            torch.tensor(codes, dtype=torch.long),
            torch.tensor(flags, dtype=torch.bool),
        ]

    def aggregate(self) -> dict[str, Any]:
        """:func:`compute_site_metrics` of the accumulated items (``overall``, ``seen``, ``unseen``, ``per_site``).

        Under ``torch.distributed`` the buffers are gathered from every rank; per-site names then assume every rank
        met the sites in the same order (give integer site indices to be safe).
        """
        buffers = self.get_buffer()
        if buffers is None:
            raise ValueError("SiteMetric has no data: call it on at least one batch before aggregate().")
        scores, targets, codes, seen = buffers
        names = {code: name for name, code in self._site_codes.items()}
        return compute_site_metrics(
            targets.numpy(),
            scores.numpy(),
            sites=np.where(seen.numpy(), 0, -1),
            metrics=self.metrics,
            threshold=self.threshold,
            groups=[names.get(int(c), str(int(c))) for c in codes],
        )


def _check_names(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in SITE_METRICS]
    if unknown or isinstance(metrics, str):
        raise ValueError(f"unknown metric(s) {unknown or metrics!r}; available: {sorted(SITE_METRICS)}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _as_list(values: Any) -> list:
    """Per-item values of a tensor, array, list of 0-d/1-element tensors, or single string."""
    if isinstance(values, str):
        return [values]
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values).reshape(-1).tolist()
    return [_as_list(v)[0] if isinstance(v, (torch.Tensor, np.ndarray)) else v for v in values]


def _batch_first(values: Any, name: str) -> torch.Tensor:
    """A batch-first float tensor from a tensor, an array or a list of per-item values (decollated engine output)."""
    if isinstance(values, (list, tuple)):
        if not values:
            raise ValueError(f"{name} is empty.")
        return torch.stack([torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in values])
    if isinstance(values, torch.Tensor):
        return values
    return torch.as_tensor(np.asarray(values))
