# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Few-shot curves of :mod:`benchmarks.mri_few_shot`, drawn from its results JSON.

One row of panels per arm, one column per metric (within-site AUROC, log loss, ECE), a line per method over ``k``
with its 95% t-interval over replicates as error bars; ``k = 0`` shows the unadapted models (the ME population
prediction is drawn under the ME methods' colour, the unadapted conventional CNN under every conventional one's).

Run ``python -m benchmarks.mri_few_shot_plot [RESULTS_JSON] [--out PNG]`` (defaults:
``benchmarks/results/mri_few_shot.json`` and the same path with ``.png``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.mri_few_shot import CONVENTIONAL_METHODS, ME_METHODS, METRICS, UNADAPTED, metric_summary, model_key

__all__ = ["curve", "plot_curves", "main"]

_LABELS = {"auroc": "within-site AUROC (higher better)", "log_loss": "log loss (lower better)", "ece": "ECE"}


def curve(
    models: Mapping[str, Any], arm: str, method: str, metric: str, ks: Sequence[int]
) -> tuple[list[int], list[float], list[tuple[float, float]]]:
    """``(ks, means, (low, high) intervals)`` of one method's curve; ``k = 0`` falls back to the method's unadapted
    model (:data:`benchmarks.mri_few_shot.UNADAPTED`), and a ``k`` without results is left out."""
    out_k, means, intervals = [], [], []
    for k in ks:
        name = method if k else (UNADAPTED[0] if method in ME_METHODS else UNADAPTED[1])
        entry = models.get(model_key(arm, name, k))
        if entry is None:
            continue
        mean, interval = metric_summary(entry, metric)
        out_k.append(k)
        means.append(mean)
        intervals.append(interval)
    return out_k, means, intervals


def plot_curves(results: Mapping[str, Any], path: str) -> str:
    """Write the few-shot curves of ``results`` (the benchmark's JSON, loaded) to the PNG ``path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, models = results["config"], results["models"]
    arms, ks = cfg["arms"], cfg["ks"]
    fig, axes = plt.subplots(len(arms), len(METRICS), figsize=(4.2 * len(METRICS), 3.4 * len(arms)), squeeze=False)
    methods = [m for m in (*ME_METHODS, *CONVENTIONAL_METHODS) if m not in UNADAPTED]
    for i, arm in enumerate(arms):
        for j, metric in enumerate(METRICS):
            ax = axes[i][j]
            for n, method in enumerate(methods):
                x, y, ci = curve(models, arm, method, metric, ks)
                if not x:
                    continue
                err = [[m - lo for m, (lo, _) in zip(y, ci)], [hi - m for m, (_, hi) in zip(y, ci)]]
                shift = [v + 0.25 * (n - len(methods) / 2) for v in x]  # keep the error bars apart
                style = "-o" if method.startswith("me_") else "--s"
                ax.errorbar(shift, y, yerr=err, fmt=style, ms=3, capsize=2, lw=1, label=method)
            ax.set_xticks(ks)
            ax.set_xlabel("labelled scans of the new site (k)")
            ax.set_title(f"{arm}: {_LABELS[metric]}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    run = "quick" if results.get("quick") else "full"
    fig.suptitle(f"mri_few_shot ({run} run, {results.get('repeats', '?')} replicates): mean and 95% t-interval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.path.join(os.path.dirname(__file__), "results", "mri_few_shot.json")
    parser.add_argument("results", nargs="?", default=default, help="the benchmark's results JSON")
    parser.add_argument("--out", default=None, help="PNG path (default: the JSON's path with .png)")
    args = parser.parse_args(argv)
    try:
        with open(args.results) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot read the few-shot results {args.results!r}: {e}") from None
    if "models" not in results or "config" not in results:
        raise SystemExit(f"{args.results!r} is not a mri_few_shot results file (expected keys 'models' and 'config').")
    out = args.out or os.path.splitext(args.results)[0] + ".png"
    print(f"wrote {plot_curves(results, out)}")


if __name__ == "__main__":
    main()
