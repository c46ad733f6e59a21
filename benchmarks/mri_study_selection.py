# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Choose the MRI study's invariance mechanism and weight on training sites only (issue 21, item 5).

Candidates: no invariance term (``me_no_adversary``, the reference) and every mechanism of
:func:`benchmarks.invariance.invariance_candidates` (the scale-invariant adversary on ``h``, CORAL and MMD, each
unconditional and label-conditional) at every weight of :data:`LAMBDA_GRID` (a log grid 0.003..3), listed
simplest first (no invariance, then each mechanism from the smallest weight up). Each is the ``me`` model of
:mod:`benchmarks.mri_study` with that invariance term.

Data: selection cohorts of their own (seeds :data:`SEEDS`, disjoint from the study's cohorts ``5000 + 100 a + c``
and from every earlier benchmark cohort), one arm each in turn (cohort ``c`` is of arm ``c mod 5``), six training
sites (600 subjects) and no unseen site. In each cohort, :data:`FOLDS` training sites are held out in turn
(:func:`benchmarks.selection.pseudo_unseen_cluster`, rotation ``c + 3 f``: two sites of opposite rank per
cohort): the candidate trains on the training and
validation subjects of the other five sites and is scored

* ``heldout_within_auroc``: AUROC of the population (z = 0) prediction on every subject of the held-out site;
* ``seen_within_auroc_z0``: mean within-site AUROC of the z = 0 prediction on the test subjects of the five
  training sites;
* ``site_probe``: a fresh logistic-regression probe reading the site from standardised ``h`` of those test
  subjects (5-fold CV, :func:`benchmarks.mri_selection.validation_probe`), ``label_only_floor`` the same probe on
  the label alone, ``probe_excess`` their difference (a diagnostic, not part of the rule); a ``prevalence_only``
  row (each subject scored by its site's training prevalence, the pooled one on the held-out site: no image)
  is scored alongside.

Rule (:func:`decide`, fixed before the first fit): per cohort, average the folds. A candidate is *disqualified* when
its mean ``seen_within_auroc_z0`` falls more than :data:`SEEN_MARGIN` below the reference's. Among the others
(the reference always qualifies) the one-standard-error rule on ``heldout_within_auroc`` over cohorts, simplest
first, chooses; so the reference (no invariance) wins unless a candidate beats it by more than one standard error.
The study's ``domain_adversarial`` baseline takes the best qualifying invariance candidate (highest mean held-out
score; if none qualifies, the one with the smallest seen-site loss), since a fixed-effects CNN without invariance
is the conventional model.

Run ``python -m benchmarks.mri_study_selection [--quick] [--out DIR] [--workers 2] [--cache DIR]``; it writes
``mri_study_selection.json`` (``--quick``: ``mri_study_selection_quick.json``), read by ``benchmarks.mri_study``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks import mri
from benchmarks._common import announce_plan, benchmark_parser, summarize, write_results
from benchmarks.invariance import invariance_candidates
from benchmarks.mri_selection import validation_probe
from benchmarks.mri_study_models import NO_INVARIANCE, fit, me_kind, population_and_mixed
from benchmarks.mri_study_runs import clear_checkpoint, require_clean_tree, run_key, run_units
from benchmarks.mri_study_settings import (
    ARMS,
    arm_cohort,
    cohort_base,
    cohort_folder,
    estimated_seconds,
    recipe,
)
from benchmarks.selection import one_standard_error_choice, pseudo_unseen_cluster
from monai_medl.data.synthetic.mri_cohort import generate_mri_cohort
from monai_medl.metrics.within_site import prevalence_only_score, within_site_auroc

__all__ = [
    "NAME",
    "REFERENCE",
    "LAMBDA_GRID",
    "SEEDS",
    "SEEN_MARGIN",
    "candidates",
    "selection_config",
    "make_units",
    "make_plan",
    "run_fit",
    "decide",
    "run",
    "main",
]

NAME = "mri_study_selection"
REFERENCE = "me_no_adversary"
LAMBDA_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
QUICK_GRID = (0.03, 1.0)
SEEDS = (9000, 9001, 9002, 9003, 9004)
FOLDS = 2
SEEN_MARGIN = 0.01


