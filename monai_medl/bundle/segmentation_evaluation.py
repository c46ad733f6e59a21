# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Per-scan Dice of segmentation evaluator runs in several ``z`` modes, summarised per class, site and seen/unseen."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from monai_medl.bundle.site_evaluation import ScanCollector, write_predictions

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "SiteDiceCollector",
    "segmentation_site_metrics",
    "segmentation_fields",
    "write_segmentation_evaluation",
    "write_segmentations",
]

SEGMENTATION_FIELDS = ("mode", "z", "split", "image", "site", "seen", "input_warning", "error")


class SiteDiceCollector(ScanCollector):
    """Ignite handler recording one row per scan (Dice per foreground class) from a ``SupervisedEvaluator`` run.

    Attach it to the evaluator (``val_handlers``) after a post-processing that turns ``pred`` into a label map
    (``AsDiscreted(keys="pred", argmax=True)``). Each row has the mode and the ``z`` the scan got (recorded in the
    batch by the evaluator's :class:`~monai_medl.engines.MixedEffectsPrepareBatch` with ``design_key="z"``), split,
    file, site, seen, and ``dice_<class>`` for every
    foreground class plus ``dice_mean`` (None without a label, e.g. at inference). Rows accumulate over runs, so one
    collector serves every mode (:func:`~monai_medl.bundle.evaluate_modes`).

    Args:
        class_names: names of the foreground classes 1, 2, ... (class 0 is the background).
        keys: the batch/output keys of :class:`~monai_medl.bundle.site_evaluation.ScanCollector`, by name.

    Example::

        >>> import torch
        >>> from monai.transforms import AsDiscreted
        >>> from monai_medl.networks.nets import MixedEffectsUNet
        >>> from monai_medl.utils.examples import site_evaluator
        >>> items = [{"image": torch.randn(1, 16, 16), "label": torch.randint(0, 4, (1, 16, 16)), "site": s,
        ...           "site_name": name, "split": "test"} for s, name in [(0, "a"), (-1, "new")]]  # -1: unseen
        >>> net = MixedEffectsUNet(num_clusters=2, spatial_dims=2, out_channels=4, channels=(4, 8), strides=(2,))
        >>> collector = SiteDiceCollector(["csf", "grey_matter", "white_matter"])
        >>> evaluator = site_evaluator(net, items, [collector], AsDiscreted("pred", argmax=True), batch_size=2,
        ...                            design_key="z")
        >>> evaluator.run()
        >>> [(row["site"], row["seen"], row["z"]) for row in collector.rows]
        [('a', True, 'one-hot:a'), ('new', False, 'zero')]
        >>> [k for k in collector.rows[0] if k.startswith("dice_")]
        ['dice_csf', 'dice_grey_matter', 'dice_white_matter', 'dice_mean']
    """

    def __init__(self, class_names: Sequence[str], **keys: str) -> None:
        if isinstance(class_names, str) or not class_names:
            raise ValueError(f"class_names must list the foreground classes, got {class_names!r}.")
        super().__init__(**keys)
        self.class_names = [str(c) for c in class_names]

    @property
    def dice_fields(self) -> list[str]:
        return [f"dice_{c}" for c in self.class_names] + ["dice_mean"]

    @property
    def fields(self) -> list[str]:
        """The columns of a predictions file of these rows (as :func:`write_segmentation_evaluation` writes it)."""
        return [*SEGMENTATION_FIELDS, *self.dice_fields]

    def dice(self, pred: torch.Tensor, label: torch.Tensor) -> list[float]:
        """Dice of each foreground class between two label maps ``(1, *spatial)`` (NaN where both are empty)."""
        n = len(self.class_names) + 1
        p = one_hot(torch.as_tensor(pred).long().unsqueeze(0), n)
        y = one_hot(torch.as_tensor(label).long().unsqueeze(0), n)
        return [float(v) for v in compute_dice(p, y, include_background=False, ignore_empty=True).reshape(-1)]

    def __call__(self, engine: Engine) -> None:
        for item, out_pred in self.scans(engine):
            pred = torch.as_tensor(out_pred).detach().cpu()
            if pred.shape[0] != 1:
                raise ValueError(f"{self.pred_key!r} must be a label map (1, *spatial); add AsDiscreted(argmax=True).")
            label = item.get(self.label_key)
            scores: Sequence[float | None] = [None] * len(self.class_names)
            if isinstance(label, torch.Tensor):
                scores = self.dice(pred, label.detach().cpu())
            finite = [s for s in scores if s is not None and not math.isnan(s)]
            row = self.record(item)
            row.update(zip(self.dice_fields, [*scores, float(np.mean(finite)) if finite else None]))
            self.rows.append(row)


