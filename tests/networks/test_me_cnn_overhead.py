# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The overhead benchmark's measurement on a tiny case: paired ratios, profiler memory, contract-shaped output."""

from __future__ import annotations

import json

import torch

from benchmarks import overhead
from monai_medl.networks.nets import SmallCNN


def test_profiler_peak_counts_the_step_allocations():
    x = torch.zeros(1)

    def allocate():
        a = torch.empty(1024, 1024)  # 4 MiB, freed before the second one
        del a
        b = torch.empty(512, 1024)  # 2 MiB
        return b + x

    peak = overhead._step_peak_bytes(allocate)
    assert 4 * 2**20 <= peak < 5 * 2**20


def test_profiler_peak_ignores_frees_of_blocks_from_before_the_step():
    held = [torch.empty(1024, 1024)]  # 4 MiB allocated before the window, like last step's gradients

    def free_then_allocate():
        held.clear()
        return torch.empty(256, 1024)  # 1 MiB

    assert overhead._step_peak_bytes(free_then_allocate) == 2**20


def test_measure_case_and_results_file(tmp_path, monkeypatch):
    case = {"backbone": lambda: SmallCNN(spatial_dims=3, channels=(4, 8)), "me_kwargs": {}}
    res = overhead.measure_case(case, batch=2, size=16, repeats=2, inference_repeats=2, steps=1, seed=0)
    for phase in overhead.PHASES:
        assert len(res[phase]["ratios"]) == 2 and all(r > 0 for r in res[phase]["ratios"])
        assert res[phase]["me_peak_mib"] >= res[phase]["bare_peak_mib"] > 0
    # the ME model is the backbone minus its classifier plus the head; training also holds the adversary
    assert res["params"]["me"] > res["params"]["bare"] and res["params"]["adversary"] > 0
    assert res["train"]["me_peak_mib"] > res["inference"]["me_peak_mib"]
    # without the adversary and its Adam state the ME step holds less memory
    assert res["train_no_adversary"]["me_peak_mib"] < res["train"]["me_peak_mib"]

    small = {"quick": {"batch": 2, "size": 16, "repeats": 2, "inference_repeats": 2, "steps": 1}, **case}
    monkeypatch.setitem(overhead.CASES, "tiny", small)
    overhead.run(quick=True, out_dir=tmp_path, cases=["tiny"])
    results = json.loads((tmp_path / "overhead.json").read_text())
    assert results["benchmark"] == "overhead" and results["metric"] == "step_time_ratio"
    assert set(results["models"]) == {f"tiny/{phase}" for phase in overhead.PHASES}
    entry = results["models"]["tiny/train"]
    assert entry["unseen"] is None and len(entry["seen"]["values"]) == 2
    assert {"me_ms", "bare_ms", "peak_memory_ratio", "meets_time_target"} <= set(entry["extra"])
    assert (tmp_path / "overhead.md").read_text().startswith("## overhead")


def test_bundle_batch_case_reads_the_bundle_config():
    train = json.loads(overhead.MRI_BUNDLE_TRAIN.read_text())
    assert overhead.mri_bundle_batch_size() == train["train"]["dataloader"]["batch_size"] > 4