def candidates(grid: Sequence[float]) -> dict[str, dict[str, Any]]:
    """``{name: settings}``: the reference (no invariance) first, then every mechanism of
    :func:`benchmarks.invariance.invariance_candidates` over ``grid`` in its order (mechanism by mechanism, the
    weight rising), as changes to the recipe of :func:`benchmarks.mri_study_settings.recipe`."""
    out: dict[str, dict[str, Any]] = {REFERENCE: dict(NO_INVARIANCE)}
    for name, spec in invariance_candidates(grid).items():
        if spec.get("kind", "none") != "none":  # "none" is the reference
            out[name] = {"invariance": dict(spec)}
    return out


def selection_config(quick: bool) -> dict[str, Any]:
    """Everything that defines the selection run (written to the results' ``config``)."""
    base = {**cohort_base(quick), "unseen_sites": 0, "extra_unseen_subjects": 0}
    if not quick:  # 100 subjects per site, as benchmarks.mri_selection: 430 fits must fit the hour
        base["num_subjects"] = 600
    seeds = list(SEEDS[:1] if quick else SEEDS)
    return {
        "cohort": base,
        "recipe": recipe(quick),
        "seeds": seeds,
        "arms": [list(ARMS)[c % len(ARMS)] for c in range(len(seeds))],
        "folds": 2 if quick else FOLDS,
        "grid": list(QUICK_GRID if quick else LAMBDA_GRID),
        "candidates": candidates(QUICK_GRID if quick else LAMBDA_GRID),
    }


def make_units(cfg: Mapping[str, Any], cache: str | None) -> list[dict[str, Any]]:
    """One unit per (cohort, held-out site, candidate), cohort by cohort."""
    units = []
    for c, (seed, arm) in enumerate(zip(cfg["seeds"], cfg["arms"])):
        cohort = arm_cohort(cfg["cohort"], arm, seed)
        folder = cohort_folder(cache, NAME, cohort)
        for f in range(cfg["folds"]):
            for cand, settings in cfg["candidates"].items():
                units.append(
                    {
                        "cohort_index": c,
                        "arm": arm,
                        "seed": int(seed),
                        "rotation": c + 3 * f,
                        "fold": f,
                        "candidate": cand,
                        "settings": settings,
                        "cohort": cohort,
                        "recipe": cfg["recipe"],
                        "folder": folder,
                    }
                )
    return units


def make_plan(cfg: Mapping[str, Any], workers: int) -> dict[str, Any]:
    """The pre-registered plan, with the sizing of the run."""
    cands = list(cfg["candidates"])
    n_seen = cfg["cohort"]["num_subjects"]
    train = int(n_seen * 5 / 6 * (1 - cfg["cohort"]["test_fraction"]))
    fits = len(cands) * cfg["folds"] * len(cfg["seeds"])
    seconds = estimated_seconds(
        fits, train, cfg["recipe"]["epochs"], n_seen * len(cfg["seeds"]), workers, cfg["cohort"]["spatial_size"][0]
    )
    return {
        "seeds": f"selection cohorts {cfg['seeds']} (arms {cfg['arms']}), disjoint from the study's cohorts "
        "(5000 + 100 arm + c) and every earlier benchmark cohort",
        "splits": f"six training sites per cohort, no unseen site; {cfg['folds']} training sites held out in turn "
        "(pseudo_unseen_cluster rotation c + 3 f); train on the training+validation subjects of the other five, "
        "score heldout_within_auroc on every subject of the held-out site and the seen-site scores on the test "
        "subjects of the five",
        "candidates": cands,
        "lambda_grid": cfg["grid"],
        "reference": f"{REFERENCE} (no invariance term; choosable)",
        "score": "heldout_within_auroc: AUROC of the z = 0 prediction on the held-out training site",
        "decision_rule": f"per cohort, average the folds; disqualify a candidate whose mean seen_within_auroc_z0 is "
        f"more than {SEEN_MARGIN} below {REFERENCE}'s; among the rest (the reference always qualifies) the "
        "one-standard-error rule over cohorts on heldout_within_auroc, simplest first; domain_adversarial takes "
        "the best qualifying invariance candidate (highest mean heldout score; none qualifying: the smallest "
        "seen-site loss); site_probe, label_only_floor and probe_excess are reported, not used",
        "sizing": f"{fits} fits of about {train} subjects x {cfg['recipe']['epochs']} epochs, {workers} worker "
        f"process(es) at 1 thread: about {seconds / 60:.0f} min wall by the cost model of "
        "benchmarks.mri_study_settings",
    }


_LOADED: dict[str, Any] = {}


