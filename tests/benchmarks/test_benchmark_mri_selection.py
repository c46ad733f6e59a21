# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The MRI adversary selection: its pre-declared rule, that it reads no test subject and no unseen site, a tiny run,
and that the headline ``me`` model takes the recorded choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import mri, mri_selection


def _per_seed(**candidates: tuple[list[float], list[float], list[float]]) -> dict[str, dict[str, list[float]]]:
    """``name=(validation_auroc, site_probe, paired difference)`` per seed; the reference is added."""
    out = {mri_selection.REFERENCE: {"validation_auroc": [0.8, 0.8], "site_probe": [0.7, 0.7]}}
    out[mri_selection.REFERENCE]["paired_auroc_minus_reference"] = [0.0, 0.0]
    for name, (auroc, probe, diff) in candidates.items():
        out[name] = {"validation_auroc": auroc, "site_probe": probe, "paired_auroc_minus_reference": diff}
    return out


def test_rule_chooses_within_the_qualifying_candidates_by_one_standard_error():
    d = mri_selection.decide(
        _per_seed(
            current=([0.82, 0.82], [0.65, 0.65], [0.02, 0.02]),  # best AUROC but the probe misses the target
            a=([0.79, 0.81], [0.29, 0.25], [-0.01, 0.01]),  # qualifies; mean 0.80 within one SE of b's 0.805
            b=([0.80, 0.81], [0.28, 0.30], [0.0, 0.01]),  # qualifies, best qualifying mean
            c=([0.70, 0.70], [0.20, 0.20], [-0.1, -0.1]),  # lowest probe but costs 0.1 AUROC
        )
    )
    assert d["qualifying"] == ["a", "b"] and d["within_auroc_margin"] == ["current", "a", "b"]
    assert d["chosen"] == "a" and d["target_met"] is True and "**`a`**" in d["summary"]


def test_rule_falls_back_to_the_lowest_probe_within_the_auroc_margin_and_says_so():
    d = mri_selection.decide(
        _per_seed(
            current=([0.80, 0.80], [0.65, 0.65], [0.0, 0.0]),
            a=([0.79, 0.79], [0.45, 0.47], [-0.01, -0.01]),  # within the margin (mean exactly -0.01)
            b=([0.75, 0.75], [0.20, 0.20], [-0.05, -0.05]),  # meets the probe target at too high a cost
        )
    )
    assert d["qualifying"] == [] and d["chosen"] == "a" and d["target_met"] is False
    assert "NOT met" in d["summary"]
    none = mri_selection.decide(_per_seed(current=([0.7, 0.7], [0.6, 0.6], [-0.1, -0.1])))
    assert none["chosen"] == "current" and none["target_met"] is False
    with pytest.raises(ValueError, match="besides the reference"):
        mri_selection.decide(_per_seed())


