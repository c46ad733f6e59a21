# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Selection on training-cluster validation data: the rule, the hold-out and that no test or unseen item is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import livecell_selection, multimodal_selection, selection
from monai_medl.data.synthetic.livecell import make_livecell


def test_one_standard_error_rule_prefers_the_simplest_within_one_se():
    # best "c" mean 0.80, se = sd([0.78, 0.82]) / sqrt(2) = 0.02 -> threshold 0.78
    scores = {"a": [0.70, 0.72], "b": [0.79, 0.77], "c": [0.78, 0.82]}
    d = selection.one_standard_error_choice(scores)
    assert d["best"] == "c" and d["standard_error"] == pytest.approx(0.02)
    assert d["chosen"] == "b"  # "a" (0.71) is outside, "b" (0.78) is the first inside
    low = selection.one_standard_error_choice({"a": [3.0, 3.2], "b": [1.0, 1.2]}, higher_is_better=False)
    assert low["chosen"] == "b" and low["best"] == "b"
    with pytest.raises(ValueError, match="same, non-zero number"):
        selection.one_standard_error_choice({"a": [1.0], "b": [1.0, 2.0]})


def test_pseudo_unseen_cluster_rotates_over_training_clusters():
    sites = ["site_c", "site_a", "site_b"]
    assert [selection.pseudo_unseen_cluster(sites, s) for s in range(4)] == ["site_a", "site_b", "site_c", "site_a"]
    with pytest.raises(ValueError, match=">= 3 training clusters"):
        selection.pseudo_unseen_cluster(["a", "b"], 0)


def test_selection_plans_announce_the_seeds_the_runs_use():
    for module in (livecell_selection, multimodal_selection):
        plan, seeds = module.PLAN, module.SEEDS
        assert list(plan) == ["seeds", "splits", "candidates", "score", "decision_rule"]
        assert plan["decision_rule"] == selection.DECISION_RULE and plan["candidates"] == list(module.CANDIDATES)
        quick = selection.selection_seeds(seeds, quick=True)
        assert quick == [seeds[0]] and selection.selection_seeds(seeds, quick=False) == list(seeds)
        assert plan["seeds"].startswith(f"selection seeds {list(seeds)} (1 in quick mode: {quick[0]}); disjoint")


def test_run_selection_writes_plan_scores_and_choice(tmp_path):
    def evaluate(name, settings, seed):
        return {"score": settings["value"] + 0.01 * seed, "other": 1.0}

    cands = {"simple": {"value": 0.5}, "complex": {"value": 0.9}}
    res = selection.run_selection(
        "toy_selection", {"seeds": "0, 1"}, cands, evaluate, "score", [0, 1], False, {}, out_dir=tmp_path
    )
    assert res["config"]["chosen"] == "complex" and res["models"]["complex"]["extra"]["chosen"] is True
    assert res["models"]["simple"]["extra"]["score_values"] == [0.5, 0.51]
    assert selection.load_choice("toy_selection", tmp_path) == ("complex", {"value": 0.9})
    assert "**`complex`**" in (tmp_path / "toy_selection.md").read_text()


