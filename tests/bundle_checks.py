# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Model-zoo style checks shared by the bundle tests: layout, metadata schema, net in/out, TorchScript export."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

REPO = Path(__file__).resolve().parents[1]
SCHEMA_NAME = "meta_schema_20240725.json"
# the schema lives outside the repository, in ../shared/monai/ beside the clone (CI) or the developers' /work/shared
SCHEMA_CANDIDATES = [
    os.environ.get("MONAI_MEDL_BUNDLE_SCHEMA", ""),
    str(REPO.parent / "shared" / "monai" / SCHEMA_NAME),
    f"/work/shared/monai/{SCHEMA_NAME}",
]
REQUIRED_FILES = (
    "LICENSE",
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/logging.conf",
    "docs/README.md",
    "models/model.pt",
)


def meta_schema() -> str:
    """Path of the MONAI bundle metadata schema; skips the calling test when it is not available."""
    for path in SCHEMA_CANDIDATES:
        if path and os.path.isfile(path):
            return path
    pytest.skip(f"bundle metadata schema {SCHEMA_NAME} not found in {SCHEMA_CANDIDATES}")


def check_layout_and_metadata(bundle: Path, extra_files: Sequence[str] = ()) -> dict:
    """Assert the model-zoo layout, validate metadata.json against the schema, return the metadata."""
    for rel in (*REQUIRED_FILES, *extra_files):
        assert (bundle / rel).is_file(), rel
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=meta_schema())
    meta = ConfigParser.load_config_file(bundle / "configs" / "metadata.json")
    assert meta["version"] in meta["changelog"]
    assert (bundle / "models" / "model.pt").stat().st_size < 25 * 2**20  # model-zoo file limit
    return meta


def verify_and_export(bundle: Path, tmp_path: Path) -> tuple[torch.nn.Module, torch.jit.ScriptModule]:
    """Run ``verify_net_in_out`` and ``ckpt_export`` on ``network_def``; return the eager net (shipped weights,
    eval mode) and the exported TorchScript module for output comparisons."""
    configs = bundle / "configs"
    kwargs = {
        "meta_file": str(configs / "metadata.json"),
        "config_file": str(configs / "inference.json"),
        "bundle_root": str(bundle),
    }
    verify_net_in_out(net_id="network_def", **kwargs)
    ts_path = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(bundle / "models" / "model.pt"), **kwargs)
    parser = ConfigParser(ConfigParser.load_config_file(configs / "inference.json"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    return network.eval(), torch.jit.load(str(ts_path))
