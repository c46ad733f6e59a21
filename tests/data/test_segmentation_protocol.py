# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The segmentation cohort's unseen label protocol that is not the mean of the seen ones."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("nilearn")
nib = pytest.importorskip("nibabel")

from monai_medl.data.synthetic.segmentation_cohort import generate_segmentation_cohort  # noqa: E402

SMALL = {"spatial_size": (16, 16, 16), "spacing": (8.0, 8.0, 8.0), "seed": 3}


def test_unseen_label_protocol_off_the_seen_mean_is_recorded_and_measured(tmp_path):
    path = generate_segmentation_cohort(
        tmp_path / "c", num_subjects=24, sites=2, unseen_sites=2, label_shift={"site_a": 1, "site_b": -1},
        unseen_label_shift=1, **SMALL,
    )  # fmt: skip
    root = os.path.dirname(path)
    with open(os.path.join(root, "ground_truth.json")) as f:
        truth = json.load(f)
    assert truth["config"]["label_shift"] == {"site_a": 1, "site_b": -1, "site_c": 1, "site_d": 1}
    assert truth["label_protocol"] == {
        "seen_mean_shift_vox": 0.0,
        "unseen_minus_seen_mean_vox": {"site_c": 1.0, "site_d": 1.0},
    }
    change = {name: info["gm_volume_change"] for name, info in truth["sites"].items()}
    assert change["site_b"] < 0 < change["site_a"]
    # the unseen sites' grey matter is drawn thicker than the seen sites' average protocol draws it
    seen_mean = np.mean([change["site_a"], change["site_b"]])
    assert min(change["site_c"], change["site_d"]) > seen_mean + 0.5 * (change["site_a"] - seen_mean)
    with open(path) as f:
        datalist = json.load(f)
    fractions = {}
    for entry in datalist["training"] + datalist["validation"] + datalist["test"]:
        labels = np.asarray(nib.load(os.path.join(root, entry["label"])).dataobj)
        fractions.setdefault(entry["site"], []).append(np.mean(labels == 2) / np.mean(labels > 0))
    assert min(np.mean(fractions["site_c"]), np.mean(fractions["site_d"])) > np.mean(fractions["site_b"])


def test_default_writes_no_protocol_record(tmp_path):
    path = generate_segmentation_cohort(tmp_path / "c", num_subjects=12, sites=2, unseen_sites=1, **SMALL)
    with open(os.path.join(os.path.dirname(path), "ground_truth.json")) as f:
        truth = json.load(f)
    assert "label_protocol" not in truth and "unseen_label_shift" not in truth["config"]


@pytest.mark.parametrize("kwargs", [{"unseen_label_shift": 1.5}, {"unseen_label_shift": 1, "unseen_sites": 0}])
def test_bad_unseen_label_shift_names_the_argument(tmp_path, kwargs):
    kwargs = {"num_subjects": 12, "sites": 2, "unseen_sites": 1, **kwargs}
    with pytest.raises(ValueError, match="unseen_label_shift needs an integer and unseen sites"):
        generate_segmentation_cohort(tmp_path / "c", **kwargs, **SMALL)
    assert not (tmp_path / "c").exists()
