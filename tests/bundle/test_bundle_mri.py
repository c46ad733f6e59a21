# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The MRI ME-CNN bundle: layout and metadata checks, and train -> evaluate -> inference through monai.bundle on a
tiny generated cohort, followed by the model-zoo checks (verify_net_in_out, ckpt_export) on the trained bundle."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata
from sklearn.metrics import roc_auc_score

from tests.bundle.bundle_checks import meta_schema, run_multi_gpu_train, run_workflow, verify_and_export

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mri_me_cnn_classification"
CONFIGS = BUNDLE / "configs"

# a tiny cohort: 16^3 voxels of 12 mm, 6 seen + 2 unseen sites
TINY = {
    "spatial_size": [16, 16, 16],
    "cohort#num_subjects": 64,
    "cohort#spacing": [12.0, 12.0, 12.0],
    "train#trainer#max_epochs": 2,
    "train#dataloader#batch_size": 8,
}


def _load(name: str) -> dict:
    with open(CONFIGS / name, encoding="utf-8") as f:
        return json.load(f)


def test_bundle_layout_and_required_ids():
    for rel in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/metadata.json"):
        assert (BUNDLE / rel).is_file(), rel
    for name in ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json"):
        assert (CONFIGS / name).is_file(), name
    meta = _load("metadata.json")
    assert meta["version"] in meta["changelog"]
    assert "optional_packages_version" not in meta
    train, infer = _load("train.json"), _load("inference.json")
    for key in ("bundle_root", "device", "dataset_dir", "network_def", "train", "validate", "run"):
        assert key in train, key
    for key in ("trainer", "dataset", "inferer", "handlers"):
        assert key in train["train"], key
    for key in ("bundle_root", "device", "dataset_dir", "dataset", "evaluator", "network_def", "inferer"):
        assert key in infer, key
    # inference is standalone but must build exactly the trained network and preprocessing
    assert infer["network_def"] == train["network_def"]
    assert infer["z_predictor_def"] == train["z_predictor_def"]
    infer_steps = [t["_target_"] for t in infer["preprocessing"]["transforms"]]
    train_steps = [t["_target_"] for t in train["load_transforms"] + train["site_transforms"]]
    assert infer_steps == train_steps
    assert infer["spatial_size"] == train["spatial_size"]


def test_compile_switch_reaches_the_trainer_and_the_training_batches_drop_metadata():
    # SupervisedTrainer(compile=True) re-wraps the prediction in a MetaTensor when the image was one, which a
    # structured training output cannot be (tests/engines/test_compiled_trainer.py runs that path)
    train = _load("train.json")
    assert train["compile"] is False and train["compile_kwargs"] == {}
    trainer = train["train"]["trainer"]
    assert trainer["compile"] == "@compile" and trainer["compile_kwargs"] == "@compile_kwargs"
    assert trainer["prepare_batch"] == "@train#prepare_batch"
    prepare = train["train"]["prepare_batch"]
    assert prepare["keep_meta"] == "$not @compile" and prepare["num_clusters"] == train["prepare_batch"]["num_clusters"]
    assert train["validate"]["evaluator"]["prepare_batch"] == "@prepare_batch"  # evaluation keeps the metadata


def test_the_adversary_is_the_mechanism_the_study_selection_chose():
    from benchmarks.invariance import resolve_invariance

    selection = json.loads((BUNDLE.parents[1] / "benchmarks/results/mri_study_selection.json").read_text())
    spec = resolve_invariance(selection["config"]["chosen_settings"]["invariance"])
    train = _load("train.json")
    assert spec["kind"] == "adversary" and not spec["label_conditional"]
    handler = train["train"]["handlers"][1]
    assert handler["_target_"] == "monai_medl.handlers.AdversaryHandler"
    assert train["train"]["checkpoint"]["save_dict"]["adversary_state"] == "@train#handlers#1"
    assert train["lambda_g"] == spec["lambda"] and handler["lambda_g"] == "@lambda_g"
    for key in ("objective", "steps", "memory", "feature_scaling", "update"):
        assert handler[key] == spec[key], key
    assert "label_classes" not in handler and train["adversary"] == "$@network_def.make_adversary().to(@device)"
    assert spec["hidden"] == [64, 32] and spec["lr"] == train["learning_rate"]  # make_adversary's default width
    assert spec["taps"] == "h"
    for name in ("train.json", "inference.json"):  # the adversary reads h only; the weights' layout follows it
        assert _load(name)["network_def"]["tap_layers"] == [], name


