# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A tiny multi-site regression cohort (random intercept per site) written as one datalist per site."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BETA = np.array([0.8, -0.5])
SPEC = {
    "in_features": 2,
    "out_channels": 1,
    "hidden": [],
    "linear_slopes": False,
    "learn_noise_scale": True,
    "intercept_prior_scale": 0.5,
}
# enough local steps per round for the E-step to settle (tabular: a fraction of a second per site)
TRAINING = {"epochs": 50, "batch_size": 60, "lr": 0.05}


def site_items(site_name: str, effect: float, n: int, rng: np.random.Generator) -> list[dict]:
    x = rng.normal(size=(n, 2))
    y = x @ BETA + 0.2 + effect + rng.normal(scale=0.5, size=n)
    return [{"features": xi.tolist(), "label": float(yi), "site": site_name} for xi, yi in zip(x, y)]


def write_site_datalists(folder: Path, effects=(-1.0, 0.3, 1.2), n: int = 60, seed: int = 0) -> list[Path]:
    """One ``site<k>.json`` per effect, items of site name ``hosp<k>``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, effect in enumerate(effects):
        path = folder / f"site{k}.json"
        path.write_text(json.dumps({"training": site_items(f"hosp{k}", effect, n, rng)}))
        paths.append(path)
    return paths


def pooled(paths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x``, ``y`` and site index of every item of ``paths`` (what only a pooled fit could see)."""
    xs, ys, sites = [], [], []
    for k, path in enumerate(paths):
        items = json.loads(Path(path).read_text())["training"]
        xs += [i["features"] for i in items]
        ys += [i["label"] for i in items]
        sites += [k] * len(items)
    return np.array(xs), np.array(ys), np.array(sites)


def exact_ml_intercept_variance(paths) -> tuple[float, float]:
    """Exact ML fit (as lme4) of ``y ~ 1 + x + (1 | site)`` on the pooled items: (intercept variance, residual s.d.)."""
    from monai_medl.estimators.exact_fit import fit_estimator_exact

    x, y, sites = pooled(paths)
    k = int(sites.max()) + 1
    fit = fit_estimator_exact(x, y, sites[:, None], ["site"], {"site": k}, {}, {"site": False}, "ml")
    return float(fit.covariances[0][0, 0]), float(fit.sigma)
