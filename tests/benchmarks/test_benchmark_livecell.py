# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The live-cell benchmark's validation selection rules, paired comparisons and held-out batch probe."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from monai_medl.metrics import batch_probe_accuracy

if importlib.util.find_spec("skimage") is None:
    pytest.skip("scikit-image (the source of the real cell image) is not installed", allow_module_level=True)

from benchmarks._common import paired_comparisons  # noqa: E402
from benchmarks.livecell import (  # noqa: E402
    COMPARISONS,
    ME_ADVERSARY_LR_GRID,
    ME_OBJECTIVES,
    SPLITS,
    auroc_standard_error,
    results_notes,
    run,
    select_best_auroc,
    select_one_standard_error,
    selection_table,
)


def _config(objective, lr, auroc, se, probe):
    return {"objective": objective, "adversary_lr": lr, "val_auroc": auroc, "val_auroc_se": se, "val_probe_acc": probe}


def test_one_standard_error_rule_picks_the_most_invariant_config_within_one_se():
    grid = [
        _config("confusion", 5e-3, 0.80, 0.02, 0.30),  # 0.05 below the best: outside one s.e.
        _config("confusion", 1e-3, 0.84, 0.02, 0.60),
        _config("confusion", 2e-4, 0.85, 0.02, 0.75),  # the best AUROC; floor 0.85 - 0.02 = 0.83
        _config("ce", 5e-3, 0.83, 0.02, 0.45),  # exactly on the floor counts as within
        _config("ce", 1e-3, 0.829, 0.02, 0.20),  # just below the floor: not eligible despite the lowest probe
        _config("ce", 2e-4, 0.845, 0.02, 0.50),
    ]
    assert select_one_standard_error(grid) == 3
    # the previous rule on the same grid: best validation AUROC among the confusion configs only
    assert select_best_auroc(grid, "confusion") == 2
    assert select_best_auroc(grid, "ce") == 5


def test_one_standard_error_rule_keeps_the_most_accurate_when_nothing_else_is_within_one_se():
    grid = [
        _config("confusion", 5e-3, 0.70, 0.01, 0.20),
        _config("confusion", 1e-3, 0.90, 0.01, 0.90),
        _config("ce", 5e-3, 0.88, 0.01, 0.25),  # 0.02 below the best, s.e. 0.01
    ]
    assert select_one_standard_error(grid) == 1
    # a wider s.e. of the best AUROC lets the more invariant ce config in
    grid[1]["val_auroc_se"] = 0.03
    assert select_one_standard_error(grid) == 2


def test_one_standard_error_rule_breaks_probe_ties_by_the_lower_adversary_rate():
    grid = [
        _config("confusion", 5e-3, 0.85, 0.02, 0.40),
        _config("confusion", 2e-4, 0.84, 0.02, 0.40),
        _config("ce", 1e-3, 0.86, 0.02, 0.40),
    ]
    assert select_one_standard_error(grid) == 1
    with pytest.raises(ValueError, match="at least one"):
        select_one_standard_error([])
    with pytest.raises(ValueError, match="objective 'confusion'"):
        select_best_auroc([_config("ce", 5e-3, 0.8, 0.01, 0.3)], "confusion")


def test_auroc_standard_error_is_seeded_and_close_to_hanley_mcneil():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    p = y + rng.normal(size=120)
    se = auroc_standard_error(y, p, seed=3)
    assert se == auroc_standard_error(y, p, seed=3)
    assert se != auroc_standard_error(y, p, seed=4)
    # Hanley & McNeil (1982) closed form for the same AUROC and class sizes
    from sklearn.metrics import roc_auc_score

    a, n1, n0 = roc_auc_score(y, p), 60, 60
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    hm = np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a**2) + (n0 - 1) * (q2 - a**2)) / (n1 * n0))
    assert 0.75 * hm < se < 1.25 * hm
    # four times the tiles: about half the standard error
    y4 = np.repeat([0, 1], 240)
    p4 = y4 + rng.normal(size=480)
    assert 0.35 < auroc_standard_error(y4, p4, seed=3) / se < 0.65
    with pytest.raises(ValueError, match="two classes"):
        auroc_standard_error(np.zeros(10), np.arange(10.0))