def _load(unit: Mapping[str, Any]) -> dict[str, Any]:
    """The unit's cohort, kept in memory per process (units run cohort by cohort)."""
    if _LOADED.get("folder") != unit["folder"]:
        _LOADED.clear()
        data = mri.load_cohort(unit["folder"], {"cohort": unit["cohort"]})
        _LOADED.update(folder=unit["folder"], data=data)
    return _LOADED["data"]


def run_fit(unit: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Train one candidate on one cohort with one training site held out; its read-outs (module docstring)."""
    data = _load(unit)
    held = pseudo_unseen_cluster(data["seen_sites"], unit["rotation"])
    train_sites = [s for s in data["seen_sites"] if s != held]
    index = {s: i for i, s in enumerate(train_sites)}
    sites, splits = np.asarray(data["sites"]), np.asarray(data["splits"])
    site_idx = np.array([index.get(s, -1) for s in sites])
    tr = np.flatnonzero((site_idx >= 0) & (splits != "test"))
    va = np.flatnonzero((site_idx >= 0) & (splits == "test"))
    ho = np.flatnonzero(sites == held)
    images, labels, k = torch.from_numpy(data["images"]), data["labels"], len(train_sites)
    cfg = {**unit["recipe"], "cohort": unit["cohort"], **unit["settings"]}
    y_tr, s_tr = torch.from_numpy(labels[tr]), torch.from_numpy(site_idx[tr])
    net, seconds = fit(me_kind(unit["settings"]), cfg, images[tr], y_tr, s_tr, k, 1000 + unit["seed"])
    p_ho = population_and_mixed(net, images[ho], np.full(len(ho), -1), k)[0]
    p_va, _, h_va = population_and_mixed(net, images[va], site_idx[va], k)
    probe = validation_probe(h_va, site_idx[va])
    floor = validation_probe(labels[va][:, None], site_idx[va])
    row: dict[str, dict[str, float]] = {}
    if unit["candidate"] == REFERENCE:  # the no-image reference row, once per fold
        p_seen = prevalence_only_score(labels[tr], sites[tr], sites[va])
        row["prevalence_only"] = {
            "heldout_within_auroc": float(
                roc_auc_score(labels[ho], prevalence_only_score(labels[tr], sites[tr], sites[ho]))
            ),
            "seen_within_auroc_z0": within_site_auroc(labels[va], p_seen, sites[va])["mean"],
        }
    return {
        **row,
        unit["candidate"]: {
            "heldout_within_auroc": float(roc_auc_score(labels[ho], p_ho)),
            "seen_within_auroc_z0": within_site_auroc(labels[va], p_va, sites[va])["mean"],
            "site_probe": probe,
            "label_only_floor": floor,
            "probe_excess": probe - floor,
            "fit_seconds": seconds,
            "load_1min": os.getloadavg()[0],
        },
    }


def per_cohort(rows: Sequence[Mapping[str, Any]], units: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """``{candidate: {read-out: [per-cohort mean over folds]}}`` of the rows of ``units``."""
    acc: dict[str, dict[str, dict[int, list[float]]]] = {}
    for unit, row in zip(units, rows):
        for name, values in row.items():
            for key, value in values.items():
                acc.setdefault(name, {}).setdefault(key, {}).setdefault(unit["cohort_index"], []).append(value)
    return {
        cand: {key: [float(np.mean(v[c])) for c in sorted(v)] for key, v in values.items()}
        for cand, values in acc.items()
    }


def decide(scores: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, Any]:
    """The rule of the module docstring applied to :func:`per_cohort` scores (candidates in listed order, the
    reference first)."""
    if REFERENCE not in scores:
        raise ValueError(f"decide needs the reference {REFERENCE!r} among the candidates, got {list(scores)}.")
    mean = {c: {k: float(np.mean(v)) for k, v in s.items()} for c, s in scores.items()}
    floor = mean[REFERENCE]["seen_within_auroc_z0"] - SEEN_MARGIN
    disqualified = [c for c in scores if c != REFERENCE and mean[c]["seen_within_auroc_z0"] < floor]
    qualified = [c for c in scores if c not in disqualified]
    rule = one_standard_error_choice({c: scores[c]["heldout_within_auroc"] for c in qualified})
    others = [c for c in qualified if c != REFERENCE]
    if others:
        for_da = max(others, key=lambda c: mean[c]["heldout_within_auroc"])
    else:
        rest = [c for c in scores if c != REFERENCE]
        for_da = max(rest, key=lambda c: mean[c]["seen_within_auroc_z0"]) if rest else REFERENCE
    chosen = rule["chosen"]
    verdict = "no invariance term (the reference) wins" if chosen == REFERENCE else f"`{chosen}` wins"
    summary = (
        f"Rule: disqualify candidates whose mean seen-site within-site z = 0 AUROC is more than {SEEN_MARGIN} below "
        f"`{REFERENCE}` ({mean[REFERENCE]['seen_within_auroc_z0']:.4f}): {len(disqualified)} of "
        f"{len(scores) - 1} disqualified. One-standard-error rule on held-out-site AUROC among the "
        f"{len(qualified)} left: best `{rule['best']}` {rule['best_mean']:.4f}, standard error "
        f"{rule['standard_error']:.4f} over cohorts, threshold {rule['threshold']:.4f}: **{verdict}** "
        f"(held-out AUROC {mean[chosen]['heldout_within_auroc']:.4f}). domain_adversarial uses `{for_da}`."
    )
    return {
        "chosen": chosen,
        "no_invariance_wins": chosen == REFERENCE,
        "disqualified": disqualified,
        "qualified": qualified,
        "one_standard_error": rule,
        "domain_adversarial": for_da,
        "summary": summary,
    }


def _models(scores: Mapping[str, Mapping[str, Sequence[float]]], decision: Mapping[str, Any]) -> dict[str, Any]:
    models = {}
    for cand, values in scores.items():
        extra: dict[str, Any] = {}
        for key, series in values.items():
            s = summarize(series)
            extra.update({key: s["mean"], f"{key}_ci95": s["ci95"], f"{key}_values": s["values"]})
        extra["disqualified"] = (
            cand in decision["disqualified"] if cand in decision["qualified"] + decision["disqualified"] else None
        )
        extra["chosen"] = cand == decision["chosen"]
        models[cand] = {"seen": None, "unseen": None, "extra": extra}
    return models


def run(
    quick: bool, out_dir, workers: int = 2, cache: str | None = None, config: Mapping[str, Any] | None = None, log=print
) -> dict[str, Any]:
    """The selection run: plan, cohorts, every fit (resumable), decision, results files; ``config`` replaces
    :func:`selection_config` (tests)."""
    commit = require_clean_tree(quick)
    name = NAME + ("_quick" if quick else "")
    cfg = dict(selection_config(quick) if config is None else config)
    plan = make_plan(cfg, workers)
    announce_plan(name, quick, plan, cfg["seeds"], out_dir)
    units = make_units(cfg, cache)
    for unit in {u["folder"]: u for u in units}.values():  # generated once, before the workers share them
        generate_mri_cohort(unit["folder"], **unit["cohort"])
    log(f"{name} at {commit}: {len(units)} fits, {workers} workers; {plan['sizing']}")
    start = time.perf_counter()
    rows = run_units(
        name,
        units,
        run_fit,
        out_dir,
        run_key(name, quick, plan, units),
        workers,
        log,
        lambda u: f"cohort {u['seed']} ({u['arm']}) fold {u['fold']} {u['candidate']}",
    )
    scores = per_cohort(rows, units)
    decision = decide({c: scores[c] for c in cfg["candidates"]})
    config = {
        **cfg,
        "workers": workers,
        "wall_seconds": round(time.perf_counter() - start, 1),  # the fits, without generating the cohorts
        "decision": decision,
        "chosen": decision["chosen"],
        "chosen_settings": dict(cfg["candidates"][decision["chosen"]]),
        "domain_adversarial_candidate": decision["domain_adversarial"],
        "domain_adversarial_settings": dict(cfg["candidates"][decision["domain_adversarial"]]),
    }
    notes = decision["summary"] + (
        "\n\nPer-cohort means over the held-out folds; mean [95% t-interval] over cohorts. `probe_excess` = fresh "
        "site probe minus the label-only floor (same subjects, same probe)."
    )
    results = write_results(
        name, quick, "heldout_within_auroc", len(cfg["seeds"]), _models(scores, decision), config, cfg["seeds"],
        out_dir, notes=notes, plan=plan,
    )  # fmt: skip
    clear_checkpoint(name, out_dir)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes, 1 torch thread each (default 2)")
    parser.add_argument("--cache", default=None, help="folder for the generated cohorts (default: a temp folder)")
    args = parser.parse_args(argv)
    return run(args.quick, args.out, args.workers, args.cache)


if __name__ == "__main__":
    main()
