# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Scale: a random-intercept linear mixed model on 100,000 rows x 2,000 groups and 1,000,000 rows x 20,000 groups.

Data: ``y = 1 + 2 x1 - x2 + u_g + e``, ``u_g ~ N(0, 0.5^2)``, ``e ~ N(0, 1)``, group sizes multinomial (every row
drawn a group uniformly). Fitted by ``MixedEffectsRegressor`` (its defaults: L-BFGS on the ELBO, float64, the
random effects' posterior in closed form), statsmodels ``MixedLM(reml=False)`` and GPBoost's ``GPModel`` (grouped
random effect, Gaussian likelihood). Every fit runs in its own fresh process (``spawn``) with the same setup:
``--threads`` BLAS/OpenMP/torch threads (default 1), the library imported before the clock starts (its import
time is reported apart), the data simulated in the process, then one timed fit; a fit over its size's wall-time
cap is killed and reported as "did not finish in N s". Reported per size and model: wall time of the fit, import
time, the random-intercept s.d., the residual s.d. and the x1 coefficient, the relative difference of each to
statsmodels' (where it finished), ``L-BFGS`` iterations (ours) and the 1-minute load average before and after the
fit (other jobs on the machine inflate every timing; ``uptime`` before and after the whole run is in the config).

The full run fits both sizes; ``--quick`` fits a 10,000 x 200 problem only (a smoke test of the pipeline, not the
target). Target (issue 14): faster than statsmodels at 100,000 x 2,000 with estimates within 2% of it.

Run ``python -m benchmarks.lmm_scale [--quick] [--threads N] [--out DIR]``.
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

__all__ = ["SIZES", "QUICK_SIZES", "FULL_SIZES", "simulate", "run", "main"]

NAME = "lmm_scale"
SIZES = {"10k": (10_000, 200), "100k": (100_000, 2_000), "1m": (1_000_000, 20_000)}
QUICK_SIZES, FULL_SIZES = ["10k"], ["100k", "1m"]
CAP_SECONDS = {"10k": 300, "100k": 600, "1m": 1800}
TRUTH = {"group_sd": 0.5, "residual_sd": 1.0, "x1": 2.0}
ESTIMATES = ("group_sd", "residual_sd", "x1")


def simulate(rows: int, groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (rows, 2), group index (rows,), y)`` with a known random intercept."""
    rng = np.random.default_rng(seed)
    group = np.sort(rng.integers(0, groups, rows))
    x = rng.normal(size=(rows, 2))
    u = rng.normal(0.0, TRUTH["group_sd"], groups)
    y = 1.0 + TRUTH["x1"] * x[:, 0] - x[:, 1] + u[group] + rng.normal(0.0, TRUTH["residual_sd"], rows)
    return x, group, y


def _import_me() -> None:
    import torch  # noqa: F401

    import monai_medl.estimators  # noqa: F401


def _fit_me(x, g, y, threads: int) -> dict:
    import torch

    from monai_medl.estimators import MixedEffectsRegressor

    torch.set_num_threads(threads)
    fit = MixedEffectsRegressor(method="elbo", device="cpu").fit(x, y, groups=g)
    vc = fit.var_corr()
    return {
        "group_sd": float(vc.sdcor.iloc[0]),
        "residual_sd": fit.residual_sd_,
        "x1": float(fit.fixed_effects_["x0"]),
        "iterations": fit.fit_info_["iterations"],
    }


def _import_statsmodels() -> None:
    import statsmodels.api  # noqa: F401


def _fit_statsmodels(x, g, y, threads: int) -> dict:
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


def _import_gpboost() -> None:
    import gpboost  # noqa: F401


def _fit_gpboost(x, g, y, threads: int) -> dict:
    import gpboost as gpb

    model = gpb.GPModel(group_data=g, likelihood="gaussian", num_parallel_threads=threads)
    model.fit(y=y, X=np.column_stack([np.ones(len(y)), x]))
    values = np.asarray(model.get_cov_pars()).ravel()
    return {
        "group_sd": float(np.sqrt(values[1])),
        "residual_sd": float(np.sqrt(values[0])),
        "x1": float(np.asarray(model.get_coef()).ravel()[1]),
    }


FITTERS = {
    "me": (_import_me, _fit_me),
    "statsmodels_ml": (_import_statsmodels, _fit_statsmodels),
    "gpboost": (_import_gpboost, _fit_gpboost),
}


def _worker(name: str, size: str, threads: int, queue) -> None:
    from threadpoolctl import threadpool_limits

    out: dict = {}
    try:
        with threadpool_limits(threads):
            start = time.perf_counter()
            FITTERS[name][0]()
            out["import_seconds"] = time.perf_counter() - start
            x, g, y = simulate(*SIZES[size])
            out["load_1min_before"] = os.getloadavg()[0]
            start = time.perf_counter()
            out.update(FITTERS[name][1](x, g, y, threads))
            out["seconds"] = time.perf_counter() - start
            out["load_1min_after"] = os.getloadavg()[0]
    except Exception as err:  # a failing baseline is a result, not a crash of the benchmark
        out["error"] = f"{type(err).__name__}: {err}"
    queue.put(out)


def _run_capped(name: str, size: str, threads: int, cap: float) -> dict:
    """One fit in a fresh process; killed after ``cap`` seconds (import, simulation and fit)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=_worker, args=(name, size, threads, queue))
    proc.start()
    proc.join(cap)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"error": f"did not finish in {cap:g} s", "load_1min_at_kill": os.getloadavg()[0]}
    try:
        return queue.get(timeout=10)
    except Exception:  # noqa: BLE001 - the process died without reporting
        return {"error": f"exit code {proc.exitcode}"}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def run(sizes: list[str], threads: int = 1) -> tuple[dict, dict]:
    """Fit every model at every size (one fresh process per fit, capped); return models and config."""
    load_before = _uptime()
    raw: dict = {name: {} for name in FITTERS}
    for size in sizes:
        for name in FITTERS:
            raw[name][size] = _run_capped(name, size, threads, CAP_SECONDS[size])
            print(f"  {size} {name}: {json.dumps(raw[name][size])}", flush=True)
    models = {}
    for name, per_size in raw.items():
        extra: dict = {}
        for size, out in per_size.items():
            extra.update({f"{size}_{key}": value for key, value in out.items()})
            ref = raw["statsmodels_ml"][size]
            if name != "statsmodels_ml" and "error" not in out and "error" not in ref:
                extra[f"{size}_max_rel_diff_vs_statsmodels"] = max(abs(out[k] / ref[k] - 1) for k in ESTIMATES)
                extra[f"{size}_speedup_vs_statsmodels"] = ref["seconds"] / out["seconds"]
        models[name] = {"seen": None, "unseen": None, "extra": extra}
    config = {
        "sizes": {s: {"rows": SIZES[s][0], "groups": SIZES[s][1]} for s in sizes},
        "truth": TRUTH,
        "cap_seconds": {s: CAP_SECONDS[s] for s in sizes},
        "threads": threads,
        "process": "one fresh spawn process per fit: threadpoolctl limits BLAS/OpenMP to `threads`, the library is "
        "imported (import_seconds), the data simulated, then the fit is timed (seconds)",
        "me": "MixedEffectsRegressor(method='elbo', device='cpu'), otherwise defaults (random intercept, L-BFGS on "
        "the ELBO, float64, closed-form random-effects posterior), torch.set_num_threads(threads)",
        "statsmodels_ml": "MixedLM(y, [1, x], groups).fit(reml=False)",
        "gpboost": "GPModel(group_data=groups, likelihood='gaussian', num_parallel_threads=threads).fit(y, X=[1, x])",
        "uptime_before": load_before,
        "uptime_after": _uptime(),
    }
    return models, config


PLAN = {
    "seeds": "data seed 0 per size; one fit per model, each in its own fresh process, wall-time capped",
    "sizes": "full: 100,000 x 2,000 and 1,000,000 x 20,000; quick: 10,000 x 200 (pipeline check only)",
    "primary_comparisons": ["me vs statsmodels_ml and gpboost: wall time; group s.d., residual s.d., x1 vs ML"],
    "decision_rule": "target: faster than statsmodels at 100,000 x 2,000 with estimates within 2% of it",
}


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/torch threads per fit (default 1)")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    announce_plan(NAME, args.quick, PLAN, [0], args.out)
    models, config = run(sizes, args.threads)
    notes = (
        "Wall time of one fit per model and size, each in its own fresh process with the same thread limit "
        "(config.threads); import time apart; load averages beside every fit (other jobs inflate timings)."
    )
    return write_results(
        NAME, args.quick, "fit_seconds", 1, models, config, [0], out_dir=args.out, notes=notes, plan=PLAN
    )


if __name__ == "__main__":
    main()
