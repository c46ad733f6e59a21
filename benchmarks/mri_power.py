# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Power of the MRI benchmark's primary unseen-site comparison and the design of its full run.

The comparison is ``me`` - ``conventional`` unseen-site AUROC, a paired two-sided t-test over repeats at
``alpha``. Its power depends on the s.d. of the per-repeat differences, which has two parts: the training
variability (data split, initialisation, batch order) and the sampling of the unseen-site test scans, which shrinks
as ``1 / n`` with ``n`` unseen scans. The unseen sites are test-only, so more unseen scans cost only their
generation and inference, while every repeat costs a full set of trainings.

Inputs (all recorded in the output):

1. **a committed run** (``benchmarks/results/mri.json``): the s.d. ``sd_0`` of its per-fold paired differences
   at its ``n_0`` unseen scans;
2. **a pilot** on a cohort of its own (cohort seed :data:`PILOT_SEED`: none of the benchmark's test scans are
   looked at) with :data:`PILOT_EXTRA_UNSEEN` extra unseen-site subjects: ``conventional`` and ``me`` trained with
   the benchmark's recipe on :data:`PILOT_REPEATS` repeats and their unseen-site probabilities kept. A bootstrap
   of the unseen scans (stratified by label) gives, for each pair of repeats, the covariance of their paired
   differences; ``mean variance - mean covariance`` is the test-sampling part of the *between-repeat* variance
   (the part shared by all repeats, which test on the same scans, does not enter the paired t-test) at the pilot's
   ``n_p`` scans, so ``c = v_test(n_p) * n_p``.

Model: ``sd(n)^2 = v_train + c / n`` with ``v_train = max(sd_0^2 - c / n_0, 0)``. Power of the paired t-test with
``R`` repeats: the noncentral t with ``R - 1`` degrees of freedom and noncentrality ``delta sqrt(R) / sd(n)``;
the minimum detectable effect (MDE) is the ``delta`` with the target power.

Cost model: seconds per training epoch from the committed run's wall time and its number of training epochs per
repeat (:func:`benchmarks.mri.training_epochs`); seconds per generated scan and per inference pass from the pilot
(measured on the same machine, recorded with the load average). The full run's wall time is
``R * (epochs per repeat * s_epoch + n * passes * s_pass) + scans * s_scan``; it must stay under
``budget_fraction * budget_seconds``.

Design rule: repeats from the fold count to :data:`MAX_REPEATS` (a repeat beyond the first ``folds`` starts a new
cross-validation split; a last, partial round is allowed) and extra unseen subjects in steps of
:data:`EXTRA_UNSEEN_STEP` up to :data:`MAX_EXTRA_UNSEEN` (memory); among the designs within budget, the cheapest
whose MDE reaches the target, else the one with the smallest MDE (ties: fewer repeats).

Run ``python -m benchmarks.mri_power [--out DIR] [--pilot-file FILE]``; it writes ``mri_power.json``, which
:func:`benchmarks.mri.make_plan` reads to state the run's MDE in its plan.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks import mri
from benchmarks._common import DEFAULT_OUT, benchmark_parser, environment
from benchmarks.mri_design import (  # re-exported: the power functions' home is benchmarks.mri_design
    POWER_FILE,
    design_power,
    load_power,
    minimum_detectable_effect,
    paired_t_power,
    required_repeats,
    sd_at,
    seen_sites,
)
from monai_medl.data.synthetic.mri_cohort import cohort_settings, site_sizes

__all__ = [
    "TARGET",
    "PILOT_SEED",
    "PILOT_REPEATS",
    "PILOT_EXTRA_UNSEEN",
    "paired_differences",
    "test_sampling_variance",
    "paired_t_power",
    "minimum_detectable_effect",
    "required_repeats",
    "run_pilot",
    "analyse",
    "design_power",
    "load_power",
    "pilot_of",
    "main",
]

__all__ = [
    "POWER_FILE",
    "TARGET",
    "analyse",
    "design_power",
    "load_power",
    "main",
    "minimum_detectable_effect",
    "paired_differences",
    "paired_t_power",
    "pilot_of",
    "required_repeats",
    "run_pilot",
    "test_sampling_variance",
]

