# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The multimodal MRI ME-CNN bundle: metadata and network checks, and train -> evaluate -> inference (tiny cohort)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_medl.networks.nets import ModalityFallback
from tests.bundle.bundle_checks import (  # noqa: E402
    check_layout_and_metadata,
    run_multi_gpu_train,
    run_workflow,
    verify_and_export,
)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "mri_multimodal_me_cnn_classification"
CONFIGS = BUNDLE / "configs"
TINY = {  # 40 subjects on a coarse grid, 24^3 network input, two epochs
    "cohort#num_subjects": 40,
    "cohort#spatial_size": [32, 32, 32],
    "cohort#spacing": [6.0, 6.0, 6.0],
    "spatial_size": [24, 24, 24],
}


def test_bundle_layout_and_metadata():
    meta = check_layout_and_metadata(
        BUNDLE, extra_files=("configs/multi_gpu_train.json", "models/site_vocabulary.json")
    )
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2


def test_shipped_network_in_out_and_torchscript_export(tmp_path):
    network, scripted = verify_and_export(BUNDLE, tmp_path)
    k = network.num_clusters
    x, z = torch.rand(3, 2, 32, 32, 32), torch.eye(k)[[0, 1, k - 1]]
    mask, cov = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.5, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, z, mask, cov), network(x, z, mask, cov))
        torch.testing.assert_close(scripted(x), network(x))
        with pytest.raises(Exception, match="modality 't1' is required"):
            scripted(x, z, torch.tensor([[0.0, 1.0]] * 3))


def _workflow(config_files, root: Path, workflow_type: str, **override) -> ConfigWorkflow:
    return run_workflow(root / "configs", config_files, root, workflow_type, logging_file=True, **override)


def _metrics(path: Path) -> dict[tuple[str, str], dict]:
    with open(path) as f:
        return {(m["mode"], m["group"]): m for m in json.load(f) if m["group"] != "site"}


