# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
import json

from benchmarks import evidence
from benchmarks.citations import check_document


def test_readme_evidence_table_is_the_rendering_of_the_results_files():
    assert evidence.update_readme(check=True), "run python -m benchmarks.evidence"


def test_a_row_concludes_from_its_interval_and_direction(tmp_path, monkeypatch):
    extra = {
        "paired_a": 0.05, "paired_a_ci95": [0.01, 0.09], "paired_a_wins": 4, "paired_a_values": [0.1, 0.0, 0.1, 0.0],
        "paired_b": -0.02, "paired_b_ci95": [-0.05, 0.01], "paired_b_wins": 1, "paired_b_values": [0, 0, 0, 0],
    }  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps({"models": {"me": {"extra": extra}}}))
    monkeypatch.setattr(evidence, "RESULTS", tmp_path)
    better = evidence.Row("bench", "me - x", "auroc", "me", "paired_a", "paired_b")
    worse = evidence.Row("bench", "me - x", "rmse", "me", "paired_a", None, higher_is_better=False)
    row = evidence.render_row(better, tmp_path)
    assert "(4/4) (ME better)" in row and "(1/4) (not shown)" in row
    assert "(ME worse)" in evidence.render_row(worse, tmp_path) and "| - (-) |" in evidence.render_row(worse, tmp_path)
    (tmp_path / "doc.md").write_text(row)
    assert check_document(tmp_path / "doc.md") == []  # every number in the row links to its value
