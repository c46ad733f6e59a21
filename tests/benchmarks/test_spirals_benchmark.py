# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A tiny run of ``benchmarks.spirals`` (a few seconds): the results files have the benchmark-contract shape."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root holds the benchmarks package

spirals = pytest.importorskip("benchmarks.spirals")

TINY = {
    "data": {
        "num_clusters": 4,
        "points_per_cluster": 60,
        "mean_radius": 1.0,
        "radius_sd": 0.3,
        "noise": 0.1,
        "degrees": 360,
    },
    "repeats": 2,
    "folds": 2,
    "folds_run": 1,
    "unseen_per_repeat": 1,
    "epochs": 1,
    "z_predictor_epochs": 1,
}


def test_tiny_run_writes_contract_json(tmp_path):
    results = spirals.run(quick=True, out_dir=tmp_path, config=TINY, log=lambda _: None)
    on_disk = json.loads((tmp_path / "spirals.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert set(on_disk) == {"benchmark", "quick", "metric", "repeats", "models", "config", "env", "plan"}
    assert on_disk["plan"] == spirals.PLAN and {"decision_rule", "primary_comparisons", "seeds"} <= set(spirals.PLAN)
    assert len(on_disk["env"]["commit"]) >= 40 and on_disk["env"]["command"].startswith("python")  # here: pytest
    assert on_disk["benchmark"] == "spirals" and on_disk["quick"] is True
    assert on_disk["metric"] == "accuracy" and on_disk["repeats"] == 2
    assert set(on_disk["env"]) >= {"python", "torch", "monai", "seeds"} and on_disk["env"]["seeds"] == [0, 1]
    assert list(on_disk["models"]) == list(spirals.MODELS)
    for name, entry in on_disk["models"].items():
        assert set(entry) == {"seen", "unseen", "extra"}
        for split in ("seen", "unseen"):
            s = entry[split]
            assert set(s) == {"mean", "ci95", "values"} and len(s["values"]) == 2
            assert s["mean"] == pytest.approx(sum(s["values"]) / 2) and s["ci95"][0] <= s["mean"] <= s["ci95"][1]
            assert s["ci95"][1] - s["ci95"][0] > 0 or s["values"][0] == s["values"][1]  # a t-interval over 2 repeats
        extra = entry["extra"]
        assert {"seen_auroc", "unseen_auroc", "time_per_fold_s", "confounded_seen_accuracy"} <= set(extra)
        assert not [k for k in extra if k.endswith(("_seen", "_unseen"))]  # the split is a prefix, as elsewhere
        assert extra["time_per_fold_s"] > 0
        assert ("confounded_probe_attribution_share" in extra) == (name not in ("traditional", "gpboost"))
    table = (tmp_path / "spirals.md").read_text()
    assert all(f"| {m} |" in table for m in spirals.MODELS)


def test_gpboost_row_is_trained_on_the_folds_of_the_other_models(monkeypatch):
    """The gpboost row sees exactly the training rows (and standardised features) of `traditional`, fold by fold,
    with the clusters as group labels; it is scored on the same seen fold and unseen clusters."""
    seen_by = {"traditional": [], "gpboost": [], "gpboost_predict": []}
    original_fit, original_predict = spirals.fit_gpboost, spirals.predict_gpboost

    class RecordingHGB(spirals.HistGradientBoostingClassifier):
        def fit(self, X, y):
            seen_by["traditional"].append((np.array(X), np.array(y)))
            return super().fit(X, y)

    def recording_fit(x, y, groups, *args, **kwargs):
        seen_by["gpboost"].append((np.array(x), np.array(y), np.array(groups)))
        return original_fit(x, y, groups, *args, **kwargs)

    def recording_predict(booster, x, groups, *args, **kwargs):
        seen_by["gpboost_predict"].append(np.array(groups))
        return original_predict(booster, x, groups, *args, **kwargs)

    monkeypatch.setattr(spirals, "HistGradientBoostingClassifier", RecordingHGB)
    monkeypatch.setattr(spirals, "fit_gpboost", recording_fit)
    monkeypatch.setattr(spirals, "predict_gpboost", recording_predict)
    cfg = {**spirals.default_config(quick=True), **TINY, "folds_run": 2}
    data = spirals.make_data(cfg, "random_radius")
    row = spirals.run_variant_repeat(data, cfg, r=1, seed=1, log=lambda _: None)
    assert len(seen_by["gpboost"]) == len(seen_by["traditional"]) == 2
    held = spirals.unseen_clusters(1, data.num_clusters, cfg["unseen_per_repeat"])
    for (x_t, y_t), (x_g, y_g, g) in zip(seen_by["traditional"], seen_by["gpboost"]):
        np.testing.assert_array_equal(x_g, x_t)
        np.testing.assert_array_equal(y_g, y_t)
        assert len(g) == len(y_g) and not set(g.tolist()) & set(held)  # cluster labels of the training rows only
    seen_groups, unseen_groups = seen_by["gpboost_predict"][0::2], seen_by["gpboost_predict"][1::2]
    assert all(not set(s.tolist()) & set(held) for s in seen_groups)
    assert all(set(u.tolist()) == set(held) for u in unseen_groups)  # unseen clusters enter as new levels
    for key in ("seen_accuracy", "unseen_accuracy", "seen_auroc", "unseen_auroc"):
        assert 0.0 <= row["gpboost"][key] <= 1.0


def test_unseen_clusters_rotate_over_repeats():
    held = [tuple(spirals.unseen_clusters(r, 10, 2)) for r in range(10)]
    assert held[:5] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)] and held[5:] == held[:5]


