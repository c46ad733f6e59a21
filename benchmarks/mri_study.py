# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""When do mixed effects help a 3D CNN on a new site? The MRI study, replicated over generated cohorts (issue 21).

Unit of replication: the cohort. Every arm of :data:`~benchmarks.mri_study_settings.ARMS` gets ``cohorts`` freshly
generated cohorts (seed ``5000 + 100 a + c`` for arm ``a``, cohort ``c``): new scanners for every site, so new
unseen sites in every cohort. Each cohort trains every model once (the same training seed for all, so that the
models are paired) on the training and validation subjects of its six seen sites; seen sites are scored on their
held-out test subjects, unseen sites on all of their scans. One paired difference per cohort; 95% t-intervals
over cohorts.

Models (:func:`fits`): ``conventional``; ``conventional_logit_adjusted`` (a fixed logit offset per training site
from its training prevalence, none on a new site: the simplest random intercept); ``domain_adversarial`` (the
conventional CNN with the selected invariance mechanism); ``me`` (mixed-effects CNN with the invariance chosen by
``benchmarks.mri_study_selection``); ``me_no_adversary``; controls ``me_lambda_fixed_0`` (``me`` without the fixed
head's loss), ``me_detached_fixed_head`` (the fixed head's loss does not reach the encoder) and
``me_intercept_only`` (random intercept, no random slopes, no invariance); the ``prevalence_only`` score (no image)
and the ``label_only_floor`` of the site probe. The benchmark's ``traditional`` and ComBat baselines are left out:
they read regions placed at the generator's true atrophy centres, an oracle no user has.

