# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The MRI cohort's arms: each arm's ground truth is recovered from the generated files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import special

pytest.importorskip("nilearn")
nib = pytest.importorskip("nibabel")

from monai_medl.data.synthetic.mri_arms import THRESHOLD_LABEL_NOISE  # noqa: E402
from monai_medl.data.synthetic.mri_cohort import generate_mri_cohort, main  # noqa: E402


def _read(path: str) -> tuple[list[dict], dict, str]:
    root = os.path.dirname(path)
    with open(path) as f:
        datalist = json.load(f)
    with open(os.path.join(root, "ground_truth.json")) as f:
        truth = json.load(f)
    return datalist["training"] + datalist["validation"] + datalist["test"], truth, root


def _image(root: str, entry: dict) -> np.ndarray:
    return np.asarray(nib.load(os.path.join(root, entry["image"])).dataobj, dtype=float)


def _world(truth: dict) -> np.ndarray:
    shape, affine = truth["grid"]["spatial_size"], np.asarray(truth["grid"]["affine"])
    idx = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape(3, *shape)


@pytest.mark.parametrize("layout", ["symmetric", "asymmetric"])
def test_threshold_arm_site_thresholds_are_recovered_from_severity_and_label(tmp_path, layout):
    path = generate_mri_cohort(
        tmp_path / layout, num_subjects=240, sites=4, unseen_sites=2, seed=4, spatial_size=(8, 8, 8),
        spacing=(16.0, 16.0, 16.0), arm="threshold", threshold_layout=layout,
    )  # fmt: skip
    entries, truth, _ = _read(path)
    assert truth["arm"]["name"] == "threshold" and truth["arm"]["threshold_layout"] == layout
    thresholds = {name: info["arm"]["threshold"] for name, info in truth["sites"].items()}
    seen = [thresholds[s] for s in truth["seen_sites"]]
    unseen = [thresholds[s] for s in truth["unseen_sites"]]
    assert max(seen) - min(seen) == pytest.approx(2 * truth["arm"]["effect"])
    if layout == "symmetric":
        assert np.mean(unseen) == pytest.approx(np.mean(seen)) and min(seen) < min(unseen) < max(unseen) < max(seen)
    else:
        assert min(unseen) > max(seen)
    grid = np.linspace(0.0, 1.0, 1001)
    for name, t in thresholds.items():
        rows = np.array([(e["severity"], e["label"]) for e in entries if e["site"] == name])
        # the site's threshold fitted to (recorded severity, label): maximum likelihood of the probit threshold model
        z = (rows[:, :1] - grid[None]) / THRESHOLD_LABEL_NOISE
        loglik = np.where(rows[:, 1:] == 1, special.log_ndtr(z), special.log_ndtr(-z)).sum(0)
        recovered = grid[np.argmax(loglik)]
        assert abs(recovered - t) < 0.04, (name, recovered, t)
        # the label noise flips only the subjects near the threshold
        assert np.sum((rows[:, 0] > t) != rows[:, 1]) <= 0.1 * len(rows)
    # the prevalence is the requested one although the thresholds differ
    for info in truth["sites"].values():
        assert info["prevalence"] == pytest.approx(info["target_prevalence"], abs=0.5 / info["num_subjects"] + 1e-9)


def test_threshold_arm_images_show_the_severity_within_each_label(tmp_path):
    path = generate_mri_cohort(
        tmp_path / "c", num_subjects=120, sites=2, unseen_sites=1, seed=2, spatial_size=(24, 24, 24),
        spacing=(6.0, 6.0, 6.0), site_strength=0.0, arm="threshold",
    )  # fmt: skip
    entries, truth, root = _read(path)
    world = _world(truth)
    centers = truth["regions"]["medial_temporal"]["centers_mm"]
    roi = np.min([np.sum((world - np.reshape(c, (3, 1, 1, 1))) ** 2, 0) for c in centers], 0) < 9.0**2
    rows = np.array([(e["label"], e["severity"], _image(root, e)[roi].mean()) for e in entries])
    for label in (0, 1):  # continuous severity in both classes, unlike the nuisance arm's controls
        assert np.ptp(rows[rows[:, 0] == label, 1]) > 0.2
    # more severe, more medial temporal atrophy, at a given label: the severity's t statistic in intensity ~ label
    # + severity
    design = np.c_[np.ones(len(rows)), rows[:, :2]]
    coef, residual = np.linalg.lstsq(design, rows[:, 2], rcond=None)[:2]
    se = np.sqrt(residual[0] / (len(rows) - 3) * np.linalg.inv(design.T @ design)[2, 2])
    assert coef[2] / se < -4.0, coef[2] / se


