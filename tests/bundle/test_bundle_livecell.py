# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The live-cell ME-autoencoder bundle: metadata and network checks, and train -> evaluate -> inference."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("skimage") is None:
    pytest.skip("scikit-image (the source of the real cell image) is not installed", allow_module_level=True)

from monai.bundle import ConfigWorkflow  # noqa: E402

from tests.bundle.bundle_checks import (  # noqa: E402
    check_layout_and_metadata,
    run_multi_gpu_train,
    run_workflow,
    verify_and_export,
)  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "livecell_me_autoencoder"
CONFIGS = BUNDLE / "configs"


def test_bundle_layout_and_metadata():
    check_layout_and_metadata(BUNDLE)


def test_network_in_out_and_torchscript_export(tmp_path):
    network, scripted = verify_and_export(BUNDLE, tmp_path)  # shipped weights: a plain state_dict of network_def
    x, z = torch.rand(2, 1, 32, 32), torch.eye(6)[[0, 5]]
    assert torch.allclose(scripted(x, z), network(x, z), atol=1e-5)


def _workflow(config_files, root: Path, workflow_type: str, **override) -> ConfigWorkflow:
    return run_workflow(CONFIGS, config_files, root, workflow_type, logging_file=True, **override)


def test_train_evaluate_inference_on_a_tiny_set(tmp_path):
    tiny = {"data_config#tiles_per_batch": 10, "dataset_dir": str(tmp_path / "data"), "replace_models": True}
    _workflow(["train.json"], tmp_path, "train", **tiny, **{"train#trainer#max_epochs": 1, "val_interval": 1})
    # the generator wrote the set on first run; training wrote a plain state_dict of network_def
    assert (tmp_path / "data" / "ground_truth.json").is_file()
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.pt", "site_vocabulary.json"} and manifest["num_sites"] == 6
    assert all(isinstance(v, torch.Tensor) for v in state.values()) and "re.encoder.0.cluster_norm.gamma.loc" in state
    # TensorBoard got the losses, the reconstructions and the counterfactual panel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {"images": set(), "scalars": set()}
    for event_file in tmp_path.glob("runs/*/tensorboard/*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
    assert any(t.startswith("counterfactual") for t in tags["images"])
    assert any("output" in t for t in tags["images"])  # TensorBoardImageHandler: reconstructions
    names = {"train/iteration/adv_loss", "train/iteration/recon", "train/epoch/recon", "val/auc", "val/mse"}
    assert names <= tags["scalars"], sorted(tags["scalars"])

    _workflow(["train.json", "evaluate.json"], tmp_path, "train", **tiny)
    for split in ("seen", "unseen"):
        rows = dict(csv.reader(open(tmp_path / "eval" / split / "metrics.csv"), delimiter=","))
        assert 0 <= float(rows["val_auc"]) <= 1 and 0 < float(rows["val_mse"]) < 0.5

    _workflow(["inference.json"], tmp_path, "infer", dataset_dir=str(tmp_path / "data"))
    with open(tmp_path / "eval" / "inference_predictions.csv") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 6 * 2 + 2 * 10  # test_seen (2 per seen day) + test_unseen (10 per unseen day)
    assert all(0 <= float(p["probability"]) <= 1 and p["image"].endswith(".npy") for p in preds)
    assert sum(p["z"] == "zero" for p in preds) == 2 * 10  # the unseen days: population prediction
    assert (tmp_path / "eval" / "counterfactuals.png").stat().st_size > 10_000


@pytest.mark.slow
def test_two_process_gloo_training_with_torchrun(tmp_path):
    """multi_gpu_train.json on CPU: 2 processes, gloo, dataset generated once, rank-0 logging and checkpoint."""
    root = tmp_path / "livecell_me_autoencoder"
    overrides = [
        "--dataset_dir", str(tmp_path / "data"),
        "--data_config#tiles_per_batch", "10",
        "--train#trainer#max_epochs", "2",
        "--val_interval", "1",
        "--replace_models", "true",
    ]  # fmt: skip
    log = run_multi_gpu_train(CONFIGS, root, overrides)
    assert log.count("SupervisedTrainer - INFO - Engine run finished") == 2, log[-3000:]  # both ranks trained
    assert (tmp_path / "data" / "ground_truth.json").is_file()
    # the checkpoint is the plain (unwrapped) state dict of network_def, written once
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "re.encoder.0.cluster_norm.gamma.loc" in state and not any(k.startswith("module.") for k in state)
