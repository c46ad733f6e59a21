# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Scale: random-intercept linear mixed models from 10,000 rows x 200 groups to 1,000,000 rows x 20,000 groups, and
two crossed factors on 1,000,000 rows x (10,000 x 1,000) levels.

Data: ``y = 1 + 2 x1 - x2 + u_g + e``, ``u_g ~ N(0, 0.5^2)``, ``e ~ N(0, 1)``, group sizes multinomial (every row
drawn a group uniformly); the crossed design adds a second factor ``v_h ~ N(0, 0.3^2)`` drawn independently per row.
Fitted by ``MixedEffectsRegressor`` twice: ``me`` (``method="elbo"``: L-BFGS on the ELBO, float64, the random
effects' posterior in closed form) and ``me_exact`` (``method="ml"``: the profiled ML deviance, exact), statsmodels
``MixedLM(reml=False)`` (crossed: ``vc_formula``, not run at 1,000,000 rows, whose dense variance-component design
would need 1,000,000 x 11,000 doubles, 88 GB) and GPBoost's ``GPModel`` (grouped random effects, Gaussian
likelihood). Every fit runs in its own fresh process (``spawn``) with the same setup:
``--threads`` BLAS/OpenMP/torch threads (default 1), the library imported before the clock starts (its import
time is reported apart), the data simulated in the process, then one timed fit; a fit over its size's wall-time
cap is killed and reported as "did not finish in N s". Reported per size and model: wall time of the fit, import
time, the random-intercept s.d.s, the residual s.d. and the x1 coefficient, the relative difference of each to
statsmodels' (where it finished, else GPBoost's), iterations or deviance evaluations (ours), the process's peak
resident memory (``VmHWM``) before and after the fit, and the 1-minute load average before and after the fit
(other jobs on the machine inflate every timing; ``uptime`` before and after the whole run is in the config).

The full run fits 10,000 x 200, 100,000 x 2,000, 1,000,000 x 20,000 and the crossed 1,000,000 x (10,000 x 1,000);
``--quick`` fits 10,000 x 200 and a crossed 10,000 x (200 x 50) only. Targets: ``me_exact`` faster than GPBoost at
10,000 x 200, 1,000,000 x 20,000 and the crossed design (issue 23), with estimates within 2% of the reference;
faster than statsmodels at 100,000 x 2,000 (issue 14).

Run ``python -m benchmarks.lmm_scale [--quick] [--threads N] [--out DIR]``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import subprocess
import time
import warnings

import numpy as np

from benchmarks._common import announce_plan, benchmark_parser, write_results

__all__ = ["SIZES", "QUICK_SIZES", "FULL_SIZES", "simulate", "run", "main"]

NAME = "lmm_scale"
SIZES: dict[str, tuple] = {
    "10k": (10_000, 200),
    "100k": (100_000, 2_000),
    "1m": (1_000_000, 20_000),
    "crossed_10k": (10_000, (200, 50)),
    "crossed": (1_000_000, (10_000, 1_000)),
}
QUICK_SIZES, FULL_SIZES = ["10k", "crossed_10k"], ["10k", "100k", "1m", "crossed"]
CAP_SECONDS = {"10k": 300, "100k": 600, "1m": 1800, "crossed_10k": 300, "crossed": 1800}
TRUTH = {"group_sd": 0.5, "group2_sd": 0.3, "residual_sd": 1.0, "x1": 2.0}
ESTIMATES = ("group_sd", "residual_sd", "x1")
STATSMODELS_MAX_DENSE = 50_000_000  # entries of statsmodels' dense variance-component design it is asked to build