def _mean(values: Iterable[Any]) -> float | None:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return float(np.mean(v)) if v else None


def segmentation_site_metrics(
    rows: Sequence[Mapping[str, Any]], report_splits: Sequence[str] = ("test",)
) -> list[dict[str, Any]]:
    """Mean Dice per ``z`` mode over the ``report_splits`` scans: overall, seen sites, unseen sites and every site.

    Each metric row has ``mode``, ``group`` (``overall``/``seen``/``unseen``/``site``), ``site``, ``n`` and the mean
    of every ``dice_*`` column.
    """
    fields = [k for k in (rows[0] if rows else {}) if k.startswith("dice_")]
    reported = [r for r in rows if r.get("split") in report_splits]
    out: list[dict[str, Any]] = []
    for mode in dict.fromkeys(r["mode"] for r in reported):
        part = [r for r in reported if r["mode"] == mode]
        groups = [("overall", "all", part)]
        groups += [
            ("seen", "all", [r for r in part if r["seen"]]),
            ("unseen", "all", [r for r in part if not r["seen"]]),
        ]
        groups += [("site", s, [r for r in part if r["site"] == s]) for s in sorted({r["site"] for r in part})]
        for group, site, members in groups:
            if members:
                metric = {"mode": mode, "group": group, "site": site, "n": len(members)}
                metric.update({f: _mean(r.get(f) for r in members) for f in fields})
                out.append(metric)
    return out


class ScanColumns(TypedDict):
    """The ``fields`` and ``metric_fields`` keywords of :func:`~monai_medl.bundle.write_predictions`."""

    fields: list[str]
    metric_fields: list[str]


def segmentation_fields(rows: Sequence[Mapping[str, Any]]) -> ScanColumns:
    """The ``fields`` and ``metric_fields`` of :func:`~monai_medl.bundle.write_predictions` for per-scan Dice rows
    (:class:`SiteDiceCollector`) and their :func:`segmentation_site_metrics`."""
    dice = [k for k in (rows[0] if rows else {}) if k.startswith("dice_")]
    return {"fields": [*SEGMENTATION_FIELDS, *dice], "metric_fields": ["mode", "group", "site", "n", *dice]}


def write_segmentations(
    rows: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, *args: Any, **kwargs: Any
) -> dict[str, str]:
    """Deprecated: ``write_predictions(rows, output_dir, ..., **segmentation_fields(rows))`` writes the same files
    (:func:`~monai_medl.bundle.write_predictions`, :func:`segmentation_fields`); the arguments are passed on."""
    warnings.warn(
        "write_segmentations is deprecated; use monai_medl.bundle.write_predictions(rows, output_dir, ..., "
        "**segmentation_fields(rows)).",
        DeprecationWarning,
        stacklevel=2,
    )
    kwargs.update(segmentation_fields(rows))  # (metrics, prefix, errors) as before, the segmentation columns
    return write_predictions(rows, output_dir, *args, **kwargs)


def write_segmentation_evaluation(
    rows: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, report_splits: Sequence[str] = ("test",)
) -> list[dict[str, Any]]:
    """:func:`segmentation_site_metrics` written with the per-scan rows into ``output_dir``; logs a summary.

    Example (``configs/evaluate.json``)::

        "run": ["$monai_medl.bundle.evaluate_modes(@validate#evaluator, @eval_modes)",
                "$monai_medl.bundle.write_segmentation_evaluation(@collector.rows, @output_dir)"]
    """
    metrics = segmentation_site_metrics(rows, report_splits)
    paths = write_predictions(rows, output_dir, metrics, **segmentation_fields(rows))
    log = logging.getLogger(__name__)
    for m in metrics:
        if m["group"] != "site":
            dice = m.get("dice_mean")
            log.info(
                f"{m['mode']:>10} {m['group']:>7}: n={m['n']:4d} mean Dice={'n/a' if dice is None else f'{dice:.3f}'}"
            )
    log.info(f"per-scan Dice: {paths['predictions']}; metrics: {paths['metrics_csv']}, {paths['metrics_json']}")
    return metrics
