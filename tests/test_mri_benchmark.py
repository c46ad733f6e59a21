# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A tiny run of ``benchmarks.mri`` (SupervisedTrainer path, every model, two folds): contract shape and the plan's
paired comparisons computed from the per-fold values."""

from __future__ import annotations

import json

import numpy as np
import pytest

mri = pytest.importorskip("benchmarks.mri")


def test_tiny_run_writes_contract_json_with_planned_comparisons(tmp_path):
    cfg = mri.default_config(quick=True)
    cfg.update(cohort={**cfg["cohort"], "num_subjects": 96}, repeats=2, epochs=1, z_predictor_epochs=1)
    results = mri.run(quick=True, out_dir=tmp_path, config=cfg, cohort_dir=str(tmp_path / "cohort"), log=print)
    on_disk = json.loads((tmp_path / "mri.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["plan"] == mri.PLAN and on_disk["env"]["seeds"] == [0, 1] and on_disk["metric"] == "auroc"
    assert list(on_disk["models"]) == list(mri.MODELS)
    assert on_disk["config"]["cohort"]["seed"] == 2024 and on_disk["config"]["cohort"]["num_subjects"] == 96
    models = on_disk["models"]
    for entry in models.values():
        assert len(entry["seen"]["values"]) == 2 and len(entry["unseen"]["values"]) == 2
        assert {"seen_balanced_accuracy", "unseen_balanced_accuracy"} <= set(entry["extra"])
    me = models["me"]["extra"]
    for comparison in mri.COMPARISONS:
        split = "unseen" if comparison.metric == "unseen_auroc" else "seen"
        expected = np.subtract(models["me"][split]["values"], models[comparison.reference][split]["values"])
        np.testing.assert_allclose(me[f"{comparison.name}_values"], expected, atol=1e-12)
        assert me[comparison.name] == pytest.approx(expected.mean())
        assert me[f"{comparison.name}_wins"] == int((expected > 0).sum())
    assert {"site_probe_accuracy", "intercept_vs_true_prevalence_r", "seen_population_auroc"} <= set(me)
    md = (tmp_path / "mri.md").read_text()
    assert "| me - conventional: unseen_auroc (higher wins) |" in md
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert "_values" not in header and "paired_" not in header