def test_held_out_batch_probe_fits_on_one_set_and_scores_on_the_other():
    rng = np.random.default_rng(0)
    b = np.repeat(np.arange(3), 40)
    offsets = 3 * np.eye(3)[b]
    fit = rng.normal(size=(120, 3)) + offsets
    # held-out latents carry the same batch offsets: the probe transfers
    assert batch_probe_accuracy(fit, b, eval_latents=rng.normal(size=(120, 3)) + offsets, eval_batches=b) > 0.9
    # held-out latents without batch information: chance (1/3), although cross-validation on `fit` is near 1
    assert batch_probe_accuracy(fit, b) > 0.9
    assert batch_probe_accuracy(fit, b, eval_latents=rng.normal(size=(120, 3)), eval_batches=b) < 0.45
    # a held-out set from a single batch is allowed (accuracy on that batch)
    assert batch_probe_accuracy(fit, b, eval_latents=fit[:40], eval_batches=b[:40]) > 0.9
    with pytest.raises(ValueError, match="together"):
        batch_probe_accuracy(fit, b, eval_latents=fit)
    with pytest.raises(ValueError, match="dimensions"):
        batch_probe_accuracy(fit, b, eval_latents=fit[:, :2], eval_batches=b)


def _entry(seen, extra):
    out = {"seen": {"values": seen}, "unseen": {"values": seen}, "extra": {}}
    for key, values in extra.items():
        out["extra"][f"{key}_values"] = values
    return out


def test_paired_comparisons_and_selection_table_markdown():
    keys = ("mse_seen_x1000", "davies_bouldin", "calinski_harabasz", "batch_probe_acc", "mse_unseen_x1000")
    me = _entry(
        [0.9, 0.8, 0.85], dict(zip(keys, ([2.0, 3.0, 4.0], [10.0, 9.0, 5.0], [2.0, 3.0, 9.0], [0.5] * 3, [5.0] * 3)))
    )
    conv = _entry(
        [0.8, 0.82, 0.8], dict(zip(keys, ([3.0, 3.5, 3.0], [6.0, 6.0, 6.0], [8.0, 8.0, 8.0], [0.8] * 3, [4.0] * 3)))
    )
    models = {"me": me, "conventional": conv}
    versus_conventional = [c for c in COMPARISONS if c.reference == "conventional"]
    lines = paired_comparisons(models, versus_conventional, splits=SPLITS)
    assert len(lines) == 4 + 7
    assert "| me - conventional: seen_auroc (higher wins) | +0.043" in lines[4] and lines[4].endswith("| 2/3 |")
    assert lines[5].startswith("| me - conventional: mse_seen_x1000 (lower wins) | -0.167") and "| 2/3 |" in lines[5]
    assert lines[8].endswith("| 3/3 |")  # batch probe 0.5 vs 0.8 on every seed
    assert lines[10].startswith("| me - conventional: mse_unseen_x1000 (lower wins) | +1.000") and "0/3" in lines[10]
    assert models["me"]["extra"]["paired_davies_bouldin_minus_conventional_wins"] == 2
    assert models["me"]["extra"]["paired_calinski_harabasz_minus_conventional_values"] == [-6.0, -5.0, 1.0]
    # a subset of seeds: compared on its own, nothing stored
    stored = dict(models["me"]["extra"])
    sub = paired_comparisons(models, versus_conventional, positions=[1, 2], title="fresh", splits=SPLITS)
    assert sub[0] == "### fresh" and sub[4].startswith("| me - conventional: seen_auroc (higher wins) | +0.015")
    assert sub[4].endswith("| 1/2 |") and models["me"]["extra"] == stored

    grid = [_config(o, lr, 0.8, 0.05, 0.3) for o in ME_OBJECTIVES for lr in ME_ADVERSARY_LR_GRID]
    pick = {"objective": "ce", "adversary_lr": 5e-3}
    table = selection_table({7: {"grid": grid, "me": pick, "me_auroc_selected": pick}})
    assert "| seed | confusion 0.005 | confusion 0.001 | confusion 0.0002 | ce 0.005 |" in table[4]
    assert table[-1].startswith("| 7 | 0.800 (0.050) / 0.300 |") and table[-1].endswith("| ce 0.005 | ce 0.005 |")

    # the notes add the out-of-sample section for the seeds after SEEDS_BEFORE_RULE (here seeds 5 and 6)
    models = {"me": me, "conventional": conv, "me_auroc_selected": conv}
    selection = {7: {"grid": grid, "me": pick, "me_auroc_selected": pick}}
    notes = results_notes(models, selection, seeds=[4, 5, 6])
    # the all-seed comparisons are written by the skeleton (benchmarks._common.write_results) before these notes
    assert "### Out-of-sample check: seeds [5, 6] only" in notes and notes.count("me - conventional: seen_auroc") == 1
    assert "me - me_auroc_selected: seen_auroc" not in notes and "One-standard-error rule" in notes
    assert "Out-of-sample" not in results_notes(models, selection, seeds=[3, 4, 5])  # one fresh seed: no section


