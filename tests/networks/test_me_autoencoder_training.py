# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Behaviour of trained ME-autoencoders on the live-cell set (each model trained in a MONAI SupervisedTrainer)."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

if importlib.util.find_spec("skimage") is None:
    pytest.skip("scikit-image (the source of the real cell image) is not installed", allow_module_level=True)

from benchmarks.livecell import MODELS, evaluate_model, select_by_validation, train_model  # noqa: E402
from monai_medl.data.synthetic.livecell import make_livecell  # noqa: E402
from monai_medl.metrics import batch_probe_accuracy, latent_batch_clustering  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return make_livecell(tiles_per_batch=60, seed=0)  # 6 seen + 2 unseen imaging days, 216 training tiles


def _fe_latent_batch_readouts(net, data):
    idx = data.select("training")
    latent = evaluate_model(net, data, idx)["latent"]
    return batch_probe_accuracy(latent, data.batch[idx]), latent_batch_clustering(latent, data.batch[idx])


def test_adversary_makes_the_fe_latent_less_batch_predictable():
    # the benchmark's set and training length (seed 0): with the per-sample (instance) norm of the FE branch, 8 epochs
    # on 60 tiles per day leave too little day information in the plain latent for the comparison to mean anything
    data = make_livecell(tiles_per_batch=100, seed=0)
    plain, _ = train_model(data, fixed_effects=True, random_effects=False, adversary=False, epochs=25, seed=0)
    adv, hist = train_model(data, fixed_effects=True, random_effects=False, adversary=True, epochs=25, seed=0)
    assert 0 <= hist["adv_acc"] <= 1  # the AdversaryHandler ran inside the trainer
    probe_plain, mix_plain = _fe_latent_batch_readouts(plain, data)
    probe_adv, mix_adv = _fe_latent_batch_readouts(adv, data)
    chance = 1 / 6
    assert probe_plain > 3 * chance  # without the adversary the FE latent encodes the imaging day
    assert probe_adv < probe_plain - 0.02  # a fresh probe decodes the day less well with the adversary
    assert mix_adv["calinski_harabasz"] < mix_plain["calinski_harabasz"]  # weaker clustering by day


def _edges(a: np.ndarray) -> np.ndarray:
    return np.hypot(ndi.sobel(a, 0), ndi.sobel(a, 1))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_counterfactual_changes_batch_appearance_but_keeps_the_cell(data):
    net, _ = train_model(data, fixed_effects=False, random_effects=True, adversary=False, epochs=8, seed=0)
    idx = data.select("test_seen")
    k = net.num_clusters
    x = torch.from_numpy(data.image[idx])
    batch = data.batch[idx]
    z = torch.eye(k)[batch]
    rng = np.random.default_rng(0)
    shift_pred, shift_true, closer, edge_cf, edge_rec = [], [], [], [], []
    with torch.no_grad():
        recon = net.reconstruct(x, z).numpy()[:, 0]
        for target in range(k):
            cf = net.counterfactual(x, z, torch.eye(k)[[target] * len(idx)]).numpy()[:, 0]
            for j in np.flatnonzero(batch != target):
                clean = data.clean[idx[j], 0]
                # ground truth: the same clean cell imaged (noise-free) in the source and in the target batch
                src = dataclasses.replace(data.effects[batch[j]], noise_sd=0.0).apply(clean, rng)
                tgt = dataclasses.replace(data.effects[target], noise_sd=0.0).apply(clean, rng)
                shift_pred.append(cf[j].mean() - recon[j].mean())
                shift_true.append(tgt.mean() - src.mean())
                closer.append(np.mean((cf[j] - tgt) ** 2) < np.mean((recon[j] - tgt) ** 2))
                edge_cf.append(_corr(_edges(cf[j]), _edges(clean)))
                edge_rec.append(_corr(_edges(recon[j]), _edges(clean)))
    # appearance: the intensity change follows the true difference between the two days ...
    assert _corr(np.array(shift_pred), np.array(shift_true)) > 0.5
    # ... and the counterfactual is closer to the target-day rendering than the source-day reconstruction
    assert np.mean(closer) > 0.6
    # cell: the counterfactual's edges match the real cell's edges as well as the reconstruction's do
    assert np.mean(edge_cf) > 0.5
    assert np.mean(edge_cf) > 0.9 * np.mean(edge_rec)


def test_select_by_validation_keeps_the_best_validation_auroc(data):
    grid = (5e-3, 1e-4)
    net, hist = select_by_validation(data, MODELS["me"], epochs=2, seed=0, grid=grid)
    assert len(hist["val_auroc"]) == len(grid) and hist["seconds"] > 0
    best = int(np.argmax(hist["val_auroc"]))  # first maximum: ties go to the earlier (stronger) adversary
    assert hist["adversary_lr"] == grid[best]
    # the returned network is the selected one: its validation AUROC is the maximum, and it is in eval mode
    assert not net.training
    assert evaluate_model(net, data, data.select("validation"))["auroc"] == pytest.approx(max(hist["val_auroc"]))
