# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The MRI classification bundles' opt-in ``scan_preprocessing``: orientation, resampling to a declared spacing,
percentile intensity scaling and a foreground-centred crop before the resize, on real scans that installed packages
ship (nilearn's 1 mm MNI152 T1 brain, nibabel's 2 mm LAS test anatomical)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from monai_medl.data.synthetic.template import TEMPLATE_FILES, template_dir

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
CLASSIFIERS = ("mri_me_cnn_classification", "mri_multimodal_me_cnn_classification")


def _config(bundle: str, name: str) -> dict:
    with open(BUNDLES / bundle / "configs" / name, encoding="utf-8") as f:
        return json.load(f)


def _chain(bundle: str, enabled: bool, config: str = "train.json") -> Compose:
    parser = ConfigParser(_config(bundle, config))
    parser["scan_preprocessing#enabled"] = enabled
    return Compose(parser.get_parsed_content("load_transforms"))


def _single_chain(enabled: bool) -> Compose:
    return _chain("mri_me_cnn_classification", enabled)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, str]:
    """A 1 mm brain with a wide noisy field of view and the same brain at 4 mm cropped tight, from the MNI template."""
    folder = tmp_path_factory.mktemp("scans")
    mni = nib.load(os.path.join(template_dir(), TEMPLATE_FILES["t1"]))
    brain = np.asarray(mni.dataobj, dtype=np.float32)
    rng = np.random.default_rng(0)
    wide = np.pad(brain, 30) + rng.normal(0.0, 3.0, np.array(brain.shape) + 60).clip(0.0)
    affine = mni.affine.copy()
    affine[:3, 3] -= 30.0
    nib.save(nib.Nifti1Image(wide.astype(np.float32), affine), folder / "wide_1mm.nii.gz")
    nz = np.argwhere(brain > 0)
    lo, hi = nz.min(0), nz.max(0) + 1
    tight = torch.as_tensor(brain[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])[None, None]
    small = torch.nn.functional.avg_pool3d(tight, 4, ceil_mode=True)[0, 0].numpy() * 3.0  # another scanner's scale
    affine4 = mni.affine.copy()
    affine4[:3, :3] *= 4.0
    affine4[:3, 3] = mni.affine[:3, :3] @ lo + mni.affine[:3, 3]
    nib.save(nib.Nifti1Image(small.astype(np.float32), affine4), folder / "tight_4mm.nii.gz")
    anatomical = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
    return {"wide": str(folder / "wide_1mm.nii.gz"), "tight": str(folder / "tight_4mm.nii.gz"), "las": anatomical}


def test_the_keys_are_the_same_in_training_and_inference():
    for bundle in CLASSIFIERS:
        train, infer = _config(bundle, "train.json"), _config(bundle, "inference.json")
        assert train["scan_preprocessing"]["enabled"] is False  # opt-in: the committed models were trained without
        # inference takes every choice from the model's manifest; without one, the training defaults
        parser = ConfigParser(infer)
        parser["manifest"] = {}
        assert parser.get_parsed_content("scan_preprocessing") == train["scan_preprocessing"], bundle
        steps = [t["_target_"] for t in train["load_transforms"]]
        assert steps[-5:] == [
            "Spacingd",
            "ScaleIntensityRangePercentilesd",
            "CropForegroundd",
            "ResizeWithPadOrCropd",
            "Resized",
        ], bundle
        infer_load = infer.get("load_transforms") or infer["preprocessing"]["transforms"]
        assert [t["_target_"] for t in infer_load][: len(steps)] == steps, bundle


def test_a_wide_1mm_scan_and_a_tight_4mm_brain_reach_the_network_alike(scans):
    outputs = {}
    for enabled in (False, True):
        chain = _single_chain(enabled)
        wide, tight = (chain({"image": scans[k]})["image"] for k in ("wide", "tight"))
        assert wide.shape == tight.shape == (1, 32, 32, 32)
        outputs[enabled] = float(np.corrcoef(wide.numpy().ravel(), tight.numpy().ravel())[0, 1])
    # resize only: the two fields of view are stretched to the grid differently; fitted: the same brain
    assert outputs[False] < 0.6 and outputs[True] > 0.9, outputs
    fitted = _single_chain(True)({"image": scans["tight"]})["image"]
    assert float(fitted.min()) >= 0.0 and float(fitted.max()) <= 1.0  # percentile-scaled, whatever the scale
    assert tuple(float(s) for s in fitted.pixdim) == (6.0, 6.0, 6.0)


def test_an_las_scan_is_reoriented_and_centred(scans):
    out = _single_chain(True)({"image": scans["las"]})["image"]
    assert nib.aff2axcodes(out.affine.numpy()) == ("R", "A", "S")
    # the 66 x 82 x 50 mm field of view at 6 mm is padded, centred, into the 192 mm grid: background around it
    mask = out[0].numpy() > 0
    idx = np.argwhere(mask)
    centre = (idx.min(0) + idx.max(0)) / 2.0
    assert np.all(np.abs(centre - 15.5) <= 1.0), centre
    assert mask.mean() < 0.1


