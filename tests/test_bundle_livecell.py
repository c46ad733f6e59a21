# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The live-cell ME-autoencoder bundle: metadata and network checks, and train -> evaluate -> inference."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("skimage") is None:
    pytest.skip("scikit-image (the source of the real cell image) is not installed", allow_module_level=True)

from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "livecell_me_autoencoder"
CONFIGS = BUNDLE / "configs"
SCHEMA_CANDIDATES = [
    os.environ.get("MONAI_MEDL_BUNDLE_SCHEMA", ""),
    str(REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"),
    "/work/shared/monai/meta_schema_20240725.json",
]


def _schema() -> str:
    for path in SCHEMA_CANDIDATES:
        if path and os.path.isfile(path):
            return path
    pytest.skip(f"bundle metadata schema meta_schema_20240725.json not found in {SCHEMA_CANDIDATES}")


def test_bundle_layout_and_metadata():
    for rel in (
        "LICENSE",
        "configs/metadata.json",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/logging.conf",
        "docs/README.md",
        "models/model.pt",
    ):
        assert (BUNDLE / rel).is_file(), rel
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=_schema())
    meta = ConfigParser.load_config_file(CONFIGS / "metadata.json")
    assert meta["version"] in meta["changelog"]
    assert (BUNDLE / "models" / "model.pt").stat().st_size < 25 * 2**20


def test_network_in_out_and_torchscript_export(tmp_path):
    kwargs = {
        "meta_file": str(CONFIGS / "metadata.json"),
        "config_file": str(CONFIGS / "inference.json"),
        "bundle_root": str(BUNDLE),
    }
    verify_net_in_out(net_id="network_def", **kwargs)
    # the shipped weights are a plain state_dict of network_def (strict load) and export to TorchScript
    ts_path = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(BUNDLE / "models" / "model.pt"), **kwargs)
    net = ConfigParser.load_config_file(CONFIGS / "inference.json")
    parser = ConfigParser(net)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    scripted = torch.jit.load(str(ts_path))
    x, z = torch.rand(2, 1, 32, 32), torch.eye(6)[[0, 5]]
    network.eval()
    assert torch.allclose(scripted(x, z), network(x, z), atol=1e-5)


def _workflow(config_files, root: Path, workflow_type: str, **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        **override,
    )
    wf.initialize()
    assert wf.check_properties() in (None, [])
    wf.run()
    wf.finalize()
    return wf


def test_train_evaluate_inference_on_a_tiny_set(tmp_path):
    tiny = {"data_config#tiles_per_batch": 10, "dataset_dir": str(tmp_path / "data")}
    _workflow(["train.json"], tmp_path, "train", **tiny, **{"train#trainer#max_epochs": 1, "val_interval": 1})
    # the generator wrote the set on first run; training wrote a plain state_dict of network_def
    assert (tmp_path / "data" / "ground_truth.json").is_file()
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values()) and "re.encoder.0.cluster_norm.gamma.loc" in state
    # TensorBoard got the losses, the reconstructions and the counterfactual panel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {"images": set(), "scalars": set()}
    for event_file in (tmp_path / "runs").iterdir():
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
    assert any(t.startswith("counterfactual") for t in tags["images"])
    assert any("output" in t for t in tags["images"])  # TensorBoardImageHandler: reconstructions
    assert {"adv_loss", "recon", "val_auc", "val_mse"} <= tags["scalars"]

    _workflow(["train.json", "evaluate.json"], tmp_path, "train", **tiny)
    for split in ("seen", "unseen"):
        rows = dict(csv.reader(open(tmp_path / "eval" / split / "metrics.csv"), delimiter=","))
        assert 0 <= float(rows["val_auc"]) <= 1 and 0 < float(rows["val_mse"]) < 0.5

    _workflow(["inference.json"], tmp_path, "infer", dataset_dir=str(tmp_path / "data"))
    with open(tmp_path / "eval" / "predictions.csv") as f:
        preds = list(csv.reader(f))
    assert len(preds) == 6 * 2 + 2 * 10  # test_seen (2 per seen day) + test_unseen (10 per unseen day)
    assert all(0 <= float(p[1]) <= 1 for p in preds)
    assert (tmp_path / "eval" / "counterfactuals.png").stat().st_size > 10_000
