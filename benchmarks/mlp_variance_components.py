# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MLP fixed effects: variance components from the exact marginal likelihood given the network vs the ELBO.

Simulated ``y = sin(2 x0) + x1^2 / 2 + u0 + u1 x0 + e`` (``x ~ U(-2, 2)^2``, 40 groups of 20 rows, intercept s.d.
1.0, slope s.d. 0.5 on ``x0``, correlation 0, noise s.d. 0.5), fitted by ``MixedEffectsRegressor`` with MLP fixed
effects (hidden (32, 32), ``random_slopes=["x0"]``, correlated, default early stopping):

- ``marginal``: ``method="marginal"`` (the default for an MLP with one factor), full-batch L-BFGS;
- ``marginal_adam``: the same objective by Adam on mini-batches of 10 whole groups (60 epochs, lr 0.01);
- ``elbo``: ``method="elbo"`` with its default closed-form posterior (L-BFGS): at that posterior the ELBO equals
  the marginal likelihood, so it should match ``marginal``;
- ``elbo_gradient``: ``method="elbo", conjugate_update=False``: the posterior optimised by gradient with the rest;
- ``reference``: the exact ML fit (``method="ml"``) of the same random effects on ``y - f(x)`` with the true ``f``.

Metric (``seen``): per seed, the largest of ``|estimate / reference - 1|`` over the intercept s.d., the slope s.d. and
the residual s.d. (``extra``: the same against the truth, and seconds per fit). The plan is written to the JSON
before any fit runs.

Run ``python -m benchmarks.mlp_variance_components [--quick] [--out DIR]``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from benchmarks._common import summarize, write_results
from benchmarks._exact_references import start_fit_benchmark, timed
from monai_medl.estimators import MixedEffectsRegressor

__all__ = ["PLAN", "simulate", "run", "main"]

NAME = "mlp_variance_components"
TRUTH = {"intercept_sd": 1.0, "slope_sd": 0.5, "noise_sd": 0.5}
NETWORK = {"fixed_effects": "mlp", "hidden": (32, 32), "random_slopes": ["x0"], "max_iter": 500}
MODELS = {
    "marginal": {"method": "marginal"},
    "marginal_adam": {"method": "marginal", "optimizer": "adam", "batch_size": 10, "max_iter": 60, "lr": 0.01},
    "elbo": {"method": "elbo"},
    "elbo_gradient": {"method": "elbo", "conjugate_update": False},
}
PLAN = {
    "data": {"f": "sin(2 x0) + x1^2 / 2", "x": "U(-2, 2)^2", "groups": 40, "rows_per_group": 20, **TRUTH},
    "models": {"network": {k: list(v) if isinstance(v, tuple) else v for k, v in NETWORK.items()}, **MODELS},
    "reference": "MixedEffectsRegressor(method='ml', random_slopes=['x0']) on y - f(x) with the true f",
    "comparisons": [
        "marginal vs elbo vs elbo_gradient vs marginal_adam: max relative s.d. error against the reference, per seed",
        "each model against the truth",
    ],
    "decision_rule": "marginal becomes the MLP default if its mean error is <= elbo's (the previous default)",
}


def simulate(seed: int, groups: int = 40, rows: int = 20) -> dict[str, np.ndarray]:
    """``x`` (n, 2), ``groups`` (n,), ``y`` (n,) and the true ``f`` (n,)."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(groups), rows)
    x = rng.uniform(-2, 2, size=(groups * rows, 2))
    f = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2
    u0 = rng.normal(0, TRUTH["intercept_sd"], groups)
    u1 = rng.normal(0, TRUTH["slope_sd"], groups)
    y = f + u0[group] + u1[group] * x[:, 0] + rng.normal(0, TRUTH["noise_sd"], groups * rows)
    return {"x": x, "groups": group, "y": y, "f": f}


def _sds(fit: MixedEffectsRegressor) -> np.ndarray:
    table = fit.var_corr()
    return table[table["var2"].isna()]["sdcor"].to_numpy(dtype=float)


def _seed(rec: dict, seed: int, truth: np.ndarray) -> None:
    """Fit the reference and every model on one seed's data; append their errors to ``rec``."""
    d = simulate(seed)
    x, y, group = d["x"], d["y"], d["groups"]
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1]})
    ref_fit, ref_s = timed(
        lambda: MixedEffectsRegressor(method="ml", random_slopes=[0]).fit(x[:, :1], y - d["f"], group)
    )
    reference = _sds(ref_fit)
    rec["reference"].setdefault("vs_truth", []).append(float(np.abs(reference / truth - 1).max()))
    rec["reference"].setdefault("seconds", []).append(ref_s)
    for model, settings in MODELS.items():
        estimator = MixedEffectsRegressor(**{**NETWORK, **settings})
        fit, seconds = timed(lambda estimator=estimator: estimator.fit(frame, y, group))
        sds = _sds(fit)
        rec[model].setdefault("err", []).append(float(np.abs(sds / reference - 1).max()))
        rec[model].setdefault("vs_truth", []).append(float(np.abs(sds / truth - 1).max()))
        rec[model].setdefault("seconds", []).append(seconds)
        for name, value in zip(("intercept_sd", "slope_sd", "residual_sd"), sds):
            rec[model].setdefault(name, []).append(float(value))


def run(seeds: list[int]) -> tuple[dict, dict]:
    """Fit every model on every seed; return the results' models and config."""
    truth = np.array([TRUTH["intercept_sd"], TRUTH["slope_sd"], TRUTH["noise_sd"]])
    rec: dict[str, dict[str, list[float]]] = {m: {} for m in [*MODELS, "reference"]}
    for seed in seeds:
        _seed(rec, seed, truth)
        print(f"  seed {seed} done", flush=True)
    models = {}
    for model, r in rec.items():
        extra = {k: float(np.mean(v)) for k, v in r.items() if k != "err"}
        models[model] = {"seen": summarize(r["err"]) if "err" in r else None, "unseen": None, "extra": extra}
    config = {
        "timing": "wall time per fit after one untimed warm-up fit; torch.set_num_threads(1)",
        "seen": "per seed, max over (intercept s.d., slope s.d., residual s.d.) of |estimate / reference - 1|",
        "unseen": "not applicable",
        "load_average_after": list(os.getloadavg()),
    }
    return models, config


NOTES = """
seen = per seed, the largest |estimate / reference - 1| over the intercept s.d., the slope s.d. and the residual s.d.;
reference = exact ML fit of the random effects on y - f(x) with the true f. extra.vs_truth = the same against the
simulated s.d.s (1.0, 0.5, 0.5); extra.seconds = mean wall time of one fit (see env.load_average).
marginal = method='marginal' (exact marginal likelihood given the network), marginal_adam = the same by Adam on
mini-batches of 10 whole groups, elbo = method='elbo' with its closed-form posterior (the same optimum in theory),
elbo_gradient = method='elbo', conjugate_update=False.
"""


def main(argv: list[str] | None = None) -> dict:
    args, seeds, out = start_fit_benchmark(NAME, PLAN, __doc__.splitlines()[0], argv)
    models, config = run(seeds)
    return write_results(NAME, args.quick, "sd_rel_error", len(seeds), models, config, seeds, out_dir=out, notes=NOTES)


if __name__ == "__main__":
    main()
