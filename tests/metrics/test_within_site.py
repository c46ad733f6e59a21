# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from monai_medl.metrics import (
    balanced_accuracy_at,
    expected_calibration_error,
    holm,
    paired_t_pvalue,
    prevalence_only_score,
    resample_prevalence,
    tost,
    within_site_auroc,
)


def _two_site_cohort(seed: int = 0, n: int = 400):
    """Site a with prevalence 0.2, site b with 0.8, and an image signal of the same strength at both."""
    rng = np.random.default_rng(seed)
    sites = np.array(["a"] * n + ["b"] * n)
    y = np.concatenate([rng.random(n) < 0.2, rng.random(n) < 0.8]).astype(int)
    signal = y + rng.normal(0, 1.0, 2 * n)
    return y, sites, signal


def test_prevalence_only_is_half_within_sites_but_high_pooled():
    y, sites, _ = _two_site_cohort()
    score = prevalence_only_score(y, sites, sites)
    assert roc_auc_score(y, score) > 0.75  # the base rate alone separates pooled classes
    r = within_site_auroc(y, score, sites)
    assert r["mean"] == pytest.approx(0.5)
    assert r["per_site"] == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}


def test_prevalence_only_new_site_gets_pooled_rate():
    score = prevalence_only_score([0, 0, 0, 1, 1, 1, 1, 0], list("aaaabbbb"), ["a", "b", "z"])
    np.testing.assert_allclose(score, [0.25, 0.75, 0.5])
    with pytest.raises(ValueError, match="train_labels and train_sites"):
        prevalence_only_score([0, 1], ["a"], ["a"])


def test_within_site_auroc_is_the_unweighted_mean_of_site_aurocs():
    y, sites, signal = _two_site_cohort(seed=1)
    a, b = sites == "a", sites == "b"
    expected = (roc_auc_score(y[a], signal[a]) + roc_auc_score(y[b], signal[b])) / 2
    assert within_site_auroc(y, signal, sites)["mean"] == pytest.approx(expected)
    # a site shift added to the score leaves the within-site AUROC unchanged and moves the pooled one
    shifted = signal + 3.0 * b
    assert within_site_auroc(y, shifted, sites)["mean"] == pytest.approx(expected)
    assert roc_auc_score(y, shifted) > roc_auc_score(y, signal) + 0.05


def test_within_site_auroc_skips_one_class_sites():
    r = within_site_auroc([0, 1, 1, 1], [0.2, 0.7, 0.5, 0.6], ["a", "a", "b", "b"])
    assert r["skipped"] == ["b"] and r["mean"] == 1.0
    assert math.isnan(within_site_auroc([1, 1], [0.2, 0.3], ["a", "a"])["mean"])
    with pytest.raises(ValueError, match="sites needs one entry"):
        within_site_auroc([0, 1], [0.1, 0.2], ["a"])
    with pytest.raises(ValueError, match="binary 0/1"):
        within_site_auroc([0, 2], [0.1, 0.2], ["a", "a"])


def test_ece_matches_a_hand_computation():
    rng = np.random.default_rng(3)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(int)  # miscalibrated on purpose
    bins = np.minimum((p * 10).astype(int), 9)
    hand = sum((bins == b).mean() * abs(p[bins == b].mean() - y[bins == b].mean()) for b in range(10) if any(bins == b))
    assert expected_calibration_error(y, p, num_bins=10) == pytest.approx(hand, abs=1e-5)
    assert hand > 0.1
    # a calibrated predictor has a small ECE
    y_cal = (rng.random(20000) < (q := rng.random(20000))).astype(int)
    assert expected_calibration_error(y_cal, q) < 0.02
    with pytest.raises(ValueError, match="probabilities in"):
        expected_calibration_error([0, 1], [-0.1, 2.0])
    assert math.isnan(expected_calibration_error([], []))


def test_balanced_accuracy_at_a_given_threshold():
    assert balanced_accuracy_at([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9], 0.65) == 1.0
    assert balanced_accuracy_at([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9], 0.95) == 0.5
    assert math.isnan(balanced_accuracy_at([1, 1], [0.1, 0.6], 0.5))


