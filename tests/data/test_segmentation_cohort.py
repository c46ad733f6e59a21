# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Segmentation cohort: labels consistent with the images, label-protocol shifts recorded, byte-identical per seed."""

from __future__ import annotations

import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest

from monai_medl.data.synthetic.segmentation_cohort import apply_label_shift, generate_segmentation_cohort

ARGS = {"num_subjects": 9, "sites": 2, "unseen_sites": 1, "spatial_size": (16, 16, 16), "spacing": (10.0,) * 3}


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_cohort_is_byte_identical_and_records_the_label_protocol(tmp_path):
    a = generate_segmentation_cohort(tmp_path / "a", seed=3, label_shift={"site_b": 1}, **ARGS)
    generate_segmentation_cohort(tmp_path / "b", seed=3, label_shift={"site_b": 1}, **ARGS)
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b"))
    datalist = json.loads(open(a).read())
    assert datalist["num_classes"] == 4 and datalist["unseen_sites"] == ["site_c"]
    assert {e["site"] for e in datalist["training"]} == {"site_a", "site_b"}
    assert all(e["site"] in ("site_a", "site_b") for e in datalist["validation"])
    truth = json.loads((tmp_path / "a" / "ground_truth.json").read_text())
    assert truth["sites"]["site_b"]["label_shift_vox"] == 1 and truth["sites"]["site_b"]["gm_volume_change"] > 0.05
    assert truth["sites"]["site_a"]["gm_volume_change"] == 0
    entry = datalist["training"][0]
    image = nib.load(tmp_path / "a" / entry["image"]).get_fdata()
    labels = nib.load(tmp_path / "a" / entry["label"]).get_fdata()
    assert image.shape == labels.shape == (16, 16, 16)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and {2, 3} <= set(np.unique(labels))
    np.testing.assert_array_equal(image > 0, labels > 0)  # background exactly where the skull-stripped image is 0
    assert _digest(str(tmp_path / "a")) != _digest(
        os.path.dirname(generate_segmentation_cohort(tmp_path / "c", seed=4, **ARGS))
    )


def test_cohort_refuses_a_users_folder_and_other_arguments(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "scan.nii.gz").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="refusing"):
        generate_segmentation_cohort(tmp_path / "mine", **ARGS)
    with pytest.raises(ValueError, match="label_shift names sites"):
        generate_segmentation_cohort(tmp_path / "x", label_shift={"nowhere": 1}, **ARGS)


def test_label_shift_dilates_and_erodes_grey_matter_only_inside_the_brain():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 1
    labels[3:9, 3:9, 3:9] = 2
    labels[5:7, 5:7, 5:7] = 3
    thick = apply_label_shift(labels, 1)
    assert (thick == 2).sum() > (labels == 2).sum() and np.array_equal(thick == 0, labels == 0)
    thin = apply_label_shift(labels, -1)
    assert (thin == 2).sum() < (labels == 2).sum() and np.array_equal(thin == 0, labels == 0)
    assert np.array_equal(apply_label_shift(labels, 0), labels)


def test_command_line_generates_the_same_cohort_as_the_function(tmp_path, capsys):
    from monai_medl.data.synthetic.segmentation_cohort import main

    argv = ["--out", str(tmp_path / "cli"), "--num-subjects", "9", "--sites", "2", "--unseen-sites", "1", "--seed", "3"]
    argv += ["--spatial-size", "16", "16", "16", "--spacing", "10", "10", "10", "--label-shift", "site_b=1"]
    assert main(argv) == 0
    assert "datalist.json" in capsys.readouterr().out
    generate_segmentation_cohort(tmp_path / "fn", seed=3, label_shift={"site_b": 1}, **ARGS)
    assert _digest(str(tmp_path / "cli")) == _digest(str(tmp_path / "fn"))