def test_timing_option_writes_its_own_files(tmp_path, monkeypatch):
    original = spirals.default_config
    monkeypatch.setattr(spirals, "default_config", lambda quick=False: {**original(quick), **TINY})
    spirals.main(["--timing", "--out", str(tmp_path)])
    assert not (tmp_path / "spirals.json").exists()
    timing = json.loads((tmp_path / "spirals_timing.json").read_text())
    assert timing["benchmark"] == "spirals_timing" and timing["repeats"] == 1
    assert timing["config"]["variants"] == ["random_radius"] and timing["config"]["folds_run"] == 3
    assert len(timing["env"]["load_average_1_5_15min"]) == 3
    assert all(entry["extra"]["cpu_time_per_fold_s"] > 0 for entry in timing["models"].values())


def test_reference_protocol_reports_every_fold_and_the_minimum(tmp_path):
    small = {"data": {**spirals.default_config()["data"], "points_per_cluster": 100}, "epochs": 2}
    res = spirals.run_reference_protocol(quick=True, out_dir=tmp_path, config=small, log=lambda _: None)
    assert set(res["models"]) == {"conventional", "me"} and res["plan"] == spirals.REFERENCE_PLAN
    for entry in res["models"].values():
        folds = entry["extra"]["seen_fold_accuracies"]
        assert len(folds) == 3 and entry["extra"]["seen_min_fold_accuracy"] == min(folds)
        assert entry["extra"]["seen_folds_below_0.70"] == sum(a < 0.70 for a in folds)
        assert entry["seen"]["values"] == [pytest.approx(sum(folds) / 3)] and entry["unseen"] is None
    assert "seen_min_fold_accuracy" in (tmp_path / "spirals_reference.md").read_text()


@pytest.mark.parametrize("flag, suffix, mlp_path", [([], "", "manual"), (["--autograd"], "_autograd", "autograd")])
def test_every_mlp_trains_on_the_same_step_path(tmp_path, monkeypatch, flag, suffix, mlp_path):
    original = spirals.default_config
    monkeypatch.setattr(spirals, "default_config", lambda quick=False: {**original(quick), **TINY})
    paths = []

    class Recording(spirals.TabularTrainer):
        def fit(self, *args, **kwargs):
            paths.append((type(self.network).__name__, self.backward))
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(spirals, "TabularTrainer", Recording)
    spirals.main(["--timing", *flag, "--out", str(tmp_path)])
    timing = json.loads((tmp_path / f"spirals_timing{suffix}.json").read_text())
    assert timing["config"]["manual_backward"] == (False if flag else None)
    mlps = {path for name, path in paths if name == "MixedEffectsMLP"}
    assert mlps == {mlp_path} and ("ClusterClassifier", "autograd") in paths  # the z-predictor (task "ce")
    folds = sum(name == "ClusterClassifier" for name, _ in paths)  # one z-predictor per fold
    assert folds >= 1 and len([name for name, _ in paths if name == "MixedEffectsMLP"]) == 6 * folds  # 6 MLPs each
