# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The GPU suite runs end to end on the CPU at a tiny size (no GPU in CI): tables, memory kind, budget, bad input."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_suite


def _tiny(**overrides):
    cfg = gpu_suite.default_config(quick=True, device="cpu")
    cfg.update({"sizes": [32], "batches": [2], "repeats": 2, "steps": 1, "warmup": 1, **overrides})
    return cfg


def test_cpu_tiny_run_writes_both_tables(tmp_path):
    res = gpu_suite.run(quick=True, out_dir=tmp_path, config=_tiny())
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert saved["models"].keys() == res["models"].keys()
    expected = {f"{n}/32^3/b2/{p}" for n in gpu_suite.NETWORKS for p in ("train", "inference")}
    assert set(saved["models"]) == expected
    for entry in saved["models"].values():
        extra = entry["extra"]
        assert len(entry["seen"]["values"]) == 2 and all(r > 0 for r in entry["seen"]["values"])
        assert extra["bare_images_per_s"] > 0 and extra["me_images_per_s"] > 0
        assert extra["me_peak_mib"] > 0 and extra["bare_peak_mib"] > 0
        assert extra["peak_memory_ratio"] == pytest.approx(extra["me_peak_mib"] / extra["bare_peak_mib"])
    # the ME model holds more tensors (random effects, adversary, Adam state) than the bare one while training
    assert saved["models"]["unet/32^3/b2/train"]["extra"]["peak_memory_ratio"] > 1.0
    cfg = saved["config"]
    assert cfg["memory"] == "torch.profiler tensor memory (CPU)" and cfg["amp"] == "none"
    assert cfg["skipped"] == [] and cfg["out_of_memory"] == []
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "Throughput and peak memory" in md and "bare_images_per_s" in md


def test_budget_skips_and_lists_the_rest(tmp_path):
    saved = gpu_suite.run(quick=True, out_dir=tmp_path, config=_tiny(networks=["unet"], batches=[1, 2], budget_s=0.0))
    assert set(saved["models"]) == {"unet/32^3/b1/train", "unet/32^3/b1/inference"}  # the first one always runs
    assert saved["config"]["skipped"] == ["unet/32^3/b2"]


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path):
    cfg = _tiny(networks=["unet"], amp="bf16", channels_last=True)
    saved = gpu_suite.run(quick=True, out_dir=tmp_path, config=cfg)
    assert saved["config"]["amp"] == "bf16" and saved["config"]["channels_last"] is True
    assert saved["models"]["unet/32^3/b2/train"]["extra"]["me_images_per_s"] > 0


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="gpu_suite: unknown networks"):
        gpu_suite.run(quick=True, out_dir=tmp_path, config=_tiny(networks=["resnet"]))
    with pytest.raises(ValueError, match="amp must be one of"):
        gpu_suite.run(quick=True, out_dir=tmp_path, config=_tiny(networks=["unet"], amp="fp8"))
    with pytest.raises(SystemExit):
        gpu_suite.main(["--amp", "fp8"])


def test_device_option_defaults_and_parses():
    parser = gpu_suite.benchmark_parser("x", device=True)
    assert parser.parse_args([]).device == "cpu"
    assert parser.parse_args(["--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit):  # a benchmark that does not place models on a device takes no --device
        gpu_suite.benchmark_parser("x").parse_args(["--device", "cuda"])