TARGET = {"model": "me", "reference": "conventional", "difference": 0.02, "power": 0.8, "alpha": 0.05}
"""The comparison, the AUROC difference to detect, the power and the two-sided level."""
BUDGET = {"budget_seconds": 3600.0, "budget_fraction": 0.9}
"""The full run's wall-time budget on one idle core, and the fraction of it the cost model may plan for (the rest
is a margin for the cost model's error)."""
PILOT_SEED = 2025
PILOT_REPEATS = 3
PILOT_EXTRA_UNSEEN = 1200
EXTRA_UNSEEN_STEP = 200
MAX_REPEATS = 40
MAX_EXTRA_UNSEEN = 2000
BOOTSTRAP = 1000
TIMING_SUBJECTS = 100


def paired_differences(results: Mapping[str, Any], model: str, reference: str, split: str = "unseen") -> list[float]:
    """Per-repeat ``model - reference`` of a results file's ``split`` values."""
    models = results["models"]
    for name in (model, reference):
        if name not in models or models[name].get(split) is None:
            raise KeyError(f"the results have no {split!r} values of model {name!r}; models: {list(models)}.")
    return [a - b for a, b in zip(models[model][split]["values"], models[reference][split]["values"])]


def test_sampling_variance(
    labels: np.ndarray, p_model: np.ndarray, p_reference: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0
) -> dict[str, float]:
    """Test-sampling variance of the per-repeat paired AUROC differences ``AUROC(p_model[r]) -
    AUROC(p_reference[r])`` (``p_*``: repeats x scans) on one test set, from a label-stratified bootstrap of the
    scans: ``total`` (mean variance per repeat), ``shared`` (mean covariance between repeats) and
    ``between_repeats`` = ``total - shared``, the part that enters the spread of the differences over repeats.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 100)
        >>> p = y + rng.normal(size=(2, 3, 200)) * 2
        >>> v = test_sampling_variance(y, p[0], p[1], n_boot=200)
        >>> bool(v["between_repeats"] > 0)
        True
    """
    labels = np.asarray(labels)
    p_model, p_reference = np.atleast_2d(p_model), np.atleast_2d(p_reference)
    if p_model.shape != p_reference.shape or p_model.shape[1] != len(labels):
        raise ValueError(
            f"p_model {p_model.shape} and p_reference {p_reference.shape} must be (repeats, {len(labels)})."
        )
    repeats = len(p_model)
    if repeats < 2:
        raise ValueError("test_sampling_variance needs at least 2 repeats (the shared part is a covariance).")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    diffs = np.empty((n_boot, repeats))
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        y = labels[idx]
        diffs[b] = [roc_auc_score(y, p_model[r, idx]) - roc_auc_score(y, p_reference[r, idx]) for r in range(repeats)]
    cov = np.cov(diffs, rowvar=False)
    total = float(np.mean(np.diag(cov)))
    shared = float(cov[~np.eye(repeats, dtype=bool)].mean())
    return {"total": total, "shared": shared, "between_repeats": total - shared}


