# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Per-scan predictions of MONAI evaluator runs in several ``z`` modes, and per-site / seen-vs-unseen metrics."""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite.engine import Events
from monai.utils import CommonKeys

from monai_medl.engines.prepare_batch import MixedEffectsPrepareBatch
from monai_medl.metrics.site_metrics import SiteMetric, youden_threshold
from monai_medl.visualize.evaluation_figures import write_evaluation_figures

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "site_metrics",
    "SitePredictionCollector",
    "evaluate_modes",
    "write_predictions",
    "write_evaluation",
    "scan_record",
    "InvalidScansError",
    "raise_for_invalid_scans",
]

PREDICTION_FIELDS = (
    "mode",
    "z",
    "split",
    "image",
    "site",
    "seen",
    "label",
    "probability",
    "prediction",
    "input_warning",
    "error",
)
METRIC_FIELDS = ("mode", "group", "site", "n", "n_positive", "auroc", "balanced_accuracy", "threshold")


def site_metrics(
    rows: Iterable[Mapping[str, Any]], threshold_split: str = "train", report_splits: Sequence[str] = ("test",)
) -> list[dict[str, Any]]:
    """AUROC and balanced accuracy per mode: overall, seen sites, unseen sites and every site.

    The balanced-accuracy threshold of each mode is Youden's on that mode's ``threshold_split`` scans (training
    data) and is applied unchanged to the reported scans (choosing it on the evaluated split is optimistic).

    Args:
        rows: per-scan records with keys ``mode``, ``split``, ``site``, ``seen`` (bool), ``label``, ``probability``
            (e.g. :attr:`SitePredictionCollector.rows`); rows without a label are skipped.
        threshold_split: split whose scans choose the threshold. Defaults to ``"train"``.
        report_splits: splits whose scans are reported. Defaults to ``("test",)``.

    Returns:
        one dictionary per (mode, group, site) with the fields of :data:`METRIC_FIELDS`; ``group`` is
        ``"overall"``, ``"seen"``, ``"unseen"`` or ``"site"`` (then ``site`` names it). Undefined metrics
        (a group with one class) are NaN.

    Raises:
        ValueError: if a mode has no labelled ``threshold_split`` scans of both classes.

    Example::

        >>> def rows(split, site, seen, labels, probs):  # as SitePredictionCollector.rows has them
        ...     return [{"mode": "population", "split": split, "site": site, "seen": seen, "label": float(y),
        ...              "probability": p} for y, p in zip(labels, probs)]
        >>> train = rows("train", "a", True, [0, 0, 1, 1], [0.1, 0.2, 0.6, 0.7])  # Youden threshold: 0.6
        >>> test = rows("test", "a", True, [0, 1, 1], [0.3, 0.65, 0.9])
        >>> test += rows("test", "new", False, [0, 1, 0, 1], [0.7, 0.8, 0.1, 0.5])
        >>> metrics = site_metrics(train + test)
        >>> [(m["group"], m["site"], m["n"], m["auroc"]) for m in metrics]  # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
        [('overall', '', 7, 0.8333...), ('seen', '', 3, 1.0), ('unseen', '', 4, 0.75), ('site', 'a', 3, 1.0),
         ('site', 'new', 4, 0.75)]
        >>> [m["balanced_accuracy"] for m in metrics if m["group"] == "unseen"]  # threshold 0.6 from training
        [0.5]
    """
    rows = [r for r in rows if r.get("label") is not None and not _isnan(r["label"])]
    out: list[dict[str, Any]] = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        fit = [r for r in rows if r["mode"] == mode and r["split"] == threshold_split]
        if len({r["label"] for r in fit}) < 2:
            raise ValueError(
                f"mode {mode!r} needs labelled {threshold_split!r} scans of both classes to choose the threshold."
            )
        threshold = youden_threshold([r["label"] for r in fit], [r["probability"] for r in fit])
        test = [r for r in rows if r["mode"] == mode and r["split"] in report_splits]
        if not test:
            continue
        labels = np.array([r["label"] for r in test], dtype=float)
        metric = SiteMetric(threshold=threshold)
        metric(
            np.array([r["probability"] for r in test], dtype=float),
            labels,
            sites=[r["site"] for r in test],
            seen=[bool(r["seen"]) for r in test],
        )
        res = metric.aggregate()
        names = np.array([r["site"] for r in test])
        seen = np.array([r["seen"] for r in test])
        masks = {"overall": np.ones(len(test), bool), "seen": seen, "unseen": ~seen}
        entries = [(g, "", res[g], masks[g]) for g in ("overall", "seen", "unseen")]
        entries += [("site", site, m, names == site) for site, m in res["per_site"].items()]
        for group, site, m, mask in entries:
            if m["n"] == 0:
                continue
            out.append(
                {
                    "mode": mode,
                    "group": group,
                    "site": site,
                    "n": int(m["n"]),
                    "n_positive": int((labels[mask] > 0.5).sum()),
                    "auroc": m["auroc"],
                    "balanced_accuracy": m["balanced_accuracy"],
                    "threshold": threshold,
                }
            )
    return out


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _scalar(v: Any) -> Any:
    """A one-element tensor/array as a Python scalar (strings and other values unchanged)."""
    if isinstance(v, torch.Tensor | np.ndarray):
        a = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v).reshape(-1)
        return a[0].item() if a.size == 1 else a.tolist()
    return v


