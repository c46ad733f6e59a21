# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A tiny run of ``benchmarks.segmentation`` (every model, two seeds): the JSON contract (plan, models, Dice and HD95
per split, paired comparisons); the metric, normalisation and intercept read-outs checked on known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

seg = pytest.importorskip("benchmarks.segmentation")
from benchmarks._common import per_seed_values  # noqa: E402

SPLITS = {"seen_dice": "seen", "unseen_dice": "unseen"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segmentation_benchmark")
    cfg = seg.default_config(quick=True)
    cfg.update(cohort={**cfg["cohort"], "num_subjects": 24}, seeds=[0, 1], epochs=1, z_predictor_epochs=1)
    results = seg.run(quick=True, out_dir=tmp, config=cfg, cohort_root=str(tmp / "cohorts"), log=print)
    return tmp, cfg, results


def test_tiny_run_writes_contract_json_with_planned_comparisons(tiny_run):
    tmp, _, results = tiny_run
    on_disk = json.loads((tmp / "segmentation.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["plan"] == seg.PLAN and on_disk["env"]["seeds"] == [0, 1] and on_disk["metric"] == "dice"
    assert list(on_disk["models"]) == list(seg.MODELS)
    assert on_disk["config"]["cohort"]["label_shift"] == {"site_b": 1, "site_d": -1}
    models = on_disk["models"]
    for name, entry in models.items():
        for split in ("seen", "unseen"):
            values = entry[split]["values"]
            assert len(values) == 2 and all(0 <= v <= 1 for v in values), name
            extra = entry["extra"]
            assert extra[f"{split}_hd95"] > 0 and len(extra[f"{split}_hd95_values"]) == 2
            assert 0 <= extra[f"{split}_missed_class_rate"] <= 1
            for cls in seg.CLASSES:
                assert f"{split}_dice_{cls}" in extra and f"{split}_hd95_{cls}" in extra
            # the split's Dice is the mean over scans of the class mean: between the smallest and largest class mean
            per_class = [extra[f"{split}_dice_{c}"] for c in seg.CLASSES]
            assert min(per_class) - 1e-9 <= entry[split]["mean"] <= max(per_class) + 1e-9
    for c in seg.COMPARISONS:
        me = models[c.model]["extra"]  # a comparison is stored with its model
        a = per_seed_values(models, c.model, c.metric, SPLITS)
        b = per_seed_values(models, c.reference, c.ref_metric, SPLITS)
        expected = np.subtract(a, b)
        np.testing.assert_allclose(me[f"{c.name}_values"], expected, atol=1e-12)
        better = expected > 0 if c.higher_is_better else expected < 0
        assert me[c.name] == pytest.approx(expected.mean()) and me[f"{c.name}_wins"] == int(better.sum())
    for name in models:  # the seen sites' validation scans, scored for every model
        assert 0 <= models[name]["extra"]["validation_dice"] <= 1
    for name in ("me_no_adversary", "me", "me_last_stage", "me_inferred_z"):
        assert -1 <= models[name]["extra"]["intercept_vs_protocol_r"] <= 1
        assert 0 <= models[name]["extra"]["seen_population_dice"] <= 1
    assert "intercept_vs_protocol_r" not in models["conventional"]["extra"]
    md = (tmp / "segmentation.md").read_text()
    assert "| me - conventional: unseen_dice (higher wins) |" in md
    assert "| me - conventional: unseen_hd95 (lower wins) |" in md


def test_site_normalisation_uses_each_sites_own_images(tiny_run):
    tmp, cfg, _ = tiny_run
    data = seg.load_cohort(str(tmp / "cohorts" / "seed0"), cfg, 0)  # the run's cohort, reused as generated
    brain = data["labels"][:, 0] > 0
    images, site_norm = data["images"][:, 0], data["site_norm_images"][:, 0]
    splits, sites = np.array(data["splits"]), np.array(data["sites"])
    assert np.all(images[~brain] == 0) and np.all(site_norm[~brain] == 0)
    for i in range(len(images)):  # per scan: z-scored on its own brain voxels
        assert abs(images[i][brain[i]].mean()) < 1e-4 and images[i][brain[i]].std() == pytest.approx(1, abs=1e-3)
    for site in data["seen_sites"]:  # seen sites: statistics of the site's training scans only
        fit = (sites == site) & (splits == "training")
        values = np.concatenate([site_norm[i][brain[i]] for i in np.flatnonzero(fit)])
        assert abs(values.mean()) < 1e-3 and values.std() == pytest.approx(1, abs=1e-2)
    for site in data["unseen_sites"]:  # unseen sites: all of the site's own scans
        values = np.concatenate([site_norm[i][brain[i]] for i in np.flatnonzero(sites == site)])
        assert abs(values.mean()) < 1e-3 and values.std() == pytest.approx(1, abs=1e-2)
    # the site's statistics differ from a scan's own, so the two inputs differ
    assert not np.allclose(images, site_norm, atol=1e-2)


def test_segmentation_scores_on_known_answers():
    label = torch.zeros(2, 1, 12, 12, 12, dtype=torch.long)
    label[:, :, 2:6, 2:6, 2:6] = 1
    label[:, :, 6:10, 2:10, 2:10] = 2
    label[:, :, 2:6, 6:10, 6:10] = 3
    pred = label.clone()
    pred[1][pred[1] == 3] = 2  # scan 1: class 3 never predicted
    pred[1] = torch.roll(pred[1], shifts=1, dims=1)  # and everything shifted by one voxel along x
    dice, hd95, missed = seg.segmentation_scores(pred, label, spacing=(2.0, 2.0, 2.0))
    assert missed.tolist() == [[False, False, False], [False, False, True]]
    np.testing.assert_allclose(dice[0], 1.0)
    np.testing.assert_allclose(hd95[0], 0.0)
    assert dice[1, 2] == 0 and hd95[1, 2] == pytest.approx(math.sqrt(3) * 24)  # the field-of-view diagonal
    assert 0 < dice[1, 0] < 1 and hd95[1, 0] == pytest.approx(2.0)  # one voxel of 2 mm
    empty = label.clone()
    empty[empty == 1] = 0  # class 1 absent from the ground truth and the prediction: no score
    dice, hd95, missed = seg.segmentation_scores(empty, empty, spacing=(1.0, 1.0, 1.0))
    assert np.isnan(dice[:, 0]).all() and np.isnan(hd95[:, 0]).all() and not missed.any()
    scores = seg._split_scores("seen", dice, hd95, missed)
    assert scores["seen_dice"] == pytest.approx(1.0) and math.isnan(scores["seen_dice_csf"])
    assert scores["seen_missed_class_rate"] == 0


def test_intercept_protocol_correlation_reads_the_grey_matter_contrast():
    net = seg._unet(seg.default_config(quick=True), num_clusters=4, random_effects=True)
    truth = {"sites": {s: {"gm_volume_change": v} for s, v in zip("abcd", (0.0, 0.3, 0.0, -0.6))}}
    with torch.no_grad():
        net.intercept.loc.zero_()
        net.intercept.loc[:, 2] = torch.tensor([0.0, 0.3, 0.0, -0.6]) + 1.0  # a shift common to every class...
        net.intercept.loc[:, [0, 1, 3]] += 1.0  # ...does not change the softmax, nor the read-out
    assert seg.intercept_protocol_r(net, truth, list("abcd")) == pytest.approx(1.0)
    with torch.no_grad():
        net.intercept.loc[:, 2] = -net.intercept.loc[:, 2]
    assert seg.intercept_protocol_r(net, truth, list("abcd")) < -0.99
    same = {"sites": {s: {"gm_volume_change": 0.0} for s in "abcd"}}
    assert math.isnan(seg.intercept_protocol_r(net, same, list("abcd")))


def test_the_unseen_label_shift_arm_sets_the_cohort_and_names_its_results():
    ref, arm = seg.default_config(quick=True), seg.default_config(quick=True, arm="unseen_label_shift")
    assert "unseen_label_shift" not in ref["cohort"] and ref["arm"] == "reference"
    assert arm["cohort"] == {**ref["cohort"], "unseen_label_shift": 2} and arm["arm"] == "unseen_label_shift"
    with pytest.raises(ValueError, match="arm must be one of"):
        seg.default_config(arm="unseen")
