# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Federated mixed effects (:mod:`monai_medl.fl`) against pooling, sites alone and federated conventional training.

Data (drawn anew per seed ``s``: the replicates are draws of the sites): a multi-site tabular cohort of
``num_sites`` hospitals, of which ``unseen_sites`` never join the federation, ``n_k`` items per site uniform in
``items_per_site``, four features ``x ~ N(0, 1)``, ``y = b0 + x @ beta + u_k + e`` with a random intercept
``u_k ~ N(0, intercept_sd^2)`` and ``e ~ N(0, noise_sd^2)``. ``seen_test_fraction`` of every federation site's
items are held out (seen test); the rest train every model. It is linear on purpose: the one case where the
pooled model the federation approximates can be fitted exactly (ML, as lme4), so the variance components have a
reference. The fl package supports tabular ``MixedEffectsMLP`` sites; images are not wired in.

Models (settings fixed in :func:`default_config`, none tuned on test items):
``federated_me`` (``federate_in_process``: the NVFlare job's client and aggregator code in one loop; one-cluster
``MixedEffectsMLP`` per site, no hidden layers, random intercept, centred EM of the variance component);
``pooled_me`` (exact ML fit of ``y ~ 1 + x + (1 | site)`` on every federation site's training items in one place:
what the federation cannot do); ``site_alone`` (ordinary least squares at each site on its own items only; on
unseen sites: every federation site's model, errors pooled); ``federated_conventional`` (the same federation with
no random effects: FedAvg of a linear model); ``federated_me_plain_em`` (an ablation: ``federated_me`` without the
server's centring of the intercept rows, the plain EM of the first version). Seen sites predict with their own
random effect (federated: the global model plus the site's rows); unseen sites with the population model
(``z = 0``) and, for ``federated_me``, after ``join_federation`` on ``few_shot`` labelled items of the new site
(scored on the rest).

Also measured: the intercept variance against the pooled exact ML fit (ratio), seen RMSE after every round and
the rounds to reach ``1.05`` x the pooled model's seen RMSE, bytes a site sends per round, and one real NVFlare
simulator run of 3 sites (inside ``unshare -n`` with loopback only): wall time, peak memory of its process tree,
bytes received per site and round, its variance ratio.

Run ``python -m benchmarks.federated [--quick] [--out DIR]`` (under ``nice`` on a shared machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import Comparison, benchmark_parser, run_benchmark
from monai_medl.estimators.exact_fit import exact_linear_predictor, fit_estimator_exact
from monai_medl.fl import LocalTrainingSettings, SiteData, federate_in_process, join_federation, population_network

__all__ = ["NAME", "MODELS", "PLAN", "COMPARISONS", "default_config", "simulate", "run_seed", "run", "main"]

NAME = "federated"
MODELS = ("federated_me", "pooled_me", "site_alone", "federated_conventional", "federated_me_plain_em")

PLAN = {
    "seeds": "0..9 (0..1 quick); seed s draws the sites (effects, sizes, items) and the split",
    "splits": "2 of 8 sites never join (unseen); 30% of every federation site's items held out (seen test); every "
    "model trains on the same remaining items; few-shot: 5 labelled items of an unseen site, scored on its rest",
    "primary_comparisons": [
        "federated_me vs pooled_me: seen and unseen RMSE (paired per seed; the price of not pooling)",
        "federated_me vs site_alone and vs federated_conventional: seen and unseen RMSE (paired per seed)",
        "federated_me intercept variance / pooled exact ML intercept variance (target 1, within 0.1)",
    ],
    "ablation": "federated_me_plain_em (no centring of the rows): its variance ratio against federated_me's",
    "secondary": "rounds to reach 1.05 x pooled_me's seen RMSE; bytes sent per site and round; wall time and peak "
    "memory of one 3-site NVFlare simulator run (once, seed 0's first 3 sites)",
    "decision_rule": "a difference is claimed only when its 95% t-interval over seeds excludes 0; every setting is "
    "fixed in config before the run, none tuned on test items",
}


def default_config(quick: bool = False) -> dict[str, Any]:
    """Every setting of the benchmark (written into the results' ``config``)."""
    return {
        "data": {
            "num_sites": 8,
            "unseen_sites": 2,
            "items_per_site": [30, 90],
            "beta": [1.0, -0.5, 0.5, 0.0],
            "intercept": 0.5,
            "intercept_sd": 1.0,
            "noise_sd": 1.0,
            "seen_test_fraction": 0.3,
            "few_shot": 5,
        },
        "seeds": [0, 1] if quick else list(range(10)),
        "rounds": 4 if quick else 8,
        "accuracy_factor": 1.05,
        "network": {"in_features": 4, "out_channels": 1, "hidden": [], "linear_slopes": False,
                    "learn_noise_scale": True, "intercept_prior_scale": 0.5},
        "training": {"epochs": 50, "batch_size": 64, "lr": 0.05},
        "few_shot_steps": 300,
        "simulator": {"sites": 3, "rounds": 4, "timeout_s": 900},
    }  # fmt: skip


def simulate(data: dict[str, Any], seed: int) -> dict[str, Any]:
    """One draw: ``x``, ``y``, ``site`` per item, ``effects`` per site, and the item indices ``train``,
    ``seen_test`` and ``unseen`` (the last ``unseen_sites`` sites)."""
    rng = np.random.default_rng(seed)
    lo, hi = data["items_per_site"]
    sizes = rng.integers(lo, hi + 1, data["num_sites"])
    site = np.repeat(np.arange(data["num_sites"]), sizes)
    x = rng.normal(size=(len(site), len(data["beta"])))
    effects = rng.normal(0.0, data["intercept_sd"], data["num_sites"])
    y = data["intercept"] + x @ np.asarray(data["beta"]) + effects[site] + rng.normal(0.0, data["noise_sd"], len(site))
    federation = data["num_sites"] - data["unseen_sites"]
    seen_test, train = [], []
    for k in range(federation):
        rows = rng.permutation(np.flatnonzero(site == k))
        cut = int(round(data["seen_test_fraction"] * len(rows)))
        seen_test.append(rows[:cut])
        train.append(rows[cut:])
    unseen = np.flatnonzero(site >= federation)
    return {"x": x, "y": y, "site": site, "effects": effects, "federation": federation, "unseen": unseen,
            "train": np.sort(np.concatenate(train)), "seen_test": np.sort(np.concatenate(seen_test))}  # fmt: skip


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)))