def describe_design(z: Any, mode: str, site_index: int, site: str) -> str:
    """The ``z`` column of a scan from the design row it got: ``"zero"`` (population prediction),
    ``"one-hot:<site>"`` (its own site's random effects), ``"one-hot:random"`` (the randomized-z ablation),
    ``"one-hot:<index>"`` (another site's) or ``"soft:z-predictor"`` (inferred soft ``z``)."""
    row = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=float).reshape(-1)
    if not row.any():
        return "zero"
    if np.isclose(row, 1.0).sum() != 1 or not np.isclose(row, 0.0).sum() == row.size - 1:
        return "soft:z-predictor"
    if mode == "randomized":
        return "one-hot:random"
    hot = int(row.argmax())
    return f"one-hot:{site}" if hot == site_index else f"one-hot:{hot}"


def scan_record(
    item: Mapping[str, Any],
    site_key: str = "site",
    site_name_key: str = "site_name",
    split_key: str = "split",
    image_key: str = CommonKeys.IMAGE,
    design_key: str = "z",
) -> dict[str, Any]:
    """Who a decollated batch item is and which ``z`` it got: ``mode``, ``z``, ``split``, ``image``, ``site``,
    ``seen``, ``input_warning`` (the identity columns every per-scan collector writes).

    ``image`` is the file of ``item[image_key]``: its meta data's ``filename_or_obj``, or the value itself when it
    is a path (e.g. a copy of the entry's path kept by ``CopyItemsd`` before a loader that drops the meta data).

    The design row and the mode come with the item (``item[design_key]`` and ``item[design_key + "_mode"]``,
    recorded by :class:`~monai_medl.engines.MixedEffectsPrepareBatch` with ``design_key`` set).

    Raises:
        KeyError: if the item lacks ``design_key`` or ``design_key + "_mode"``.
    """
    missing = [k for k in (design_key, design_key + "_mode") if k not in item]
    if missing:
        raise KeyError(
            f"batch item has no {missing} key(s): give the evaluator's MixedEffectsPrepareBatch "
            f"design_key={design_key!r} so that each item carries the z it got. Available keys: {sorted(item)}."
        )
    site_index = int(_scalar(item.get(site_key, -1)))
    site = str(_scalar(item.get(site_name_key, site_index)))
    mode = str(_scalar(item[design_key + "_mode"]))
    image = item.get(image_key)
    if not isinstance(image, str | os.PathLike):  # a loaded image: its file is in its meta data
        image = (getattr(image, "meta", {}) or {}).get("filename_or_obj", "")
    return {
        "mode": mode,
        "z": describe_design(item[design_key], mode, site_index, site),
        "split": str(_scalar(item.get(split_key, ""))),
        "image": str(image),
        "site": site,
        "seen": site_index >= 0,
        "input_warning": str(_scalar(item.get("input_warning", ""))),
    }