def run_pilot(cohort_dir: str | None = None, log=print) -> dict[str, Any]:
    """Train ``conventional`` and ``me`` (the benchmark's recipe) on :data:`PILOT_REPEATS` repeats of the pilot
    cohort and return their unseen-site probabilities, the labels and timings: seconds per training epoch (a
    repeat's wall time over its training epochs), per scan for one inference pass, and per scan to generate, load
    and featurise a fresh cohort (:data:`TIMING_SUBJECTS` subjects). The analysis divides the per-scan timings by
    the ratio of this epoch time to the committed run's, so that a loaded machine does not inflate them."""
    import tempfile

    import torch

    cfg = mri.default_config()
    cfg["cohort"] = cohort_settings("mri_bundle", seed=PILOT_SEED, extra_unseen_subjects=PILOT_EXTRA_UNSEEN)
    models = (TARGET["reference"], TARGET["model"])

    with tempfile.TemporaryDirectory(prefix="mri_power_timing_") as tmp:
        t0 = time.perf_counter()
        small = {**cfg, "cohort": cohort_settings("mri_bundle", seed=PILOT_SEED + 1, num_subjects=TIMING_SUBJECTS)}
        mri.with_cohort(small, tmp, lambda data: None, log)
        seconds_per_scan_generated = (time.perf_counter() - t0) / TIMING_SUBJECTS

    def body(data):
        probs: dict[str, list[list[float]]] = {m: [] for m in models}
        labels, repeat_seconds = None, []
        for r in range(PILOT_REPEATS):
            preds: dict[str, np.ndarray] = {}
            t0 = time.perf_counter()
            mri.run_repeat(data, cfg, r, models=models, log=log, unseen_predictions=preds)
            repeat_seconds.append(time.perf_counter() - t0)
            labels = preds["labels"]
            for m in models:
                probs[m].append([round(float(p), 6) for p in preds[m]])
        unseen = np.array([s not in set(data["seen_sites"]) for s in data["sites"]])
        net = mri.me_cnn(cfg, len(data["seen_sites"]), random_effects=False).eval()  # the timing needs no training
        t0 = time.perf_counter()
        mri.predict(net, torch.from_numpy(data["images"][unseen]), None)
        return {
            "labels": [int(v) for v in labels],
            "probabilities": probs,
            "cohort": cfg["cohort"],
            "repeats": PILOT_REPEATS,
            "repeat_seconds": repeat_seconds,
            "seconds_per_training_epoch": float(np.sum(repeat_seconds))
            / (PILOT_REPEATS * mri.training_epochs(cfg, models)),
            "seconds_per_scan_generated": seconds_per_scan_generated,
            "seconds_per_scan_inference_pass": (time.perf_counter() - t0) / int(unseen.sum()),
            "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
        }

    return mri.with_cohort(cfg, cohort_dir, body, log)


def analyse(results: Mapping[str, Any], pilot: Mapping[str, Any]) -> dict[str, Any]:
    """The variance model, the cost model and the chosen design (see the module docstring) from a committed
    ``results`` file and a ``pilot``."""
    diffs = paired_differences(results, TARGET["model"], TARGET["reference"])
    sd_0 = float(np.std(diffs, ddof=1))
    seen_0 = seen_sites(results["config"]["cohort"])
    n_0 = sum(n for s, n in site_sizes(**results["config"]["cohort"]).items() if s not in seen_0)
    labels = np.asarray(pilot["labels"])
    p_model = np.asarray(pilot["probabilities"][TARGET["model"]])
    p_reference = np.asarray(pilot["probabilities"][TARGET["reference"]])
    v_pilot = test_sampling_variance(labels, p_model, p_reference)
    constant = v_pilot["between_repeats"] * len(labels)
    variance = {"train": max(sd_0**2 - constant / n_0, 0.0), "test_constant": constant}

    cfg_0 = results["config"]
    epochs_0 = mri.training_epochs(cfg_0, list(results["models"]))
    s_epoch = cfg_0["wall_seconds"] / (results["repeats"] * epochs_0)
    cfg = mri.default_config()
    epochs = mri.training_epochs(cfg, mri.MODELS)
    passes = mri.inference_passes(mri.MODELS)
    base = site_sizes(**{**cfg["cohort"], "extra_unseen_subjects": 0})
    seen = seen_sites(cfg["cohort"])
    n_seen = sum(n for s, n in base.items() if s in seen)
    n_unseen_base = sum(base.values()) - n_seen
    load_factor = pilot["seconds_per_training_epoch"] / s_epoch  # the pilot machine's slowdown against the run's
    cost = {
        "seconds_per_training_epoch": s_epoch,
        "training_epochs_per_repeat": epochs,
        "inference_passes_per_unseen_scan": passes,
        "pilot_load_factor": load_factor,
        "seconds_per_scan_inference_pass": pilot["seconds_per_scan_inference_pass"] / load_factor,
        "seconds_per_scan_generated": pilot["seconds_per_scan_generated"] / load_factor,
        **BUDGET,
    }
    designs = []
    for repeats in range(cfg["folds"], MAX_REPEATS + 1):
        for extra in range(0, MAX_EXTRA_UNSEEN + 1, EXTRA_UNSEEN_STEP):
            n = n_unseen_base + extra
            wall = _wall(cost, repeats, n, n_seen + n)
            sd = sd_at(n, variance)
            designs.append(
                {
                    "repeats": repeats,
                    "extra_unseen_subjects": extra,
                    "unseen_scans": n,
                    "sd": sd,
                    "mde": minimum_detectable_effect(sd, repeats, TARGET["power"], TARGET["alpha"]),
                    "wall_seconds": wall,
                }
            )
    feasible = [d for d in designs if d["wall_seconds"] <= BUDGET["budget_fraction"] * BUDGET["budget_seconds"]]
    reaching = [d for d in feasible if d["mde"] <= TARGET["difference"]]
    if reaching:
        chosen = min(reaching, key=lambda d: (d["wall_seconds"], d["repeats"]))
    else:
        chosen = min(feasible, key=lambda d: (round(d["mde"], 6), d["repeats"]))
    best_sd = math.sqrt(variance["train"])
    return {
        "target": TARGET,
        "source_results": {  # what this analysis read from the committed run, to recompute it
            "repeats": results["repeats"],
            "config": results["config"],
            "env": {"commit": results["env"].get("commit")},
            "models": {m: {"unseen": {"values": e["unseen"]["values"]}} for m, e in results["models"].items()},
        },
        "observed": {
            "source_commit": results["env"].get("commit"),
            "paired_unseen_differences": diffs,
            "sd": sd_0,
            "repeats": len(diffs),
            "unseen_scans": n_0,
        },
        "pilot": {
            **{k: v for k, v in pilot.items() if k not in ("labels", "probabilities")},
            "unseen_scans": len(labels),
            "test_sampling_variance": v_pilot,
        },
        "variance": variance,
        "repeats_needed_at_observed_design": required_repeats(
            TARGET["difference"], sd_0, TARGET["power"], TARGET["alpha"]
        ),
        "repeats_needed_with_infinite_unseen_set": (
            required_repeats(TARGET["difference"], best_sd, TARGET["power"], TARGET["alpha"]) if best_sd > 0 else 2
        ),
        "cost": cost,
        "chosen": chosen,
        "target_reached": bool(reaching),
        "designs": designs,
        "env": environment(list(range(PILOT_REPEATS))),
        "pilot_data": {"labels": pilot["labels"], "probabilities": pilot["probabilities"]},
    }


