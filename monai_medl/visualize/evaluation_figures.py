# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""PNG figures of a classification evaluation, written next to its ``predictions.csv`` and ``metrics.csv``.

From the per-scan rows of :class:`~monai_medl.bundle.SitePredictionCollector` (and, optionally, the trained
network):

* ``roc_per_site.png``: one ROC curve per test site, one panel per ``z`` mode (unseen sites dashed);
* ``calibration_per_site.png``: observed positive rate against the mean predicted probability in probability bins,
  per site and mode (the diagonal is perfect calibration);
* ``seen_unseen_auroc.png``: test AUROC of seen and unseen sites per mode with 95% bootstrap intervals
  (scans resampled within each class);
* ``intercepts_vs_prevalence.png``: each training site's random intercept (posterior mean) against its training
  prevalence, with Pearson r (:func:`~monai_medl.utils.readouts.random_intercept_vs_prevalence`) when there are
  at least 3 sites.

``figures.json`` lists the files, captions and the intervals. Figures need matplotlib (the ``plot`` extra); without
it :func:`write_evaluation_figures` logs one message saying so and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai.utils import optional_import
from sklearn.metrics import roc_auc_score, roc_curve

from monai_medl.visualize.pyplot import file_pyplot

_, has_matplotlib = optional_import("matplotlib")

__all__ = ["auroc_interval", "write_evaluation_figures", "FIGURES"]

FIGURES = {
    "roc_per_site": "ROC curve of every test site, per z mode (unseen sites dashed)",
    "calibration_per_site": "calibration per test site and z mode: observed positive rate vs mean predicted risk",
    "seen_unseen_auroc": "test AUROC of seen and unseen sites per z mode, 95% bootstrap intervals",
    "intercepts_vs_prevalence": "random intercept of each training site against its training prevalence",
}
"""Figure name (PNG file stem) -> caption."""

logger = logging.getLogger(__name__)