class ScanCollector:
    """Base of the per-scan Ignite collectors: the batch/output keys, ``rows``, ``attach`` and ``reset``.

    Args:
        pred_key: output key of the prediction. Defaults to ``"pred"``.
        label_key: batch key of the label (rows get None when missing). Defaults to ``"label"``.
        site_key: batch key of the site index. Defaults to ``"site"``.
        site_name_key: batch key of the raw site name (``SiteToIndexd(raw_key_postfix="name")``). Defaults to
            ``"site_name"``.
        split_key: batch key of the split tag. Defaults to ``"split"``.
        image_key: batch key whose meta data give the file name. Defaults to ``"image"``.
        design_key: batch key of the ``z`` each scan got (``design_key + "_mode"``: the mode). Defaults to ``"z"``.
    """

    if TYPE_CHECKING:  # what every subclass implements (the handler ``attach`` registers)

        def __call__(self, engine: Engine) -> None: ...

    def __init__(
        self,
        pred_key: str = CommonKeys.PRED,
        label_key: str = CommonKeys.LABEL,
        site_key: str = "site",
        site_name_key: str = "site_name",
        split_key: str = "split",
        image_key: str = CommonKeys.IMAGE,
        design_key: str = "z",
    ) -> None:
        self.pred_key = pred_key
        self.label_key = label_key
        self.site_key = site_key
        self.site_name_key = site_name_key
        self.split_key = split_key
        self.image_key = image_key
        self.design_key = design_key
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self) -> None:
        self.rows = []

    def scans(self, engine: Engine) -> Iterator[tuple[Mapping[str, Any], Any]]:
        """The decollated ``(item, prediction)`` pairs of the engine's last iteration."""
        batch, output = engine.state.batch, engine.state.output
        if not isinstance(batch, list) or not isinstance(output, list):
            raise TypeError(f"{type(self).__name__} needs decollated batches (the evaluator's decollate=True).")
        for item, out in zip(batch, output):
            if self.pred_key not in out:
                raise KeyError(f"evaluator output has no {self.pred_key!r} key; keys: {sorted(out)}.")
            yield item, out[self.pred_key]

    def record(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """The identity columns of one decollated item (:func:`scan_record`)."""
        return scan_record(item, self.site_key, self.site_name_key, self.split_key, self.image_key, self.design_key)


class SitePredictionCollector(ScanCollector):
    """Ignite handler recording one row per scan from a MONAI ``SupervisedEvaluator`` run.

    Attach it to the evaluator (``val_handlers``). After each iteration it reads the decollated batch and
    output: the probability from ``pred_key`` (apply a sigmoid in the evaluator's postprocessing), the label, the
    raw site name and the site index (``-1`` = unseen), the split tag of the datalist entry, the scan's file
    name, and the ``z`` and mode each scan got (recorded in the batch by the evaluator's
    :class:`~monai_medl.engines.MixedEffectsPrepareBatch` with ``design_key="z"``). Rows accumulate over runs, so
    one collector serves every mode (see :func:`evaluate_modes`); :func:`site_metrics` scores them with
    :class:`~monai_medl.metrics.SiteMetric`.

    Args:
        threshold: probability threshold of the ``prediction`` column. Defaults to 0.5.
        keys: the batch/output keys of :class:`ScanCollector` (``pred_key``: the positive-class probability), by
            name.

    Example::

        >>> import torch
        >>> from monai.data import DataLoader
        >>> from monai.engines import SupervisedEvaluator
        >>> from monai.transforms import Activationsd
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> items = [{"image": torch.randn(4), "label": torch.tensor([float(i % 2)]), "site": s, "site_name": name,
        ...           "split": "test"} for i, (s, name) in enumerate([(0, "a"), (1, "b"), (-1, "new")])]
        >>> collector = SitePredictionCollector()
        >>> evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(items, batch_size=2),
        ...                                 network=MixedEffectsMLP(4, 1, num_clusters=2),
        ...                                 prepare_batch=MixedEffectsPrepareBatch(2, design_key="z"),
        ...                                 postprocessing=Activationsd("pred", sigmoid=True), val_handlers=[collector])
        >>> rows = evaluate_modes(evaluator, ["mixed", "population"], collector)
        >>> [(row["mode"], row["site"], row["z"], row["label"]) for row in rows]  # doctest: +NORMALIZE_WHITESPACE
        [('mixed', 'a', 'one-hot:a', 0.0), ('mixed', 'b', 'one-hot:b', 1.0), ('mixed', 'new', 'zero', 0.0),
         ('population', 'a', 'zero', 0.0), ('population', 'b', 'zero', 1.0), ('population', 'new', 'zero', 0.0)]
        >>> all(0 < row["probability"] < 1 for row in rows)
        True

    :func:`site_metrics` then scores the rows (it needs labelled ``"train"`` rows to choose the threshold).
    """

    def __init__(self, threshold: float = 0.5, **keys: str) -> None:
        super().__init__(**keys)
        self.threshold = threshold

    @property
    def fields(self) -> list[str]:
        """The columns of a predictions file of these rows."""
        return list(PREDICTION_FIELDS)

    def __call__(self, engine: Engine) -> None:
        for item, pred in self.scans(engine):
            prob = float(torch.as_tensor(pred).reshape(-1)[-1])
            label = item.get(self.label_key)
            label = None if label is None else float(torch.as_tensor(label).reshape(-1)[0])
            row = self.record(item)
            row.update(label=label, probability=prob, prediction=int(prob >= self.threshold))
            self.rows.append(row)


def evaluate_modes(
    evaluator: Any, modes: Sequence[str], collector: SitePredictionCollector | None = None
) -> list[dict[str, Any]]:
    """Run ``evaluator`` once per ``z`` mode of its :class:`~monai_medl.engines.MixedEffectsPrepareBatch`.

    Each run uses a copy of the evaluator's ``prepare_batch`` with ``mode`` replaced (``"mixed"``,
    ``"population"``, ``"inferred"`` or ``"randomized"``); the original is restored afterwards.

    Args:
        evaluator: a MONAI ``SupervisedEvaluator`` whose ``prepare_batch`` is a ``MixedEffectsPrepareBatch``.
        modes: the modes to run, in order.
        collector: the :class:`SitePredictionCollector` attached to ``evaluator``; found among its handlers when
            None.

    Returns:
        the collector's rows (one per scan and mode).
    """
    prepare = evaluator.prepare_batch
    if not isinstance(prepare, MixedEffectsPrepareBatch):
        raise TypeError(
            f"evaluate_modes needs an evaluator with a MixedEffectsPrepareBatch, got {type(prepare).__name__}."
        )
    for mode in modes:
        if mode not in MixedEffectsPrepareBatch.MODES:
            raise ValueError(f"mode must be one of {MixedEffectsPrepareBatch.MODES}, got {mode!r}.")
        if mode == "inferred" and prepare.z_predictor is None:
            raise ValueError("mode 'inferred' needs the prepare_batch's z_predictor (none was given).")
    try:
        for mode in modes:
            evaluator.prepare_batch = copy.copy(prepare)
            evaluator.prepare_batch.mode = mode
            logging.getLogger(__name__).info(f"evaluating with z mode {mode!r}")
            evaluator.run()
    finally:
        evaluator.prepare_batch = prepare
    if collector is None:
        return []
    return collector.rows


class InvalidScansError(RuntimeError):
    """Some scans could not be predicted; the predictions file holds the others and an error row for each."""


def write_predictions(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    metrics: Sequence[Mapping[str, Any]] | None = None,
    prefix: str = "",
    errors: Sequence[Mapping[str, Any]] = (),
    fields: Sequence[str] = PREDICTION_FIELDS,
    metric_fields: Sequence[str] = METRIC_FIELDS,
) -> dict[str, str]:
    """Write ``predictions.csv`` and, when given, ``metrics.csv`` and ``metrics.json`` into ``output_dir``.

    The columns default to those of :class:`SitePredictionCollector` rows and :func:`site_metrics`; a segmentation
    evaluation passes its own (:func:`~monai_medl.bundle.write_segmentation_evaluation`).

    Args:
        rows: per-scan prediction rows (:attr:`SitePredictionCollector.rows`).
        output_dir: output folder (created).
        metrics: per-site metric rows (:func:`site_metrics`), or None.
        prefix: file name prefix (``"inference_"``).
        errors: rows of scans that could not be predicted (``image``, ``error``; from
            :func:`~monai_medl.bundle.inference_inputs`): written after the predictions, then the run fails.
        fields: the columns of ``predictions.csv``. Defaults to :data:`PREDICTION_FIELDS`.
        metric_fields: the columns of ``metrics.csv``. Defaults to :data:`METRIC_FIELDS`.

    Returns:
        the paths written, keyed ``"predictions"``, ``"metrics_csv"``, ``"metrics_json"``.

    Raises:
        InvalidScansError: after writing everything, if ``errors`` is not empty (a non-zero exit of the bundle
            run, with a summary naming the files).
    """
    tables = (rows, errors, fields, metrics, metric_fields)
    json_metrics = None if metrics is None else [{k: (None if _isnan(v) else v) for k, v in m.items()} for m in metrics]
    return write_scan_tables(output_dir, prefix, tables, json_metrics)


def write_scan_tables(
    output_dir: str | os.PathLike,
    prefix: str,
    tables: tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]], Sequence[str], Any, Sequence[str]],
    json_metrics: Any = None,
) -> dict[str, str]:
    """The files of :func:`write_predictions`: ``tables`` is
    ``(rows, errors, row fields, metrics or None, metric fields)``, ``json_metrics`` what ``metrics.json`` holds."""
    rows, errors, fields, metrics, metric_fields = tables
    os.makedirs(output_dir, exist_ok=True)
    paths = {"predictions": os.path.join(output_dir, f"{prefix}predictions.csv")}
    _write_csv(paths["predictions"], [*rows, *errors], fields)
    if metrics is not None:
        paths["metrics_csv"] = os.path.join(output_dir, f"{prefix}metrics.csv")
        paths["metrics_json"] = os.path.join(output_dir, f"{prefix}metrics.json")
        _write_csv(paths["metrics_csv"], metrics, metric_fields)
        with open(paths["metrics_json"], "w", encoding="utf-8") as f:
            json.dump(json_metrics, f, indent=1)
            f.write("\n")
    raise_for_invalid_scans(errors, paths["predictions"], len({r.get("image") for r in rows}))
    return paths


