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

The run follows the benchmarks' skeleton (:func:`benchmarks._common.run_benchmark`): the plan is written first, each
pilot repeat is a resumable "seed" (its unseen-site AUROC and probabilities per model), and the analysis above is the
results' ``analysis``. Run ``python -m benchmarks.mri_power [--out DIR] [--pilot-file FILE]`` (``--pilot-file``
re-analyses the pilot recorded in an earlier ``mri_power.json`` instead of training; there is no ``--quick``); it
writes ``mri_power.json``, whose analysis :func:`benchmarks.mri.make_plan` reads to state the run's MDE in its plan.
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
from benchmarks._common import DEFAULT_OUT, benchmark_parser, run_benchmark
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
    "run",
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
NAME = "mri_power"
PILOT_MODELS = (TARGET["reference"], TARGET["model"])
PLAN = {
    "comparison": f"{TARGET['model']} - {TARGET['reference']} unseen-site AUROC, paired two-sided t-test over repeats "
    f"at alpha {TARGET['alpha']}; target: a difference of {TARGET['difference']} with power {TARGET['power']}",
    "pilot": f"cohort seed {PILOT_SEED} (none of the benchmark's test scans), {PILOT_EXTRA_UNSEEN} extra unseen-site "
    f"subjects; {list(PILOT_MODELS)} trained with the benchmark's recipe on {PILOT_REPEATS} repeats",
    "variance_model": "sd(n)^2 = v_train + c / n: c from a label-stratified bootstrap of the pilot's unseen scans "
    f"({BOOTSTRAP} resamples, between-repeat part), v_train from the committed run's paired s.d.",
    "design_rule": f"repeats from the fold count to {MAX_REPEATS}, extra unseen subjects 0..{MAX_EXTRA_UNSEEN} in "
    f"steps of {EXTRA_UNSEEN_STEP}; within {BUDGET['budget_fraction']:.0%} of {BUDGET['budget_seconds']:.0f} s "
    "(cost model), the cheapest design reaching the target, else the smallest MDE (ties: fewer repeats)",
}
"""The pre-registered plan, written to ``mri_power.json`` before the pilot's first training."""


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


def pilot_cohort_config() -> dict[str, Any]:
    """The benchmark's configuration with the pilot's own cohort (:data:`PILOT_SEED`, extra unseen subjects)."""
    cfg = mri.default_config()
    cfg["cohort"] = cohort_settings("mri_bundle", seed=PILOT_SEED, extra_unseen_subjects=PILOT_EXTRA_UNSEEN)
    return cfg


def pilot_repeat(data: dict[str, Any], cfg: dict[str, Any], repeat: int, log=print) -> dict[str, Any]:
    """One pilot repeat (a "seed" of the skeleton): :data:`PILOT_MODELS` trained and scored by
    :func:`benchmarks.mri.run_repeat`, with their unseen-site probabilities, the labels and the repeat's seconds."""
    preds: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    row = mri.run_repeat(data, cfg, repeat, models=PILOT_MODELS, log=log, unseen_predictions=preds)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        m: {**row[m], "unseen_probabilities": [round(float(p), 6) for p in preds[m]]} for m in PILOT_MODELS
    }
    return {**out, "pilot": {"repeat_seconds": seconds, "labels": [int(v) for v in preds["labels"]]}}


def recorded_repeat(pilot: Mapping[str, Any], repeat: int) -> dict[str, Any]:
    """Repeat ``repeat`` of a recorded ``pilot`` (:func:`pilot_of`) as :func:`pilot_repeat` returns it (no seen-site
    scores: the pilot kept the unseen-site probabilities only)."""
    labels = [int(v) for v in pilot["labels"]]
    out: dict[str, Any] = {}
    for m in PILOT_MODELS:
        p = pilot["probabilities"][m][repeat]
        out[m] = {"unseen_auroc": float(roc_auc_score(labels, p)), "unseen_probabilities": list(p)}
    return {**out, "pilot": {"repeat_seconds": pilot["repeat_seconds"][repeat], "labels": labels}}


def pilot_from_rows(rows: Sequence[Mapping[str, Any]], timings: Mapping[str, Any]) -> dict[str, Any]:
    """The pilot :func:`analyse` reads, from the repeats' rows and the ``timings`` (``cohort``, seconds per training
    epoch, per scan generated and per inference pass, load average)."""
    return {
        "labels": list(rows[0]["pilot"]["labels"]),
        "probabilities": {m: [list(r[m]["unseen_probabilities"]) for r in rows] for m in PILOT_MODELS},
        "repeats": len(rows),
        "repeat_seconds": [r["pilot"]["repeat_seconds"] for r in rows],
        **timings,
    }