def _site_data(d: dict[str, Any], k: int) -> SiteData:
    rows = d["train"][d["site"][d["train"]] == k]
    x = torch.tensor(d["x"][rows], dtype=torch.float32)
    return SiteData(f"site-{k + 1}", Path("."), f"hosp{k}", x, torch.tensor(d["y"][rows], dtype=torch.float32)[:, None])


def _predict(network, x: np.ndarray, z: float) -> np.ndarray:
    with torch.no_grad():
        xt = torch.tensor(x, dtype=torch.float32)
        return network(xt, torch.full((len(xt), 1), z)).numpy().ravel()


def _score_federation(cfg, d, fed) -> tuple[float, float]:
    """Seen RMSE (each site: global model + its rows) and unseen RMSE (population model) of a federation state."""
    errors = []
    for k in range(d["federation"]):
        rows = d["seen_test"][d["site"][d["seen_test"]] == k]
        errors.append(_predict(fed.site_model(k), d["x"][rows], 1.0) - d["y"][rows])
    population = population_network(fed.global_params, fed.networks[0].spec)
    unseen = _predict(population, d["x"][d["unseen"]], 0.0) - d["y"][d["unseen"]]
    return _rmse(np.concatenate(errors), 0.0), _rmse(unseen, 0.0)


def _federate(cfg, d, spec, seed, centre: bool = True) -> tuple[Any, list[float]]:
    sites = [_site_data(d, k) for k in range(d["federation"])]
    curve: list[float] = []
    fed = federate_in_process(
        sites,
        spec,
        LocalTrainingSettings(**cfg["training"]),
        cfg["rounds"],
        seed=seed,
        on_round=lambda r, state: curve.append(_score_federation(cfg, d, state)[0]),
        centre=centre,
    )
    return fed, curve


