# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MRI benchmark: disease vs control from 3D T1 scans across scanner sites, seen and unseen sites, every baseline.

Data (:func:`monai_medl.data.generate_mri_cohort`, generated once per run into a temporary folder unless
``--cohort-dir`` is given): MNI152 anatomy with simulated subject variation, disease (bilateral medial temporal
grey-matter loss, ventricular enlargement) and scanner effects (contrast, gamma, bias field, noise, blur, slice
thickness, gain); 6 training ("seen") sites whose disease prevalence is spread from 20% to 80% (site and label are
confounded) and 2 balanced sites never used for training ("unseen"). Volumes are 32^3 voxels of 6 mm; every scan
is z-scored on its own (no site statistics are used, so no model gets site information from preprocessing).

The full run adds ``extra_unseen_subjects`` scans at the two unseen sites (the rest of the cohort is unchanged):
a larger unseen test set costs only its generation and inference. The numbers of repeats and of unseen scans are
the design chosen by :mod:`benchmarks.mri_power` for the primary comparison's power; the run's plan states the
minimum detectable effect of that design, computed before the run.

Protocol per repeat ``r``: the seen-site subjects are split into 5 folds stratified on label x site
(:func:`~monai_medl.data.stratified_group_kfold`, split seed ``r // 5``: repeated cross-validation); repeat ``r``
trains on the other four folds and tests on fold ``r % 5`` (seen) and on every unseen-site scan (unseen). Model
initialisation, batch order and augmentation (random left-right flips) are seeded by ``r``.

Models (same SmallCNN backbone, channels 8-16-32-64, global average pooling; Adam 1e-3, batch 16, the same number
of epochs, last epoch used; trained in a MONAI ``SupervisedTrainer`` with the package's loss, prepare_batch and
``AdversaryHandler``):
``conventional`` (the backbone, BCE); ``cluster_input`` (one-hot z concatenated to the pooled features before
the classifier, zeros for unseen sites); ``domain_adversarial`` (the backbone + cluster adversary on its pooled
block outputs, confusion objective); ``me_no_adversary`` (mixed-effects CNN: random slopes on the pooled
features and a random intercept per site, both heads trained, KL weight 1e-3); ``me`` (the same plus the
adversary; seen sites: mixed prediction with the true z, unseen sites: population prediction z = 0);
``me_randomized_z`` (the ``me`` model with a random one-hot z); ``me_inferred_z`` (the ``me`` model with the soft
z of an image z-predictor, a SmallCNN site classifier trained on the training scans only, for seen and unseen
scans); ``traditional`` (logistic regression, C by inner cross-validation, on regional features: CSF fraction and
mean intensity in the medial temporal and ventricular regions and in a 4x4x4 grid of blocks); ``shuffled_label``
(the conventional recipe on permuted training labels: chance level). Harmonisation baselines:
``conventional_site_normalised`` (the conventional recipe on scans z-scored per site instead of per scan: mean and
s.d. of the brain voxels of the site's own scans, the training scans for a seen site and all of its unlabelled
scans for an unseen site); ``combat_logistic`` (the traditional features harmonised by ComBat, fitted on the
training scans with the label protected and applied label-free; an unseen site's parameters are estimated from its
own unlabelled scans at test time; see :mod:`benchmarks._combat`; then the traditional model's logistic regression).

Metrics: AUROC on seen-site test scans and on unseen-site scans (pooled over sites); in ``extra``: balanced
accuracy (threshold maximising Youden's J on the training predictions of the same mode), site-probe accuracy
(logistic regression from the fixed-effects pooled features of training scans to their site, scored on the
seen-site test scans; chance 1/6), and for the models with per-site intercepts the Pearson correlation of the
learned intercepts with the generator's true per-site prevalence (logit) and with the generator's site gain.

Run ``python -m benchmarks.mri [--quick] [--out DIR] [--cohort-dir DIR]``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy.stats import pearsonr
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from benchmarks._combat import ComBat
from benchmarks._common import (
    CONTRACT_MODELS,
    Comparison,
    benchmark_parser,
    read_cohort,
    run_benchmark,
    site_scores,
)
from benchmarks._training import flipped_loader, train_supervised
from benchmarks.invariance import invariance_handlers, resolve_invariance
from benchmarks.mri_design import design_power
from monai_medl.bundle.optim import random_effects_param_groups
from monai_medl.data.splits import stratified_group_kfold
from monai_medl.data.synthetic.mri_cohort import cohort_settings, generate_mri_cohort
from monai_medl.engines.prepare_batch import MixedEffectsPrepareBatch
from monai_medl.handlers.adversary_handler import AdversaryHandler
from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss
from monai_medl.networks.layers.random_effects_settings import RandomEffectsSettings
from monai_medl.networks.nets.me_cnn import MixedEffectsCNN
from monai_medl.networks.nets.small_cnn import SmallCNN
from monai_medl.networks.utils import soft_design
from monai_medl.transforms.site import site_index_to_design
from monai_medl.transforms.site_intensity import NormalizeBySite, SiteIntensityStats

__all__ = [
    "MODELS",
    "TRAININGS",
    "COMPARISONS",
    "ABLATIONS",
    "ADVERSARY_DEFAULTS",
    "default_config",
    "make_plan",
    "training_epochs",
    "inference_passes",
    "load_cohort",
    "site_normalised_images",
    "combat_harmonised",
    "split_indices",
    "run_repeat",
    "me_cnn",
    "with_cohort",
    "selected_adversary",
    "run",
    "run_ablation",
    "main",
]

NAME = "mri"

TRAININGS: dict[str, tuple[str, ...]] = {
    "conventional": ("conventional",),
    "conventional_site_normalised": ("conventional_site_normalised",),
    "cluster_input": ("cluster_input",),
    "domain_adversarial": ("domain_adversarial",),
    "me_no_adversary": ("me_no_adversary",),
    "me": ("me",),
    "me_randomized_z": ("me",),
    "me_inferred_z": ("me", "z_predictor"),
    "traditional": (),
    "combat_logistic": (),
    "shuffled_label": ("shuffled_label",),
}
"""Every model of the benchmark (in table order) and the networks it needs trained per repeat (a network shared by
several models, e.g. ``me``'s, is trained once). A new model is a row here and a block in :func:`run_repeat`."""
MODELS = tuple(TRAININGS)
assert set(CONTRACT_MODELS) <= set(MODELS), "the benchmark contract's models must all be in the table"


FULL_DESIGN = {"repeats": 12, "extra_unseen_subjects": 2000}
"""The full run's repeats and extra unseen-site subjects: the design :mod:`benchmarks.mri_power` chose (a test
checks that they agree with ``benchmarks/results/mri_power.json``)."""


ADVERSARY_DEFAULTS: dict[str, Any] = {
    "adversary_taps": "all",  # "all": the backbone's pooled block outputs and h; "h": the pooled features h only
    "adversary_hidden": [64, 32],
    "adversary_input_norm": False,
    "adversary_lr": 1e-3,
    "adversary_steps": 1,  # adversary updates per trainer iteration
    "adversary_memory": 0,  # past batches' features the adversary also trains on
    "adversary_warmup_epochs": 0,  # epochs in which the adversary learns but its term is not applied
    "adversary_label_conditional": False,  # the adversary also reads the label; confusion target P(site | label)
}
"""The adversary's settings besides ``lambda_g`` and ``adversary_objective`` (``benchmarks.mri_selection`` varies
them)."""


def default_config(quick: bool = False) -> dict[str, Any]:
    """Every setting of a run (written to the results' ``config``).

    The cohort is the bundles' (:func:`~monai_medl.data.cohort_settings` ``"mri_bundle"``, whose scans are
    unchanged) plus ``extra_unseen_subjects`` scans at the two unseen sites (test-only: a larger unseen test set)."""
    extra = 100 if quick else FULL_DESIGN["extra_unseen_subjects"]
    return {
        "cohort": cohort_settings(
            "mri_bundle", extra_unseen_subjects=extra, **({"num_subjects": 400} if quick else {})
        ),
        "folds": 5,
        "repeats": 2 if quick else FULL_DESIGN["repeats"],
        "epochs": 8 if quick else 20,
        "z_predictor_epochs": 4 if quick else 8,
        "batch_size": 16,
        "lr": 1e-3,
        "channels": [8, 16, 32, 64],
        "lambda_g": 0.1,
        "adversary_objective": "confusion",
        **ADVERSARY_DEFAULTS,
        "kl_weight": 1e-3,
        "slope_prior_scale": 0.1,
        "intercept_prior_scale": 0.5,
        "lambda_fixed": 1.0,
        "re_lr_scale": 10.0,
        "threads": 1,
    }


def training_epochs(cfg: dict[str, Any], models: Sequence[str]) -> int:
    """Training epochs one repeat of ``models`` runs (each network of :data:`TRAININGS` once)."""
    unknown = sorted(set(models) - set(TRAININGS))
    if unknown:
        raise KeyError(f"unknown models {unknown}; the benchmark's models are {list(TRAININGS)}.")
    runs = {t for m in models for t in TRAININGS[m]}
    return sum(cfg["z_predictor_epochs"] if t == "z_predictor" else cfg["epochs"] for t in runs)


def inference_passes(models: Sequence[str]) -> int:
    """Forward passes over each unseen-site scan in one repeat of ``models``: one per deep model, plus the
    z-predictor's for ``me_inferred_z``."""
    return sum(1 for m in models if TRAININGS[m]) + int("me_inferred_z" in models)


# ----------------------------------------------------------------------------------------------------------- data


def load_cohort(cohort_dir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Generate (if needed) and load the cohort: volumes z-scored per scan (``images``) and as generated
    (``raw_images``), labels, sites, split tags and ground truth."""
    sections, truth = read_cohort(generate_mri_cohort(cohort_dir, **cfg["cohort"]))
    entries = [e for _, e in sections]
    raw = np.stack([nib.load(os.path.join(cohort_dir, e["image"])).get_fdata(dtype=np.float32) for e in entries])
    flat = raw.reshape(len(raw), -1)
    images = (raw - flat.mean(1)[:, None, None, None]) / flat.std(1)[:, None, None, None]
    return {
        "entries": entries,
        "images": images[:, None].astype(np.float32),
        "raw_images": raw[:, None],
        "labels": np.array([e["label"] for e in entries], dtype=np.float32),
        "sites": [e["site"] for e in entries],
        "splits": [key for key, _ in sections],
        "seen_sites": list(truth["seen_sites"]),
        "unseen_sites": list(truth["unseen_sites"]),
        "truth": truth,
        "affine": np.asarray(truth["grid"]["affine"], dtype=float),
    }


def _region_mask(affine: np.ndarray, shape: Sequence[int], center_mm, sigma_mm) -> np.ndarray:
    """Voxels within 1.5 s.d. of an (anisotropic) Gaussian region given in MNI mm."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    mm = idx @ affine[:3, :3].T + affine[:3, 3]
    d = (mm - np.asarray(center_mm)) / np.asarray(sigma_mm, dtype=float)
    return (np.sqrt((d**2).sum(1)) <= 1.5).reshape(shape)


def traditional_features(images: np.ndarray, affine: np.ndarray, regions: dict[str, Any]) -> np.ndarray:
    """Regional volumes and intensities: CSF fraction (voxels below the scan's 30th brain-intensity percentile)
    and mean intensity in the medial temporal and ventricular regions and in a 4x4x4 grid of blocks."""
    vols = images[:, 0]
    shape = vols.shape[1:]
    masks = [
        _region_mask(affine, shape, c, regions["medial_temporal"]["sigma_mm"])
        for c in regions["medial_temporal"]["centers_mm"]
    ]
    masks.append(_region_mask(affine, shape, regions["ventricles"]["center_mm"], regions["ventricles"]["sigma_mm"]))
    edges = [np.linspace(0, s, 5).astype(int) for s in shape]
    for i in range(4):
        for j in range(4):
            for k in range(4):
                m = np.zeros(shape, bool)
                m[edges[0][i] : edges[0][i + 1], edges[1][j] : edges[1][j + 1], edges[2][k] : edges[2][k + 1]] = True
                masks.append(m)
    feats = []
    for v in vols:
        brain = v > np.quantile(v, 0.5)  # the brain fills about half of the field of view
        csf = v < np.quantile(v[brain], 0.3)
        row = []
        for m in masks:
            inside = m & brain
            row += [float(csf[inside].mean()) if inside.any() else 0.0, float(v[m].mean())]
        feats.append(row)
    return np.asarray(feats, dtype=np.float64)


# --------------------------------------------------------------------------------------------------------- models


class ClusterInputCNN(nn.Module):
    """Cluster-input baseline: ``logit = W [h, z] + b`` on the backbone's pooled features ``h``."""

    def __init__(self, encoder: MixedEffectsCNN, num_clusters: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.linear = nn.Linear(encoder.feature_dim + num_clusters, 1)

    def forward_all(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logit and the backbone's pooled features."""
        features, _ = self.encoder.encode(x)
        return self.linear(torch.cat([features[-1], z], dim=1)), features

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x, z)[0]


class DetachedFixedHeadCNN(MixedEffectsCNN):
    """Control of ``benchmarks.mri_study``: the fixed read-out is computed on ``h.detach()``, so the fixed head's
    loss trains the head (``W``, ``b``) but does not reach the encoder; the mixed read-out is unchanged."""

    def forward_all(self, x: torch.Tensor, z: torch.Tensor | None = None):
        out = super().forward_all(x, z)
        return out._replace(fixed=self.head.linear(out.features[-1].detach()))


def _backbone(cfg: dict[str, Any], out_channels: int = 1) -> SmallCNN:
    return SmallCNN(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=cfg["channels"])


def me_cnn(cfg: dict[str, Any], num_clusters: int, random_effects: bool) -> MixedEffectsCNN:
    """The benchmark's mixed-effects CNN for ``cfg`` (its backbone, priors and adversary taps); with
    ``random_effects=False`` the same network without random effects (the conventional and adversarial models)."""
    if cfg["adversary_taps"] not in ("all", "h"):
        raise ValueError(f"adversary_taps must be 'all' or 'h', got {cfg['adversary_taps']!r}.")
    # the study's controls: cfg "fixed_head_detached" (DetachedFixedHeadCNN), "random_slopes" False (intercept only)
    cls = DetachedFixedHeadCNN if cfg.get("fixed_head_detached", False) else MixedEffectsCNN
    return cls(
        num_clusters,
        backbone=_backbone(cfg),
        random_effects=RandomEffectsSettings(
            random_slopes=random_effects and cfg.get("random_slopes", True),
            random_intercept=random_effects,
            slope_prior_scale=cfg["slope_prior_scale"],
            intercept_prior_scale=cfg["intercept_prior_scale"],
        ),
        probe_size=cfg["cohort"]["spatial_size"],
        tap_layers=[] if cfg["adversary_taps"] == "h" else None,
    )


def train_model(
    kind: str, cfg: dict[str, Any], x: torch.Tensor, y: torch.Tensor, site: torch.Tensor, num_clusters: int, seed: int
) -> nn.Module:
    """Train one deep model (``conventional``, ``cluster_input``, ``domain_adversarial``, ``me_no_adversary``,
    ``me`` or ``z_predictor``) with the shared recipe in a MONAI ``SupervisedTrainer`` and return it in eval mode.

    Mixed-effects kinds train with :class:`MixedEffectsLoss` (both heads for ``me*``, the fixed head only for the
    fixed-effects models) and, when adversarial, :class:`AdversaryHandler`; ``cluster_input`` gets the one-hot ``z``
    from :class:`MixedEffectsPrepareBatch`; the ``z_predictor`` is a SmallCNN site classifier (cross-entropy).

    A config key ``invariance`` (:mod:`benchmarks.invariance`: ``{"kind": "none" | "adversary" | "coral" | "mmd",
    "lambda": ..., "label_conditional": ..., "update": ...}``) replaces the adversary of ``domain_adversarial`` and
    ``me`` and sets the network's feature taps; without it the ``adversary_*`` keys apply as before."""
    if kind == "me":  # the adversary benchmarks.mri_selection chose (run() puts it in the config)
        cfg = {**cfg, **cfg.get("me_adversary", {})}
    if "invariance" in cfg:  # the study's mechanism: it sets which features the network taps
        spec = resolve_invariance(cfg["invariance"])
        cfg = {**cfg, "invariance": spec, **({"adversary_taps": spec["taps"]} if spec["kind"] != "none" else {})}
    torch.manual_seed(seed)
    handlers: list = []
    prepare = None
    target = y.float()[:, None]
    if kind == "z_predictor":
        net: nn.Module = _backbone(cfg, out_channels=num_clusters)
        loss: nn.Module = nn.CrossEntropyLoss()
        target = site.long()  # the site index is the target
    elif kind == "cluster_input":
        net = ClusterInputCNN(me_cnn(cfg, num_clusters, random_effects=False), num_clusters)
        loss = nn.BCEWithLogitsLoss()
        prepare = MixedEffectsPrepareBatch(num_clusters)
    else:
        me = kind in ("me", "me_no_adversary")
        net = me_cnn(cfg, num_clusters, random_effects=me)
        loss = MixedEffectsLoss(
            "bce", lambda_mixed=1.0, lambda_fixed=cfg["lambda_fixed"] if me else 0.0, kl_weight=cfg["kl_weight"]
        )
        if me:
            prepare = MixedEffectsPrepareBatch(num_clusters)
        if kind in ("domain_adversarial", "me"):
            handlers = _invariance_handlers(cfg, net, num_clusters)
    loader = flipped_loader(x, target, site, cfg["batch_size"], seed)
    optimizer = torch.optim.Adam(random_effects_param_groups(net, cfg["lr"] * cfg["re_lr_scale"]), cfg["lr"])
    return train_supervised(
        net,
        loss,
        loader,
        optimizer,
        cfg["z_predictor_epochs"] if kind == "z_predictor" else cfg["epochs"],
        handlers,
        prepare,
    )


def _invariance_handlers(cfg: dict[str, Any], net: nn.Module, num_clusters: int) -> list:
    """The invariance handlers of an adversarial kind: the ``invariance`` config's mechanism
    (:mod:`benchmarks.invariance`) when the config has one, else the adversary of the ``adversary_*`` keys."""
    if "invariance" in cfg:
        return invariance_handlers(cfg["invariance"], net, num_clusters)
    label_classes = 2 if cfg["adversary_label_conditional"] else 0  # binary disease label
    adversary = net.make_adversary(
        cfg["adversary_hidden"], input_norm=cfg["adversary_input_norm"], label_classes=label_classes
    )
    optimizer = torch.optim.Adam(adversary.parameters(), cfg["adversary_lr"])
    return [
        AdversaryHandler(
            adversary,
            optimizer,
            cfg["lambda_g"],
            objective=cfg["adversary_objective"],
            steps=cfg["adversary_steps"],
            warmup_epochs=cfg["adversary_warmup_epochs"],
            memory=cfg["adversary_memory"],
            label_classes=label_classes,
        )
    ]


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, z: torch.Tensor | None, batch_size: int = 64):
    """Probabilities and fixed-effects pooled features ``h`` (numpy) of ``x`` with design ``z``."""
    probs, feats = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        zb = None if z is None else z[i : i + batch_size]
        if isinstance(net, ClusterInputCNN):
            logit, features = net.forward_all(xb, zb)
        else:
            out = net.forward_all(xb, zb)
            logit, features = out.mixed, out.features
        probs.append(torch.sigmoid(logit[:, 0]))
        feats.append(features[-1])
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


# -------------------------------------------------------------------------------------------------------- metrics


def _scores(y_train, p_train, y_seen, p_seen, y_unseen, p_unseen) -> dict[str, float]:
    """:func:`~benchmarks._common.site_scores` of the seen test fold and the unseen sites (``seen_auroc``,
    ``unseen_auroc``, ``seen_balanced_accuracy``, ``unseen_balanced_accuracy``)."""
    sites = [0] * len(y_seen) + [-1] * len(y_unseen)
    return site_scores(np.concatenate([y_seen, y_unseen]), np.concatenate([p_seen, p_unseen]), sites, y_train, p_train)


def site_probe_accuracy(h_train: np.ndarray, s_train: np.ndarray, h_test: np.ndarray, s_test: np.ndarray) -> float:
    """Accuracy of a logistic-regression site probe fitted on training features, scored on test features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(h_train, s_train)
    return float((probe.predict(h_test) == s_test).mean())


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def intercept_recovery(intercepts: np.ndarray, truth: dict[str, Any], seen_sites: Sequence[str]) -> dict[str, float]:
    """Pearson r of per-site intercepts with the true prevalence logit and with the true log gain."""
    prev = np.array([truth["sites"][s]["target_prevalence"] for s in seen_sites])
    gain = np.array([truth["sites"][s]["effects"]["gain"]["t1"] for s in seen_sites])
    return {
        "intercept_vs_true_prevalence_r": float(pearsonr(intercepts, _logit(prev))[0]),
        "intercept_vs_true_gain_r": float(pearsonr(intercepts, np.log(gain))[0]),
    }


# ------------------------------------------------------------------------------------------------------ protocol


def site_normalised_images(raw: np.ndarray, sites: Sequence[str], reference: Sequence[int]) -> np.ndarray:
    """Every scan z-scored with the mean and s.d. of the brain (non-zero) voxels of its own site's ``reference``
    scans (:class:`~monai_medl.transforms.SiteIntensityStats`, background kept at zero).

    Pass as ``reference`` the training scans of the seen sites and every scan of each unseen site (its own images,
    no labels): each site's statistics then come from that site's images only. A scan whose site has no reference
    scans is an error (no fallback to other sites' statistics).
    """
    stats = SiteIntensityStats.fit(({"image": raw[i], "site": sites[i]} for i in reference), keys="image")
    normalise = NormalizeBySite(stats, key="image", fallback="error")
    return np.stack([normalise(raw[i], sites[i]) for i in range(len(raw))]).astype(np.float32)


def combat_harmonised(
    features: np.ndarray, sites: Sequence[str], labels: np.ndarray, train: Sequence[int]
) -> tuple[np.ndarray, ComBat]:
    """The features of every scan harmonised by :class:`~benchmarks._combat.ComBat` fitted on the ``train`` scans
    only (site as batch, the label protected); returns them and the fitted harmonisation.

    Scans of a training site use that site's fitted parameters; each other (unseen) site's parameters are
    estimated from all of its scans in ``features`` (unlabelled, at test time).
    """
    sites = np.asarray(sites)
    combat = ComBat(protect=("label",)).fit(features[train], sites[train], {"label": labels[train]})
    return combat.transform(features, sites), combat


def _logistic_regression(f_train: np.ndarray, y_train: np.ndarray):
    """Standardised features + logistic regression, C by inner 5-fold cross-validation on the training scans."""
    lr = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=5000, scoring="roc_auc"))
    return lr.fit(f_train, y_train)


def split_indices(entries: Sequence[dict], seen_sites: Sequence[str], folds: int, repeat: int):
    """``(train, seen_test, unseen)`` scan indices of ``repeat``: fold ``repeat % folds`` of a label x site
    stratified ``folds``-fold split of the seen-site scans (split seed ``repeat // folds``: repeats beyond
    ``folds`` start a new split) is the seen test set; every unseen-site scan is in ``unseen``."""
    seen = set(seen_sites)
    seen_idx = [i for i, e in enumerate(entries) if e["site"] in seen]
    split = stratified_group_kfold([dict(entries[i], _i=i) for i in seen_idx], n_splits=folds, seed=repeat // folds)
    fold = split[repeat % folds]
    train = np.array([e["_i"] for e in fold["training"]])
    test = np.array([e["_i"] for e in fold["validation"]])
    return train, test, np.array([i for i, e in enumerate(entries) if e["site"] not in seen])


def run_repeat(
    data: dict[str, Any],
    cfg: dict[str, Any],
    repeat: int,
    models: Sequence[str] = MODELS,
    log=print,
    unseen_predictions: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Train and evaluate ``models`` on repeat ``repeat`` (see :func:`split_indices`); with ``unseen_predictions``
    (a dict) each model's unseen-site probabilities are stored in it, with the labels under ``"labels"``."""
    seen_sites = data["seen_sites"]
    index = {s: i for i, s in enumerate(seen_sites)}
    tr, te, unseen_idx = split_indices(data["entries"], seen_sites, cfg["folds"], repeat)

    images, labels = torch.from_numpy(data["images"]), data["labels"]
    site_idx = np.array([index.get(s, -1) for s in data["sites"]])
    K = len(seen_sites)
    x_tr, x_te, x_un = images[tr], images[te], images[unseen_idx]
    y_tr, y_te, y_un = labels[tr], labels[te], labels[unseen_idx]
    s_tr = torch.from_numpy(site_idx[tr]).long()
    z_tr, z_te = site_index_to_design(s_tr, K), site_index_to_design(site_idx[te], K)
    zeros_te, zeros_un = torch.zeros(len(te), K), torch.zeros(len(unseen_idx), K)
    seed = 1000 * repeat
    results: dict[str, dict[str, float]] = {}
    p_unseen: dict[str, np.ndarray] = {}

    def deep(kind, train_labels=y_tr, x_train=x_tr):
        start = time.perf_counter()
        net = train_model(kind, cfg, x_train, torch.from_numpy(train_labels), s_tr, K, seed)
        log(f"  repeat {repeat} {kind}: trained in {time.perf_counter() - start:.0f} s")
        return net

    def probe(h_tr, h_te):
        return site_probe_accuracy(h_tr, site_idx[tr], h_te, site_idx[te])

    def score(name, p_tr, p_te, p_un, extra, train_labels=y_tr):
        results[name] = {**_scores(train_labels, p_tr, y_te, p_te, y_un, p_un), **extra}
        p_unseen[name] = p_un

    # the fixed-effects CNNs (conventional recipe, its shuffled-label control, on per-site-normalised images, and
    # domain-adversarial): the fixed-effects prediction everywhere
    perm = np.random.default_rng(seed).permutation(len(tr))
    fixed = [
        ("conventional", "conventional", y_tr, None),
        ("shuffled_label", "conventional", y_tr[perm], None),
        ("conventional_site_normalised", "conventional", y_tr, "site_normalised"),
        ("domain_adversarial", "domain_adversarial", y_tr, None),
    ]
    for name, kind, ytrain, inputs in fixed:
        if name not in models:
            continue
        x = images
        if inputs == "site_normalised":  # seen sites: their training scans; unseen sites: their own scans
            x = torch.from_numpy(site_normalised_images(data["raw_images"], data["sites"], [*tr, *unseen_idx]))
        net = deep(kind, ytrain, x[tr])
        (p_tr, h_tr), (p_te, h_te), (p_un, _) = (predict(net, x[a], None) for a in (tr, te, unseen_idx))
        score(name, p_tr, p_te, p_un, {"site_probe_accuracy": probe(h_tr, h_te)}, ytrain)

    if "cluster_input" in models:
        net = deep("cluster_input")
        (p_tr, h_tr), (p_te, h_te), (p_un, _) = (
            predict(net, x_tr, z_tr),
            predict(net, x_te, z_te),
            predict(net, x_un, zeros_un),
        )
        weights = net.linear.weight[0, -K:].detach().numpy()
        extra = {"site_probe_accuracy": probe(h_tr, h_te), **intercept_recovery(weights, data["truth"], seen_sites)}
        score("cluster_input", p_tr, p_te, p_un, extra)

    gen = torch.Generator().manual_seed(seed + 7)

    def random_z(n):
        return site_index_to_design(torch.randint(0, K, (n,), generator=gen), K)

    for kind in ("me_no_adversary", "me"):
        if kind not in models and (kind == "me_no_adversary" or not {"me_randomized_z", "me_inferred_z"} & set(models)):
            continue
        net = deep(kind)
        intercepts = net.head.intercept.loc[:, 0].detach().numpy()
        recovery = intercept_recovery(intercepts, data["truth"], seen_sites)
        (p_tr, h_tr), (p_te, h_te) = predict(net, x_tr, z_tr), predict(net, x_te, z_te)
        p_un, _ = predict(net, x_un, zeros_un)
        fe = {"site_probe_accuracy": probe(h_tr, h_te), **recovery}
        pop_te, _ = predict(net, x_te, zeros_te)
        fe["seen_population_auroc"] = _scores(y_tr, p_tr, y_te, pop_te, y_un, p_un)["seen_auroc"]
        score(kind, p_tr, p_te, p_un, fe)
        if kind == "me":
            score("me_randomized_z", *(predict(net, a, random_z(len(a)))[0] for a in (x_tr, x_te, x_un)), fe)
        if kind == "me" and "me_inferred_z" in models:
            z_predictor = deep("z_predictor")
            zi_tr, zi_te, zi_un = (soft_design(z_predictor, a, batch_size=64) for a in (x_tr, x_te, x_un))
            iz = [predict(net, a, z)[0] for a, z in ((x_tr, zi_tr), (x_te, zi_te), (x_un, zi_un))]
            z_accuracy = float((zi_te.argmax(1).numpy() == site_idx[te]).mean())
            score("me_inferred_z", *iz, {**fe, "seen_z_predictor_accuracy": z_accuracy})

    # regional features + logistic regression: as they are (traditional) and ComBat-harmonised (combat_logistic)
    for name in ("traditional", "combat_logistic"):
        if name not in models:
            continue
        f_all = data["features"]
        if name == "combat_logistic":
            f_all = combat_harmonised(f_all, data["sites"], labels, tr)[0]
        lr = _logistic_regression(f_all[tr], y_tr)
        p_tr, p_te, p_un = (lr.predict_proba(f_all[a])[:, 1] for a in (tr, te, unseen_idx))
        score(name, p_tr, p_te, p_un, {"site_probe_accuracy": probe(f_all[tr], f_all[te])})
    for name in results:
        r = results[name]
        log(
            f"  repeat {repeat} {name:>28}: AUROC seen {r['seen_auroc']:.3f} unseen {r['unseen_auroc']:.3f}"
            f" | site probe {r.get('site_probe_accuracy', math.nan):.2f}"
        )
    if unseen_predictions is not None:
        unseen_predictions.update(p_unseen, labels=y_un)
    return results


NOTES = """
How to read: `seen` = AUROC on held-out subjects of the 6 training sites (fold r % 5 of repeat r's split),
`unseen` = AUROC on every scan of the 2 sites never used in training (a larger set than the bundles' cohort has:
see `extra_unseen_subjects` in the config); mean [t-based 95% CI] over repeats. `me` uses the true site's random
effects on seen sites and the population prediction (z = 0) on unseen sites; `me_randomized_z` a random training
site's effects; `me_inferred_z` the z-predictor's soft z everywhere. `site_probe_accuracy`: a logistic regression
predicting the training site from the fixed-effects pooled features (chance 1/6 = 0.167; lower = more
site-invariant). `intercept_vs_true_prevalence_r`: Pearson r over the 6 seen sites between the learned random
intercepts (for cluster_input: the classifier weights on z) and the logit of the generator's per-site disease
prevalence; `intercept_vs_true_gain_r`: the same against the generator's scanner gain (a nuisance effect the
intercept should not track). `seen_population_auroc`: the ME model's fixed-effects prediction on seen sites.
`combat_logistic`: the traditional features after ComBat (fitted on training scans, label protected; unseen sites
estimated from their own unlabelled scans); its site probe reads the harmonised features.
`conventional_site_normalised`: the conventional CNN on per-site z-scored intensities (each site's own scans).
"""


def with_cohort(cfg: dict[str, Any], cohort_dir: str | None, body, log=print):
    """Load (generating if needed) the cohort and its regional features, call ``body(data)``, clean up."""
    torch.set_num_threads(cfg["threads"])
    tmp = None
    if cohort_dir is None:
        tmp = cohort_dir = tempfile.mkdtemp(prefix="mri_benchmark_cohort_")
    try:
        start = time.perf_counter()
        data = load_cohort(cohort_dir, cfg)
        data["features"] = traditional_features(data["images"], data["affine"], data["truth"]["regions"])
        log(
            f"cohort: {len(data['entries'])} scans, sites {data['seen_sites']} seen, {data['unseen_sites']} unseen "
            f"({time.perf_counter() - start:.0f} s)"
        )
        return body(data)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


COMPARISONS = (
    Comparison("me", "unseen_auroc", "conventional", key="paired_unseen_minus_conventional"),
    Comparison("me", "unseen_auroc", "cluster_input", key="paired_unseen_minus_cluster_input"),
    Comparison("me", "unseen_auroc", "combat_logistic", key="paired_unseen_minus_combat_logistic"),
    Comparison(
        "me", "unseen_auroc", "conventional_site_normalised", key="paired_unseen_minus_conventional_site_normalised"
    ),
    Comparison("me", "seen_auroc", "me_randomized_z", key="paired_seen_minus_randomized_z"),
)
"""The plan's primary comparisons (paired per repeat; stored in ``me``'s ``extra`` under these keys)."""


def make_plan(cfg: dict[str, Any], comparisons: Sequence[Comparison] = COMPARISONS) -> dict[str, Any]:
    """The run's pre-registered plan: seeds, splits, baselines' rules, primary comparisons, decision rule and the
    power of the design in ``cfg`` (:func:`benchmarks.mri_design.design_power`, computed from
    ``benchmarks/results/mri_power.json``)."""
    repeats, folds = cfg["repeats"], cfg["folds"]
    power = design_power(cfg)
    return {
        "seeds": f"repeats 0..{repeats - 1} (training seed 1000 r): repeat r trains on {folds - 1} of {folds} folds of "
        f"the seen-site subjects and tests on fold r % {folds} of the split drawn with seed r // {folds} (repeated "
        "cross-validation)",
        "splits": f"{folds} folds stratified on label x site over the seen sites; the unseen sites are test-only "
        f"({power['unseen_scans']} scans, every repeat)",
        "baselines": "combat_logistic: the traditional model's regional features, ComBat (neuroCombat, parametric "
        "empirical Bayes) fitted on each repeat's training scans only with site as batch and the label protected "
        "(prevalence is confounded with site; an unprotected fit would remove disease signal as site effect), "
        "applied label-free; seen sites use their fitted parameters, each unseen site's are estimated at test time "
        "from its own unlabelled scans (ComBat cannot estimate them from training data), then logistic regression "
        "as for traditional. conventional_site_normalised: the conventional CNN on the generated intensities "
        "z-scored per site (mean and s.d. of the brain voxels of the site's own scans: training scans for seen "
        "sites, all of its unlabelled scans for an unseen site) instead of per scan",
        "primary_comparisons": [
            f"{c.model} - {c.reference}, {c.metric.split('_')[0]}-site AUROC, paired per repeat" for c in comparisons
        ],
        "decision_rule": "a difference is claimed only when its paired 95% t-interval excludes 0 (each comparison "
        "separately, no multiplicity correction; all are reported whatever the outcome); the last epoch is used (no "
        "choice on test data)",
        "power": power,
    }


def selected_adversary(results_dir=None) -> tuple[str, dict[str, Any]]:
    """``(candidate, settings)`` of the ``me`` model's adversary chosen by ``benchmarks.mri_selection`` (changes to
    :func:`default_config`, applied to ``me`` only)."""
    from benchmarks.selection import load_choice

    return load_choice("mri_selection", **({} if results_dir is None else {"results_dir": results_dir}))


def run(
    quick: bool = False, out_dir=None, config: dict[str, Any] | None = None, cohort_dir: str | None = None, log=print
) -> dict[str, Any]:
    """The benchmark: every model, ``repeats`` folds; writes ``mri.json`` / ``mri.md``. Without ``config`` the ``me``
    model's adversary is the one ``benchmarks.mri_selection`` chose (:func:`selected_adversary`)."""
    if config is None:
        chosen, settings = selected_adversary()
        config = {**default_config(quick), "me_adversary_selection": chosen, "me_adversary": settings}

    def repeat(data, r):
        return run_repeat(data, config, r, log=log)

    return _on_cohort(NAME, quick, config, make_plan(config), repeat, out_dir=out_dir, cohort_dir=cohort_dir, log=log)


def _on_cohort(
    name: str,
    quick: bool,
    cfg: dict[str, Any],
    plan: Mapping[str, Any],
    repeat: Callable[[dict[str, Any], int], Mapping[str, Mapping[str, float]]],
    *,
    config: Mapping[str, Any] | None = None,
    comparisons: Sequence[Comparison] = COMPARISONS,
    order: Sequence[str] | None = MODELS,
    notes: str = NOTES,
    out_dir=None,
    cohort_dir: str | None = None,
    log=print,
) -> dict[str, Any]:
    """:func:`~benchmarks._common.run_benchmark` of ``repeat(data, r)`` over ``cfg``'s repeats on its cohort (loaded
    once by :func:`with_cohort`), seen and unseen AUROC; the main benchmark's comparisons, models and notes by
    default. ``config`` is stored (default ``cfg``)."""

    def body(data):
        return run_benchmark(
            name,
            quick,
            plan,
            list(range(cfg["repeats"])),
            lambda r: repeat(data, r),
            metric="auroc",
            seen="seen_auroc",
            unseen="unseen_auroc",
            config=cfg if config is None else config,
            comparisons=comparisons,
            order=order,
            notes=notes,
            out_dir=out_dir,
            log=log,
        )

    return with_cohort(cfg, cohort_dir, body, log)


ABLATIONS: dict[str, dict[str, Any]] = {
    "me (lambda_g 0.1, kl 1e-3)": {},
    "lambda_g 0 (no adversary)": {"lambda_g": 0.0},
    "lambda_g 0.3": {"lambda_g": 0.3},
    "lambda_g 1.0": {"lambda_g": 1.0},
    "adversary objective ce": {"adversary_objective": "ce"},
    "kl_weight 1e-2": {"kl_weight": 1e-2},
    "kl_weight 1e-4": {"kl_weight": 1e-4},
    "lambda_fixed 0 (mixed head only)": {"lambda_fixed": 0.0},
    "random-effects lr x1": {"re_lr_scale": 1.0},
}
"""Settings of the ``me`` model varied one at a time by ``--ablation`` (the rest as in :func:`default_config`)."""


def run_ablation(
    quick: bool = False, out_dir=None, config: dict[str, Any] | None = None, cohort_dir: str | None = None, log=print
) -> dict[str, Any]:
    """The ``me`` model with one setting changed at a time (:data:`ABLATIONS`), against the conventional model on
    the same folds (one cross-validation round: ``folds`` repeats); writes ``mri_ablation.json`` / ``.md`` (extra:
    paired differences to ``conventional``)."""
    cfg = config or {**default_config(quick), **({} if quick else {"repeats": default_config()["folds"]})}
    comparisons = [
        Comparison(name, metric, "conventional", key=f"paired_{split}_minus_conventional")
        for name in ABLATIONS
        for metric, split in (("unseen_auroc", "unseen"), ("seen_auroc", "seen"))
    ]

    def repeat(data, r):
        row = {"conventional": run_repeat(data, cfg, r, models=("conventional",), log=log)["conventional"]}
        for name, change in ABLATIONS.items():
            res = run_repeat(data, {**cfg, **change}, r, models=("me", "me_randomized_z"), log=log)
            seen_gap = res["me"]["seen_auroc"] - res["me_randomized_z"]["seen_auroc"]
            row[name] = {**res["me"], "seen_minus_randomized_z": seen_gap}
        return row

    return _on_cohort(
        f"{NAME}_ablation",
        quick,
        cfg,
        {**make_plan(cfg), "primary_comparisons": [c.label for c in comparisons]},
        repeat,
        config={**cfg, "ablations": ABLATIONS},
        comparisons=comparisons,
        order=None,
        notes="One setting of the `me` model changed at a time; `paired_*` are per-fold differences to `conventional`.",
        out_dir=out_dir,
        cohort_dir=cohort_dir,
        log=log,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--cohort-dir", default=None, help="reuse/generate the cohort here (default: a temp folder)")
    parser.add_argument("--ablation", action="store_true", help="vary the me model's settings (mri_ablation.*)")
    args = parser.parse_args(argv)
    (run_ablation if args.ablation else run)(quick=args.quick, out_dir=args.out, cohort_dir=args.cohort_dir)


if __name__ == "__main__":
    main()
