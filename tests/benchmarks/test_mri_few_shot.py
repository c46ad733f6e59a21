# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The few-shot benchmark's adaptation methods, its stratified draws, its plan and a tiny end-to-end run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from benchmarks import mri
from benchmarks import mri_few_shot as fs
from monai_medl.engines.few_shot import fit_new_cluster
from monai_medl.networks.blocks.mixed_effects_head import MixedEffectsHead
from monai_medl.networks.nets.me_cnn import MixedEffectsCNN
from monai_medl.networks.nets.small_cnn import SmallCNN


def _logistic_data(n, weight, bias, seed):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, len(weight)))
    y = (rng.random(n) < 1 / (1 + np.exp(-(h @ weight + bias)))).astype(float)
    return h, y


def test_fit_new_site_moves_the_new_intercept_towards_the_truth_and_more_so_with_more_scans():
    torch.manual_seed(0)
    head = MixedEffectsHead(4, 1, num_clusters=3, random_slopes=False, intercept_prior_scale=2.0).eval()
    weight = head.linear.weight[0].detach().double().numpy()
    bias = float(head.linear.bias.detach()[0])
    true_shift = 2.0  # the new site's intercept
    errors = []
    for k in (8, 256):
        h, y = _logistic_data(k, weight, bias + true_shift, seed=k)
        adapted = fs.fit_new_site(head, h.astype(np.float32), y, steps=300, lr=0.05)
        u = float(adapted.intercept.loc.detach()[-1, 0])
        errors.append(abs(u - true_shift))
        assert adapted.num_clusters == 4 and head.intercept.num_clusters == 3  # the original head is untouched
    assert errors[0] < true_shift and errors[1] < 0.5 and errors[1] < errors[0]


def test_fit_new_site_on_features_equals_fit_new_cluster_on_images():
    torch.manual_seed(0)
    net = MixedEffectsCNN(3, backbone=SmallCNN(3, 1, 1, channels=[4, 8]), probe_size=8).eval()
    x, y = torch.randn(6, 1, 8, 8, 8), np.array([0, 1, 0, 1, 1, 0], dtype=float)
    _, h = mri.predict(net, x, torch.zeros(6, 3))
    head = fs.fit_new_site(net.head, h, y, steps=15, lr=0.05)
    whole = copy.deepcopy(net)
    fit_new_cluster(whole, x, torch.from_numpy(y).float()[:, None], task="bce", steps=15, lr=0.05)
    for name in ("slopes", "intercept"):
        torch.testing.assert_close(getattr(head, name).loc, getattr(whole.head, name).loc, atol=1e-5, rtol=1e-4)


def test_last_layer_refit_reduces_to_the_trained_weights_as_the_penalty_grows():
    trained = np.array([1.0, -0.5, 0.25])
    h, y = _logistic_data(40, np.array([-1.0, 1.0, 0.5]), 0.3, seed=1)  # the new site disagrees with the weights
    distances = [np.abs(fs.last_layer_refit(h, y, trained, 0.0, p)[0] - trained).max() for p in (0.01, 1, 100, 1e7)]
    assert all(a > b for a, b in zip(distances, distances[1:]))
    assert distances[-1] < 1e-4 and distances[0] > 0.5


def test_cv_penalty_keeps_right_weights_and_releases_wrong_ones():
    weight = np.array([1.5, -1.0, 0.5, 0.0])
    penalties = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    h, y = _logistic_data(32, weight, 0.0, seed=2)
    assert fs.cv_penalty(h, y, weight, 0.0, penalties, folds=4, seed=0) >= 10.0
    assert fs.cv_penalty(h, y, -2 * weight, 0.0, penalties, folds=4, seed=0) <= 1.0


def test_platt_scaling_leaves_auroc_unchanged_and_bias_refit_matches_the_observed_rate():
    rng = np.random.default_rng(3)
    logit = rng.normal(size=30)
    y = (rng.random(30) < 1 / (1 + np.exp(-(2 * logit - 1)))).astype(float)
    a, c = fs.platt_scaling(logit, y)
    assert a > 1.0  # the logit is too flat for these labels
    assert roc_auc_score(y, a * logit + c) == roc_auc_score(y, logit)
    shift = fs.bias_refit(logit, y)
    assert np.mean(1 / (1 + np.exp(-(logit + shift)))) == pytest.approx(y.mean(), abs=1e-4)  # the ML score equation