@pytest.mark.parametrize("prevalence", [0.2, 0.5, 0.8])
def test_resample_prevalence_sets_every_site(prevalence):
    y, sites, _ = _two_site_cohort(seed=2)
    idx = resample_prevalence(y, sites, prevalence, seed=5)
    assert len(set(idx.tolist())) == len(idx)
    for site in ("a", "b"):
        sel = idx[sites[idx] == site]
        assert len(sel) >= 50
        assert y[sel].mean() == pytest.approx(prevalence, abs=1.0 / len(sel))
    np.testing.assert_array_equal(idx, resample_prevalence(y, sites, prevalence, seed=5))
    assert not np.array_equal(idx, resample_prevalence(y, sites, prevalence, seed=6))
    capped = resample_prevalence(y, sites, prevalence, seed=5, size=20)
    assert len(capped) == 40


def test_resample_prevalence_bad_inputs_and_tiny_sites():
    with pytest.raises(ValueError, match="0 < prevalence < 1"):
        resample_prevalence([0, 1], ["a", "a"], 1.0)
    with pytest.raises(ValueError, match="one entry per item"):
        resample_prevalence([0, 1], ["a"], 0.5)
    # site b has no negatives: dropped
    idx = resample_prevalence([0, 1, 1, 1], ["a", "a", "b", "b"], 0.5)
    assert idx.tolist() == [0, 1]


def test_holm_against_statsmodels_and_by_hand():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(0)
    p = rng.random(7) * 0.1
    names = [f"h{i}" for i in range(7)]
    ours = holm(dict(zip(names, p)), alpha=0.05)
    reject, adjusted, _, _ = multipletests(p, alpha=0.05, method="holm")
    np.testing.assert_allclose([ours[n]["p_holm"] for n in names], adjusted)
    assert [ours[n]["reject"] for n in names] == reject.tolist()
    by_hand = holm({"x": 0.04, "y": 0.001, "z": 0.02})  # 0.003, 0.04, max(0.04, 0.04)
    assert by_hand["y"]["p_holm"] == pytest.approx(0.003)
    assert by_hand["z"]["p_holm"] == pytest.approx(0.04) and by_hand["x"]["p_holm"] == pytest.approx(0.04)
    assert all(by_hand[k]["reject"] for k in "xyz")
    with_nan = holm({"a": 0.01, "b": math.nan})
    assert with_nan["a"]["p_holm"] == pytest.approx(0.01) and not with_nan["b"]["reject"]
    with pytest.raises(ValueError, match="p-values in"):
        holm({"a": 1.5})


def test_paired_t_pvalue_matches_scipy():
    d = [0.01, -0.02, 0.03, 0.04, 0.0]
    assert paired_t_pvalue(d) == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert math.isnan(paired_t_pvalue([0.1]))
    assert paired_t_pvalue([0.0, 0.0]) == 1.0


def test_tost_equivalence_and_its_failures():
    rng = np.random.default_rng(1)
    small = rng.normal(0.0, 0.01, 12)
    r = tost(small, margin=0.02)
    assert r["equivalent"] and -0.02 < r["ci90"][0] < r["ci90"][1] < 0.02
    # p_lower by hand: H0 mean <= -margin
    se = small.std(ddof=1) / np.sqrt(12)
    assert r["p_lower"] == pytest.approx(stats.t.sf((small.mean() + 0.02) / se, 11))
    shifted = tost(small + 0.03, margin=0.02)  # a real difference is not equivalence
    assert not shifted["equivalent"] and shifted["p"] > 0.5
    noisy = tost(rng.normal(0.0, 0.08, 5), margin=0.02)  # too noisy to conclude anything
    assert not noisy["equivalent"]
    with pytest.raises(ValueError, match="positive margin"):
        tost(small, margin=0)
    with pytest.raises(ValueError, match="at least two"):
        tost([0.1], margin=0.02)
