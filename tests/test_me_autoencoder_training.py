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
from monai_medl.data.livecell import make_livecell  # noqa: E402
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


def test_vector_autoencoder_separates_batch_offsets_on_omics_like_data():
    from monai_medl.losses import MixedEffectsAutoEncoderLoss
    from monai_medl.networks.nets import MixedEffectsVectorAutoEncoder

    # 60 "genes" driven by 3 biological factors; each of 4 batches adds its own per-gene offset and scale
    rng = np.random.default_rng(0)
    n, genes, k = 800, 60, 4
    factors = rng.normal(size=(n, 3))
    biology = factors @ rng.normal(size=(3, genes))
    batch = rng.integers(0, k, n)
    offset, scale = rng.normal(0, 1.0, (k, genes)), np.exp(rng.normal(0, 0.3, (k, genes)))
    x = torch.tensor(biology * scale[batch] + offset[batch], dtype=torch.float32)
    y = torch.tensor((factors[:, 0] > 0).astype(np.int64))
    z = torch.eye(k)[batch]
    train, test = slice(0, 600), slice(600, n)
    torch.manual_seed(0)
    net = MixedEffectsVectorAutoEncoder(in_features=genes, num_clusters=k, latent_size=4, channels=(32, 16))
    loss_fn = MixedEffectsAutoEncoderLoss(net, lambda_mixed=0.1, lambda_fixed=0.1, kl_weight=1e-6)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        for idx in torch.randperm(600, generator=gen).split(64):
            opt.zero_grad()
            loss_fn(net(x[train][idx], z[train][idx]), y[train][idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        out = net.forward_all(x[test], z[test])
        mse_re = float(((out.reconstruction - x[test]) ** 2).mean())
        mse_fe = float(((out.reconstruction_fixed - x[test]) ** 2).mean())
        # counterfactual into batch 0: the shift follows the true offset difference gene by gene
        cf = net.counterfactual(x[test], z[test], torch.eye(k)[[0] * (n - 600)])
        moved = (cf - out.reconstruction).mean(0).numpy()
    true_shift = np.mean([offset[0] - offset[b] for b in batch[test]], axis=0)
    # the batch-aware RE reconstruction beats the FE one (which must carry the batch in its 4-d latent)
    assert mse_re < 0.8 * mse_fe
    assert _corr(moved, true_shift) > 0.8


def test_select_by_validation_keeps_the_best_validation_auroc(data):
    grid = (5e-3, 1e-4)
    net, hist = select_by_validation(data, MODELS["me"], epochs=2, seed=0, grid=grid)
    assert len(hist["val_auroc"]) == len(grid) and hist["seconds"] > 0
    best = int(np.argmax(hist["val_auroc"]))  # first maximum: ties go to the earlier (stronger) adversary
    assert hist["adversary_lr"] == grid[best]
    # the returned network is the selected one: its validation AUROC is the maximum, and it is in eval mode
    assert not net.training
    assert evaluate_model(net, data, data.select("validation"))["auroc"] == pytest.approx(max(hist["val_auroc"]))