def _few_shot(cfg, d, fed, seed) -> float:
    """RMSE on the unseen sites after each fits its own intercept on ``few_shot`` labelled items (at the site)."""
    errors, rng = [], np.random.default_rng(seed)
    for k in range(d["federation"], cfg["data"]["num_sites"]):
        rows = rng.permutation(np.flatnonzero(d["site"] == k))
        shots, rest = rows[: cfg["data"]["few_shot"]], rows[cfg["data"]["few_shot"] :]
        x = torch.tensor(d["x"][shots], dtype=torch.float32)
        y = torch.tensor(d["y"][shots], dtype=torch.float32)[:, None]
        torch.manual_seed(seed + k)
        network, column = join_federation(fed.global_params, cfg["network"], x, y, steps=cfg["few_shot_steps"])
        z = torch.zeros(len(rest), network.num_clusters)
        z[:, column] = 1
        with torch.no_grad():
            pred = network(torch.tensor(d["x"][rest], dtype=torch.float32), z).numpy().ravel()
        errors.append(pred - d["y"][rest])
    return _rmse(np.concatenate(errors), 0.0)


def rounds_to(curve: list[float], target: float) -> tuple[float, float]:
    """First round (1-based) whose seen RMSE is <= ``target``; ``len(curve) + 1`` (censored) when none is."""
    hits = [r + 1 for r, v in enumerate(curve) if v <= target]
    return (float(hits[0]), 1.0) if hits else (float(len(curve) + 1), 0.0)


def _pooled(d) -> tuple[Any, float, float]:
    tr = d["train"]
    fit = fit_estimator_exact(
        d["x"][tr], d["y"][tr], d["site"][tr][:, None], ["site"], {"site": d["federation"]}, {}, {"site": False}, "ml"
    )
    te, un = d["seen_test"], d["unseen"]
    seen = exact_linear_predictor(fit, d["x"][te], d["site"][te][:, None], ["site"], {})
    unseen = exact_linear_predictor(fit, d["x"][un], None, ["site"], {})
    return fit, _rmse(seen, d["y"][te]), _rmse(unseen, d["y"][un])


def _site_alone(d) -> tuple[float, float]:
    seen, unseen = [], []
    for k in range(d["federation"]):
        rows = d["train"][d["site"][d["train"]] == k]
        design = np.column_stack([np.ones(len(rows)), d["x"][rows]])
        coef = np.linalg.lstsq(design, d["y"][rows], rcond=None)[0]
        test = d["seen_test"][d["site"][d["seen_test"]] == k]
        seen.append(np.column_stack([np.ones(len(test)), d["x"][test]]) @ coef - d["y"][test])
        unseen.append(np.column_stack([np.ones(len(d["unseen"])), d["x"][d["unseen"]]]) @ coef - d["y"][d["unseen"]])
    return _rmse(np.concatenate(seen), 0.0), _rmse(np.concatenate(unseen), 0.0)


def run_seed(cfg: dict[str, Any], seed: int, log=print) -> dict[str, dict[str, float]]:
    """Draw the sites of ``seed``, fit every model on the training items, score it: ``{model: {metric: value}}``."""
    torch.set_num_threads(1)
    d = simulate(cfg["data"], seed)
    start = time.perf_counter()
    fit, pooled_seen, pooled_unseen = _pooled(d)
    row: dict[str, dict[str, float]] = {
        "pooled_me": {"rmse_seen": pooled_seen, "rmse_unseen": pooled_unseen,
                      "intercept_variance": float(fit.covariances[0][0, 0]), "fit_seconds": time.perf_counter() - start}
    }  # fmt: skip
    target = cfg["accuracy_factor"] * pooled_seen
    variants = (
        ("federated_me", cfg["network"], True),
        ("federated_conventional", _conventional(cfg["network"]), True),
        ("federated_me_plain_em", cfg["network"], False),
    )
    for name, spec, centre in variants:
        start = time.perf_counter()
        fed, curve = _federate(cfg, d, spec, seed, centre)
        seconds = time.perf_counter() - start
        seen, unseen = _score_federation(cfg, d, fed)
        rounds, reached = rounds_to(curve, target)
        sent = [np.mean(list(r.values())) for r in fed.bytes_sent]
        row[name] = {"rmse_seen": seen, "rmse_unseen": unseen, "rounds_to_accuracy": rounds, "reached": reached,
                     "bytes_per_site_round": float(np.mean(sent)), "fit_seconds": seconds}  # fmt: skip
        row[name].update({f"rmse_seen_round{r + 1}": v for r, v in enumerate(curve)})
        if name != "federated_conventional":
            variance = fed.meta["variance_components"]["head.intercept"]["variance"]
            row[name]["intercept_variance"] = variance
            row[name]["variance_ratio_to_pooled"] = variance / row["pooled_me"]["intercept_variance"]
        if name == "federated_me":
            row[name]["rmse_unseen_few_shot"] = _few_shot(cfg, d, fed, seed)
    alone_seen, alone_unseen = _site_alone(d)
    row["site_alone"] = {"rmse_seen": alone_seen, "rmse_unseen": alone_unseen}
    log(f"seed {seed}: " + ", ".join(f"{m} {r['rmse_seen']:.3f}/{r['rmse_unseen']:.3f}" for m, r in row.items()))
    return row