def auroc_interval(
    labels: Sequence[float], probabilities: Sequence[float], n_boot: int = 500, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC and its percentile bootstrap interval, resampling positives and negatives separately (so every
    resample has both classes). NaNs when a class is absent.

    Example::

        >>> auc, low, high = auroc_interval([0, 0, 0, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.3, 0.9], n_boot=200)
        >>> round(auc, 3), low <= auc <= high
        (0.778, True)
    """
    y, p = np.asarray(labels, dtype=float) > 0.5, np.asarray(probabilities, dtype=float)
    pos, neg = p[y], p[~y]
    if not pos.size or not neg.size:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        bp, bn = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        # AUROC as P(positive > negative) + ties / 2, without building label arrays per resample
        stats.append((bp[:, None] > bn[None]).mean() + 0.5 * (bp[:, None] == bn[None]).mean())
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(roc_auc_score(y, p)), float(low), float(high)


def _by_mode(rows: Sequence[Mapping[str, Any]], splits: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list] = {}
    for r in rows:
        if r.get("split") in splits and r.get("label") is not None and r.get("probability") is not None:
            out.setdefault(str(r["mode"]), []).append(r)
    return out


def _sites(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool]]:
    return sorted({(str(r["site"]), bool(r["seen"])) for r in rows}, key=lambda s: (not s[1], s[0]))


def _panels(plt, count: int, title: str):
    fig, axes = plt.subplots(1, count, figsize=(3.6 * count, 3.6), squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, axes[0]


def _roc_figure(plt, by_mode: Mapping[str, list]):
    fig, axes = _panels(plt, len(by_mode), "ROC per test site")
    for ax, (mode, rows) in zip(axes, by_mode.items()):
        for site, seen in _sites(rows):
            y = [r["label"] for r in rows if r["site"] == site]
            p = [r["probability"] for r in rows if r["site"] == site]
            if len(set(y)) < 2:
                continue  # one class at this site: no curve
            fpr, tpr, _ = roc_curve(np.asarray(y) > 0.5, p)
            label = f"{site} {roc_auc_score(np.asarray(y) > 0.5, p):.2f}" + ("" if seen else " (unseen)")
            ax.plot(fpr, tpr, "-" if seen else "--", label=label)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set(title=f"z mode: {mode}", xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=6, title="site AUROC", title_fontsize=6)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # room for the title above the panels
    return fig


def _calibration_figure(plt, by_mode: Mapping[str, list], n_bins: int = 5, min_count: int = 3):
    title = f"calibration per test site ({n_bins} probability bins, bins of >= {min_count} scans)"
    fig, axes = _panels(plt, len(by_mode), title)
    edges = np.linspace(0, 1, n_bins + 1)
    for ax, (mode, rows) in zip(axes, by_mode.items()):
        for site, seen in _sites(rows):
            y = np.asarray([r["label"] for r in rows if r["site"] == site], dtype=float) > 0.5
            p = np.asarray([r["probability"] for r in rows if r["site"] == site], dtype=float)
            bins = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
            used = [b for b in range(n_bins) if (bins == b).sum() >= min_count]  # 1-2 scans: a rate of 0 or 1
            ax.plot(
                [p[bins == b].mean() for b in used],
                [y[bins == b].mean() for b in used],
                "o-" if seen else "s--",
                markersize=3,
                label=site + ("" if seen else " (unseen)"),
            )
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set(title=f"z mode: {mode}", xlabel="mean predicted probability", ylabel="observed positive rate")
        ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def _seen_unseen_figure(plt, intervals: Mapping[str, Mapping[str, Sequence[float]]]):
    fig, ax = plt.subplots(figsize=(1.6 * len(intervals) + 2.5, 3.4))
    for offset, group, marker in ((-0.12, "seen", "o"), (0.12, "unseen", "s")):
        xs, mids, lows, highs = [], [], [], []
        for i, mode in enumerate(intervals):
            if group in intervals[mode] and np.isfinite(intervals[mode][group][0]):
                auc, low, high = intervals[mode][group]
                xs.append(i + offset)
                mids.append(auc)
                lows.append(auc - low)
                highs.append(high - auc)
        ax.errorbar(xs, mids, yerr=[lows, highs], fmt=marker, capsize=3, label=f"{group} sites")
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(intervals)))
    ax.set_xticklabels(list(intervals))
    ax.set(ylabel="test AUROC (95% bootstrap interval)", xlabel="z mode", title="seen vs unseen sites")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _intervals(by_mode: Mapping[str, list], n_boot: int, seed: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for mode, rows in by_mode.items():
        for group, seen in (("seen", True), ("unseen", False)):
            part = [r for r in rows if bool(r["seen"]) == seen]
            if part:
                y, p = [r["label"] for r in part], [r["probability"] for r in part]
                out.setdefault(mode, {})[group] = list(auroc_interval(y, p, n_boot=n_boot, seed=seed))
    return out


def _intercept_figure(plt, network: Any, site_names: Sequence[str], train_rows: Sequence[Mapping[str, Any]]):
    """Scatter of each training site's random intercept against its training prevalence (None: no intercept)."""
    from monai_medl.networks.utils import unwrap_network
    from monai_medl.utils.readouts import random_intercept_vs_prevalence
    from monai_medl.utils.summary import random_intercepts

    network = unwrap_network(network)
    try:
        intercepts = random_intercepts(network)
    except (ValueError, TypeError) as e:
        logger.info(f"no intercept figure: {e}")
        return None
    channel = intercepts.shape[1] - 1  # the positive class of a 2-logit model, the only logit otherwise
    index = {name: i for i, name in enumerate(site_names)}
    sites = [index[str(r["site"])] for r in train_rows if str(r["site"]) in index]
    labels = [float(r["label"]) for r in train_rows if str(r["site"]) in index]
    counts = np.bincount(sites, minlength=len(site_names))
    positives = np.bincount(sites, weights=np.asarray(labels) > 0.5, minlength=len(site_names))
    used = np.flatnonzero(counts)
    prevalence, values = positives[used] / counts[used], intercepts[used, channel].numpy()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.scatter(prevalence, values)
    for x, y, i in zip(prevalence, values, used):
        ax.annotate(str(site_names[int(i)]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    title = "random intercept vs prevalence"
    try:
        res = random_intercept_vs_prevalence(network, sites, labels, channel=channel)
        title += f" (Pearson r {res.r:.2f}, {len(res.clusters)} sites)"
    except ValueError as e:  # fewer than 3 sites, or constant values: no correlation to state
        logger.info(f"intercept figure without a correlation: {e}")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xlabel="training prevalence (positive rate)", ylabel="random intercept (posterior mean)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_evaluation_figures(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    network: Any = None,
    site_names: Sequence[str] | None = None,
    report_splits: Sequence[str] = ("test",),
    train_split: str = "train",
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, str]:
    """Write the evaluation figures (:data:`FIGURES`) and ``figures.json`` into ``output_dir``; return their paths.

    Args:
        rows: per-scan rows (``mode``, ``split``, ``site``, ``seen``, ``label``, ``probability``).
        output_dir: the evaluation folder (created).
        network: the trained mixed-effects network, for the intercept figure (None: no intercept figure).
        site_names: the training sites in the order of ``z``'s columns (the site vocabulary); needed with
            ``network``.
        report_splits: splits of the ROC, calibration and seen/unseen figures. Defaults to ``("test",)``.
        train_split: split whose scans give each site's prevalence. Defaults to ``"train"``.
        n_boot: bootstrap resamples of the intervals.
        seed: seed of the bootstrap.

    Returns:
        figure name -> PNG path (and ``"figures_json"``); empty when matplotlib is missing or nothing is reported.

    Example::

        >>> import tempfile
        >>> rng = np.random.default_rng(0)
        >>> rows = [{"mode": "population", "split": "test", "site": s, "seen": s != "new", "label": float(y),
        ...          "probability": float(np.clip(0.3 * y + 0.7 * rng.random(), 0, 1))}
        ...         for s in ("a", "b", "new") for y in (0, 1) * 10]
        >>> paths = write_evaluation_figures(rows, tempfile.mkdtemp(), n_boot=50)
        >>> sorted(os.path.basename(p) for p in paths.values())  # doctest: +NORMALIZE_WHITESPACE
        ['calibration_per_site.png', 'figures.json', 'roc_per_site.png', 'seen_unseen_auroc.png']
    """
    if not has_matplotlib:
        logger.warning("matplotlib is not installed: evaluation figures are skipped (pip install 'monai-medl[plot]').")
        return {}
    by_mode = _by_mode(rows, report_splits)
    if not by_mode:
        return {}
    plt = file_pyplot("write_evaluation_figures")
    intervals = _intervals(by_mode, n_boot, seed)
    figures = {
        "roc_per_site": _roc_figure(plt, by_mode),
        "calibration_per_site": _calibration_figure(plt, by_mode),
        "seen_unseen_auroc": _seen_unseen_figure(plt, intervals),
    }
    if network is not None and site_names is not None:
        first = next(iter(by_mode))
        train_rows = [r for r in rows if r.get("split") == train_split and str(r["mode"]) == first]
        figures["intercepts_vs_prevalence"] = _intercept_figure(plt, network, list(site_names), train_rows)
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for name, fig in figures.items():
        if fig is None:
            continue
        paths[name] = os.path.join(output_dir, f"{name}.png")
        fig.savefig(paths[name], dpi=100, metadata={"Software": None})  # no version stamp: stable bytes
        plt.close(fig)
    paths["figures_json"] = os.path.join(output_dir, "figures.json")
    listing = [{"file": os.path.basename(paths[n]), "caption": FIGURES[n]} for n in figures if n in paths]
    with open(paths["figures_json"], "w", encoding="utf-8") as f:
        json.dump({"figures": listing, "auroc_intervals": intervals, "n_boot": n_boot, "seed": seed}, f, indent=1)
        f.write("\n")
    logger.info(f"evaluation figures: {', '.join(paths[n] for n in figures if n in paths)}")
    return paths
