# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The ME-UNet segmentation bundle: train -> evaluate -> inference through monai.bundle on a tiny generated cohort,
bad inputs, the model-zoo checks (verify_net_in_out, ckpt_export) and 2-process gloo training."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata

from monai_medl.bundle import BundleInputError, InvalidScansError
from tests.bundle.bundle_checks import meta_schema, run_multi_gpu_train, run_workflow, verify_and_export

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mri_me_unet_segmentation"
CONFIGS = BUNDLE / "configs"

# 4 seen + 2 unseen sites, 3 subjects each, 24^3 voxels of 8 mm, 16^3 patches
TINY = {
    "cohort#num_subjects": 18,
    "cohort#spatial_size": [24, 24, 24],
    "cohort#spacing": [8.0, 8.0, 8.0],
    "patch_size": [16, 16, 16],
    "train#trainer#max_epochs": 1,
    "val_interval": 1,  # validation (and so the best-model save) every epoch
}


def _find(exc: BaseException | None, kind: type) -> BaseException | None:
    while exc is not None:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_configs_agree_and_metadata_follows_the_schema():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=meta_schema())
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    assert infer["network_def"] == train["network_def"] and infer["z_predictor_def"] == train["z_predictor_def"]
    assert infer["inferer"] == train["sliding_window"] and infer["patch_size"] == train["patch_size"]
    infer_steps = [t["_target_"] for t in infer["preprocessing"]["transforms"]]
    assert infer_steps == [t["_target_"] for t in train["load_transforms"] + train["site_transforms"]]
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/multi_gpu_train.json"):
        assert (BUNDLE / name).is_file(), name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg") / "mri_me_unet_segmentation"
    shutil.copytree(CONFIGS, root / "configs")
    run_workflow(root / "configs", "train.json", root, "train", replace_models=True, **TINY)
    return root


def test_training_writes_a_complete_verified_set(trained):
    root = trained
    truth = json.loads((root / "data" / "ground_truth.json").read_text())
    assert truth["sites"]["site_b"]["label_shift_vox"] == 1  # the default cohort has a label-protocol site
    manifest = json.loads((root / "models" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.pt", "z_predictor.pt", "site_vocabulary.json", "intensity_stats.json"}
    assert manifest["sites"] == sorted(truth["seen_sites"]) and "best_val_mean_dice" in manifest
    parser = ConfigParser(ConfigParser.load_config_file(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    parser["patch_size"] = TINY["patch_size"]
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True), strict=True)
    assert list(root.glob("runs/*/tensorboard/events.out.tfevents.*"))


def test_evaluate_reports_dice_per_class_site_and_mode(trained):
    root = trained
    run_workflow(root / "configs", ["train.json", "evaluate.json"], root, "eval", check_properties=False, **TINY)
    rows = _rows(root / "eval" / "metrics.csv")
    truth = json.loads((root / "data" / "ground_truth.json").read_text())
    assert {r["mode"] for r in rows} == {"mixed", "population", "inferred"}
    for mode in ("mixed", "population", "inferred"):
        groups = {r["group"]: r for r in rows if r["mode"] == mode and r["group"] != "site"}
        assert {"overall", "seen", "unseen"} <= set(groups)
        for r in groups.values():
            for key in ("dice_csf", "dice_grey_matter", "dice_white_matter", "dice_mean"):
                assert r[key] == "" or 0.0 <= float(r[key]) <= 1.0
        sites = {r["site"] for r in rows if r["mode"] == mode and r["group"] == "site"}
        assert set(truth["unseen_sites"]) <= sites
    scans = _rows(root / "eval" / "predictions.csv")
    assert {s["z"] for s in scans if s["mode"] == "population"} == {"zero"}
    assert {s["z"] for s in scans if s["mode"] == "inferred" and s["seen"] == "False"} == {"soft:z-predictor"}


def test_inference_segments_good_scans_and_reports_a_bad_one(trained, tmp_path):
    root = trained
    folder = tmp_path / "scans"
    folder.mkdir()
    data = json.loads((root / "data" / "datalist.json").read_text())
    for e in data["test"][:2]:
        shutil.copy(root / "data" / e["image"], folder / Path(e["image"]).name)
    raw = (folder / Path(data["test"][1]["image"]).name).read_bytes()
    (folder / Path(data["test"][1]["image"]).name).write_bytes(raw[: len(raw) // 3])  # truncated
    with pytest.raises(Exception) as info:
        run_workflow(root / "configs", "inference.json", root, "infer", input=str(folder), **{"patch_size": [16] * 3})
    assert _find(info.value, InvalidScansError) is not None
    rows = _rows(root / "eval" / "inference_predictions.csv")
    good, bad = [r for r in rows if not r["error"]], [r for r in rows if r["error"]]
    assert len(good) == 1 and len(bad) == 1 and "truncated" in bad[0]["error"]
    segs = list((root / "eval" / "segmentations").glob("*_seg.nii.gz"))
    assert len(segs) == 1 and Path(good[0]["image"]).name.replace(".nii.gz", "") in segs[0].name


def test_training_refuses_a_label_map_of_another_grid(trained, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(CONFIGS, root / "configs")
    data = json.loads((trained / "data" / "datalist.json").read_text())
    for section in data.values():
        if isinstance(section, list) and section and isinstance(section[0], dict):
            for e in section:
                e["image"], e["label"] = str(trained / "data" / e["image"]), str(trained / "data" / e["label"])
    data["training"][0]["label"] = data["training"][0]["image"].replace("T1w", "missing")
    (tmp_path / "datalist.json").write_text(json.dumps(data))
    with pytest.raises(Exception) as info:
        run_workflow(root / "configs", "train.json", root, "train", datalist=str(tmp_path / "datalist.json"), **TINY)
    err = _find(info.value, BundleInputError)
    assert err is not None and "missing" in str(err)
    assert not (root / "models").exists() or not list((root / "models").iterdir())  # nothing written


def test_model_zoo_checks_and_scripted_network(trained, tmp_path):
    net, scripted = verify_and_export(trained, tmp_path)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
        z = torch.eye(net.num_clusters)[[0, 1]]
        torch.testing.assert_close(scripted(x, z), net(x, z))


@pytest.mark.slow
def test_two_process_gloo_training_with_torchrun(trained, tmp_path):
    root = tmp_path / "mri_me_unet_segmentation"
    overrides = [
        "--dataset_dir", str(trained / "data"),
        "--patch_size", "[16,16,16]",
        "--train#trainer#max_epochs", "1",
        "--val_interval", "1",
        "--replace_models", "true",
    ]  # fmt: skip
    run_multi_gpu_train(CONFIGS, root, overrides)
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "manifest.json").is_file()