def measured_timings(data: Mapping[str, Any], cfg: dict[str, Any], rows: Sequence[Mapping[str, Any]], log=print):
    """The pilot's timings on this machine: seconds per training epoch (a repeat's wall time over its training
    epochs), per scan for one inference pass, and per scan to generate, load and featurise a fresh cohort
    (:data:`TIMING_SUBJECTS` subjects). The analysis divides the per-scan timings by the ratio of this epoch time to
    the committed run's, so that a loaded machine does not inflate them."""
    import tempfile

    import torch

    seconds = [r["pilot"]["repeat_seconds"] for r in rows]
    unseen = np.array([s not in set(data["seen_sites"]) for s in data["sites"]])
    net = mri.me_cnn(cfg, len(data["seen_sites"]), random_effects=False).eval()  # the timing needs no training
    t0 = time.perf_counter()
    mri.predict(net, torch.from_numpy(data["images"][unseen]), None)
    inference = (time.perf_counter() - t0) / int(unseen.sum())
    with tempfile.TemporaryDirectory(prefix="mri_power_timing_") as tmp:
        t0 = time.perf_counter()
        small = {**cfg, "cohort": cohort_settings("mri_bundle", seed=PILOT_SEED + 1, num_subjects=TIMING_SUBJECTS)}
        mri.with_cohort(small, tmp, lambda _: None, log)
        generated = (time.perf_counter() - t0) / TIMING_SUBJECTS
    return {
        "cohort": cfg["cohort"],
        "seconds_per_training_epoch": float(np.sum(seconds)) / (len(rows) * mri.training_epochs(cfg, PILOT_MODELS)),
        "seconds_per_scan_generated": generated,
        "seconds_per_scan_inference_pass": inference,
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
    }


def run(
    results_path: str | os.PathLike = DEFAULT_OUT / "mri.json",
    pilot_file: str | os.PathLike | None = None,
    cohort_dir: str | None = None,
    out_dir: str | os.PathLike | None = None,
    log=print,
) -> dict[str, Any]:
    """Plan, pilot (trained, or the one recorded in ``pilot_file``), analysis against the committed run in
    ``results_path`` (an ``mri.json``, or an earlier ``mri_power.json``: the run it analysed); writes
    ``mri_power.json``/``.md`` and returns the results (the analysis under ``analysis``)."""
    committed = json.loads(Path(results_path).read_text())
    # an earlier mri_power.json: the run it analysed, as it recorded it (to re-analyse it)
    committed = committed.get("analysis", committed).get("source_results", committed)
    cfg = pilot_cohort_config()
    config = {"results": str(results_path), "pilot_file": None if pilot_file is None else str(pilot_file)}
    recorded = None if pilot_file is None else _read_pilot(pilot_file)

    def body(data):
        def analysis(models, rows):
            if recorded is None:
                return analyse(committed, pilot_from_rows(rows, measured_timings(data, cfg, rows, log)))
            per_repeat = ("labels", "probabilities", "repeat_seconds", "repeats")  # the rows hold these
            return analyse(committed, pilot_from_rows(rows, {k: v for k, v in recorded.items() if k not in per_repeat}))

        def repeat(r):
            return recorded_repeat(recorded, r) if recorded is not None else pilot_repeat(data, cfg, r, log)

        return run_benchmark(
            NAME,
            False,
            PLAN,
            list(range(PILOT_REPEATS if recorded is None else int(recorded["repeats"]))),
            repeat,
            metric="auroc",
            seen="seen_auroc",
            unseen="unseen_auroc",
            config={**config, "pilot_cohort": cfg["cohort"], "target": TARGET, "budget": BUDGET},
            order=PILOT_MODELS,
            analysis=analysis,
            notes=_notes,
            out_dir=out_dir,
            log=log,
        )

    return body(None) if recorded is not None else mri.with_cohort(cfg, cohort_dir, body, log)


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
        "pilot_data": {"labels": pilot["labels"], "probabilities": pilot["probabilities"]},
    }


def _wall(cost: Mapping[str, float], repeats: int, unseen_scans: int, scans: int) -> float:
    per_repeat = cost["training_epochs_per_repeat"] * cost["seconds_per_training_epoch"]
    per_repeat += unseen_scans * cost["inference_passes_per_unseen_scan"] * cost["seconds_per_scan_inference_pass"]
    return repeats * per_repeat + scans * cost["seconds_per_scan_generated"]


def pilot_of(power: Mapping[str, Any]) -> dict[str, Any]:
    """The pilot (as :func:`pilot_from_rows` builds it for :func:`analyse`) recorded in a power analysis."""
    derived = ("unseen_scans", "test_sampling_variance")
    return {**{k: v for k, v in power["pilot"].items() if k not in derived}, **power["pilot_data"]}


def _read_pilot(path: str | os.PathLike) -> dict[str, Any]:
    """A recorded pilot: from an ``mri_power.json`` (either layout) or a pilot file written by earlier versions."""
    record = json.loads(Path(path).read_text())
    record = record.get("analysis", record)
    return pilot_of(record) if "pilot_data" in record else record


def _notes(models: Mapping[str, Any]) -> str:
    return "Power analysis: see the JSON's `analysis` (variance and cost models, every design, the chosen one)."


def summary(power: Mapping[str, Any]) -> str:
    """One line: the observed s.d., the chosen design, its MDE and wall time, whether the target is reached."""
    c = power["chosen"]
    return (
        f"observed sd {power['observed']['sd']:.4f} at {power['observed']['unseen_scans']} unseen scans; "
        f"chosen: {c['repeats']} repeats, {c['unseen_scans']} unseen scans, MDE {c['mde']:.4f}, "
        f"~{c['wall_seconds'] / 60:.0f} min; target reached: {power['target_reached']}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--results", default=str(DEFAULT_OUT / "mri.json"), help="the committed run (or a power analysis of one)"
    )
    parser.add_argument("--pilot-file", default=None, help="reuse the pilot of an earlier mri_power.json")
    parser.add_argument("--cohort-dir", default=None, help="the pilot cohort's folder (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.quick:
        parser.error("--quick: there is no reduced pilot; reuse a recorded one with --pilot-file")
    import torch

    torch.set_num_threads(1)
    results = run(args.results, args.pilot_file, args.cohort_dir, args.out)
    print(summary(results["analysis"]))
    return results


if __name__ == "__main__":
    main()