def _fake_cohort() -> dict:
    """Eight sites (two of them unseen) x (training, validation, test); each image's voxels hold its row index."""
    sites = [f"site_{c}" for c in "abcdefgh"]
    rows = [(s, split, k) for s in sites for split in ("training", "validation", "test") for k in range(6)]
    n = len(rows)
    return {
        "images": np.arange(n, dtype=np.float32)[:, None, None, None, None] * np.ones((1, 1, 4, 4, 4), np.float32),
        "labels": np.tile([0.0, 1.0], n // 2).astype(np.float32),
        "sites": [r[0] for r in rows],
        "splits": [r[1] for r in rows],
        "seen_sites": sites[:6],
    }


def test_evaluation_reads_only_training_and_validation_subjects_of_training_sites(monkeypatch):
    data = _fake_cohort()
    rows_seen: dict[str, list[int]] = {"train": [], "predict": []}

    def fake_train(kind, cfg, x, y, site, k, seed):
        rows_seen["train"] += x[:, 0, 0, 0, 0].long().tolist()
        assert kind == ("me_no_adversary" if cfg["lambda_g"] == 0 else "me") and k == 6
        return None

    def fake_predict(net, x, z, batch_size=64):
        idx = x[:, 0, 0, 0, 0].long().numpy()
        rows_seen["predict"] += idx.tolist()
        rng = np.random.default_rng(idx)
        return rng.uniform(size=len(idx)), rng.normal(size=(len(idx), 5))

    monkeypatch.setattr(mri_selection.mri, "train_model", fake_train)
    monkeypatch.setattr(mri_selection.mri, "predict", fake_predict)
    cfg = mri_selection.selection_config(quick=True)
    ref = mri_selection.evaluate_candidate(cfg, {"lambda_g": 0.0}, 100, data, None)
    out = mri_selection.evaluate_candidate(cfg, {"lambda_g": 1.0}, 100, data, ref["validation_auroc"])
    assert out["paired_auroc_minus_reference"] == pytest.approx(out["validation_auroc"] - ref["validation_auroc"])
    splits, sites = np.asarray(data["splits"]), np.asarray(data["sites"])
    trained, predicted = np.asarray(rows_seen["train"]), np.asarray(rows_seen["predict"])
    assert set(splits[trained]) == {"training"} and set(splits[predicted]) == {"training", "validation"}
    assert set(sites[trained]) == set(sites[predicted]) == set(data["seen_sites"])


def test_validation_probe_separates_decodable_from_random_features():
    rng = np.random.default_rng(0)
    sites = np.repeat(np.arange(6), 12)
    noise = rng.normal(size=(72, 4))
    decodable = noise + 4.0 * np.eye(6)[sites][:, :4]  # four sites get their own direction, two share the origin
    assert mri_selection.validation_probe(decodable, sites) > 0.6
    assert mri_selection.validation_probe(noise, sites) < 0.4
    with pytest.raises(ValueError, match="subjects per site"):
        mri_selection.validation_probe(noise[:7], np.r_[sites[:6], 1])


def test_tiny_selection_run_records_plan_read_outs_and_choice(tmp_path, monkeypatch):
    keep = (mri_selection.REFERENCE, "current", "memory_mlp_unlearning_lambda_1")  # the reference, the new levers
    monkeypatch.setattr(mri_selection, "CANDIDATES", {k: mri_selection.CANDIDATES[k] for k in keep})
    real_config = mri_selection.selection_config

    def tiny_config(quick):
        cfg = real_config(quick)
        cfg.update(cohort={**cfg["cohort"], "num_subjects": 96}, epochs=2)
        return cfg

    monkeypatch.setattr(mri_selection, "selection_config", tiny_config)
    mri_selection.main(["--quick", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    record = json.loads((tmp_path / "mri_selection.json").read_text())
    assert record["plan"] == mri_selection.PLAN and record["quick"] is True and record["env"]["seeds"] == [100]
    assert record["config"]["cohort"]["num_subjects"] == 96 and record["config"]["cohort"]["unseen_sites"] == 0
    models = record["models"]
    assert list(models) == list(keep)
    reference = models[mri_selection.REFERENCE]["extra"]["validation_auroc_values"]
    for name in keep[1:]:
        extra = models[name]["extra"]
        diff = np.subtract(extra["validation_auroc_values"], reference)
        np.testing.assert_allclose(extra["paired_auroc_minus_reference_values"], diff, atol=1e-12)
        assert {"site_probe", "site_probe_from_training"} <= set(extra)
    decision = record["config"]["decision"]
    assert decision["chosen"] in keep[1:] and record["config"]["chosen"] == decision["chosen"]
    assert decision["summary"] in (tmp_path / "mri_selection.md").read_text()
    with pytest.raises(ValueError, match="--quick"):
        mri.selected_adversary(tmp_path)


def test_headline_me_model_takes_the_recorded_adversary(tmp_path, monkeypatch):
    settings = {"adversary_taps": "h", "adversary_steps": 3, "lambda_g": 2.0}
    record = {"quick": False, "config": {"chosen": "x", "chosen_settings": settings}}
    (tmp_path / "mri_selection.json").write_text(json.dumps(record))
    assert mri.selected_adversary(tmp_path) == ("x", settings)
    captured = []

    class Spy(mri.AdversaryHandler):
        def __init__(self, adversary, optimizer, lambda_g, **kwargs):
            captured.append((adversary.in_features, lambda_g, kwargs["steps"]))
            raise RuntimeError("stop")

    monkeypatch.setattr(mri, "AdversaryHandler", Spy)
    cfg = {**mri.default_config(quick=True), "me_adversary": settings}
    x, y, s = torch.zeros(4, 1, 32, 32, 32), torch.zeros(4), torch.zeros(4, dtype=torch.long)
    for kind in ("me", "domain_adversarial"):
        with pytest.raises(RuntimeError, match="stop"):
            mri.train_model(kind, cfg, x, y, s, 6, seed=0)
    # me: the adversary reads h only (64 features of the last block), lambda_g 2, 3 steps; the others keep the default
    assert captured == [(64, 2.0, 3), (8 + 16 + 32 + 64, 0.1, 1)]
    with pytest.raises(ValueError, match="adversary_taps must be 'all' or 'h'"):
        mri.train_model("domain_adversarial", {**cfg, "adversary_taps": "last"}, x, y, s, 6, seed=0)


def test_tiny_conditional_round_writes_its_own_results(tmp_path, monkeypatch):
    keep = (mri_selection.REFERENCE, "conditional_lambda_1")
    monkeypatch.setattr(
        mri_selection, "CONDITIONAL_CANDIDATES", {k: mri_selection.CONDITIONAL_CANDIDATES[k] for k in keep}
    )
    real_config = mri_selection.selection_config
    monkeypatch.setattr(
        mri_selection,
        "selection_config",
        lambda quick: {
            **real_config(quick),
            "cohort": {**real_config(quick)["cohort"], "num_subjects": 96},
            "epochs": 1,
        },
    )
    mri_selection.main(["--quick", "--round", "conditional", "--out", str(tmp_path), "--cache", str(tmp_path / "c")])
    record = json.loads((tmp_path / "mri_selection_conditional.json").read_text())
    assert record["plan"] == mri_selection.CONDITIONAL_PLAN and list(record["models"]) == list(keep)
    assert record["config"]["chosen"] == "conditional_lambda_1"  # the reference cannot be chosen
    assert not (tmp_path / "mri_selection.json").exists()
