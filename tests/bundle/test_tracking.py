# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""One naming scheme for TensorBoard and MONAI's ``--tracking mlflow``, in every bundle: one epoch of each bundle's
train.json on a tiny set, tracked by the real MLflow package into a local SQLite store in a temp folder, with every
network connection refused and recorded."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="the tracking extra: pip install 'monai-medl[tracking]'")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from tests.bundle.bundle_checks import run_workflow  # noqa: E402

TELEMETRY = "MLFLOW_DISABLE_TELEMETRY"  # MLflow 3 sends usage data to config.mlflow-telemetry.io unless set
BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
ONE_EPOCH = {"train#trainer#max_epochs": 1, "val_interval": 1, "replace_models": True}
TINY = {
    "mri_me_cnn_classification": {
        "spatial_size": [16, 16, 16],
        "cohort#num_subjects": 48,
        "cohort#spacing": [12.0, 12.0, 12.0],
        "train#dataloader#batch_size": 8,
    },
    "mri_multimodal_me_cnn_classification": {
        "cohort#num_subjects": 40,
        "cohort#spatial_size": [16, 16, 16],
        "cohort#spacing": [12.0, 12.0, 12.0],
        "spatial_size": [16, 16, 16],
    },
    "mri_me_unet_segmentation": {
        "cohort#num_subjects": 18,
        "cohort#spatial_size": [24, 24, 24],
        "cohort#spacing": [8.0, 8.0, 8.0],
        "patch_size": [16, 16, 16],
    },
    "livecell_me_autoencoder": {"data_config#tiles_per_batch": 10},
}
# the validation metric each bundle tracks (overall), and whether it also has per-site validation curves
VAL = {
    "mri_me_cnn_classification": ("val/auroc", True),
    "mri_multimodal_me_cnn_classification": ("val/auroc", True),
    "mri_me_unet_segmentation": ("val/mean_dice", False),
    "livecell_me_autoencoder": ("val/auc", False),
}


@pytest.fixture
def no_network(monkeypatch):
    """Refuse, and record, every attempt to resolve a host name or open a network connection. MLflow's usage
    telemetry is left on at the start (the bundle's ``initialize`` must turn it off) and cleared afterwards."""
    attempts: list[str] = []
    before = os.environ.pop(TELEMETRY, None)

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: refuse(address))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    os.environ.pop(TELEMETRY, None)
    if before is not None:
        os.environ[TELEMETRY] = before


def _tensorboard_tags(root: Path) -> tuple[set[str], int]:
    files = list(root.glob("runs/*/tensorboard/events.out.tfevents.*"))
    tags: set[str] = set()
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags, len(files)


@pytest.mark.parametrize("bundle", sorted(TINY))
def test_mlflow_and_tensorboard_get_the_same_names(bundle, tmp_path, no_network):
    root = tmp_path / bundle
    shutil.copytree(BUNDLES / bundle / "configs", root / "configs")
    shutil.copy(BUNDLES / bundle / "LICENSE", root / "LICENSE")
    store = tmp_path / "tracking"
    overrides = {**TINY[bundle], **ONE_EPOCH, "dataset_dir": str(tmp_path / "data"), "output_dir": str(store)}
    run_workflow(root / "configs", "train.json", root, "train", tracking="mlflow", **overrides)
    assert no_network == [], no_network  # MLflow and everything else stayed off the network

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs, "MLflow recorded no run"
    tracked = set().union(*(set(r.data.metrics) for r in runs))
    val_metric, per_site = VAL[bundle]
    assert {"train/epoch/loss", val_metric} <= tracked, sorted(tracked)
    if per_site:
        assert {"val/balanced_accuracy", "val/seen/auroc"} <= tracked
        site_curves = {m for m in tracked if m.startswith("val/site/") and m.endswith("/auroc")}
        assert len(site_curves) >= 2, sorted(tracked)
    history = [m.step for r in runs for m in client.get_metric_history(r.info.run_id, val_metric)]
    assert history == [1]  # one validation, at the trainer's epoch 1

    tags, num_files = _tensorboard_tags(root)
    assert num_files == 1  # one writer shared by the bundle's TensorBoard handlers
    # every name MLflow got is a TensorBoard tag, but MONAI's own: the loss per iteration as "train_loss" and the
    # optimizer's learning rates; the per-iteration values sit in TensorBoard beside the epoch means
    monai_own = {"train_loss"} | {m for m in tracked if m.startswith("lr_group_")}
    assert tracked - monai_own <= tags, sorted(tracked - monai_own - tags)
    assert "train/iteration/loss" in tags
    if bundle == "mri_me_cnn_classification":  # FreshProbeHandler logs through the same handlers, same names
        assert {"train/epoch/fresh_probe_acc", "train/epoch/fresh_probe_floor"} <= tracked & tags
    assert not [t for t in tags if t.startswith(("loss/", "adversary/")) or t in ("val_auroc", "val_mean_dice")]