Metrics (:func:`benchmarks.mri_study_models.score`): primary, the mean within-site AUROC of the population
(z = 0) prediction on the unseen sites; secondary, log loss, ECE (MONAI's calibration metric) and balanced
accuracy (threshold from the training predictions) at unseen-site prevalences 0.2, 0.5, 0.8 (sites subsampled);
seen sites: within-site AUROC and ECE of the mixed prediction, and the within-site AUROC of the z = 0 prediction.

Analysis (:func:`analyse`): primary comparisons ``me - conventional`` unseen within-site AUROC per arm, Holm-adjusted
over the arms; the nuisance arm as an equivalence test (TOST at +-0.02), the others as two-sided paired t-tests
(the shortcut arm is the invariance test). Secondary: ECE ``me - conventional`` at unseen prevalence 0.2 and 0.8 on
the threshold and slope arms; every other model against ``conventional``; unadjusted.

Run ``python -m benchmarks.mri_study [--quick] [--out DIR] [--workers 2] [--selection-dir DIR]`` after
``benchmarks.mri_study_selection``; writes ``mri_study.json`` / ``.md`` (``--quick``: ``mri_study_quick``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from benchmarks import mri
from benchmarks._common import announce_plan, benchmark_parser, paired_difference, summarize_rows, write_results
from benchmarks.mri_power import load_power, minimum_detectable_effect
from benchmarks.mri_selection import validation_probe
from benchmarks.mri_study_models import (
    NO_INVARIANCE,
    PREVALENCES,
    fit,
    me_kind,
    population_and_mixed,
    prevalence_only_row,
    score,
)
from benchmarks.mri_study_runs import clear_checkpoint, require_clean_tree, run_key, run_units
from benchmarks.mri_study_settings import ARMS, arm_cohort, cohort_base, estimated_seconds, recipe
from monai_medl.metrics.within_site import holm, paired_t_pvalue, tost

__all__ = [
    "NAME",
    "MODELS",
    "EQUIVALENCE_MARGIN",
    "study_config",
    "load_selection",
    "fits",
    "make_units",
    "make_plan",
    "cohort_row",
    "run_cohort",
    "analyse",
    "run",
    "main",
]

NAME = "mri_study"
MODELS = (
    "prevalence_only",
    "label_only_floor",
    "conventional",
    "conventional_logit_adjusted",
    "domain_adversarial",
    "me",
    "me_no_adversary",
    "me_lambda_fixed_0",
    "me_detached_fixed_head",
    "me_intercept_only",
)
SEED_BASE = 5000
EQUIVALENCE_MARGIN = 0.02
ALPHA = 0.05
PRIMARY = "unseen_within_auroc"
SECONDARY_ARMS = ("threshold", "threshold_asymmetric", "slope")


def study_config(quick: bool, selection: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that defines the run (written to the results' ``config``); ``selection`` from
    :func:`load_selection`."""
    return {
        "cohort": cohort_base(quick),
        "recipe": recipe(quick),
        "cohorts": 2 if quick else 10,
        "arms": {a: ARMS[a] for a in ARMS},
        "selection": dict(selection),
    }


def load_selection(results_dir: str | os.PathLike, quick: bool) -> dict[str, Any]:
    """The choice of ``benchmarks.mri_study_selection`` in ``results_dir`` (the ``_quick`` run for ``--quick``):
    ``{"chosen", "settings", "domain_adversarial", "domain_adversarial_settings", "file"}``."""
    from benchmarks.mri_study_selection import NAME as SELECTION

    path = Path(results_dir) / f"{SELECTION}{'_quick' if quick else ''}.json"
    if not path.is_file():
        flag = " --quick" if quick else ""
        raise ValueError(f"{path} does not exist: run `python -m benchmarks.{SELECTION}{flag}` first.")
    record = json.loads(path.read_text())
    if record.get("status") == "running" or "config" not in record:
        raise ValueError(f"{path} holds an unfinished selection run (status {record.get('status')!r}); rerun it.")
    if bool(record.get("quick")) != quick:
        raise ValueError(f"{path} is a {'quick' if record.get('quick') else 'full'} run; this run needs the other.")
    cfg = record["config"]
    return {
        "chosen": cfg["chosen"],
        "settings": dict(cfg["chosen_settings"]),
        "domain_adversarial": cfg["domain_adversarial_candidate"],
        "domain_adversarial_settings": dict(cfg["domain_adversarial_settings"]),
        "file": str(path),
        "commit": record.get("env", {}).get("commit"),
    }


def fits(selection: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{model: (kind, settings)}`` of the trained models (:func:`benchmarks.mri_study_models.fit`)."""
    chosen = dict(selection["settings"])
    kind = me_kind(chosen)
    return {
        "conventional": ("conventional", {}),
        "conventional_logit_adjusted": ("logit_adjusted", {}),
        "domain_adversarial": ("domain_adversarial", dict(selection["domain_adversarial_settings"])),
        "me": (kind, chosen),
        "me_no_adversary": ("me_no_adversary", dict(NO_INVARIANCE)),
        "me_lambda_fixed_0": (kind, {**chosen, "lambda_fixed": 0.0}),
        "me_detached_fixed_head": (kind, {**chosen, "fixed_head_detached": True}),
        "me_intercept_only": ("me_no_adversary", {**NO_INVARIANCE, "random_slopes": False}),
    }


def make_units(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One unit per (cohort, arm), cohort-major (an interrupted run has every arm at about the same count)."""
    return [
        {
            "arm": arm,
            "seed": SEED_BASE + 100 * a + c,
            "cohort": arm_cohort(cfg["cohort"], arm, SEED_BASE + 100 * a + c),
            "recipe": cfg["recipe"],
            "fits": fits(cfg["selection"]),
        }
        for c in range(cfg["cohorts"])
        for a, arm in enumerate(cfg["arms"])
    ]


def _mde(cfg: Mapping[str, Any]) -> dict[str, Any]:
    power = load_power()
    sd, n, arms = float(power["observed"]["sd"]), int(cfg["cohorts"]), len(cfg["arms"])
    se = sd / math.sqrt(n)
    crit = stats.t.ppf(1 - ALPHA, n - 1)
    tost_power = max(0.0, 2 * stats.t.cdf(EQUIVALENCE_MARGIN / se - crit, n - 1) - 1)
    return {
        "assumed_sd_of_paired_differences": round(sd, 4),
        "source": "benchmarks/results/mri_power.json observed.sd: me - conventional unseen pooled AUROC over 5 "
        "cross-validation repeats of one cohort; the study's differences also vary with the scanner draw and use "
        "within-site AUROC, so the true s.d. is probably larger and the MDE below optimistic",
        "cohorts": n,
        "mde_two_sided_alpha_0.05_power_0.8": round(minimum_detectable_effect(sd, n, 0.8, ALPHA), 4),
        "mde_at_holm_first_step": round(minimum_detectable_effect(sd, n, 0.8, ALPHA / arms), 4),
        "holm_first_step_alpha": round(ALPHA / arms, 4),
        "tost_power_at_true_difference_0": round(float(tost_power), 3),
    }


def make_plan(cfg: Mapping[str, Any], workers: int) -> dict[str, Any]:
    """The pre-registered plan (design, metrics, comparisons, rule, MDE, sizing), written before the first fit."""
    units = make_units(cfg)
    n_fits = sum(len({json.dumps(v, sort_keys=True) for v in u["fits"].values()}) for u in units)
    cohort = cfg["cohort"]
    seen = cohort["num_subjects"] * 6 // 8
    train = int(seen * (1 - cohort["test_fraction"]))
    scans = len(units) * (cohort["num_subjects"] + cohort["extra_unseen_subjects"])
    seconds = estimated_seconds(n_fits, train, cfg["recipe"]["epochs"], scans, workers, cohort["spatial_size"][0])
    sel = cfg["selection"]
    return {
        "design": f"{cfg['cohorts']} generated cohorts per arm (seed {SEED_BASE} + 100 arm + c), fresh scanners and "
        "unseen sites in each; one paired difference per cohort; 95% t-intervals over cohorts",
        "arms": {a: v for a, v in cfg["arms"].items()},
        "splits": "train on the training+validation subjects of the 6 seen sites; seen metrics on their test "
        f"subjects ({cohort['test_fraction']:.0%}); unseen metrics on every scan of the 2 unseen sites",
        "models": list(MODELS),
        "baselines_without_oracle": "traditional and ComBat left out of the study (their regions come from the "
        "generator's parameters)",
        "selection": f"{sel['chosen']} from {sel['file']} (domain_adversarial: {sel['domain_adversarial']})",
        "primary_metric": "mean within-site AUROC of the population (z = 0) prediction on unseen sites",
        "secondary_metrics": f"log loss, ECE (MONAI CalibrationErrorMetric, 10 bins), balanced accuracy (Youden "
        f"threshold of the training z = 0 predictions) at unseen prevalences {list(PREVALENCES)} (sites "
        "subsampled, same subsample for every model of a cohort); seen sites: within-site AUROC and ECE of the "
        "mixed prediction, within-site AUROC at z = 0; fresh site probe on h (seen test subjects, 5-fold CV) and "
        "its label-only floor; prevalence_only row",
        "primary_comparisons": f"me - conventional, unseen within-site z = 0 AUROC, per arm; Holm over the "
        f"{len(cfg['arms'])} arms at alpha {ALPHA}; nuisance: TOST equivalence at +-{EQUIVALENCE_MARGIN} (its "
        "p-value enters Holm); other arms: two-sided paired t-test; shortcut is the invariance test",
        "secondary_comparisons": f"ECE me - conventional at unseen prevalence 0.2 and 0.8 on {list(SECONDARY_ARMS)}; "
        "every model - conventional on the primary metric; unadjusted",
        "decision_rule": "a primary difference is claimed when its Holm-adjusted p <= 0.05 (direction from the "
        "mean); nuisance: equivalence claimed when its Holm-adjusted TOST p <= 0.05; everything reported",
        "power": _mde(cfg),
        "sizing": f"{len(units)} cohorts x {n_fits // max(1, len(units))} fits of about {train} subjects x "
        f"{cfg['recipe']['epochs']} epochs, {scans} scans generated, {workers} worker process(es) at 1 thread: "
        f"about {seconds / 60:.0f} min wall by the cost model of benchmarks.mri_study_settings",
    }


def _split(data: Mapping[str, Any]):
    seen_sites = data["seen_sites"]
    index = {s: i for i, s in enumerate(seen_sites)}
    sites, splits = np.asarray(data["sites"]), np.asarray(data["splits"])
    site_idx = np.array([index.get(s, -1) for s in sites])
    tr = np.flatnonzero((site_idx >= 0) & (splits != "test"))
    te = np.flatnonzero((site_idx >= 0) & (splits == "test"))
    return sites, site_idx, tr, te, np.flatnonzero(site_idx < 0)


def cohort_row(data: Mapping[str, Any], unit: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Train every model of ``unit["fits"]`` on one loaded cohort and score it (plus the two reference rows)."""
    sites, site_idx, tr, te, un = _split(data)
    k, seed = len(data["seen_sites"]), int(unit["seed"])
    images, labels = torch.from_numpy(data["images"]), data["labels"]
    seen = {"y": labels[te], "sites": sites[te], "site_idx": site_idx[te]}
    unseen = {"y": labels[un], "sites": sites[un]}
    row: dict[str, dict[str, float]] = {
        "prevalence_only": prevalence_only_row({"y": labels[tr], "sites": sites[tr]}, seen, unseen, seed),
        "label_only_floor": {"site_probe": validation_probe(labels[te][:, None], site_idx[te])},
    }
    trained: dict[str, tuple[Any, float]] = {}
    y_tr, s_tr = torch.from_numpy(labels[tr]), torch.from_numpy(site_idx[tr])
    cfg = {**unit["recipe"], "cohort": unit["cohort"]}
    for model, (kind, settings) in unit["fits"].items():
        key = json.dumps([kind, settings], sort_keys=True)
        if key not in trained:  # e.g. me = me_no_adversary when no invariance was selected
            trained[key] = fit(kind, {**cfg, **settings}, images[tr], y_tr, s_tr, k, 1000 + seed)
        net, seconds = trained[key]
        p_tr = population_and_mixed(net, images[tr], np.full(len(tr), -1), k)[0]
        p_pop, p_mix, h = population_and_mixed(net, images[te], site_idx[te], k)
        p_un = population_and_mixed(net, images[un], site_idx[un], k)[0]
        scores = score(
            {"y": labels[tr], "p": p_tr},
            {**seen, "p_mixed": p_mix, "p_population": p_pop, "h": h},
            {**unseen, "p": p_un},
            seed,
        )
        scores["probe_excess"] = scores["site_probe"] - row["label_only_floor"]["site_probe"]
        row[model] = {**scores, "fit_seconds": seconds, "load_1min": os.getloadavg()[0]}
    return row


def run_cohort(unit: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Generate the unit's cohort in a temporary folder, :func:`cohort_row`, remove the folder."""
    folder = tempfile.mkdtemp(prefix=f"mri_study_{unit['arm']}_{unit['seed']}_")
    try:
        return cohort_row(mri.load_cohort(folder, {"cohort": unit["cohort"]}), unit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _values(models: Mapping[str, Any], arm: str, model: str, metric: str) -> list[float]:
    entry = models[f"{arm}/{model}"]
    if metric == PRIMARY:
        return list(entry["unseen"]["values"])
    if metric == "seen_within_auroc":
        return list(entry["seen"]["values"])
    return list(entry["extra"][f"{metric}_values"])


def _paired(models, arm, model, reference, metric, higher=True) -> dict[str, Any]:
    d = paired_difference(_values(models, arm, model, metric), _values(models, arm, reference, metric), higher)
    return {**d, "p": paired_t_pvalue(d["values"]), "model": model, "reference": reference, "metric": metric}


def analyse(models: Mapping[str, Any], arms: Sequence[str]) -> dict[str, Any]:
    """The plan's comparisons on the summarised ``{arm/model: ...}`` results: primary (Holm over arms; TOST on
    nuisance), secondary ECE, every model against ``conventional``, and the seen-site ME difference."""
    primary: dict[str, Any] = {}
    for arm in arms:
        d = _paired(models, arm, "me", "conventional", PRIMARY)
        d["test"] = "paired t"
        if arm == "nuisance":
            d["tost"] = tost(d["values"], EQUIVALENCE_MARGIN, ALPHA)
            d["p"], d["test"] = d["tost"]["p"], f"TOST +-{EQUIVALENCE_MARGIN}"
        d["seen"] = _paired(models, arm, "me", "conventional", "seen_within_auroc")
        primary[arm] = d
    adjusted = holm({arm: primary[arm]["p"] for arm in arms}, ALPHA)
    for arm in arms:
        primary[arm].update(p_holm=adjusted[arm]["p_holm"], reject=adjusted[arm]["reject"])
        primary[arm]["conclusion"] = _conclusion(arm, primary[arm])
    secondary = {
        f"{arm}/ece_{tag}": _paired(models, arm, "me", "conventional", f"unseen_ece_{tag}", higher=False)
        for arm in arms
        if arm in SECONDARY_ARMS
        for tag in ("p20", "p80")
    }
    against = {
        f"{arm}/{m}": _paired(models, arm, m, "conventional", PRIMARY)
        for arm in arms
        for m in MODELS
        if m not in ("conventional", "label_only_floor")
    }
    return {"primary": primary, "holm": adjusted, "secondary": secondary, "against_conventional": against}


def _conclusion(arm: str, d: Mapping[str, Any]) -> str:
    if arm == "nuisance":
        return (
            f"equivalent within +-{EQUIVALENCE_MARGIN}"
            if d["reject"]
            else f"equivalence within +-{EQUIVALENCE_MARGIN} not shown"
        )
    if not d["reject"]:
        return "no difference shown"
    return "ME better" if d["mean"] > 0 else "conventional better"


def _summaries(rows, units, arms) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for arm in arms:
        arm_rows = [r for r, u in zip(rows, units) if u["arm"] == arm]
        summary = summarize_rows(arm_rows, "seen_within_auroc", PRIMARY, order=MODELS)
        models.update({f"{arm}/{m}": entry for m, entry in summary.items()})
    return models


def run(
    quick: bool, out_dir, workers: int = 2, selection_dir=None, config: Mapping[str, Any] | None = None, log=print
) -> dict[str, Any]:
    """The study: plan, every cohort (resumable), analysis, ``mri_study[_quick].json`` / ``.md``; ``config``
    replaces :func:`study_config` (tests)."""
    from benchmarks.mri_study_report import render

    commit = require_clean_tree(quick)
    name = NAME + ("_quick" if quick else "")
    if config is None:
        config = study_config(quick, load_selection(out_dir if selection_dir is None else selection_dir, quick))
    cfg = dict(config)
    plan = make_plan(cfg, workers)
    units = make_units(cfg)
    seeds = [u["seed"] for u in units]
    announce_plan(name, quick, plan, seeds, out_dir)
    log(f"{name} at {commit}: {len(units)} cohorts, {workers} workers; {plan['sizing']}")
    key = run_key(name, quick, plan, units)
    start = time.perf_counter()
    rows = run_units(name, units, run_cohort, out_dir, key, workers, log, lambda u: f"{u['arm']} cohort {u['seed']}")
    models = _summaries(rows, units, list(cfg["arms"]))
    done = {**cfg, "workers": workers, "wall_seconds": round(time.perf_counter() - start, 1)}
    results = write_results(name, quick, "within_site_auroc", cfg["cohorts"], models, done, seeds, out_dir, plan=plan)
    results["analysis"] = analyse(results["models"], list(cfg["arms"]))
    (Path(out_dir) / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    (Path(out_dir) / f"{name}.md").write_text(text)
    print(text)
    clear_checkpoint(name, out_dir)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes, 1 torch thread each (default 2)")
    parser.add_argument(
        "--selection-dir", default=None, help="folder of mri_study_selection[_quick].json (default: --out)"
    )
    args = parser.parse_args(argv)
    return run(args.quick, args.out, args.workers, args.selection_dir)


if __name__ == "__main__":
    main()
