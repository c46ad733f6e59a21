# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""DatalistSpec: one immutable description of a datalist, checked once, shared by validation and loading."""

from __future__ import annotations

import dataclasses

import pytest

from monai_medl.data import DatalistSpec, validate_datalist


def test_lists_from_a_config_become_tuples_and_the_spec_is_frozen():
    spec = DatalistSpec(image_keys=["image", "flair"], optional_image_keys=["flair"], num_classes=2)
    assert spec.image_keys == ("image", "flair") and spec.optional_image_keys == ("flair",)
    assert spec.required_image_keys == ("image",) and hash(spec) == hash(DatalistSpec(**dataclasses.asdict(spec)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 3
    assert spec.replace(min_training_sites=0).min_training_sites == 0 and spec.min_training_sites == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_keys": []}, "image_keys must be non-empty strings"),
        ({"optional_image_keys": "flair"}, r"optional_image_keys \['flair'\] must also be listed in image_keys"),
        ({"num_classes": 0}, "num_classes must be None or an integer >= 1, got 0"),
        ({"spatial_dims": 2.5}, "spatial_dims must be None or an integer >= 1, got 2.5"),
        ({"in_channels": True}, "in_channels must be None or an integer >= 1, got True"),
        ({"min_training_sites": "2"}, "min_training_sites must be an integer, got '2'"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DatalistSpec(**kwargs)


def test_labelled_false_accepts_entries_without_labels():
    entries = [{"image": "/nowhere/a.nii.gz", "site": "s"}]
    spec = DatalistSpec(num_classes=2, check_voxels=False)
    assert any("missing label (key 'label')" in p for p in validate_datalist(entries, spec, workers=1))
    assert not any("label" in p for p in validate_datalist(entries, spec, labelled=False, workers=1))


def test_load_datalist_keywords_of_the_spec_are_deprecated_but_still_work(tmp_path):
    import json

    from monai_medl.data import load_datalist

    (tmp_path / "d.json").write_text(json.dumps({"training": [{"image": "a.nii.gz", "site": "s", "label": 1}]}))
    with pytest.warns(DeprecationWarning, match=r"load_datalist\(num_classes=...\) is deprecated"):
        entries = load_datalist(tmp_path / "d.json", validate=False, num_classes=2)
    assert entries[0]["image"] == str(tmp_path / "a.nii.gz")
    with pytest.raises(TypeError, match="either spec or the keywords"):
        load_datalist(tmp_path / "d.json", spec=DatalistSpec(), num_classes=2)
