# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from monai_medl.data import DatalistError, DatalistSpec, load_datalist, validate_datalist, write_datalist


def _nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def folder(tmp_path):
    os.makedirs(tmp_path / "images")
    rng = np.random.default_rng(0)
    entries = []
    for i, site in enumerate(["site_a", "site_a", "site_b"]):
        img = _nifti(tmp_path / "images" / f"s{i}.nii.gz", rng.random((5, 6, 7)))
        entries.append({"image": img, "label": i % 2, "site": site, "subject": f"s{i}", "age": 60.0 + i})
    return tmp_path, entries


def test_write_then_load_round_trip_with_relative_paths(folder):
    root, entries = folder
    path = write_datalist(root / "datalist.json", {"training": entries[:2], "test": entries[2:]}, description="x")
    content = json.loads(open(path).read())
    assert content["description"] == "x" and content["training"][0]["image"] == "images/s0.nii.gz"
    train = load_datalist(path, "training", spec=DatalistSpec(num_classes=2))
    assert [e["image"] for e in train] == [e["image"] for e in entries[:2]]
    assert train[0]["site"] == "site_a" and train[1]["age"] == 61.0
    assert load_datalist(path, "test")[0]["subject"] == "s2"


def test_site_named_like_a_folder_is_not_turned_into_a_path(folder):
    root, entries = folder
    os.makedirs(root / "site_a")  # monai.data.load_decathlon_datalist would rewrite "site_a" to a path here
    path = write_datalist(root / "datalist.json", {"training": entries})
    assert load_datalist(path)[0]["site"] == "site_a"


def test_several_modalities_and_an_optional_one(folder):
    root, entries = folder
    entries[0]["flair"] = _nifti(root / "images" / "f0.nii.gz", np.ones((5, 6, 7)))
    path = write_datalist(root / "dl.json", {"training": entries}, image_keys=("image", "flair"))
    with pytest.raises(DatalistError, match="entry 1 .*missing image key 'flair'"):
        load_datalist(path, spec=DatalistSpec(image_keys=("image", "flair")))
    data = load_datalist(path, spec=DatalistSpec(image_keys=("image", "flair"), optional_image_keys="flair"))
    assert os.path.isabs(data[0]["flair"]) and "flair" not in data[1]
    with pytest.raises(ValueError, match=r"optional_image_keys \['flair'\] must also be listed in image_keys"):
        DatalistSpec(image_keys="image", optional_image_keys="flair")  # its paths would stay unresolved


def _write(root, entries):
    return write_datalist(root / "datalist.json", {"training": entries})


def test_missing_file_names_the_entry(folder):
    root, entries = folder
    entries[1]["image"] = str(root / "images" / "nope.nii.gz")
    with pytest.raises(DatalistError, match=r"entry 1 \(subject 's1'\).*file not found: .*nope.nii.gz"):
        load_datalist(_write(root, entries))


def test_missing_site_names_the_entry(folder):
    root, entries = folder
    del entries[2]["site"]
    entries[0]["site"] = ""
    with pytest.raises(DatalistError) as err:
        load_datalist(_write(root, entries))
    assert "entry 0 (subject 's0')" in str(err.value) and "entry 2 (subject 's2')" in str(err.value)
    assert "missing site" in str(err.value) and len(err.value.problems) == 2


def test_truncated_nifti_names_the_entry(folder):
    root, entries = folder
    raw = gzip.decompress(open(entries[1]["image"], "rb").read())
    with open(entries[1]["image"], "wb") as f:
        f.write(gzip.compress(raw[: len(raw) - 100]))
    with pytest.raises(DatalistError, match=r"entry 1 .*unreadable or truncated image .*s1.nii.gz"):
        load_datalist(_write(root, entries))


def test_unreadable_file_names_the_entry(folder):
    root, entries = folder
    with open(entries[0]["image"], "wb") as f:
        f.write(b"not an image at all")
    with pytest.raises(DatalistError, match=r"entry 0 .*unreadable or truncated image"):
        load_datalist(_write(root, entries))


def test_wrong_dimensionality_names_the_entry(folder):
    root, entries = folder
    entries[2]["image"] = _nifti(root / "images" / "flat.nii.gz", np.ones((5, 6)))
    with pytest.raises(DatalistError, match=r"entry 2 .*shape \(5, 6\) \(2-D\); expected 3-D"):
        load_datalist(_write(root, entries))
    assert load_datalist(_write(root, entries), spec=DatalistSpec(spatial_dims=None))  # the check can be switched off


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_voxels_name_the_entry(folder, bad):
    root, entries = folder
    data = np.ones((5, 6, 7))
    data[1, 2, 3] = bad
    entries[1]["image"] = _nifti(root / "images" / "bad.nii.gz", data)
    with pytest.raises(DatalistError, match=r"entry 1 .*1 NaN/Inf voxel"):
        load_datalist(_write(root, entries))


@pytest.mark.parametrize("label", [2, -1, 0.5, "yes", None])
def test_label_outside_declared_classes_names_the_entry(folder, label):
    root, entries = folder
    entries[0]["label"] = label
    with pytest.raises(DatalistError, match=r"entry 0 .*label"):
        load_datalist(_write(root, entries), spec=DatalistSpec(num_classes=2))


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_datalist(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_datalist(tmp_path / "broken.json")
    (tmp_path / "ok.json").write_text('{"training": []}')
    with pytest.raises(ValueError, match="no section 'validation'; found \\['training'\\]"):
        load_datalist(tmp_path / "ok.json", "validation")


def test_validate_datalist_returns_all_problems(folder):
    _, entries = folder
    entries.append("not a dict")
    problems = validate_datalist(entries, DatalistSpec(num_classes=1))
    assert "entry 3: expected a dictionary, got str" in problems
    assert any("entry 1" in p and "outside the declared classes 0..0" in p for p in problems)


def test_header_only_check_and_other_formats(folder):
    import SimpleITK

    root, entries = folder
    data = np.ones((5, 6, 7), np.float32)
    data[0, 0, 0] = np.nan
    entries[0]["image"] = _nifti(root / "images" / "nan.nii.gz", data)
    mha = str(root / "images" / "vol.mha")
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(np.ones((7, 6, 5), np.float32)), mha)  # read by SimpleITK
    entries[1]["image"] = mha
    path = _write(root, entries)
    assert (
        load_datalist(path, spec=DatalistSpec(check_voxels=False))[1]["image"] == mha
    )  # headers only: the NaN is not seen
    with pytest.raises(DatalistError, match="entry 0 .*NaN/Inf") as err:
        load_datalist(path)
    assert len(err.value.problems) == 1  # the .mha file is valid