def test_multimodal_crops_every_modality_with_the_required_ones_box(scans):
    chain = _chain("mri_multimodal_me_cnn_classification", True)
    both = chain({"image": scans["wide"], "flair": scans["wide"]})
    torch.testing.assert_close(both["image"], both["flair"])
    missing = chain({"image": scans["wide"]})  # flair is optional: absent, the chain still runs
    assert "flair" not in missing and missing["image"].shape == (1, 32, 32, 32)


def test_inference_follows_what_the_model_was_trained_with():
    recorded = {"enabled": True, "pixdim": [12.0, 12.0, 12.0], "percentiles": [0.5, 99.5], "foreground_threshold": 0.2}
    for bundle in CLASSIFIERS:
        for manifest, expected in (({}, False), ({"scan_preprocessing": recorded}, True)):
            parser = ConfigParser(_config(bundle, "inference.json"))
            parser["manifest"] = manifest
            assert parser.get_parsed_content("fit_scans") is expected, (bundle, manifest)
        chain_id = "load_transforms" if "load_transforms" in parser else "preprocessing#transforms"
        targets = [t["_target_"] for t in parser[chain_id]]
        names = ("Spacingd", "ScaleIntensityRangePercentilesd")
        steps = {name: parser.get_parsed_content(f"{chain_id}#{targets.index(name)}") for name in names}
        assert tuple(steps["Spacingd"].spacing_transform.pixdim) == (12.0, 12.0, 12.0), bundle
        assert steps["ScaleIntensityRangePercentilesd"].scaler.lower == 0.5, bundle


def test_evaluation_follows_what_the_model_was_trained_with():
    """``evaluate.json`` (read over ``train.json``) takes the choice from the manifest too: a model trained with
    ``scan_preprocessing`` is scored on scans fed the way it was trained, whatever ``train.json``'s default."""
    recorded = {"enabled": True, "pixdim": [12.0, 12.0, 12.0], "percentiles": [0.5, 99.5], "foreground_threshold": 0.2}
    for bundle in CLASSIFIERS:
        for manifest, expected in (({}, False), ({"scan_preprocessing": recorded}, True)):
            parser = ConfigParser()
            parser.read_config([str(BUNDLES / bundle / "configs" / n) for n in ("train.json", "evaluate.json")])
            parser["manifest"] = manifest
            assert parser.get_parsed_content("fit_scans") is expected, (bundle, manifest)
            steps = {type(t).__name__: t for t in parser.get_parsed_content("load_transforms")}
            assert ("Spacingd" in steps) is expected, (bundle, sorted(steps))
        assert tuple(steps["Spacingd"].spacing_transform.pixdim) == (12.0, 12.0, 12.0), bundle
        assert steps["ScaleIntensityRangePercentilesd"].scaler.lower == 0.5, bundle
        parser["scan_preprocessing#enabled"] = "false"  # the command line still overrides the manifest
        assert parser.get_parsed_content("fit_scans") is False, bundle


def test_the_switch_reads_command_line_words_and_refuses_anything_else():
    parser = ConfigParser(_config("mri_me_cnn_classification", "train.json"))
    parser["scan_preprocessing#enabled"] = "false"  # what `--scan_preprocessing#enabled false` hands the config
    targets = [type(t).__name__ for t in parser.get_parsed_content("load_transforms")]
    assert "Spacingd" not in targets and targets[-1] == "Resized"
    parser = ConfigParser(_config("mri_me_cnn_classification", "train.json"))
    parser["scan_preprocessing#enabled"] = "maybe"
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the expression's ValueError
        parser.get_parsed_content("fit_scans")
    assert "scan_preprocessing::enabled' must be true or false" in str(info.value.__cause__)


def test_a_rerun_with_another_preprocessing_choice_predicts_afresh():
    """The streamed predictions file resumes only a run of the same model, input and preprocessing: switching
    ``scan_preprocessing`` (or one of its choices) on a rerun must not keep the rows predicted the other way."""

    def identity(bundle, **overrides):
        parser = ConfigParser(_config(bundle, "inference.json"))
        parser["manifest"] = {"files": {"model.pt": "hash"}}
        for key, value in overrides.items():
            parser[key] = value
        return parser.get_parsed_content("stream#identity")

    for bundle in CLASSIFIERS:
        off = identity(bundle)
        assert identity(bundle, **{"scan_preprocessing#enabled": "false"}) == off, bundle
        on = identity(bundle, **{"scan_preprocessing#enabled": "true"})
        assert on != off, bundle
        assert identity(bundle, **{"scan_preprocessing#enabled": "true", "scan_preprocessing#margin": 3}) != on, bundle
        assert identity(bundle, spatial_size=[16, 16, 16]) != off, bundle