def test_slope_arm_site_slopes_of_regional_intensity_follow_the_recorded_factors(tmp_path):
    path = generate_mri_cohort(
        tmp_path / "c", num_subjects=240, sites=4, unseen_sites=2, seed=3, spatial_size=(24, 24, 24),
        spacing=(6.0, 6.0, 6.0), site_strength=0.0, arm="slope", arm_effect=0.5,
    )  # fmt: skip
    entries, truth, root = _read(path)
    assert truth["arm"] == {"name": "slope", "effect": 0.5, "description": truth["arm"]["description"]}
    world = _world(truth)
    centers = truth["regions"]["medial_temporal"]["centers_mm"]
    roi = np.min([np.sum((world - np.reshape(c, (3, 1, 1, 1))) ** 2, 0) for c in centers], 0) < 9.0**2
    factors, slopes = [], []
    for name, info in truth["sites"].items():  # identical scanners: the slope differs only by the site's factor
        rows = np.array([(e["severity"], _image(root, e)[roi].mean()) for e in entries if e["site"] == name])
        factors.append(info["arm"]["disease_scale"])
        slopes.append(np.polyfit(rows[:, 0], rows[:, 1], 1)[0])
    factors, slopes = np.asarray(factors), np.asarray(slopes)
    assert np.ptp(factors) > 0.5  # the draws differ enough for the check to mean something
    # slope = a * factor + b: b is what does not scale with the site's factor (age, older in the diseased, also
    # thins grey matter)
    assert np.all(slopes < 0) and np.corrcoef(factors, slopes)[0, 1] < -0.9, (factors, slopes)


def test_shortcut_arm_cue_correlates_with_the_label_with_opposite_signs_at_seen_and_unseen_sites(tmp_path):
    path = generate_mri_cohort(
        tmp_path / "c", num_subjects=150, sites=3, unseen_sites=2, seed=5, spatial_size=(16, 16, 16),
        spacing=(8.0, 8.0, 8.0), arm="shortcut",
    )  # fmt: skip
    entries, truth, root = _read(path)
    inverse = np.linalg.inv(np.asarray(truth["grid"]["affine"]))
    for name, info in truth["sites"].items():
        arm = info["arm"]
        assert (arm["p_cue_given_disease"] > 0.5) == info["seen"]
        voxel = tuple(np.round(inverse[:3, :3] @ np.asarray(arm["cue_center_mm"]) + inverse[:3, 3]).astype(int))
        site = [e for e in entries if e["site"] == name]
        label = np.array([e["label"] for e in site])
        cue = np.array([truth["subjects"][e["subject"]]["shortcut_cue"] for e in site])
        intensity = np.array([_image(root, e)[voxel] for e in site])
        assert np.corrcoef(cue, intensity)[0, 1] > 0.5  # the recorded cue is visible in the scan
        r = np.corrcoef(intensity, label)[0, 1]
        assert (r > 0.2) if info["seen"] else (r < -0.2), (name, r)


