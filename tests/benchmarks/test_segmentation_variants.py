# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""benchmarks.segmentation_variants: the plan's rule on known scores, and a tiny run (three placements, two seeds)
writing the plan, the validation/seen/unseen Dice per placement, the paired comparisons and the choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

sv = pytest.importorskip("benchmarks.segmentation_variants")
seg = pytest.importorskip("benchmarks.segmentation")


def test_the_rule_picks_the_cheapest_candidate_not_shown_worse_than_the_best():
    # cheap is below the best on every seed by a steady margin (shown worse); mid differs from it by noise
    scores = {"cheap": [0.71, 0.71, 0.72], "mid": [0.77, 0.73, 0.77], "dear": [0.76, 0.75, 0.77]}
    steady = sv.choose_variant(scores)
    assert steady["best"] == "dear" and steady["chosen"] == "mid"
    assert steady["differences_to_best"]["cheap"]["ci95"][1] < 0 <= steady["differences_to_best"]["mid"]["ci95"][1]
    # a constant difference has a zero-width interval: shown worse, so the best is chosen
    assert sv.choose_variant({"cheap": [0.70, 0.71], "dear": [0.72, 0.73]})["chosen"] == "dear"
    # noisy differences around zero: the cheapest qualifies
    noisy = sv.choose_variant({"cheap": [0.70, 0.75, 0.72], "dear": [0.72, 0.73, 0.73]})
    assert noisy["best"] == "dear" and noisy["chosen"] == "cheap"
    d = noisy["differences_to_best"]["cheap"]
    assert d["ci95"][0] < 0 <= d["ci95"][1] and d["mean"] == pytest.approx(np.mean([-0.02, 0.02, -0.01]))
    assert sv.choose_variant({"only": [0.5]})["chosen"] == "only"
    with pytest.raises(ValueError, match="choose_variant needs at least one"):
        sv.choose_variant({})


def test_tiny_run_writes_the_plan_scores_comparisons_and_choice(tmp_path):
    cfg = seg.default_config(quick=True)
    cfg.update(cohort={**cfg["cohort"], "num_subjects": 24}, seeds=[0, 1], epochs=1)
    results = sv.run(quick=True, out_dir=tmp_path, config=cfg, cohort_root=str(tmp_path / "cohorts"))
    on_disk = json.loads((tmp_path / "segmentation_variants.json").read_text())
    assert on_disk == json.loads(json.dumps(results)) and on_disk["plan"] == sv.PLAN
    models = on_disk["models"]
    assert list(models) == list(sv.CANDIDATES)
    assert on_disk["config"]["candidates"] == {"me_intercept_only": False, "me_last_stage": "last", "me": True}
    for name, entry in models.items():
        for split in ("seen", "unseen"):
            assert len(entry[split]["values"]) == 2 and all(0 <= v <= 1 for v in entry[split]["values"]), name
        assert len(entry["extra"]["validation_dice_values"]) == 2
    for c in sv.COMPARISONS:
        a = models[c.model]["extra"][f"{c.metric}_values"] if c.metric == sv.SCORE else None
        if a is None:
            split = c.metric.split("_")[0]
            a, b = models[c.model][split]["values"], models[c.reference][split]["values"]
        else:
            b = models[c.reference]["extra"][f"{c.metric}_values"]
        np.testing.assert_allclose(models[c.model]["extra"][f"{c.name}_values"], np.subtract(a, b), atol=1e-12)
    analysis = on_disk["analysis"]
    scores = {n: models[n]["extra"]["validation_dice_values"] for n in sv.CANDIDATES}
    assert analysis["chosen"] == sv.choose_variant(scores)["chosen"]
    assert analysis["cluster_scale_bias"] == seg.ME_KINDS[analysis["chosen"]]
    md = (tmp_path / "segmentation_variants.md").read_text()
    assert f"chosen: `{analysis['chosen']}`" in md and "| me_last_stage - me: validation_dice (higher wins) |" in md