def test_run_applies_both_rules_to_one_trained_grid():
    # one tiny seed: every model trains one epoch; the grid models are the grid's networks under the stated rules
    selection = {}
    models = run(True, [0], epochs=1, tiles_per_batch=30, selection=selection)
    rec = selection[0]
    assert [(c["objective"], c["adversary_lr"]) for c in rec["grid"]] == [
        (o, lr) for o in ME_OBJECTIVES for lr in ME_ADVERSARY_LR_GRID
    ]
    for c in rec["grid"]:
        assert 0 <= c["val_auroc"] <= 1 and 0 < c["val_auroc_se"] < 0.5 and 0 <= c["val_probe_acc"] <= 1
    chosen = rec["grid"][select_one_standard_error(rec["grid"])]
    assert rec["me"] == {"objective": chosen["objective"], "adversary_lr": chosen["adversary_lr"]}
    best = rec["grid"][select_best_auroc(rec["grid"], "confusion")]
    assert rec["me_auroc_selected"] == {"objective": "confusion", "adversary_lr": best["adversary_lr"]}
    assert rec["me_ce_objective"] == {"objective": "ce", "adversary_lr": 5e-3}
    # train_seconds: me = the whole grid, me_auroc_selected = its three confusion models, me_ce_objective = one model
    secs = {m: models[m]["extra"]["train_seconds"] for m in ("me", "me_auroc_selected", "me_ce_objective")}
    assert secs["me"] > secs["me_auroc_selected"] > secs["me_ce_objective"] > 0
    assert set(models) == {
        "conventional",
        "domain_adversarial",
        "re_only",
        "me_no_adversary",
        "me",
        "me_auroc_selected",
        "me_ce_objective",
    }
    assert models["me"]["extra"]["batch_probe_acc_values"] == [models["me"]["extra"]["batch_probe_acc"]]


def test_main_passes_the_selected_normalisation_to_every_model_without_changing_defaults(monkeypatch):
    """The selection run's choice reaches the models and the results' config as an argument; DEFAULTS stay as they
    are (the benchmark used to write the choice into the module's DEFAULTS)."""
    import benchmarks.livecell as lc

    defaults = dict(lc.DEFAULTS)
    chosen = {"norm": "batch", "reversible_norm": False}
    calls, captured = [], {}
    monkeypatch.setattr(lc, "selected_normalisation", lambda: ("batch_norm", dict(chosen)))
    monkeypatch.setattr(lc, "make_livecell", lambda tiles_per_batch, seed: None)
    monkeypatch.setattr(lc, "train_model", lambda data, epochs, seed, **kw: calls.append(kw) or (None, {"seconds": 1}))
    monkeypatch.setattr(lc, "_test_values", lambda net, data, seed, seconds: {"seen_auroc": 0.5})
    grid = [{"net": None, "objective": "ce", "adversary_lr": 5e-3, "seconds": 1, "val_auroc": 0.5, "val_auroc_se": 0.1}]
    grid[0]["val_probe_acc"] = 0.2
    monkeypatch.setattr(lc, "train_grid", lambda data, spec, epochs, seed: calls.append(spec) or grid)
    monkeypatch.setattr(lc, "_grid_models", lambda configs: dict.fromkeys(lc.GRID_MODELS, (0, 1.0)))
    monkeypatch.setattr(lc, "run_benchmark", lambda *args, **kw: captured.update(run_seed=args[4], config=kw["config"]))
    lc.main(["--quick"])
    assert set(captured["run_seed"](0)) == set(lc.MODELS)
    assert len(calls) == len(lc.MODELS) - len(lc.GRID_MODELS) + 1  # the single models, then the grid's spec
    assert all(kw["norm"] == "batch" and kw["reversible_norm"] is False for kw in calls)
    config = captured["config"]()
    assert (config["norm"], config["reversible_norm"]) == ("batch", False)
    assert lc.DEFAULTS == defaults
