# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``benchmarks.validation_scale``: one run measures the decompression reference and both validation passes."""

from __future__ import annotations

import json
import sys

from benchmarks import validation_scale


def test_one_run_measures_the_reference_and_both_passes_alike(tmp_path, monkeypatch):
    monkeypatch.setattr(validation_scale, "SHAPE", (24, 20, 16))  # small scans: the steps, not the seconds
    argv = ["validation_scale", "--quick", "--n", "8", "--distinct", "2", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    validation_scale.main()
    saved = json.loads((tmp_path / "validation_scale.json").read_text())
    extra = saved["models"]["validate_datalist"]["extra"]
    assert extra["scans"] == 8 and saved["plan"]["scans"] == 8
    per_core = (extra["decompress_s_per_core_before"] + extra["decompress_s_per_core_after"]) / 2
    assert abs(extra["decompress_s_per_core"] - per_core) <= 0.01
    assert extra["first_pass_cpu_s"] > 0 and extra["decompress_cpu_s"] > 0 and extra["gzip_cpu_s"] > 0
    for key in ("load_decompress", "load_gzip", "load_first_pass", "load_decompress_again", "load_second_pass"):
        assert extra[key] >= 0
    # linear extrapolation (second_pass_s is rounded to 1 ms, hence the tolerance)
    assert abs(extra["second_pass_s_at_10000"] - extra["second_pass_s"] / 8 * 10_000) <= 0.0005 / 8 * 10_000
