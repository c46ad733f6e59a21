# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The MRI bundle on a user's own scans, with the ordinary mistakes: every bad input is reported (naming the section,
entry, file and key) before anything is written, the shipped ``models/`` and the user's data folder stay
byte-identical, a finished run promotes a complete set with a manifest only when asked, inference predicts the good
scans of a datalist with a corrupt one, and a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_medl.bundle import ArtifactError, BundleInputError, InvalidScansError, load_bundle_inputs
from monai_medl.data import DatalistSpec
from tests.bundle.bundle_checks import run_workflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mri_me_cnn_classification"
SIZE = [16, 16, 16]
TINY_TRAIN = {"spatial_size": SIZE, "generate_cohort": False, "train#dataloader#batch_size": 8}


def _scan(path: Path, seed: int, shape=(16, 16, 16), spacing=(4.0, 4.0, 4.0), label: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0 + 20.0 * label, 10.0, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing[:3], 1.0])), str(path))


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> Path:
    """A user's folder of 30 small scans from sites a, b (training) and c (test only), with a datalist."""
    root = tmp_path_factory.mktemp("user") / "my_scans"
    root.mkdir()
    sections: dict[str, list] = {"training": [], "validation": [], "test": []}
    for i in range(30):
        label, site = i % 2, "ab"[(i // 2) % 2]
        section = "training" if i < 20 else "validation" if i < 26 else "test"
        site = "c" if section == "test" else site
        _scan(root / f"sub-{i:02d}.nii.gz", seed=i, label=label)
        sections[section].append({"image": f"sub-{i:02d}.nii.gz", "label": label, "site": site, "subject": f"s{i}"})
    (root / "datalist.json").write_text(json.dumps(sections, indent=1))
    return root


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of the bundle with its shipped models."""
    root = tmp_path / "bundle"
    for part in ("configs", "models"):
        shutil.copytree(BUNDLE / part, root / part)
    return root


def _find(exc: BaseException, kind: type) -> BaseException | None:
    while exc is not None:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _datalist_variant(user_data: Path, tmp_path: Path, edit) -> Path:
    """Copy the user's folder, apply ``edit(sections, folder)`` and return the new datalist."""
    folder = tmp_path / "data"
    shutil.copytree(user_data, folder)
    sections = json.loads((folder / "datalist.json").read_text())
    edit(sections, folder)
    (folder / "datalist.json").write_text(json.dumps(sections))
    return folder / "datalist.json"


def _truncate(s, folder):
    raw = (folder / "sub-03.nii.gz").read_bytes()
    (folder / "sub-03.nii.gz").write_bytes(raw[: len(raw) // 2])


def _nonfinite(value):
    def edit(s, folder):
        img = nib.load(str(folder / "sub-04.nii.gz"))
        data = np.asarray(img.dataobj).copy()
        data[3, 3, 3] = value
        nib.save(nib.Nifti1Image(data, img.affine), str(folder / "sub-04.nii.gz"))

    return edit


def _replace_scan(shape):
    return lambda s, folder: _scan(folder / "sub-05.nii.gz", seed=5, shape=shape)


def _set(section, index, key, value):
    def edit(s, folder):
        if value is None:
            del s[section][index][key]
        else:
            s[section][index][key] = value

    return edit


def _single_site(s, folder):
    for e in s["training"]:
        e["site"] = "a"


def _empty(section):
    return lambda s, folder: s.__setitem__(section, [])


BAD_TRAINING_INPUTS = {
    "truncated NIfTI": (
        _truncate,
        r"\[training\] entry 3 \(subject 's3'\).*key 'image': unreadable or truncated .*sub-03",
    ),
    "missing path": (
        _set("training", 1, "image", "nope.nii.gz"),
        r"\[training\] entry 1 .*file not found: .*nope.nii.gz",
    ),
    "NaN voxels": (_nonfinite(np.nan), r"entry 4 .*sub-04.nii.gz has 1 NaN/Inf voxel"),
    "Inf voxels": (_nonfinite(np.inf), r"entry 4 .*sub-04.nii.gz has 1 NaN/Inf voxel"),
    "2D image into a 3D bundle": (_replace_scan((16, 16)), r"entry 5 .*sub-05.nii.gz has shape \(16, 16\) \(2-D\)"),
    "one-slice image": (_replace_scan((16, 16, 1)), r"entry 5 .*sub-05.nii.gz .*spatial axis 2 has one voxel"),
    "wrong channel count": (_replace_scan((16, 16, 16, 2)), r"entry 5 .*sub-05.nii.gz has 2 channel\(s\); expected 1"),
    "missing site key": (_set("training", 2, "site", None), r"\[training\] entry 2 .*missing site \(key 'site'\)"),
    "single training site": (_single_site, r"\[training\] spans 1 site\(s\) \['a'\]; this bundle needs at least 2"),
    "label out of range": (_set("training", 6, "label", 2), r"entry 6 .*label 2 is outside the declared classes 0..1"),
    "string label": (_set("validation", 0, "label", "yes"), r"\[validation\] entry 0 .*label 'yes' is not a number"),
    "empty training split": (_empty("training"), r"\[training\] is empty"),
    "empty validation split": (_empty("validation"), r"\[validation\] is empty"),
    "wrong-case image key": (
        lambda s, f: s["training"][7].__setitem__("IMAGE", s["training"][7].pop("image")),
        r"entry 7 .*key 'IMAGE' is not used: did you mean 'image'\?.*entry 7 .*missing image key 'image'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TRAINING_INPUTS))
def test_bad_training_input_is_reported_before_anything_is_written(case, user_data, bundle, tmp_path):
    edit, pattern = BAD_TRAINING_INPUTS[case]
    datalist = _datalist_variant(user_data, tmp_path, edit)
    models_before, data_before = _tree_hashes(bundle / "models"), _tree_hashes(datalist.parent)
    with pytest.raises(Exception) as info:
        run_workflow(bundle / "configs", "train.json", bundle, "train", datalist=str(datalist), **TINY_TRAIN)
    err = _find(info.value, BundleInputError)
    assert err is not None, f"{case}: {info.value!r}"
    assert str(datalist) in str(err) and re.search(pattern, str(err), re.S), str(err)
    assert _tree_hashes(bundle / "models") == models_before  # the shipped model is untouched
    assert _tree_hashes(datalist.parent) == data_before  # so is the user's folder
    assert not list(bundle.glob("runs/**/*.pt"))  # no training started


def test_datalist_syntax_error_names_file_line_and_column(user_data, bundle, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(user_data, folder)
    (folder / "datalist.json").write_text('{"training": [{"image": "sub-00.nii.gz",, }]}')
    models_before = _tree_hashes(bundle / "models")
    with pytest.raises(Exception) as info:
        run_workflow(
            bundle / "configs", "train.json", bundle, "train", datalist=str(folder / "datalist.json"), **TINY_TRAIN
        )
    err = _find(info.value, BundleInputError)
    assert err is not None and re.search(r"datalist\.json.*not valid JSON: .* at line 1, column \d+", str(err), re.S), (
        info.value
    )
    assert _tree_hashes(bundle / "models") == models_before


def test_all_problems_are_reported_together(user_data, tmp_path):
    def two_problems(s, folder):
        s["training"][1]["image"] = "nope.nii.gz"
        s["validation"][2]["label"] = 7

    datalist = _datalist_variant(user_data, tmp_path, two_problems)
    with pytest.raises(BundleInputError) as info:
        load_bundle_inputs(datalist, DatalistSpec(num_classes=2, in_channels=1, min_training_sites=2))
    assert len(info.value.problems) == 2
    assert "[training] entry 1 (subject 's1')" in str(info.value) and "[validation] entry 2 (subject 's22')" in str(
        info.value
    )


def test_multimodal_keys_and_grids_are_checked(user_data, tmp_path):
    folder = tmp_path / "mm"
    shutil.copytree(user_data, folder)
    _scan(folder / "flair-00.nii.gz", seed=100)
    _scan(folder / "flair-big.nii.gz", seed=101, shape=(16, 16, 12))
    flipped = nib.load(str(folder / "flair-00.nii.gz"))
    nib.save(
        nib.Nifti1Image(np.asarray(flipped.dataobj), np.diag([-4.0, 4.0, 4.0, 1.0])), str(folder / "flair-lr.nii.gz")
    )
    sections = json.loads((folder / "datalist.json").read_text())
    train = sections["training"]
    train[0]["flair"] = "flair-00.nii.gz"
    train[1]["FLAIR"] = "flair-00.nii.gz"  # other case: would be silently ignored
    train[2]["flair"] = "flair-big.nii.gz"  # another shape
    train[3]["flair"] = "flair-lr.nii.gz"  # another orientation
    del train[4]["image"]  # the required contrast is missing
    (folder / "datalist.json").write_text(json.dumps(sections))
    with pytest.raises(BundleInputError) as info:
        load_bundle_inputs(
            folder / "datalist.json",
            DatalistSpec(image_keys=("image", "flair"), optional_image_keys=("flair",), num_classes=2, in_channels=1),
        )
    text = str(info.value)
    assert len(info.value.problems) == 4, text
    assert re.search(r"entry 1 .*key 'FLAIR' is not used: did you mean 'flair'\?", text)
    assert re.search(
        r"entry 2 .*modalities 'image' and 'flair' differ in shape/orientation: \(16, 16, 16\) RAS vs \(16, 16, 12\)",
        text,
    )
    assert re.search(r"entry 3 .*differ in shape/orientation: \(16, 16, 16\) RAS vs \(16, 16, 16\) LAS", text)
    assert re.search(r"entry 4 \(subject 's4'\): missing image key 'image'", text)


def test_cohort_is_never_generated_into_a_users_folder(user_data, bundle, tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(user_data, folder)
    (folder / "datalist.json").unlink()  # no datalist: the bundle would generate the synthetic cohort here
    before = _tree_hashes(folder)
    with pytest.raises(Exception) as info:
        run_workflow(bundle / "configs", "train.json", bundle, "train", dataset_dir=str(folder), spatial_size=SIZE)
    err = _find(info.value, FileExistsError)
    assert err is not None and "refusing to generate" in str(err) and "sub-00.nii.gz" in str(err), info.value
    assert _tree_hashes(folder) == before


@pytest.fixture(scope="module")
def trained(user_data, tmp_path_factory) -> Path:
    """The bundle trained for 2 epochs on the user's scans, promoted into its models/ (replace_models true), with
    an extra file in models/ that is not part of the artifact set."""
    root = tmp_path_factory.mktemp("trained") / "bundle"
    for part in ("configs", "models"):
        shutil.copytree(BUNDLE / part, root / part)
    (root / "models" / "notes.txt").write_text("mine")
    run_workflow(
        root / "configs", "train.json", root, "train", datalist=str(user_data / "datalist.json"),
        replace_models=True, **{**TINY_TRAIN, "train#trainer#max_epochs": 2},
    )  # fmt: skip
    return root


def test_promotion_replaces_models_with_one_complete_verified_set(trained, user_data):
    manifest = json.loads((trained / "models" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.pt", "z_predictor.pt", "site_vocabulary.json", "intensity_stats.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((trained / "models" / name).read_bytes()).hexdigest() == digest
    assert manifest["sites"] == ["a", "b"] and manifest["num_sites"] == 2 and manifest["seed"] == 0
    datalist_hash = hashlib.sha256((user_data / "datalist.json").read_bytes()).hexdigest()
    assert manifest["datalist"]["sha256"] == datalist_hash and manifest["epochs"] == 2
    assert manifest["input_profile"]["image"]["spacing"] == {"min": [4.0] * 3, "max": [4.0] * 3}
    assert {"torch", "monai", "monai-medl", "python"} <= set(manifest["versions"])
    assert (trained / "models" / "notes.txt").read_text() == "mine"  # files outside the set are carried over
    run_dir = Path(manifest["run"])
    assert run_dir.parent == trained / "runs" and list((run_dir / "models").glob("checkpoint_epoch=2.pt"))
    assert not list(trained.glob("models.*"))  # no staging or previous folder left behind


def test_evaluation_refuses_a_mixed_set(trained, tmp_path):
    mixed = tmp_path / "models"
    shutil.copytree(trained / "models", mixed)
    shutil.copy(BUNDLE / "models" / "z_predictor.pt", mixed / "z_predictor.pt")  # from another run
    with pytest.raises(Exception) as info:
        run_workflow(trained / "configs", "inference.json", trained, "infer", ckpt_dir=str(mixed), spatial_size=SIZE)
    err = _find(info.value, ArtifactError)
    assert err is not None and "z_predictor.pt does not match the manifest" in str(err), info.value


def _predictions(root: Path) -> list[dict]:
    with open(root / "eval" / "inference_predictions.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_inference_predicts_the_good_scans_and_reports_the_bad_one(trained, user_data, tmp_path, caplog):
    folder = tmp_path / "new"
    shutil.copytree(user_data, folder)
    raw = (folder / "sub-21.nii.gz").read_bytes()
    (folder / "sub-21.nii.gz").write_bytes(raw[: len(raw) // 3])  # corrupt one test scan
    _scan(folder / "sub-26.nii.gz", seed=26, spacing=(1.0, 1.0, 1.0))  # far finer than training (4 mm)
    sections = json.loads((folder / "datalist.json").read_text())
    sections["test"] = sections["validation"][:2] + sections["test"]  # seen sites a/b and unseen site c
    (folder / "datalist.json").write_text(json.dumps(sections))
    with caplog.at_level(logging.WARNING), pytest.raises(Exception) as info:
        run_workflow(
            trained / "configs", "inference.json", trained, "infer", input=str(folder / "datalist.json"),
            spatial_size=SIZE, unseen_mode="population",
        )  # fmt: skip
    err = _find(info.value, InvalidScansError)
    assert err is not None and "1 scan(s) could not be predicted" in str(err) and "sub-21.nii.gz" in str(err)
    rows = _predictions(trained)
    bad = [r for r in rows if r["error"]]
    good = [r for r in rows if not r["error"]]
    assert len(bad) == 1 and bad[0]["image"].endswith("sub-21.nii.gz") and "truncated" in bad[0]["error"]
    assert len(good) == len(sections["test"]) - 1 and all(0.0 <= float(r["probability"]) <= 1.0 for r in good)
    unseen = [r for r in good if r["site"] == "c"]
    assert unseen and {r["z"] for r in unseen} == {"zero"}  # population prediction for the unseen site
    assert "sites not seen in training: 'c'" in caplog.text
    finer = next(r for r in good if r["image"].endswith("sub-26.nii.gz"))
    assert "spacing (1.0, 1.0, 1.0) mm is far from the training range" in finer["input_warning"]
    assert all(not r["input_warning"] for r in good if not r["image"].endswith("sub-26.nii.gz"))


def _final_weights(root: Path) -> dict[str, torch.Tensor]:
    ckpt = max(root.glob("runs/*/models/checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))
    return torch.load(ckpt, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(user_data, tmp_path):
    roots = {}
    for name in ("straight", "resumed"):
        roots[name] = tmp_path / name
        shutil.copytree(BUNDLE / "configs", roots[name] / "configs")
    common = {"datalist": str(user_data / "datalist.json"), **TINY_TRAIN}
    run_workflow(
        roots["straight"] / "configs",
        "train.json",
        roots["straight"],
        "train",
        **common,
        **{"train#trainer#max_epochs": 3},
    )
    r = roots["resumed"]
    run_workflow(r / "configs", "train.json", r, "train", run_name="a", **common, **{"train#trainer#max_epochs": 2})
    run_workflow(
        r / "configs", "train.json", r, "train", run_name="a", resume=True, **common, **{"train#trainer#max_epochs": 3}
    )
    straight, resumed = _final_weights(roots["straight"]), _final_weights(r)
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    manifest = json.loads((r / "runs" / "a" / "models" / "manifest.json").read_text())
    assert manifest["epochs"] == 3


@pytest.mark.slow
def test_sigkill_leaves_models_untouched_and_the_run_resumes(user_data, bundle):
    models_before = _tree_hashes(bundle / "models")
    # far more epochs than can run before the kill; the saver keeps the newest two checkpoints, so the kill comes at
    # any epoch >= 2: a fast machine finishes several epochs between two polls
    many_epochs = "1000"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
        "--bundle_root", str(bundle), "--datalist", str(user_data / "datalist.json"), "--generate_cohort", "false",
        "--spatial_size", "[16,16,16]", "--train#trainer#max_epochs", many_epochs, "--train#dataloader#batch_size", "8",
        "--early_stop_patience", "100", "--replace_models", "true", "--run_name", "killed",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    run_models = bundle / "runs" / "killed" / "models"
    deadline = time.time() + 240

    def epochs_saved() -> int:
        return max((int(p.stem.split("=")[1]) for p in run_models.glob("checkpoint_epoch=*.pt")), default=0)

    while epochs_saved() < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _tree_hashes(bundle / "models") == models_before
    epochs_done = epochs_saved()
    assert epochs_done >= 2
    at = cmd.index(many_epochs)
    resume = [*cmd[:at], str(epochs_done + 1), *cmd[at + 1 :], "--resume", "true"]
    done = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((bundle / "models" / "manifest.json").read_text())
    assert manifest["epochs"] == epochs_done + 1 and manifest["run"].endswith("killed")
    assert f"Epoch[{epochs_done + 1}] Complete" in done.stdout + done.stderr
    assert "Epoch[1] Complete" not in done.stdout + done.stderr  # it continued, not restarted


def test_inference_reports_each_bad_input_as_an_error_row(trained, user_data, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(user_data, folder)
    (folder / "sub-20.nii.gz").write_bytes((folder / "sub-20.nii.gz").read_bytes()[:200])  # truncated
    _nonfinite(np.nan)(None, folder)  # sub-04: a NaN voxel
    _scan(folder / "sub-05.nii.gz", seed=5, shape=(16, 16))  # 2-D
    _scan(folder / "sub-06.nii.gz", seed=6, shape=(16, 16, 16, 2))  # 2 channels
    entries = [
        {"image": "sub-20.nii.gz", "site": "a"},
        {"image": "nope.nii.gz", "site": "a"},
        {"image": "sub-04.nii.gz", "site": "a"},
        {"image": "sub-05.nii.gz", "site": "b"},
        {"image": "sub-06.nii.gz", "site": "b"},
        {"Image": "sub-07.nii.gz", "site": "b"},
        {"image": "sub-08.nii.gz", "site": "b"},  # the only good one
    ]
    (folder / "list.json").write_text(json.dumps({"test": entries}))
    with pytest.raises(Exception) as info:
        run_workflow(
            trained / "configs", "inference.json", trained, "infer", input=str(folder / "list.json"), spatial_size=SIZE
        )
    err = _find(info.value, InvalidScansError)
    assert (
        err is not None
        and "6 scan(s) could not be predicted" in str(err)
        and "1 other scan(s) were predicted" in str(err)
    )
    rows = _predictions(trained)
    errors = [r["error"] for r in rows if r["error"]]
    expected = [
        "unreadable or truncated",
        "file not found",
        "1 NaN/Inf voxel",
        "(2-D); expected 3-D",
        "2 channel(s); expected 1",
        "key 'Image' is not used: did you mean 'image'?",
    ]
    assert len(errors) == len(expected) and all(e in err for e, err in zip(expected, errors)), errors
    good = [r for r in rows if not r["error"]]
    assert len(good) == 1 and good[0]["image"].endswith("sub-08.nii.gz") and good[0]["probability"]


def test_inference_datalist_syntax_error_is_one_clear_error(trained, tmp_path):
    bad = tmp_path / "list.json"
    bad.write_text('{"test": [{"image": "a.nii.gz" "site": "a"}]}')
    with pytest.raises(Exception) as info:
        run_workflow(trained / "configs", "inference.json", trained, "infer", input=str(bad), spatial_size=SIZE)
    err = _find(info.value, BundleInputError)
    assert err is not None and "list.json" in str(err) and "not valid JSON" in str(err) and "line 1, column" in str(err)


def test_a_checkpoint_cut_off_mid_write_is_skipped_for_the_previous_one(tmp_path, caplog):
    """A SIGKILL while MONAI's saver writes checkpoint N leaves a partial file next to checkpoint N-1."""
    from monai_medl.bundle import TrainingRun

    models = tmp_path / "runs" / "r" / "models"
    models.mkdir(parents=True)
    for epoch in (3, 4):
        torch.save({"w": torch.randn(2000)}, models / f"checkpoint_epoch={epoch}.pt")
    raw = (models / "checkpoint_epoch=4.pt").read_bytes()
    (models / "checkpoint_epoch=4.pt").write_bytes(raw[: len(raw) // 2])
    with caplog.at_level(logging.WARNING):
        run = TrainingRun(tmp_path / "runs", name="r", resume=True)
    assert run.last_checkpoint == str(models / "checkpoint_epoch=3.pt")
    assert "checkpoint_epoch=4.pt is incomplete" in caplog.text
    (models / "checkpoint_epoch=3.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        TrainingRun(tmp_path / "runs", name="r", resume=True)