def simulate(rows: int, groups, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (rows, 2), group index (rows,) or (rows, 2) for crossed ``groups = (a, b)``, y)``."""
    rng = np.random.default_rng(seed)
    crossed = isinstance(groups, tuple)
    first = groups[0] if crossed else groups
    group = np.sort(rng.integers(0, first, rows))
    x = rng.normal(size=(rows, 2))
    u = rng.normal(0.0, TRUTH["group_sd"], first)
    y = 1.0 + TRUTH["x1"] * x[:, 0] - x[:, 1] + u[group] + rng.normal(0.0, TRUTH["residual_sd"], rows)
    if not crossed:
        return x, group, y
    second = rng.integers(0, groups[1], rows)
    y = y + rng.normal(0.0, TRUTH["group2_sd"], groups[1])[second]
    return x, np.column_stack([group, second]), y


def _import_me() -> None:
    import torch  # noqa: F401

    import monai_medl.estimators  # noqa: F401


def _import_me_elbo() -> None:
    _import_me()
    # the variational fit builds its network from monai_medl.networks (which imports MONAI) on its first call:
    # import it before the clock too, or the first fit of a fresh process times a 4-7 s import, not the fit
    import monai_medl.networks.nets.grouped_mixed_effects_net  # noqa: F401


def _fit_ours(x, g, y, threads: int, method: str) -> dict:
    import torch

    from monai_medl.estimators import MixedEffectsRegressor

    torch.set_num_threads(threads)
    # the exact fit on numpy/scipy (device=None); a device would move its deviance to torch
    fit = MixedEffectsRegressor(method=method, device="cpu" if method == "elbo" else None).fit(x, y, groups=g)
    sds = fit.var_corr().sdcor.to_numpy()
    out = {
        "group_sd": float(sds[0]),
        "residual_sd": fit.residual_sd_,
        "x1": float(fit.fixed_effects_["x0"]),
        "iterations": fit.fit_info_["iterations"],
    }
    if g.ndim == 2:
        out["group2_sd"] = float(sds[1])
    return out


def _fit_me(x, g, y, threads: int) -> dict:
    return _fit_ours(x, g, y, threads, "elbo")


def _fit_me_exact(x, g, y, threads: int) -> dict:
    return _fit_ours(x, g, y, threads, "ml")


def _import_statsmodels() -> None:
    import statsmodels.api  # noqa: F401


def _fit_statsmodels(x, g, y, threads: int) -> dict:
    import statsmodels.api as sm

    exog = np.column_stack([np.ones(len(y)), x])
    if g.ndim == 2:  # crossed: one group, both factors as variance components (a dense indicator design)
        entries = len(y) * int(g.max(0).sum() + 2)
        if entries > STATSMODELS_MAX_DENSE:
            raise MemoryError(f"not run: its dense variance-component design would have {entries:,} entries")
        import pandas as pd

        frame = pd.DataFrame({"y": y, "x0": x[:, 0], "x1": x[:, 1], "a": g[:, 0], "b": g[:, 1]})
        model = sm.MixedLM.from_formula(
            "y ~ x0 + x1", frame, groups=np.ones(len(y)), vc_formula={"a": "0 + C(a)", "b": "0 + C(b)"}
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = model.fit(reml=False)
        sd = dict(zip(result.model.exog_vc.names, np.sqrt(result.vcomp)))
        return {
            "group_sd": float(sd["a"]),
            "group2_sd": float(sd["b"]),
            "residual_sd": float(np.sqrt(result.scale)),
            "x1": float(result.fe_params["x0"]),
        }
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
    values = np.asarray(model.get_cov_pars()).ravel()  # error variance, then one variance per grouping factor
    out = {
        "group_sd": float(np.sqrt(values[1])),
        "residual_sd": float(np.sqrt(values[0])),
        "x1": float(np.asarray(model.get_coef()).ravel()[1]),
    }
    if g.ndim == 2:
        out["group2_sd"] = float(np.sqrt(values[2]))
    return out


FITTERS = {
    "me": (_import_me_elbo, _fit_me),
    "me_exact": (_import_me, _fit_me_exact),
    "statsmodels_ml": (_import_statsmodels, _fit_statsmodels),
    "gpboost": (_import_gpboost, _fit_gpboost),
}


def _peak_rss_mb() -> float:
    """The process's peak resident memory so far in MiB: Linux's ``VmHWM`` (a spawned process's own; its
    ``ru_maxrss`` can carry the parent's), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
            out["peak_rss_mb_before_fit"] = _peak_rss_mb()
            start = time.perf_counter()
            out.update(FITTERS[name][1](x, g, y, threads))
            out["seconds"] = time.perf_counter() - start
            out["peak_rss_mb"] = _peak_rss_mb()
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
            keys = ESTIMATES + (("group2_sd",) if isinstance(SIZES[size][1], tuple) else ())
            for ref_name in ("statsmodels_ml", "gpboost"):
                ref = raw[ref_name][size]
                if name != ref_name and "error" not in out and "error" not in ref:
                    label = ref_name.split("_")[0]
                    extra[f"{size}_max_rel_diff_vs_{label}"] = max(abs(out[k] / ref[k] - 1) for k in keys)
                    extra[f"{size}_speedup_vs_{label}"] = ref["seconds"] / out["seconds"]
        models[name] = {"seen": None, "unseen": None, "extra": extra}
    config = {
        "sizes": {s: {"rows": SIZES[s][0], "groups": SIZES[s][1]} for s in sizes},
        "peak_memory": "peak_rss_mb: the fit process's peak resident set (VmHWM) after the fit; "
        "peak_rss_mb_before_fit: the same after import and simulation, before the fit",
        "truth": TRUTH,
        "cap_seconds": {s: CAP_SECONDS[s] for s in sizes},
        "threads": threads,
        "process": "one fresh spawn process per fit: threadpoolctl limits BLAS/OpenMP to `threads`, the library is "
        "imported (import_seconds), the data simulated, then the fit is timed (seconds)",
        "me": "MixedEffectsRegressor(method='elbo', device='cpu'), otherwise defaults (random intercepts, L-BFGS on "
        "the ELBO, float64, closed-form random-effects posterior), torch.set_num_threads(threads)",
        "me_exact": "MixedEffectsRegressor(method='ml'): the exact profiled ML deviance on numpy/scipy (block-Schur "
        "factorisation; one s.d. by Brent's method, two by L-BFGS-B); iterations = deviance evaluations",
        "statsmodels_ml": "MixedLM(y, [1, x], groups).fit(reml=False); crossed: MixedLM.from_formula(vc_formula={a, "
        "b}, groups=ones).fit(reml=False), not run when its dense design exceeds 50,000,000 entries",
        "gpboost": "GPModel(group_data=groups, likelihood='gaussian', num_parallel_threads=threads).fit(y, X=[1, x])",
        "uptime_before": load_before,
        "uptime_after": _uptime(),
    }
    return models, config


PLAN = {
    "seeds": "data seed 0 per size; one fit per model, each in its own fresh process, wall-time capped",
    "sizes": "full: 10,000 x 200, 100,000 x 2,000, 1,000,000 x 20,000 and crossed 1,000,000 x (10,000 x 1,000); "
    "quick: 10,000 x 200 and crossed 10,000 x (200 x 50) (pipeline check only)",
    "primary_comparisons": [
        "me_exact and me vs gpboost and statsmodels_ml: wall time, peak memory; group s.d.s, residual s.d., x1"
    ],
    "decision_rule": "targets: me_exact faster than gpboost at 10,000 x 200, 1,000,000 x 20,000 and crossed, with "
    "estimates within 2% of statsmodels (gpboost where statsmodels is not run); me faster than statsmodels at "
    "100,000 x 2,000",
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
