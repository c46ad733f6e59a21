# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""benchmarks._common helpers shared by the benchmark scripts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from benchmarks._common import paired_difference


def test_paired_difference_interval_and_wins_on_the_better_side():
    a, b = [0.8, 0.9, 0.7, 0.85], [0.7, 0.8, 0.75, 0.8]
    d = paired_difference(a, b)
    np.testing.assert_allclose(d["values"], [0.1, 0.1, -0.05, 0.05])
    assert d["mean"] == pytest.approx(0.05) and d["wins"] == 3 and d["n"] == 4
    half = stats.t.ppf(0.975, 3) * np.std(d["values"], ddof=1) / 2  # paired Student-t, n = 4
    assert d["ci95"] == pytest.approx([0.05 - half, 0.05 + half])
    assert paired_difference(a, b, higher_is_better=False)["wins"] == 1  # e.g. an error: lower wins
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_plan_is_on_disk_before_the_results_and_kept_in_them(tmp_path):
    from benchmarks._common import announce_plan, summarize, write_results

    plan = {"seeds": "0..1", "decision_rule": "interval excludes 0"}
    announce_plan("toy", True, plan, [0, 1], tmp_path)
    early = json.loads((tmp_path / "toy.json").read_text())
    assert early["status"] == "running" and early["plan"] == plan and "models" not in early
    models = {"me": {"seen": summarize([0.5, 0.7]), "unseen": None, "extra": {}}}
    write_results("toy", True, "auroc", 2, models, {}, [0, 1], tmp_path, plan=plan)
    final = json.loads((tmp_path / "toy.json").read_text())
    assert final["plan"] == plan and "status" not in final
    assert "interval excludes 0" in (tmp_path / "toy.md").read_text()
