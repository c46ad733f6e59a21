# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The synthetic multi-site MRI cohort: files, determinism, ground truth, CLI, and that it is learnable and
confounded as designed."""

from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest

pytest.importorskip("nilearn")
nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")

from monai_medl.data import DatalistSpec, load_datalist  # noqa: E402
from monai_medl.data.synthetic.mri_cohort import MEDIAL_TEMPORAL_CENTERS, VENTRICLE_CENTER, generate_mri_cohort, main  # noqa: E402

SMALL = {
    "num_subjects": 36,
    "seed": 11,
    "spatial_size": (20, 24, 20),
    "spacing": (8.0, 8.0, 9.0),
    "modalities": ("t1", "flair"),
    "missing_modality_sites": ["site_b"],
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    path = generate_mri_cohort(out, **SMALL)
    with open(os.path.join(out, "ground_truth.json")) as f:
        truth = json.load(f)
    return out, path, truth


def _all_entries(path):
    spec = DatalistSpec(image_keys=("image", "flair"), optional_image_keys="flair", num_classes=2)
    return [e for k in ("training", "validation", "test") for e in load_datalist(path, k, spec=spec)]


def test_files_load_with_nibabel_and_simpleitk_with_requested_geometry(small):
    _, path, _ = small
    entries = _all_entries(path)  # load_datalist validates every file (readable, 3-D, finite)
    assert len(entries) == SMALL["num_subjects"]
    img = nib.load(entries[0]["image"])
    assert img.shape == SMALL["spatial_size"] and img.header.get_zooms() == SMALL["spacing"]
    assert img.get_data_dtype() == np.int16
    itk = sitk.ReadImage(entries[0]["image"])
    assert itk.GetSize() == SMALL["spatial_size"] and itk.GetSpacing() == SMALL["spacing"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), np.asanyarray(img.dataobj))
    data = img.get_fdata()
    assert data.max() > 100 and (data == 0).mean() > 0.2  # skull-stripped brain with a zero background


def test_datalist_contract_and_splits(small):
    out, path, truth = small
    with open(path) as f:
        content = json.load(f)
    seen, unseen = set(truth["seen_sites"]), set(truth["unseen_sites"])
    assert len(seen) == 6 and len(unseen) == 2 and content["seen_sites"] == truth["seen_sites"]
    for section in ("training", "validation"):
        assert {e["site"] for e in content[section]} <= seen  # unseen sites never in training/validation
    assert unseen <= {e["site"] for e in content["test"]}
    subjects = [e["subject"] for k in ("training", "validation", "test") for e in content[k]]
    assert len(subjects) == len(set(subjects))
    entry = content["training"][0]
    assert {"image", "label", "severity", "site", "subject", "age", "sex"} <= set(entry)
    assert entry["image"].startswith("images/") and isinstance(entry["site"], str)
    for e in content["training"] + content["validation"] + content["test"]:
        assert ("flair" in e) == (e["site"] != "site_b")  # missing modality: key absent


def test_ground_truth_records_every_effect(small):
    _, _, truth = small
    assert set(truth["sites"]) == set(truth["seen_sites"]) | set(truth["unseen_sites"])
    effects = truth["sites"]["site_a"]["effects"]
    for name in ("contrast", "gamma", "gain", "offset", "bias_field_coefficients", "noise_sigma", "slice_axis"):
        assert name in effects
    assert set(effects["contrast"]) == {"t1", "flair"}
    prevalences = [truth["sites"][s]["prevalence"] for s in truth["seen_sites"]]
    assert min(prevalences) < 0.35 and max(prevalences) > 0.65  # confounded seen sites
    assert all(abs(truth["sites"][s]["prevalence"] - 0.5) <= 0.15 for s in truth["unseen_sites"])
    assert truth["sites"]["site_b"]["modalities"] == ["t1"]
    assert len(truth["subjects"]) == SMALL["num_subjects"]
    subject = next(iter(truth["subjects"].values()))
    for name in ("site", "label", "severity", "mtl_gm_loss", "ventricle_expansion", "head_scale", "split"):
        assert name in subject
    severity = {v["label"]: [] for v in truth["subjects"].values()}
    for v in truth["subjects"].values():
        severity[v["label"]].append(v["severity"])
    assert max(severity[0]) < min(severity[1]) + 0.1 and np.mean(severity[1]) > 0.3
    assert len(truth["template"]["sha256"]["t1"]) == 64


def test_byte_identical_for_the_same_seed(small, tmp_path):
    out, _, _ = small
    again = generate_mri_cohort(tmp_path / "again", **SMALL)
    names = sorted(os.listdir(os.path.join(out, "images")))
    assert names == sorted(os.listdir(tmp_path / "again" / "images"))
    match, mismatch, errors = filecmp.cmpfiles(os.path.join(out, "images"), tmp_path / "again" / "images", names, False)
    assert not mismatch and not errors
    for name in ("datalist.json", "ground_truth.json"):
        assert filecmp.cmp(os.path.join(out, name), tmp_path / "again" / name, shallow=False)
    other = generate_mri_cohort(tmp_path / "other", **{**SMALL, "seed": 12})
    assert not filecmp.cmp(
        os.path.join(out, "ground_truth.json"), os.path.join(os.path.dirname(other), "ground_truth.json")
    )
    assert again.endswith("datalist.json")


def test_extra_unseen_subjects_are_added_to_unseen_sites_and_leave_the_cohort_unchanged(small, tmp_path):
    from monai_medl.data.synthetic.mri_cohort import site_sizes

    out, path, truth = small
    assert "extra_unseen_subjects" not in truth["config"]  # the default writes what it wrote before the option
    assert site_sizes(**SMALL) == {s: v["num_subjects"] for s, v in truth["sites"].items()}
    bigger = generate_mri_cohort(tmp_path / "bigger", **SMALL, extra_unseen_subjects=7)
    with open(os.path.join(os.path.dirname(bigger), "ground_truth.json")) as f:
        truth7 = json.load(f)
    assert site_sizes(**SMALL, extra_unseen_subjects=7) == {s: v["num_subjects"] for s, v in truth7["sites"].items()}
    names = sorted(os.listdir(os.path.join(out, "images")))
    _, mismatch, errors = filecmp.cmpfiles(os.path.join(out, "images"), tmp_path / "bigger" / "images", names, False)
    assert not mismatch and not errors  # every scan of the cohort is byte-identical
    before, after = _all_entries(path), _all_entries(bigger)
    old = {e["subject"]: e for e in before}
    added = [e for e in after if e["subject"] not in old]
    assert len(added) == 7 and len(after) == len(before) + 7
    assert all(
        {k: v for k, v in e.items() if k not in ("image", "flair")}
        == {k: v for k, v in old[e["subject"]].items() if k not in ("image", "flair")}
        for e in after
        if e["subject"] in old
    )
    assert {e["site"] for e in added} == set(truth["unseen_sites"])  # test-only sites
    with open(bigger) as f:
        test_subjects = {os.path.basename(e["image"]).split("_")[0] for e in json.load(f)["test"]}
    assert {e["subject"] for e in added} <= test_subjects
    for site in truth["unseen_sites"]:
        n = sum(e["site"] == site for e in added)
        assert n in (3, 4) and truth7["sites"][site]["num_subjects"] == truth["sites"][site]["num_subjects"] + n
    with pytest.raises(ValueError, match="extra_unseen_subjects must be a non-negative integer"):
        generate_mri_cohort(tmp_path / "bad", **SMALL, extra_unseen_subjects=-1)


def test_rerun_reuses_and_other_arguments_need_overwrite(small):
    out, path, _ = small
    before = os.path.getmtime(path)
    assert generate_mri_cohort(out, **SMALL) == path and os.path.getmtime(path) == before
    with pytest.raises(FileExistsError, match="other arguments"):
        generate_mri_cohort(out, **{**SMALL, "seed": 99})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"modalities": ("flair",)}, "modalities"),
        ({"modalities": ("t1", "pd")}, "modalities"),
        ({"missing_modality_sites": ["site_a"]}, "second modality"),
        ({"modalities": ("t1", "t2"), "missing_modality_sites": ["site_z"]}, "site_z"),
        ({"num_subjects": 10}, "too small for 8 sites"),
        ({"prevalence": [0.5]}, "one value in \\[0, 1\\] per seen site"),
        ({"sites": ["a", "b"], "unseen_sites": ["b"]}, "unique"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_mri_cohort(tmp_path / "bad", **kwargs)
    assert not os.path.exists(tmp_path / "bad")  # nothing written for invalid arguments


def test_command_line(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "cli"), "--num-subjects", "16", "--sites", "3", "--unseen-sites", "1"]
    argv += ["--spatial-size", "16", "16", "16", "--spacing", "12", "12", "12", "--modalities", "t1", "t2"]
    assert main(argv) == 0
    assert "datalist.json" in capsys.readouterr().out
    entry = load_datalist(tmp_path / "cli" / "datalist.json", spec=DatalistSpec(image_keys=("image", "t2")))[0]
    assert nib.load(entry["t2"]).shape == (16, 16, 16)


def _region_features(out, truth):
    """Per subject: [medial temporal, ventricle] mean / brain mean (disease); raw brain percentiles (site)."""
    size = truth["grid"]["spatial_size"]
    affine = np.asarray(truth["grid"]["affine"])
    world = (affine[:3, :3] @ np.indices(size).reshape(3, -1) + affine[:3, 3:]).reshape(3, *size)

    def ball(center, radius):
        return np.sum((world - np.reshape(center, (3, 1, 1, 1))) ** 2, axis=0) < radius**2

    mtl = ball(MEDIAL_TEMPORAL_CENTERS[0], 10) | ball(MEDIAL_TEMPORAL_CENTERS[1], 10)
    ventricles = ball(VENTRICLE_CENTER, 14)
    disease, site, labels, sites = [], [], [], []
    for subject, v in sorted(truth["subjects"].items()):
        img = nib.load(os.path.join(out, "images", f"{subject}_T1w.nii.gz")).get_fdata()
        brain = img[img > 0]
        disease.append([img[mtl].mean() / brain.mean(), img[ventricles].mean() / brain.mean()])
        site.append([*np.percentile(brain, [5, 25, 50, 75, 95]), brain.std()])
        labels.append(v["label"])
        sites.append(v["site"])
    return np.asarray(disease), np.asarray(site), np.asarray(labels), np.asarray(sites)


@pytest.mark.slow
def test_cohort_is_learnable_and_confounded(tmp_path):
    """A logistic regression on two regional intensities finds the disease; raw intensities give away the site;
    and in the seen sites the site alone predicts the label (the confound)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    out = tmp_path / "learn"
    generate_mri_cohort(out, num_subjects=120, seed=3, spatial_size=(32, 32, 32), spacing=(6.0, 6.0, 6.0))
    with open(out / "ground_truth.json") as f:
        truth = json.load(f)
    disease, site_features, labels, sites = _region_features(out, truth)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    auroc = cross_val_score(model, disease, labels, cv=cv, scoring="roc_auc").mean()
    shuffled = cross_val_score(model, disease, np.random.default_rng(0).permutation(labels), cv=cv, scoring="roc_auc")
    assert auroc > 0.68, auroc
    assert auroc > shuffled.mean() + 0.1
    site_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    site_accuracy = cross_val_score(site_model, site_features, sites, cv=cv).mean()
    assert site_accuracy > 0.6, site_accuracy  # chance is 1/8
    seen = np.isin(sites, truth["seen_sites"])
    onehot = OneHotEncoder().fit_transform(sites[seen, None]).toarray()
    confound = cross_val_score(LogisticRegression(), onehot, labels[seen], cv=cv, scoring="roc_auc").mean()
    assert confound > 0.6, confound


def test_cohort_preset_is_the_bundles_cohort_and_rejects_unknown_keys():
    from monai_medl.data.synthetic.mri_cohort import COHORT_PRESETS, cohort_settings

    # the shipped MRI models were trained on this cohort (their manifests record its datalist): values are frozen
    assert cohort_settings("mri_bundle") == {
        "num_subjects": 800,
        "sites": 6,
        "unseen_sites": 2,
        "seed": 2024,
        "spatial_size": [32, 32, 32],
        "spacing": [6.0, 6.0, 6.0],
        "disease_strength": 0.4,
    }
    quick = cohort_settings("mri_bundle", num_subjects=400)
    quick["spatial_size"].append(1)
    assert quick["num_subjects"] == 400 and COHORT_PRESETS["mri_bundle"]["spatial_size"] == [32, 32, 32]
    with pytest.raises(ValueError, match="unknown cohort preset 'nope'"):
        cohort_settings("nope")
    with pytest.raises(ValueError, match=r"overrides \['num_subject'\]"):
        cohort_settings("mri_bundle", num_subject=10)