def test_metadata_against_the_shared_schema():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=meta_schema())


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory):
    """A copy of the bundle trained for 2 tiny epochs on a cohort generated on first run."""
    root = tmp_path_factory.mktemp("bundle") / "mri_me_cnn_classification"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    shutil.copy(BUNDLE / "LICENSE", root / "LICENSE")
    run_workflow(root / "configs", "train.json", root, "train", replace_models=True, **TINY)
    return root


def test_training_generates_the_cohort_and_writes_every_artefact(trained_bundle):
    root = trained_bundle
    data = json.loads((root / "data" / "datalist.json").read_text())
    truth = json.loads((root / "data" / "ground_truth.json").read_text())
    assert len(truth["seen_sites"]) == 6 and len(truth["unseen_sites"]) == 2
    assert {e["site"] for e in data["training"]} == set(truth["seen_sites"])
    # vocabulary and intensity statistics come from the training split only
    vocab = json.loads((root / "models" / "site_vocabulary.json").read_text())
    assert vocab["sites"] == sorted(truth["seen_sites"])
    stats = json.loads((root / "models" / "intensity_stats.json").read_text())
    assert set(stats["stats"]["image"]) - {"__pooled__"} == set(truth["seen_sites"])
    # model.pt: a plain state_dict of network_def
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    parser["spatial_size"] = TINY["spatial_size"]
    net = parser.get_parsed_content("network_def")
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    # the training checkpoint holds model, adversary, z-predictor and all optimizers
    # the training checkpoint (in the run's own folder) holds everything a resumed run needs
    ckpts = sorted(root.glob("runs/*/models/checkpoint_epoch=*.pt"))
    assert ckpts, sorted(os.listdir(root / "runs"))
    ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    expected = {"model", "adversary", "z_predictor", "optimizer", "adv_optimizer", "z_optimizer", "trainer", "progress"}
    assert expected | {"adversary_state"} <= set(ckpt)
    assert len(ckpt["adversary_state"]["memory"]) == 4  # the adversary's memory of past batches resumes with it
    assert not list((root / "models").glob("checkpoint*"))  # checkpoints are not promoted
    assert (root / "models" / "z_predictor.pt").is_file() and (root / "models" / "manifest.json").is_file()
    assert list(root.glob("runs/*/tensorboard/events.out.tfevents.*")), "no TensorBoard events written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in root.glob("runs/*/tensorboard/events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    # the fresh site probe, refitted each epoch on the validation scans, beside the adversary's accuracy, under the
    # one naming scheme and in the run's one event file
    assert {"train/epoch/fresh_probe_acc", "train/epoch/fresh_probe_floor", "train/epoch/adv_acc"} <= tags, tags
    assert not [t for t in tags if t.startswith("invariance/") or t.endswith("adv_acc_epoch")], tags
    assert len(list(root.glob("runs/*/tensorboard/events.out.tfevents.*"))) == len(list(root.glob("runs/*/")))


def test_evaluate_reports_per_site_seen_unseen_and_modes(trained_bundle):
    root = trained_bundle
    run_workflow(root / "configs", ["train.json", "evaluate.json"], root, "eval", check_properties=False, **TINY)
    with open(root / "eval" / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    truth = json.loads((root / "data" / "ground_truth.json").read_text())
    modes = {r["mode"] for r in rows}
    assert {"population", "inferred", "mixed"} == modes
    for mode in modes:
        groups = {r["group"] for r in rows if r["mode"] == mode}
        assert {"overall", "seen", "unseen", "site"} <= groups
        sites = {r["site"] for r in rows if r["mode"] == mode and r["group"] == "site"}
        assert set(truth["unseen_sites"]) <= sites
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert len(metrics) == len(rows)
    with open(root / "eval" / "predictions.csv", encoding="utf-8") as f:
        preds = list(csv.DictReader(f))
    # each reported AUROC is the one of its own rows of predictions.csv (test split, that mode, that group)
    for mode in modes:
        for group, seen in (("seen", "True"), ("unseen", "False")):
            scans = [p for p in preds if p["mode"] == mode and p["split"] == "test" and p["seen"] == seen]
            expected = roc_auc_score([float(p["label"]) for p in scans], [float(p["probability"]) for p in scans])
            reported = next(r for r in rows if r["mode"] == mode and r["group"] == group)
            assert float(reported["auroc"]) == pytest.approx(expected, abs=1e-9) and int(reported["n"]) == len(scans)
    unseen_inferred = [p for p in preds if p["mode"] == "inferred" and p["seen"] == "False"]
    assert unseen_inferred and {p["z"] for p in unseen_inferred} == {"soft:z-predictor"}
    assert {p["z"] for p in preds if p["mode"] == "population"} == {"zero"}
    # the balanced-accuracy threshold of a mode is the same for every group: it was chosen on training scans
    for mode in modes:
        assert len({r["threshold"] for r in rows if r["mode"] == mode}) == 1


def _infer(root: Path, caplog, **overrides) -> list[dict]:
    with caplog.at_level(logging.WARNING):
        run_workflow(root / "configs", "inference.json", root, "infer", spatial_size=TINY["spatial_size"], **overrides)
    with open(root / "eval" / "inference_predictions.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_inference_on_the_datalist_and_on_a_folder_of_unseen_site_scans(trained_bundle, caplog, tmp_path):
    root = trained_bundle
    rows = _infer(root, caplog)
    truth = json.loads((root / "data" / "ground_truth.json").read_text())
    unseen = [r for r in rows if r["site"] in truth["unseen_sites"]]
    assert unseen and all(r["z"] == "soft:z-predictor" for r in unseen)
    assert all(r["z"] == f"one-hot:{r['site']}" for r in rows if r["site"] in truth["seen_sites"])
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    assert "predicting them with mode 'inferred'" in caplog.text
    caplog.clear()
    folder = tmp_path / "scans"
    folder.mkdir()
    data = json.loads((root / "data" / "datalist.json").read_text())
    for e in data["test"][:3]:
        shutil.copy(root / "data" / e["image"], folder / Path(e["image"]).name)
    rows = _infer(root, caplog, input=str(folder), unseen_mode="population")
    assert len(rows) == 3 and {r["z"] for r in rows} == {"zero"} and {r["site"] for r in rows} == {"unknown"}
    assert "predicting them with mode 'population'" in caplog.text


def test_model_zoo_checks_on_the_trained_bundle(trained_bundle, tmp_path):
    # verify_net_in_out feeds the metadata's 32^3 input shape; the network pools globally, so it accepts it
    net, scripted = verify_and_export(trained_bundle, tmp_path, spatial_size=TINY["spatial_size"])
    x = torch.randn(2, 1, *TINY["spatial_size"])
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
        z = torch.eye(net.num_clusters)[[0, 1]]
        torch.testing.assert_close(scripted(x, z), net(x, z))


@pytest.mark.slow
def test_two_process_gloo_training_with_torchrun(trained_bundle, tmp_path):
    """multi_gpu_train.json on CPU: 2 processes, gloo, DistributedSampler, rank-0 logging and checkpoints."""
    root = tmp_path / "mri_me_cnn_classification"
    overrides = [
        "--dataset_dir", str(trained_bundle / "data"),
        "--spatial_size", "[16,16,16]",
        "--train#trainer#max_epochs", "1",
        "--train#dataloader#batch_size", "8",
        "--replace_models", "true",
    ]  # fmt: skip
    run_multi_gpu_train(BUNDLE / "configs", root, overrides)
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "z_predictor.pt").is_file()
