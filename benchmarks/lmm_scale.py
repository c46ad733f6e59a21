# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Scale: a random-intercept linear mixed model on 100,000 rows x 2,000 groups (and 1,000,000 x 20,000).

Data: ``y = 1 + 2 x1 - x2 + u_g + e``, ``u_g ~ N(0, 0.5^2)``, ``e ~ N(0, 1)``, groups of random size (Poisson
around the mean size). Fitted by ``MixedEffectsRegressor`` (L-BFGS on the ELBO, float64), statsmodels
``MixedLM(reml=False)`` and GPBoost's ``GPModel`` (grouped random effect, Gaussian likelihood), each in its own
process with a wall-time cap (a fit over the cap is reported as not finished). Reported per size: wall time, the
random-intercept s.d., the residual s.d. and the x1 coefficient, and the relative difference of ours to statsmodels.
The machine load (``uptime``) is recorded before and after. ``--quick`` runs the 100,000-row size only.

Run ``python -m benchmarks.lmm_scale [--quick] [--out DIR]``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import time
import warnings

import numpy as np

from benchmarks._common import announce_plan, benchmark_parser, write_results

__all__ = ["SIZES", "simulate", "run", "main"]

NAME = "lmm_scale"
SIZES = {"100k": (100_000, 2_000), "1m": (1_000_000, 20_000)}
CAP_SECONDS = {"100k": 600, "1m": 1800}
TRUTH = {"group_sd": 0.5, "residual_sd": 1.0, "x1": 2.0}


def simulate(rows: int, groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (rows, 2), group index (rows,), y)`` with a known random intercept."""
    rng = np.random.default_rng(seed)
    group = np.sort(rng.integers(0, groups, rows))
    x = rng.normal(size=(rows, 2))
    u = rng.normal(0.0, TRUTH["group_sd"], groups)
    y = 1.0 + TRUTH["x1"] * x[:, 0] - x[:, 1] + u[group] + rng.normal(0.0, TRUTH["residual_sd"], rows)
    return x, group, y


def _fit_me(x, g, y) -> dict:
    import torch

    from monai_medl.estimators import MixedEffectsRegressor

    torch.set_num_threads(1)  # on a shared 2-core machine one thread avoids OpenMP contention (measured 4x faster)
    fit = MixedEffectsRegressor().fit(x, y, groups=g)
    vc = fit.var_corr()
    return {
        "group_sd": float(vc.sdcor.iloc[0]),
        "residual_sd": fit.residual_sd_,
        "x1": float(fit.fixed_effects_["x0"]),
        "iterations": fit.fit_info_["iterations"],
    }


def _fit_statsmodels(x, g, y) -> dict:
    import statsmodels.api as sm

    exog = np.column_stack([np.ones(len(y)), x])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sm.MixedLM(y, exog, groups=g).fit(reml=False)
    return {
        "group_sd": float(np.sqrt(result.cov_re[0, 0])),
        "residual_sd": float(np.sqrt(result.scale)),
        "x1": float(result.fe_params[1]),
    }


def _fit_gpboost(x, g, y) -> dict:
    import gpboost as gpb

    model = gpb.GPModel(group_data=g, likelihood="gaussian")
    model.fit(y=y, X=np.column_stack([np.ones(len(y)), x]))
    cov = model.get_cov_pars()
    values = np.asarray(cov).ravel()
    return {
        "group_sd": float(np.sqrt(values[1])),
        "residual_sd": float(np.sqrt(values[0])),
        "x1": float(np.asarray(model.get_coef()).ravel()[1]),
    }


FITTERS = {"me": _fit_me, "statsmodels_ml": _fit_statsmodels, "gpboost": _fit_gpboost}


def _worker(name: str, size: str, queue) -> None:
    x, g, y = simulate(*SIZES[size])
    start = time.perf_counter()
    try:
        out = FITTERS[name](x, g, y)
        out["seconds"] = time.perf_counter() - start
    except Exception as err:  # a failing baseline is a result, not a crash of the benchmark
        out = {"error": f"{type(err).__name__}: {err}"}
    queue.put(out)


def _run_capped(name: str, size: str) -> dict:
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_worker, args=(name, size, queue))
    proc.start()
    proc.join(CAP_SECONDS[size])
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"error": f"not finished within {CAP_SECONDS[size]} s"}
    return queue.get() if not queue.empty() else {"error": f"exit code {proc.exitcode}"}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def run(sizes: list[str]) -> tuple[dict, dict]:
    """Fit every model at every size (one process per fit); return models and config."""
    load_before = _uptime()
    raw = {name: {size: _run_capped(name, size) for size in sizes} for name in FITTERS}
    for name, per_size in raw.items():
        print(f"  {name}: {json.dumps(per_size)}", flush=True)
    models = {}
    for name, per_size in raw.items():
        extra: dict = {}
        for size, out in per_size.items():
            if "error" in out:
                extra[f"{size}_error"] = out["error"]
                continue
            for key in ("seconds", "group_sd", "residual_sd", "x1"):
                extra[f"{size}_{key}"] = out[key]
            ref = raw["statsmodels_ml"][size]
            if name != "statsmodels_ml" and "error" not in ref:
                extra[f"{size}_max_rel_diff_vs_statsmodels"] = max(
                    abs(out[k] / ref[k] - 1) for k in ("group_sd", "residual_sd", "x1")
                )
        models[name] = {"seen": None, "unseen": None, "extra": extra}
    config = {
        "sizes": {s: {"rows": SIZES[s][0], "groups": SIZES[s][1]} for s in sizes},
        "truth": TRUTH,
        "cap_seconds": {s: CAP_SECONDS[s] for s in sizes},
        "me": "MixedEffectsRegressor() defaults (random intercept, L-BFGS, float64), 1 torch thread",
        "statsmodels_ml": "MixedLM(y, [1, x], groups).fit(reml=False)",
        "gpboost": "GPModel(group_data=groups, likelihood='gaussian').fit(y, X=[1, x])",
        "uptime_before": load_before,
        "uptime_after": _uptime(),
    }
    return models, config


PLAN = {
    "seeds": "data seed 0 per size; one fit per model in its own process, wall-time capped",
    "primary_comparisons": ["me vs statsmodels_ml and gpboost: wall time; group s.d., residual s.d., x1 vs ML"],
    "decision_rule": "target: faster than statsmodels at 100,000 x 2,000 with estimates within 2% of it",
}


def main(argv: list[str] | None = None) -> dict:
    args = benchmark_parser(__doc__.splitlines()[0]).parse_args(argv)
    sizes = ["100k"] if args.quick else list(SIZES)
    announce_plan(NAME, args.quick, PLAN, [0], args.out)
    models, config = run(sizes)
    notes = "Wall time of one fit per model (own process, nice'd run on a shared 2-core machine; see config.uptime_*)."
    return write_results(
        NAME, args.quick, "fit_seconds", 1, models, config, [0], out_dir=args.out, notes=notes, plan=PLAN
    )


if __name__ == "__main__":
    main()