def test_train_evaluate_inference_on_a_tiny_cohort(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    tiny = {**TINY, "dataset_dir": str(tmp_path / "data"), "replace_models": True}
    _workflow(["train.json"], root, "train", **tiny, **{"train#trainer#max_epochs": 2})
    datalist = json.loads((tmp_path / "data" / "datalist.json").read_text())
    no_flair = {e["site"] for section in ("training", "test") for e in datalist[section] if "flair" not in e}
    assert no_flair == {"site_b"}  # the default cohort has one site without FLAIR
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # early fusion: a first convolution per contrast, one shared image encoder (branch 0), the covariates (branch 1)
    keys = {"stem.convs.0.weight", "stem.convs.1.weight", "branches.0.slopes.loc", "branches.1.slopes.loc"}
    assert keys <= set(state)
    assert "head.intercept.loc" in state and not any(k.startswith("branches.2.") for k in state)
    assert (root / "models" / "z_predictor.pt").is_file() and (root / "models" / "site_vocabulary.json").is_file()

    # evaluation: every z mode, seen and unseen sites, thresholds from training scans
    _workflow(["train.json", "evaluate.json"], root, "train", **tiny)
    metrics = _metrics(root / "eval" / "metrics.json")
    for mode in ("mixed", "population", "inferred"):
        for group in ("seen", "unseen"):
            assert metrics[(mode, group)]["n"] > 0
    n_test = len(datalist["test"])
    with open(root / "eval" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["mode"] == "population" and r["split"] == "test" for r in rows) == n_test
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)
    # evaluation with FLAIR withheld from every scan: the model predicts from T1 (and covariates) alone
    _workflow(
        ["train.json", "evaluate.json"],
        root,
        "train",
        **tiny,
        withhold_modalities=["flair"],
        output_dir=str(root / "eval_t1_only"),
        eval_modes=["population"],
    )
    with open(root / "eval_t1_only" / "predictions.csv") as f:
        t1_only = {r["image"]: float(r["probability"]) for r in csv.DictReader(f) if r["split"] == "test"}
    both = {r["image"]: float(r["probability"]) for r in rows if r["mode"] == "population" and r["split"] == "test"}
    assert t1_only.keys() == both.keys()
    with_flair = [img for img, e in zip(both, datalist["test"]) if "flair" in e]
    assert any(abs(t1_only[i] - both[i]) > 1e-6 for i in with_flair)  # FLAIR mattered where it was present

    # inference on the test section (seen sites mixed, unseen sites inferred), then on a folder of T1 files only
    _workflow(["inference.json"], root, "infer", dataset_dir=str(tmp_path / "data"), spatial_size=TINY["spatial_size"])
    with open(root / "eval" / "inference_predictions.csv") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == n_test and all(0 <= float(p["probability"]) <= 1 for p in preds)
    folder = tmp_path / "t1_folder"
    folder.mkdir()
    for e in datalist["test"][:3]:
        shutil.copy(tmp_path / "data" / e["image"], folder)
    _workflow(
        ["inference.json"],
        root,
        "infer",
        input=str(folder),
        unseen_mode="population",
        output_dir=str(root / "eval_folder"),
        spatial_size=TINY["spatial_size"],
    )
    with open(root / "eval_folder" / "inference_predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == 3

    # a T1-only network trained from the same datalist (its FLAIR entries are dropped, not collated), then combined
    # with the two-contrast network by ModalityFallback: scans without FLAIR get the T1 network's prediction
    t1_only = {"modalities": ["t1"], "modality_keys": ["image"], "ckpt_dir": str(root / "models_t1")}
    _workflow(["train.json"], root, "train", **tiny, **t1_only, **{"train#trainer#max_epochs": 1})
    nets = {}
    for name, override in (("both", {}), ("t1", t1_only)):
        parser = ConfigParser(ConfigParser.load_config_file(root / "configs" / "inference.json"))
        parser.update({"bundle_root": str(root), "spatial_size": TINY["spatial_size"], **override})
        net = parser.get_parsed_content("network_def")
        ckpt = Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"
        net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        nets[name] = net.eval()
    router = torch.jit.script(ModalityFallback(nets["both"], nets["t1"]).eval())
    x, mask = torch.randn(2, 2, *TINY["spatial_size"]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    with torch.no_grad():
        out = router(x, None, mask)
        torch.testing.assert_close(out[:1], nets["both"](x[:1], None, mask[:1]))
        torch.testing.assert_close(out[1:], nets["t1"](x[1:, :1], None, mask[1:, :1]))
    # the same routing in inference.json (fallback_ckpt_dir): scans with FLAIR keep the primary's prediction,
    # scans without it (site_b) get the T1 network's
    _workflow(
        ["inference.json"],
        root,
        "infer",
        dataset_dir=str(tmp_path / "data"),
        spatial_size=TINY["spatial_size"],
        fallback_ckpt_dir=str(root / "models_t1"),
        output_dir=str(root / "eval_fallback"),
    )
    with open(root / "eval_fallback" / "inference_predictions.csv") as f:
        routed = {r["image"]: float(r["probability"]) for r in csv.DictReader(f)}
    primary_only = {p["image"]: float(p["probability"]) for p in preds}
    assert routed.keys() == primary_only.keys()
    has_flair = {str(tmp_path / "data" / e["image"]): "flair" in e for e in datalist["test"]}
    changed = {img: abs(routed[img] - primary_only[img]) > 1e-6 for img in routed}
    assert not any(changed[img] for img in routed if has_flair[img])
    assert all(changed[img] for img in routed if not has_flair[img]) and not all(has_flair.values())


@pytest.mark.slow
def test_two_process_gloo_training_with_torchrun(tmp_path):
    """multi_gpu_train.json on CPU: 2 processes (gloo), rank 0 generates the cohort and fits the site statistics,
    DistributedSampler, checkpoints and TensorBoard on rank 0 only."""
    root = tmp_path / "bundle"
    overrides: list[str] = []
    settings = {**TINY, "dataset_dir": str(tmp_path / "data"), "train#trainer#max_epochs": 1, "replace_models": True}
    for key, value in settings.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    run_multi_gpu_train(CONFIGS, root, overrides)
    assert (tmp_path / "data" / "datalist.json").is_file() and (root / "models" / "model.pt").is_file()
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # the plain network's state_dict, not the DDP wrapper's
