# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The bundles refuse a datalist whose subject straddles training, validation and test, unless the config allows it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from monai_medl.bundle import BundleInputError, load_bundle_inputs
from monai_medl.data import DatalistSpec, write_datalist
from monai_medl.data.subject_overlap import subject_overlap_problems, subject_sections

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _datalist(tmp_path, test_subjects=("s4", "s1")) -> str:
    entries = {}
    for i, name in enumerate(["s0", "s1", "s2", "s3", *test_subjects]):
        path = tmp_path / f"{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.random.default_rng(i).random((6, 6, 6)).astype(np.float32), np.eye(4)), path)
        entries[i] = {"image": str(path), "label": i % 2, "site": "ab"[i % 2], "subject": name}
    sections = {"training": [entries[i] for i in range(4)], "validation": [entries[4]], "test": [entries[5]]}
    return write_datalist(tmp_path / "datalist.json", sections)


def test_a_subject_in_training_and_test_is_refused_naming_both(tmp_path):
    datalist = _datalist(tmp_path)
    sections = {"training": True, "validation": True, "test": False}
    spec = DatalistSpec(num_classes=2, min_training_sites=2)
    with pytest.raises(BundleInputError) as err:
        load_bundle_inputs(datalist, spec, sections=sections)
    assert "subject 's1' (key 'subject') appears in sections training and test" in str(err.value)
    assert "allow_subject_overlap" in str(err.value) and len(err.value.problems) == 1
    inputs = load_bundle_inputs(datalist, spec.replace(allow_subject_overlap=True), sections=sections)
    assert len(inputs.sections["test"]) == 1
    (tmp_path / "disjoint").mkdir()
    load_bundle_inputs(_datalist(tmp_path / "disjoint", ("s4", "s5")), spec, sections=sections)


def test_overlap_listing_order_and_cap():
    sections = {
        "training": [{"subject": f"s{i}"} for i in range(15)] + [{"subject": None}, {"image": "x"}, "bad"],
        "validation": [{"subject": f"s{i}"} for i in range(3)],
        "test": [{"subject": f"s{i}"} for i in range(2, 15)],
    }
    shared = subject_sections(sections)
    assert shared["s2"] == ["training", "validation", "test"] and shared["s0"] == ["training", "validation"]
    assert len(shared) == 15
    problems = subject_overlap_problems(sections, max_listed=10)
    assert len(problems) == 11 and problems[-1] == "... and 5 more subject(s) in more than one section"
    assert subject_overlap_problems({"training": [{"subject": "a"}, {"subject": "a"}]}) == []  # sessions: one section


@pytest.mark.parametrize(
    "bundle", sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())
)
def test_every_bundle_exposes_the_override_and_refuses_by_default(bundle):
    config = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())
    assert config["allow_subject_overlap"] is False
    assert config["datalist_spec"]["allow_subject_overlap"] == "@allow_subject_overlap"
    parser = ConfigParser(config)
    parser["allow_subject_overlap"] = True
    spec = parser.get_parsed_content("datalist_spec")  # the spec that prepare_site_data receives
    assert spec.allow_subject_overlap is True
