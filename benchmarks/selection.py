# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Choosing a benchmark's settings on validation data from the training clusters only.

Settings that matter for *new* clusters (normalisation, fusion, modality dropout, ...) cannot be judged on the
seen clusters' validation split alone, and must never be judged on the unseen-cluster test data. The selection
runs here hold one *training* cluster out as a pseudo-unseen cluster (a different one per selection seed), train on
the other training clusters, and score every candidate on the held-out cluster's non-test items. Selection seeds
are disjoint from the headline seeds (fresh generated cohorts), so no item, cohort or seed of the headline run is
looked at. The choice follows the one-standard-error rule, with the candidates listed from the simplest: the first
candidate whose mean score is within one standard error (over selection seeds) of the best mean is chosen.

A selection script writes ``<name>.json`` (the plan first, then every candidate's per-seed scores and the choice);
the headline benchmark and the bundle configs read the choice with :func:`load_choice`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import DEFAULT_OUT, announce_plan, summarize, write_results

__all__ = [
    "DECISION_RULE",
    "selection_plan",
    "selection_seeds",
    "pseudo_unseen_cluster",
    "pseudo_unseen_plan",
    "one_standard_error_choice",
    "run_selection",
    "load_choice",
]

DECISION_RULE = "one-standard-error rule over selection seeds, candidates ordered simplest first"
"""The plan's decision rule of every selection run (:func:`one_standard_error_choice` in :func:`run_selection`)."""


def selection_seeds(seeds: Sequence[int], quick: bool) -> list[int]:
    """The selection seeds of a run: all of ``seeds``, or the first one in quick mode (what :func:`selection_plan`
    announces).

    Example::

        >>> selection_seeds((100, 101, 102), quick=True)
        [100]
    """
    return list(seeds[:1] if quick else seeds)


def selection_plan(
    seeds: Sequence[int], headline_seeds: str, splits: str, candidates: Sequence[str], score: str
) -> dict[str, Any]:
    """The pre-registered plan of a selection run: its seeds (disjoint from the headline run's ``headline_seeds``),
    ``splits``, ``candidates`` (simplest first), ``score`` and the one-standard-error :data:`DECISION_RULE`.

    Example::

        >>> selection_plan((100, 101), "0..9", "one training batch held out", ["a", "b"], "MSE")["seeds"]
        'selection seeds [100, 101] (1 in quick mode: 100); disjoint from the headline seeds 0..9'
    """
    return {
        "seeds": f"selection seeds {list(seeds)} (1 in quick mode: {seeds[0]}); disjoint from the headline seeds "
        f"{headline_seeds}",
        "splits": splits,
        "candidates": list(candidates),
        "score": score,
        "decision_rule": DECISION_RULE,
    }


def pseudo_unseen_plan(
    seeds: Sequence[int], headline_seeds: str, clusters: str, details: str, candidates: Sequence[str], score: str
) -> dict[str, Any]:
    """:func:`selection_plan` of a run whose seeds hold out one of six training ``clusters`` in turn (see
    :func:`pseudo_unseen_cluster`); ``details`` completes its ``splits`` (what is trained on and scored).

    Example::

        >>> pseudo_unseen_plan((100,), "0..9", "sites", "score on the held-out site", ["a"], "AUROC")["splits"]
        'per seed one of the six training sites held out as pseudo-unseen (rotating); score on the held-out site'
    """
    splits = f"per seed one of the six training {clusters} held out as pseudo-unseen (rotating); {details}"
    return selection_plan(seeds, headline_seeds, splits, candidates, score)


def pseudo_unseen_cluster(training_clusters: Sequence[str], seed: int) -> str:
    """The training cluster held out as pseudo-unseen for selection seed ``seed`` (rotates through the sorted list).

    Example::

        >>> pseudo_unseen_cluster(["site_b", "site_a", "site_c"], seed=4)
        'site_b'
    """
    clusters = sorted(str(c) for c in training_clusters)
    if len(clusters) < 3:
        raise ValueError(f"need >= 3 training clusters to hold one out and keep >= 2, got {clusters}.")
    return clusters[int(seed) % len(clusters)]


def one_standard_error_choice(scores: Mapping[str, Sequence[float]], higher_is_better: bool = True) -> dict[str, Any]:
    """The one-standard-error rule over candidates listed from the simplest.

    ``scores`` maps each candidate (in order of increasing complexity) to its per-seed scores. The best candidate
    has the best mean; its standard error is ``sd / sqrt(n)`` over seeds. The chosen candidate is the first one
    whose mean is no worse than the best mean by more than that standard error.

    Returns ``{"chosen", "best", "best_mean", "standard_error", "threshold", "means"}``.

    Example::

        >>> one_standard_error_choice({"plain": [0.82, 0.78], "fancy": [0.84, 0.78]})["chosen"]
        'plain'
        >>> one_standard_error_choice({"plain": [0.60, 0.62], "fancy": [0.84, 0.78]})["chosen"]
        'fancy'
    """
    if not scores:
        raise ValueError("one_standard_error_choice needs at least one candidate.")
    lengths = {len(v) for v in scores.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every candidate needs the same, non-zero number of scores, got {lengths}.")
    means = {name: float(np.mean(v)) for name, v in scores.items()}
    best = (max if higher_is_better else min)(means, key=means.get)
    n = len(scores[best])
    se = float(np.std(scores[best], ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    threshold = means[best] - se if higher_is_better else means[best] + se
    ok = (lambda m: m >= threshold) if higher_is_better else (lambda m: m <= threshold)
    chosen = next(name for name in scores if ok(means[name]))
    return {
        "chosen": chosen,
        "best": best,
        "best_mean": means[best],
        "standard_error": se,
        "threshold": threshold,
        "means": means,
    }


def run_selection(
    name: str,
    plan: Mapping[str, Any],
    candidates: Mapping[str, Mapping[str, Any]],
    evaluate: Callable[[str, Mapping[str, Any], int], Mapping[str, float]],
    score: str,
    seeds: Sequence[int],
    quick: bool,
    config: Mapping[str, Any],
    higher_is_better: bool = True,
    out_dir: str | Path = DEFAULT_OUT,
    log: Callable[[str], None] = print,
    decide: Callable[[Mapping[str, Mapping[str, Sequence[float]]]], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate every candidate on every selection seed, apply :func:`one_standard_error_choice` to ``score`` (or
    ``decide``) and write ``<out_dir>/<name>.json`` / ``.md`` (the plan is written before the first evaluation).

    ``evaluate(candidate_name, candidate_settings, seed)`` returns the validation read-outs of one candidate trained
    with one selection seed (``score`` among them). Candidates are listed from the simplest. ``decide``, for a rule
    that is not one-standard-error on one score, maps ``{candidate: {read-out: per-seed values}}`` to a decision
    dictionary with the ``"chosen"`` candidate and a markdown ``"summary"`` of how it was reached.
    """
    announce_plan(name, quick, plan, seeds, out_dir)
    per_seed: dict[str, dict[str, list[float]]] = {c: {} for c in candidates}
    start = time.perf_counter()
    for seed in seeds:
        for cand, settings in candidates.items():
            values = evaluate(cand, settings, seed)
            for key, value in values.items():
                per_seed[cand].setdefault(key, []).append(float(value))
            log(
                f"[{time.perf_counter() - start:6.0f} s] selection seed {seed} {cand}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            )
    if decide is None:
        decision = one_standard_error_choice({c: v[score] for c, v in per_seed.items()}, higher_is_better)
    else:
        decision = dict(decide(per_seed))
        if decision.get("chosen") not in candidates or not isinstance(decision.get("summary"), str):
            raise ValueError(
                "decide must return a 'chosen' candidate among "
                f"{list(candidates)} and a 'summary' string, got {decision}."
            )
    models = {}
    for cand, values in per_seed.items():
        extra: dict[str, Any] = {}
        for key, series in values.items():
            s = summarize(series)
            extra[key], extra[f"{key}_ci95"], extra[f"{key}_values"] = s["mean"], s["ci95"], s["values"]
        extra["chosen"] = cand == decision["chosen"]
        models[cand] = {"seen": None, "unseen": None, "extra": extra}
    cfg = {
        **config,
        "candidates": {c: dict(s) for c, s in candidates.items()},
        "score": score,
        "higher_is_better": higher_is_better,
        "decision": decision,
        "chosen": decision["chosen"],
        "chosen_settings": dict(candidates[decision["chosen"]]),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    direction = "higher" if higher_is_better else "lower"
    notes = (
        decision["summary"]
        if decide is not None
        else f"Score: `{score}` ({direction} is better), mean over selection seeds {list(seeds)}. One-standard-error "
        f"rule: best mean {decision['best_mean']:.4f} (`{decision['best']}`), standard error "
        f"{decision['standard_error']:.4f}, threshold {decision['threshold']:.4f}; the first candidate in the listed "
        f"order (simplest first) within it is chosen: **`{decision['chosen']}`**."
    )
    columns = [*next(iter(per_seed.values())), "chosen"]
    return write_results(
        name, quick, score, len(seeds), models, cfg, seeds, out_dir, notes, extra_tables=[("", columns)], plan=plan
    )


def load_choice(name: str, results_dir: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """``(chosen candidate, its settings)`` recorded by the selection run ``name`` (a full run, not ``--quick``) in
    ``results_dir`` (default: ``benchmarks/results``).

    Raises a ValueError naming the file when the run is missing, unfinished or quick.
    """
    path = Path(DEFAULT_OUT if results_dir is None else results_dir) / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: run `python -m benchmarks.{name}` first (it chooses the settings).")
    record = json.loads(path.read_text())
    if record.get("status") == "running" or "config" not in record:
        raise ValueError(f"{path} holds an unfinished selection run (status {record.get('status')!r}); rerun it.")
    if record.get("quick"):
        raise ValueError(f"{path} is a --quick selection run; the headline run needs the full selection.")
    return record["config"]["chosen"], dict(record["config"]["chosen_settings"])