def _conventional(spec: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in spec.items() if k != "intercept_prior_scale"}, "random_intercept": False}


def _write_datalists(d: dict[str, Any], sites: int, folder: Path) -> list[Path]:
    paths = []
    for k in range(sites):
        rows = d["train"][d["site"][d["train"]] == k]
        items = [{"features": d["x"][i].tolist(), "label": float(d["y"][i]), "site": f"hosp{k}"} for i in rows]
        paths.append(folder / f"site{k}.json")
        paths[-1].write_text(json.dumps({"training": items}))
    return paths


def _tree_rss(process) -> tuple[int, int]:
    """Sum (counts shared pages once per process: an upper bound) and largest resident set of the process tree."""
    import psutil

    sizes = []
    try:
        root = psutil.Process(process.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                sizes.append(proc.memory_info().rss)
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return sum(sizes), max(sizes, default=0)


def simulator_run(cfg: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """One ``python -m monai_medl.fl.job`` run of ``cfg["simulator"]["sites"]`` sites in ``unshare -n``: wall time,
    peak resident memory of its process tree (sampled every 0.2 s), bytes received, its variance ratio."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return {"skipped": "unshare or ip not found"}
    sim, d = cfg["simulator"], simulate(cfg["data"], seed)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_datalists(d, sim["sites"], Path(tmp))
        args = [sys.executable, "-m", "monai_medl.fl.job", "--site_datalists", *map(str, paths), "--network",
                json.dumps(cfg["network"]), "--out", f"{tmp}/job", "--num_rounds", str(sim["rounds"])]  # fmt: skip
        args += [a for k, v in cfg["training"].items() for a in (f"--{k}", str(v))]
        script = "ip link set lo up && exec " + " ".join(f"'{a}'" for a in args)
        load, start, peak, largest = os.getloadavg(), time.perf_counter(), 0, 0
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with subprocess.Popen(["unshare", "-n", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, start_new_session=True) as process:  # fmt: skip
            while process.poll() is None and time.perf_counter() - start < sim["timeout_s"]:
                total, one = _tree_rss(process)
                peak, largest = max(peak, total), max(largest, one)
                time.sleep(0.2)
            if process.poll() is None:
                os.killpg(process.pid, 9)
            _, stderr = process.communicate()
        wall = time.perf_counter() - start
        if process.returncode != 0:
            return {"failed": process.returncode, "stderr_tail": stderr[-2000:], "wall_seconds": wall}
        summary = json.loads(Path(tmp, "job", "summary.json").read_text())
    tr = d["train"][d["site"][d["train"]] < sim["sites"]]
    fit = fit_estimator_exact(d["x"][tr], d["y"][tr], d["site"][tr][:, None], ["site"], {"site": sim["sites"]}, {},
                              {"site": False}, "ml")  # fmt: skip
    variance = summary["variance_components"]["head.intercept"]["variance"]
    bytes_per_site = [float(np.mean(list(r.values()))) for r in summary["bytes_received"]]
    return {"sites": sim["sites"], "rounds": summary["rounds_completed"], "wall_seconds": round(wall, 1),
            "peak_rss_mib_process_tree": round(peak / 2**20, 1),
            "peak_rss_mib_largest_process": round(largest / 2**20, 1), "bytes_per_site_round": bytes_per_site,
            "intercept_variance": variance, "pooled_exact_ml_variance": float(fit.covariances[0][0, 0]),
            "variance_ratio_to_pooled": variance / float(fit.covariances[0][0, 0]),
            "loadavg_before": list(load), "loadavg_after": list(os.getloadavg())}  # fmt: skip


COMPARISONS = tuple(
    Comparison("federated_me", metric, ref, higher_is_better=False)
    for ref in ("pooled_me", "site_alone", "federated_conventional")
    for metric in ("rmse_seen", "rmse_unseen")
)
"""The plan's primary comparisons, paired per seed (stored in ``federated_me``'s ``extra``)."""

NOTES = """
How to read: RMSE (lower is better) against the observed outcome, noise s.d. 1.0 (the floor on seen sites; unseen
sites add their unexplained intercept, s.d. 1.0). `seen`: held-out items of the 6 federation sites, each with its
own random effect; `unseen`: the 2 sites that never joined, population prediction; `rmse_unseen_few_shot`: the same
sites after `join_federation` on 5 labelled items each (scored on their other items). Federated rows are
`federate_in_process` (the NVFlare job's own client and aggregator code, without the transport); the simulator
table is one real NVFlare run (peak memory: the sum over its processes, counting shared pages in each, and its
largest process). `bytes_per_site_round`: what one site sends per round, the arrays' own sizes (float32 weights,
float64 moments; NVFlare adds its message framing). `federated_me_plain_em`: the ablation without centring.
`rounds_to_accuracy`: first round at which seen RMSE <= 1.05 x pooled_me's of the same seed (rounds + 1 when
never, `reached` the fraction of seeds that did). `fit_seconds` and the simulator's wall time are on a shared
2-core machine under `nice`, one torch thread: compare them only within this run (load recorded).
"""


def _derive(cfg):
    def derive(models, rows):
        sim = simulator_run(cfg)
        models["federated_me"]["extra"].update(
            {f"simulator_{k}": v for k, v in sim.items() if isinstance(v, (int, float))}
        )
        cfg["simulator_run"] = sim

    return derive


def run_federation(
    name: str,
    quick: bool,
    cfg: dict[str, Any],
    run_seed: Callable[[dict[str, Any], int], dict],
    contract: tuple[Mapping[str, Any], Sequence[Comparison], Sequence[str], str],
    *,
    metric: str,
    seen: str,
    unseen: str,
    curve_title: str,
    tables: Sequence[tuple[str, Sequence[str]]],
    derive: Callable | None = None,
    out_dir=None,
) -> dict[str, Any]:
    """:func:`run_benchmark` for a federation benchmark (this module's and ``federated_mri``'s): seeds and settings
    from ``cfg``, ``contract`` = ``(plan, comparisons, model order, notes)`` of the calling benchmark, and the seen
    metric after every round (``<seen>_round<r>``) as a table after ``tables``."""
    plan, comparisons, order, notes = contract
    curve = [f"{seen}_round{r + 1}" for r in range(cfg["rounds"])]
    return run_benchmark(
        name,
        quick,
        plan,
        cfg["seeds"],
        lambda seed: run_seed(cfg, seed),
        metric=metric,
        seen=seen,
        unseen=unseen,
        config=lambda: cfg,
        comparisons=comparisons,
        order=order,
        derive=derive,
        notes=notes,
        extra_tables=[*tables, (curve_title, curve)],
        out_dir=out_dir,
    )


def run(quick: bool = False, out_dir=None) -> dict[str, Any]:
    cfg = default_config(quick)
    simulator_table = [
        "simulator_wall_seconds",
        "simulator_peak_rss_mib_process_tree",
        "simulator_peak_rss_mib_largest_process",
        "simulator_variance_ratio_to_pooled",
        "simulator_rounds",
    ]
    cost_table = [
        "intercept_variance",
        "variance_ratio_to_pooled",
        "rmse_unseen_few_shot",
        "bytes_per_site_round",
        "rounds_to_accuracy",
        "reached",
        "fit_seconds",
    ]
    return run_federation(
        NAME,
        quick,
        cfg,
        run_seed,
        (PLAN, COMPARISONS, MODELS, NOTES),
        metric="rmse",
        seen="rmse_seen",
        unseen="rmse_unseen",
        curve_title="Seen RMSE per round",
        tables=[
            ("Variance components, unseen few-shot, cost", cost_table),
            ("One NVFlare simulator run (3 sites)", simulator_table),
        ],
        derive=_derive(cfg),
        out_dir=out_dir,
    )


def main(argv=None) -> None:
    args = benchmark_parser(__doc__.splitlines()[0]).parse_args(argv)
    run(quick=args.quick, out_dir=args.out)


if __name__ == "__main__":
    main()