def test_load_choice_rejects_missing_quick_and_unfinished_runs(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        selection.load_choice("nothing", tmp_path)
    (tmp_path / "q.json").write_text(json.dumps({"quick": True, "config": {"chosen": "a", "chosen_settings": {}}}))
    with pytest.raises(ValueError, match="--quick"):
        selection.load_choice("q", tmp_path)
    (tmp_path / "r.json").write_text(json.dumps({"quick": False, "status": "running", "plan": {}}))
    with pytest.raises(ValueError, match="unfinished"):
        selection.load_choice("r", tmp_path)


def test_livecell_holdout_drops_test_tiles_and_unseen_batches():
    data = make_livecell(num_batches=5, num_unseen=2, tiles_per_batch=20, tile_size=32, seed=3)
    sub = livecell_selection.holdout_training_batch(data, held=1)
    assert sub.config["num_unseen"] == 1 and len(sub.effects) == 3
    assert set(sub.split) <= {"training", "validation", "test_unseen"}
    # every kept tile comes from a training batch's training/validation split, none from a test split or unseen batch
    source = (data.batch < 3) & np.isin(data.split, ("training", "validation"))
    assert len(sub.label) == int(source.sum())
    np.testing.assert_array_equal(sub.image, data.image[source])
    held = data.batch[source] == 1
    np.testing.assert_array_equal(sub.batch[held], 2)  # the held-out batch is the last, unseen index
    assert (sub.split[held] == "test_unseen").all() and (sub.split[~held] != "test_unseen").all()
    assert sub.effects[2] is data.effects[1]
    with pytest.raises(ValueError, match="training batch index"):
        livecell_selection.holdout_training_batch(data, held=3)


def test_multimodal_selection_reads_no_test_split_and_no_unseen_site(monkeypatch):
    rng = np.random.default_rng(0)
    sites = np.repeat([f"site_{c}" for c in "abcdefgh"], 12)
    split = np.tile(np.repeat(["training", "validation", "test"], 4), 8)
    data = {
        "t1": rng.normal(size=(96, 1, 4, 4, 4)).astype(np.float32),
        "flair": rng.normal(size=(96, 1, 4, 4, 4)).astype(np.float32),
        "label": np.tile([0, 1], 48),
        "site": sites,
        "split": split,
        "seen_sites": np.asarray([f"site_{c}" for c in "abcdef"]),
    }
    seen_idx: list[np.ndarray] = []
    monkeypatch.setattr(multimodal_selection.mm, "load_cohort", lambda cfg, seed, cache: data)
    real_items = multimodal_selection.mm.items_of

    def spy_items(d, idx, *args):
        seen_idx.append(np.asarray(idx))
        return real_items(d, idx, *args)

    monkeypatch.setattr(multimodal_selection.mm, "items_of", spy_items)
    monkeypatch.setattr(multimodal_selection.mm, "train_model", lambda spec, cfg, items, k, seed: (None, 0.0))
    monkeypatch.setattr(multimodal_selection.mm, "predict", lambda net, spec, items, k: np.linspace(0, 1, len(items)))
    out = multimodal_selection.evaluate_candidate({}, "unused", {"fusion": "early"}, seed=7)
    assert {"score", "pseudo_unseen_auroc", "pseudo_unseen_t1_only_auroc", "seen_validation_auroc"} <= set(out)
    used = np.concatenate(seen_idx)
    assert (split[used] != "test").all() and np.isin(sites[used], data["seen_sites"]).all()
    held = selection.pseudo_unseen_cluster(data["seen_sites"].tolist(), 7)
    assert (sites[seen_idx[0]] != held).all()  # the training items exclude the pseudo-unseen site


def test_multimodal_bundle_and_benchmark_use_the_selected_settings():
    """The bundle's fusion and modality dropout are the ones the committed selection run chose (training sites only),
    and the headline benchmark's me_multimodal is built from the same record."""
    from benchmarks import multimodal

    chosen, settings = selection.load_choice("multimodal_selection")
    root = Path(__file__).resolve().parents[2] / "bundles/mri_multimodal_me_cnn_classification/configs"
    for name in ("train.json", "inference.json"):
        net = json.loads((root / name).read_text())["network_def"]
        assert net["fusion"] == settings["fusion"], name
        assert net["modality_dropout"] == settings.get("options", {}).get("modality_dropout", 0.0), name
    assert "dropout_warmup" not in settings or settings["dropout_warmup"] is None  # the bundle has no warm-up handler
    spec = {"kind": "multimodal", "inputs": ("t1", "flair"), **settings}
    assert multimodal.selected_multimodal_spec() == (chosen, spec)


def test_livecell_bundle_and_benchmark_use_the_selected_normalisation():
    """The live-cell bundle's norm / reversible_norm are the ones the committed selection run chose."""
    from benchmarks import livecell

    chosen, settings = selection.load_choice("livecell_selection")
    assert set(settings) == {"norm", "reversible_norm"}
    root = Path(__file__).resolve().parents[2] / "bundles/livecell_me_autoencoder/configs"
    for name in ("train.json", "inference.json"):
        net = json.loads((root / name).read_text())["network_def"]
        assert (net["norm"], net["reversible_norm"]) == (settings["norm"], settings["reversible_norm"]), name
    assert livecell.selected_normalisation() == (chosen, settings)
