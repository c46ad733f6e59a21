# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The decision rule of ``benchmarks.segmentation_bundle_epochs`` and its time estimate (no training)."""

from __future__ import annotations

import json

import pytest

from benchmarks import segmentation_bundle_epochs as sbe


def _curve(means, csf=0.3):
    return {n: {"mean": m, "csf": csf} for n, m in zip(sbe.CANDIDATES, means)}


def test_smallest_candidate_within_tolerance_of_the_best_is_chosen():
    seconds = {n: float(n) for n in sbe.CANDIDATES}
    assert sbe.decide(_curve([0.5, 0.70, 0.705, 0.709]), seconds)["chosen_epochs"] == sbe.CANDIDATES[1]
    assert sbe.decide(_curve([0.5, 0.6, 0.65, 0.7]), seconds)["chosen_epochs"] == sbe.CANDIDATES[-1]


def test_budget_excludes_slow_candidates_and_none_affordable_keeps_the_default():
    seconds = {n: (100.0 if n <= sbe.CANDIDATES[1] else sbe.BUDGET_S + 1.0) for n in sbe.CANDIDATES}
    decision = sbe.decide(_curve([0.5, 0.6, 0.65, 0.7]), seconds)
    assert decision["chosen_epochs"] == sbe.CANDIDATES[1]
    assert decision["affordable"] == list(sbe.CANDIDATES[:2])
    none = sbe.decide(_curve([0.5, 0.6, 0.65, 0.7]), {n: sbe.BUDGET_S + 1.0 for n in sbe.CANDIDATES})
    assert none["chosen_epochs"] is None and none["affordable"] == []


def test_a_choice_that_does_not_learn_csf_is_refused():
    decision = sbe.decide(_curve([0.7, 0.7, 0.7, 0.7], csf=0.0), {n: 1.0 for n in sbe.CANDIDATES})
    assert decision["chosen_epochs"] is None and "CSF" in decision["reason"]


def test_estimated_idle_seconds_counts_validations_at_the_interval():
    timing = {"setup_cpu_s": 2.0, "train_epoch_cpu_s": 1.5, "validation_cpu_s": 0.5}
    assert sbe.estimated_idle_seconds(timing, 40, 2) == pytest.approx(2.0 + 60.0 + 10.0)
    assert sbe.estimated_idle_seconds(timing, 5, 2) == pytest.approx(2.0 + 7.5 + 1.0)


def test_recorded_results_follow_the_rule_and_the_bundle_uses_the_choice():
    record = json.loads((sbe.BUNDLE.parents[1] / "benchmarks/results/segmentation_bundle_epochs.json").read_text())
    analysis = record["analysis"]
    curve = {int(n): v for n, v in analysis["curve"].items() if int(n) in sbe.CANDIDATES}
    seconds = {int(n): s for n, s in analysis["estimated_idle_seconds"].items()}
    assert record["plan"]["candidates"] == list(sbe.CANDIDATES) and record["benchmark"] == sbe.NAME
    assert sbe.decide(curve, seconds) == analysis["decision"]
    # the contract's models are the candidates, their seen-site (validation) mean Dice read off the same curve
    assert list(record["models"]) == [f"{n}_epochs" for n in sbe.CANDIDATES]
    assert all(record["models"][f"{n}_epochs"]["seen"]["mean"] == curve[n]["mean"] for n in sbe.CANDIDATES)
    train = json.loads((sbe.BUNDLE / "configs" / "train.json").read_text())
    assert train["train"]["trainer"]["max_epochs"] == analysis["decision"]["chosen_epochs"]
    assert train["val_interval"] == record["plan"]["val_every"]


def test_skeleton_rows_and_analysis_from_a_curve():
    curve = {
        str(n): {"mean": 0.1 * i, "csf": 0.2, "grey_matter": 0.5, "white_matter": 0.4}
        for i, n in enumerate(range(2, 42, 2))
    }
    row = sbe._candidate_row(curve)
    assert list(row) == [f"{n}_epochs" for n in sbe.CANDIDATES]
    assert row["10_epochs"] == {
        "val_mean_dice": curve["10"]["mean"],
        "csf": 0.2,
        "grey_matter": 0.5,
        "white_matter": 0.4,
    }
    timing = {"setup_cpu_s": 1.0, "train_epoch_cpu_s": 1.0, "validation_cpu_s": 0.5}
    analysis = sbe._analysis([{**row, "run": {"curve": curve, "timing": timing, "epochs_timing": []}}])
    assert analysis["estimated_idle_seconds"]["40"] == pytest.approx(1.0 + 40.0 + 20 * 0.5)
    assert analysis["decision"]["chosen_epochs"] == sbe.CANDIDATES[-1]  # the mean rises by 0.1 per validation
    with pytest.raises(RuntimeError, match=r"candidates \[40\] have no validation"):
        sbe._candidate_row({k: v for k, v in curve.items() if k != "40"})