def raise_for_invalid_scans(errors: Sequence[Mapping[str, Any]], where: str, num_predicted: int) -> None:
    """Raise :class:`InvalidScansError` naming each invalid scan and why, if there is any (the bundle exits non-zero
    after the valid scans were predicted and written to ``where``)."""
    if errors:
        listing = "\n  ".join(f"{e.get('image', '?')}: {e.get('error', '?')}" for e in errors)
        raise InvalidScansError(
            f"{len(errors)} scan(s) could not be predicted (error rows in {where}; {num_predicted} other scan(s) were "
            f"predicted):\n  {listing}"
        )


def _write_csv(path: str, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})


def write_evaluation(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    threshold_split: str = "train",
    report_splits: Sequence[str] = ("test",),
    figures: bool = True,
    network: Any = None,
    site_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Compute :func:`site_metrics`, write predictions and metrics (CSV and JSON), log a summary, return metrics.

    With ``figures`` the PNG figures of :func:`~monai_medl.visualize.evaluation_figures.write_evaluation_figures`
    are written next to them (the intercept figure needs ``network`` and the training ``site_names``).

    Example (``configs/evaluate.json``)::

        "run": ["$monai_medl.bundle.evaluate_modes(@validate#evaluator, @modes)",
                "$monai_medl.bundle.write_evaluation(@evaluate#collector.rows, @output_dir)"]
    """
    metrics = site_metrics(rows, threshold_split=threshold_split, report_splits=report_splits)
    paths = write_predictions(rows, output_dir, metrics)
    log = logging.getLogger(__name__)
    for m in metrics:
        if m["group"] != "site":
            log.info(
                f"{m['mode']:>10} {m['group']:>7}: n={m['n']:4d} AUROC={m['auroc']:.3f} "
                f"balanced accuracy={m['balanced_accuracy']:.3f} (threshold {m['threshold']:.3f} from training scans)"
            )
    log.info(f"per-scan predictions: {paths['predictions']}; metrics: {paths['metrics_csv']}, {paths['metrics_json']}")
    if figures:
        write_evaluation_figures(rows, output_dir, network, site_names, report_splits, threshold_split)
    return metrics