def test_arms_keep_the_nuisance_draws_and_nuisance_records_no_arm(tmp_path):
    kwargs = dict(num_subjects=16, sites=2, unseen_sites=1, seed=1, spatial_size=(8, 8, 8), spacing=(16.0, 16.0, 16.0))
    truths = {}
    for arm in ("nuisance", "slope", "shortcut"):
        truths[arm] = _read(generate_mri_cohort(tmp_path / arm, arm=arm, **kwargs))[1]
    assert "arm" not in truths["nuisance"] and "arm" not in truths["nuisance"]["config"]
    assert all("arm" not in info for info in truths["nuisance"]["sites"].values())
    for arm in ("slope", "shortcut"):
        for subject, record in truths["nuisance"]["subjects"].items():
            other = truths[arm]["subjects"][subject]
            for key in ("site", "label", "severity", "age", "sex", "deformation_seed", "noise_seed", "split"):
                assert other[key] == record[key], (arm, subject, key)


def test_extra_unseen_subjects_follow_the_threshold_model_at_the_requested_prevalence(tmp_path):
    path = generate_mri_cohort(
        tmp_path / "c", num_subjects=40, sites=2, unseen_sites=2, seed=6, spatial_size=(8, 8, 8),
        spacing=(16.0, 16.0, 16.0), arm="threshold", unseen_prevalence=0.2, extra_unseen_subjects=100,
    )  # fmt: skip
    entries, truth, _ = _read(path)
    for name in truth["unseen_sites"]:
        site = [e for e in entries if e["site"] == name]
        assert len(site) > 50 and np.mean([e["label"] for e in site]) == pytest.approx(0.2, abs=0.03)
        t = truth["sites"][name]["arm"]["threshold"]
        wrong = sum((e["severity"] > t) != e["label"] for e in site)
        assert wrong <= 0.1 * len(site)


def test_command_line_arm(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--num-subjects", "16", "--sites", "2", "--unseen-sites", "1", "--seed", "1"]
    argv += ["--spatial-size", "8", "8", "8", "--spacing", "16", "16", "16", "--arm", "threshold"]
    assert main([*argv, "--threshold-layout", "asymmetric", "--arm-effect", "0.1"]) == 0
    truth = _read(str(out / "datalist.json"))[1]
    assert truth["config"]["arm"] == "threshold" and truth["config"]["arm_effect"] == 0.1
    assert truth["config"]["threshold_layout"] == "asymmetric"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arm": "random"}, "arm must be one of"),
        ({"arm": "threshold", "threshold_layout": "left"}, "threshold_layout must be one of"),
        ({"arm_effect": 0.2}, "arm_effect is not used by arm='nuisance'"),
        ({"arm": "threshold", "arm_effect": 0.4}, "arm_effect of arm='threshold' must be in [0.0, 0.25]"),
        ({"arm": "slope", "arm_effect": -1.0}, "arm_effect of arm='slope' must be in [0.0, 2.0]"),
        ({"arm": "shortcut", "arm_effect": 0.3}, "arm_effect of arm='shortcut' must be in [0.5, 1.0]"),
        ({"arm": "threshold", "prevalence": [0.0, 0.5]}, "arm='threshold' needs seen-site prevalences in (0, 1)"),
    ],
)
def test_bad_arm_arguments_name_the_argument(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        generate_mri_cohort(tmp_path / "c", num_subjects=16, sites=2, unseen_sites=1, **kwargs)
    assert not (tmp_path / "c").exists()  # nothing is written before the arguments are checked


@pytest.mark.parametrize("arm", ["threshold", "slope", "shortcut"])
def test_arm_cohorts_are_byte_identical_for_the_same_seed(tmp_path, arm):
    kwargs = dict(num_subjects=16, sites=2, unseen_sites=1, seed=1, spatial_size=(8, 8, 8), spacing=(16.0, 16.0, 16.0))
    folders = [tmp_path / f"{arm}{i}" for i in range(2)]
    for folder in folders:
        generate_mri_cohort(folder, arm=arm, **kwargs)
    images = sorted(os.listdir(folders[0] / "images"))
    assert len(images) == 16 and images == sorted(os.listdir(folders[1] / "images"))
    for name in images:
        assert (folders[0] / "images" / name).read_bytes() == (folders[1] / "images" / name).read_bytes()
    truths = [json.loads((f / "ground_truth.json").read_text()) for f in folders]
    assert truths[0]["sites"] == truths[1]["sites"] and truths[0]["subjects"] == truths[1]["subjects"]
