# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest

from monai_medl.data import (
    check_disjoint_subjects,
    leave_sites_out,
    monte_carlo_splits,
    site_folds,
    stratified_group_kfold,
)


@pytest.fixture
def datalist():
    """8 sites x 8 subjects, two scans (visits) per subject, site-dependent prevalence."""
    items = []
    for s in range(8):
        for j in range(8):
            label = int(j < 2 + s % 5)
            for visit in range(2):
                items.append({"site": f"site_{s}", "subject": f"sub{s}_{j}", "label": label, "visit": visit})
    return items


def _subjects(part):
    return {e["subject"] for e in part}


def _sites(part):
    return {e["site"] for e in part}


def test_leave_sites_out_named_and_drawn(datalist):
    parts = leave_sites_out(datalist, unseen_sites=["site_6", "site_7"])
    assert _sites(parts["unseen"]) == {"site_6", "site_7"} and parts["unseen_sites"] == ["site_6", "site_7"]
    assert not _sites(parts["seen"]) & _sites(parts["unseen"])
    assert len(parts["seen"]) + len(parts["unseen"]) == len(datalist)
    drawn = leave_sites_out(datalist, num_unseen=2, seed=3)
    assert len(drawn["unseen_sites"]) == 2 and drawn == leave_sites_out(datalist, num_unseen=2, seed=3)
    assert not _sites(drawn["seen"]) & set(drawn["unseen_sites"])


def test_leave_sites_out_errors(datalist):
    with pytest.raises(ValueError, match="site_x"):
        leave_sites_out(datalist, unseen_sites=["site_x"])
    with pytest.raises(ValueError, match="exactly one"):
        leave_sites_out(datalist)
    traveller = datalist + [{"site": "site_7", "subject": "sub0_0", "label": 0}]
    with pytest.raises(ValueError, match="sub0_0"):
        leave_sites_out(traveller, unseen_sites=["site_7"])
    with pytest.raises(KeyError, match="entry 1 has no site"):
        leave_sites_out([{"site": "a"}, {"subject": "x"}], num_unseen=1)


def test_stratified_group_kfold_keeps_subjects_whole_and_unseen_sites_out(datalist):
    parts = leave_sites_out(datalist, unseen_sites=["site_6", "site_7"])
    folds = stratified_group_kfold(parts["seen"], n_splits=4, seed=0)
    assert len(folds) == 4
    all_val = []
    for fold in folds:
        assert not _subjects(fold["training"]) & _subjects(fold["validation"])  # no subject straddles
        assert not (_sites(fold["training"]) | _sites(fold["validation"])) & {"site_6", "site_7"}
        check_disjoint_subjects(fold["training"], fold["validation"])
        all_val += fold["validation"]
    assert len(all_val) == len(parts["seen"])  # every entry validated exactly once
    # stratified on label x site: every fold sees every seen site in validation
    assert all(_sites(f["validation"]) == _sites(parts["seen"]) for f in folds)


def test_stratified_group_kfold_is_reproducible(datalist):
    a = stratified_group_kfold(datalist, n_splits=3, seed=5)
    assert a == stratified_group_kfold(datalist, n_splits=3, seed=5)
    assert a != stratified_group_kfold(datalist, n_splits=3, seed=6)
    assert stratified_group_kfold(datalist, n_splits=3, label_key=None)  # regression target: stratify on site
    with pytest.raises(ValueError, match="largest label x site stratum"):
        stratified_group_kfold(datalist[:8], n_splits=5)


def test_site_folds_hold_out_whole_sites(datalist):
    loso = site_folds(datalist)
    assert len(loso) == 8
    for fold in loso:
        assert len(_sites(fold["validation"])) == 1
        assert not _sites(fold["training"]) & _sites(fold["validation"])
    folds = site_folds(datalist, n_splits=4)
    assert all(len(_sites(f["validation"])) == 2 for f in folds)


def test_monte_carlo_splits_are_subject_level_and_seeded(datalist):
    splits = monte_carlo_splits(datalist, n_repeats=3, test_size=0.25, seed=1)
    assert len(splits) == 3 and splits == monte_carlo_splits(datalist, n_repeats=3, test_size=0.25, seed=1)
    for s in splits:
        assert not _subjects(s["training"]) & _subjects(s["validation"])
        assert len(_subjects(s["validation"])) == 16
    assert splits[0]["validation"] != splits[1]["validation"]


def test_entries_without_subject_are_their_own_group():
    data = [{"site": "a", "label": i % 2} for i in range(10)]
    folds = stratified_group_kfold(data, n_splits=2, site_key=None)
    assert sorted(len(f["validation"]) for f in folds) == [5, 5]