def _wall(cost: Mapping[str, float], repeats: int, unseen_scans: int, scans: int) -> float:
    per_repeat = cost["training_epochs_per_repeat"] * cost["seconds_per_training_epoch"]
    per_repeat += unseen_scans * cost["inference_passes_per_unseen_scan"] * cost["seconds_per_scan_inference_pass"]
    return repeats * per_repeat + scans * cost["seconds_per_scan_generated"]


def pilot_of(power: Mapping[str, Any]) -> dict[str, Any]:
    """The pilot (as :func:`run_pilot` returned it) recorded in a power analysis."""
    derived = ("unseen_scans", "test_sampling_variance")
    return {**{k: v for k, v in power["pilot"].items() if k not in derived}, **power["pilot_data"]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(DEFAULT_OUT / "mri.json"), help="the committed run to start from")
    parser.add_argument("--pilot-file", default=None, help="reuse a pilot written earlier (else it is run)")
    parser.add_argument("--cohort-dir", default=None, help="the pilot cohort's folder (default: a temp folder)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.pilot_file:
        pilot = json.loads(Path(args.pilot_file).read_text())
        if "pilot_data" in pilot:  # an mri_power.json: its pilot
            pilot = pilot_of(pilot)
    else:
        pilot = run_pilot(args.cohort_dir)
        (out / "mri_power_pilot.json").write_text(json.dumps(pilot) + "\n")
    results = json.loads(Path(args.results).read_text())
    power = analyse(results, pilot)
    (out / "mri_power.json").write_text(json.dumps(power, indent=1) + "\n")
    c = power["chosen"]
    print(
        f"observed sd {power['observed']['sd']:.4f} at {power['observed']['unseen_scans']} unseen scans; "
        f"chosen: {c['repeats']} repeats, {c['unseen_scans']} unseen scans, MDE {c['mde']:.4f}, "
        f"~{c['wall_seconds'] / 60:.0f} min; target reached: {power['target_reached']}"
    )


if __name__ == "__main__":
    main()