def test_stratified_draw_is_disjoint_from_the_scoring_set_and_keeps_both_classes():
    labels = np.array([1] * 20 + [0] * 80)
    for k in (4, 8, 16, 32):
        adapt, score = fs.stratified_draw(labels, k, np.random.default_rng(k))
        assert len(adapt) == k and not set(adapt) & set(score) and len(adapt) + len(score) == len(labels)
        assert labels[adapt].sum() == max(1, round(0.2 * k))
        assert 0 < labels[score].sum() < len(score)
    a1, _ = fs.stratified_draw(labels, 8, np.random.default_rng(0))
    a2, _ = fs.stratified_draw(labels, 8, np.random.default_rng(1))
    assert not np.array_equal(a1, a2)
    with pytest.raises(ValueError, match="cannot draw k=4 stratified scans from a site with 1 positive"):
        fs.stratified_draw(np.array([1, 0, 0, 0, 0, 0]), 4, np.random.default_rng(0))


def test_cohort_arguments_of_each_arm_and_replicate():
    cfg = fs.default_config(quick=True)
    a0, b1 = fs.cohort_kwargs(cfg, "threshold", 0), fs.cohort_kwargs(cfg, "slope", 1)
    assert (a0["arm"], a0["threshold_layout"], b1["arm"]) == ("threshold", "asymmetric", "slope")
    assert b1["seed"] == a0["seed"] + 1 and (a0["unseen_prevalence"], b1["unseen_prevalence"]) == (0.2, 0.8)
    with pytest.raises(ValueError, match="unknown arm 'thresh' in the config's 'arms'"):
        fs.cohort_kwargs(cfg, "thresh", 0)


def _tiny_config():
    cfg = fs.default_config(quick=True)
    cfg["cohort"].update(num_subjects=64, extra_unseen_subjects=40, spatial_size=[24, 24, 24], spacing=[8.0, 8.0, 8.0])
    cfg.update(arms=["threshold"], replicates=2, epochs=1, ks=[0, 4], draws=1, fit_steps=10, finetune_steps=1)
    cfg.update(penalties=[1.0, 100.0], workers=1)
    return cfg


def test_tiny_run_writes_the_plan_before_the_first_fit_and_every_model(tmp_path, monkeypatch):
    cfg = _tiny_config()
    original, seen_plan = mri.train_model, []

    def checked(*args, **kwargs):
        if not seen_plan:
            on_disk = json.loads((tmp_path / "mri_few_shot.json").read_text())
            seen_plan.append(on_disk["status"] == "running" and "primary_comparisons" in on_disk["plan"])
        return original(*args, **kwargs)

    monkeypatch.setattr(mri, "train_model", checked)
    results = fs.run(quick=True, out_dir=tmp_path, config=cfg, log=lambda line: None)
    assert seen_plan == [True]
    assert list(results["models"]) == [*fs.model_order(cfg), "replicate"]
    assert len(fs.model_order(cfg)) == 2 + 8  # k = 0: the two unadapted models; k = 4: every method
    me = results["models"]["threshold/me_fit_new_cluster/k4"]
    assert len(me["unseen"]["values"]) == 2 and 0.0 <= me["unseen"]["mean"] <= 1.0
    assert 0.0 <= me["extra"]["paired_log_loss_minus_conventional_bias_holm_p"] <= 1.0
    assert (
        me["extra"]["paired_log_loss_minus_conventional_bias_p"]
        <= me["extra"]["paired_log_loss_minus_conventional_bias_holm_p"]
    )
    # the bias refit is a monotone map of the unadapted logit: same ranking, same within-site AUROC
    unadapted = results["models"]["threshold/conventional_unadapted/k4"]["unseen"]["values"]
    assert results["models"]["threshold/conventional_bias/k4"]["unseen"]["values"] == pytest.approx(unadapted)
    assert results["plan"]["sizing"]["workers"] == 1
    assert results["models"]["replicate"]["extra"]["cpu_seconds"] > 0
    markdown = (tmp_path / "mri_few_shot.md").read_text()
    assert "### threshold: within-site log_loss by k" in markdown and "Holm p" in markdown
