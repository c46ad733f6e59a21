# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The MRI study's models and read-outs: what is trained on one cohort, and how every prediction is scored.

Every network is trained by :func:`benchmarks.mri.train_model` (the MRI benchmark's recipe) except the
logit-adjusted conventional CNN (:class:`LogitAdjustedCNN`), whose fixed per-site offsets the recipe has no place
for. Scores come from :mod:`monai_medl.metrics.within_site`: within-site AUROC, ECE, log loss and balanced
accuracy at a threshold chosen on the training predictions, at unseen-site prevalences set by subsampling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from benchmarks import mri
from benchmarks._training import flipped_loader, train_supervised
from benchmarks.mri_selection import validation_probe
from monai_medl.engines.prepare_batch import MixedEffectsPrepareBatch
from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss
from monai_medl.metrics.site_metrics import youden_threshold
from monai_medl.metrics.within_site import (
    balanced_accuracy_at,
    expected_calibration_error,
    prevalence_only_score,
    resample_prevalence,
    within_site_auroc,
)
from monai_medl.transforms.site import site_index_to_design

__all__ = [
    "PREVALENCES",
    "NO_INVARIANCE",
    "LogitAdjustedCNN",
    "prevalence_offsets",
    "train_logit_adjusted",
    "me_kind",
    "fit",
    "population_and_mixed",
    "score",
    "prevalence_only_row",
]

PREVALENCES = (0.2, 0.5, 0.8)
"""Unseen-site prevalences at which calibration, log loss and balanced accuracy are read (subsampled sites)."""
NO_INVARIANCE: dict[str, Any] = {"invariance": {"kind": "none"}}
"""Settings of a model without invariance term."""


def me_kind(settings: Mapping[str, Any]) -> str:
    """``"me"`` when ``settings`` switch an invariance term on (an ``invariance`` config of
    :mod:`benchmarks.invariance` with a kind other than ``"none"`` and a weight > 0, or the older ``lambda_g`` > 0),
    else ``"me_no_adversary"``."""
    inv = settings.get("invariance")
    if inv is not None:
        return "me" if inv.get("kind", "none") != "none" and float(inv.get("lambda", 0.0)) > 0 else "me_no_adversary"
    return "me" if float(settings.get("lambda_g", 0.0)) > 0 else "me_no_adversary"


class LogitAdjustedCNN(nn.Module):
    """A fixed-effects CNN plus a fixed logit offset per training site: the simplest random intercept.

    ``logit = f(x) + z . offsets``; trained with the offsets of the training sites, it predicts with ``z = 0`` (no
    offset) on a new site and with its site's offset on a seen site. ``net`` is a fixed-effects
    :class:`~monai_medl.networks.nets.MixedEffectsCNN` (no random effects), ``offsets`` one value per site.
    """

    def __init__(self, net: nn.Module, offsets: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.float32).reshape(-1, 1))

    def forward_all(self, x: torch.Tensor, z: torch.Tensor | None = None):
        out = self.net.forward_all(x)
        shift = 0.0 if z is None else z.float() @ self.offsets
        return out._replace(mixed=out.mixed + shift, fixed=out.fixed + shift)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None):
        out = self.forward_all(x, z)
        return self.net.with_kl(out) if self.training else out.mixed


def prevalence_offsets(y: np.ndarray, site: np.ndarray, num_sites: int) -> np.ndarray:
    """``logit(p_s) - logit(p)``: each site's training prevalence (add-half smoothed) on the logit scale, centred on
    the pooled prevalence, so that an unseen site (no offset) is predicted at the pooled base rate.

    Example::

        >>> prevalence_offsets(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 2).round(2).tolist()
        [-0.85, 0.76]
    """
    y, site = np.asarray(y, dtype=float), np.asarray(site, dtype=int)

    def logit(pos: float, n: float) -> float:
        p = (pos + 0.5) / (n + 1.0)
        return math.log(p / (1 - p))

    pooled = logit(y.sum(), len(y))
    return np.array([logit(y[site == s].sum(), (site == s).sum()) - pooled for s in range(num_sites)])


def train_logit_adjusted(
    cfg: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor, site: torch.Tensor, num_clusters: int, seed: int
) -> nn.Module:
    """:class:`LogitAdjustedCNN` trained with the MRI recipe (same backbone, optimiser, epochs, batches, flips)."""
    offsets = prevalence_offsets(y.numpy(), site.numpy(), num_clusters)
    torch.manual_seed(seed)
    net = LogitAdjustedCNN(mri.me_cnn(dict(cfg), num_clusters, random_effects=False), torch.from_numpy(offsets))
    loss = MixedEffectsLoss("bce", lambda_mixed=1.0, lambda_fixed=0.0, kl_weight=cfg["kl_weight"])
    loader = flipped_loader(x, y.float()[:, None], site, cfg["batch_size"], seed)
    optimizer = torch.optim.Adam(net.parameters(), cfg["lr"])
    return train_supervised(net, loss, loader, optimizer, cfg["epochs"], (), MixedEffectsPrepareBatch(num_clusters))


def fit(kind: str, cfg: Mapping[str, Any], x, y, site, num_clusters: int, seed: int) -> tuple[nn.Module, float]:
    """Train one network (``logit_adjusted`` or a kind of :func:`benchmarks.mri.train_model`); return it and its
    training wall time in seconds."""
    start = time.perf_counter()
    if kind == "logit_adjusted":
        net = train_logit_adjusted(cfg, x, y, site, num_clusters, seed)
    else:
        net = mri.train_model(kind, dict(cfg), x, y, site, num_clusters, seed)
    return net, time.perf_counter() - start


def population_and_mixed(net: nn.Module, x: torch.Tensor, site_idx: np.ndarray, num_clusters: int):
    """``(p_population, p_mixed, h)``: the ``z = 0`` prediction, the prediction with the item's site (``-1`` =
    unseen: ``z = 0`` too) and the fixed-effects features."""
    zeros = torch.zeros(len(x), num_clusters)
    p_pop, h = mri.predict(net, x, zeros)
    seen = site_idx >= 0
    if not seen.any():
        return p_pop, p_pop, h
    design = site_index_to_design(np.where(seen, site_idx, 0), num_clusters) * torch.from_numpy(seen[:, None])
    p_mix, _ = mri.predict(net, x, design.float())
    return p_pop, p_mix, h


def _tag(prevalence: float) -> str:
    return f"p{round(100 * prevalence):02d}"


def score(
    train: Mapping[str, np.ndarray], seen: Mapping[str, Any], unseen: Mapping[str, Any], seed: int
) -> dict[str, float]:
    """The read-outs of one model on one cohort.

    Args:
        train: ``{"y", "p"}``: training labels and the model's population (z = 0) training predictions, for the
            balanced-accuracy threshold (Youden's J).
        seen: held-out subjects of the training sites: ``{"y", "sites", "p_mixed", "p_population", "h"}`` (``h``
            None: no site probe).
        unseen: every scan of the unseen sites: ``{"y", "sites", "p"}`` (the population prediction).
        seed: seed of the prevalence subsampling (the same for every model of a cohort: paired).
    """
    threshold = youden_threshold(train["y"], train["p"])
    y_un, s_un, p_un = (np.asarray(unseen[k]) for k in ("y", "sites", "p"))
    out = {
        "unseen_within_auroc": within_site_auroc(y_un, p_un, s_un)["mean"],
        "unseen_pooled_auroc": float(roc_auc_score(y_un, p_un)),
        "seen_within_auroc": within_site_auroc(seen["y"], seen["p_mixed"], seen["sites"])["mean"],
        "seen_within_auroc_z0": within_site_auroc(seen["y"], seen["p_population"], seen["sites"])["mean"],
        "seen_pooled_auroc": float(roc_auc_score(seen["y"], seen["p_mixed"])),
        "seen_ece": expected_calibration_error(seen["y"], seen["p_mixed"]),
    }
    for q in PREVALENCES:
        idx = resample_prevalence(y_un, s_un, q, seed=seed)
        y, p = y_un[idx], p_un[idx]
        out[f"unseen_log_loss_{_tag(q)}"] = float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1]))
        out[f"unseen_ece_{_tag(q)}"] = expected_calibration_error(y, p)
        out[f"unseen_balanced_accuracy_{_tag(q)}"] = balanced_accuracy_at(y, p, threshold)
    if seen.get("h") is not None:
        out["site_probe"] = validation_probe(seen["h"], np.asarray(seen["site_idx"]))
    return out


def prevalence_only_row(
    train: Mapping[str, Sequence[Any]], seen: Mapping[str, Any], unseen: Mapping[str, Any], seed: int
) -> dict[str, float]:
    """:func:`score` of the model that sees no image: a seen subject gets its site's training prevalence (the mixed
    prediction), everyone else the pooled one (:func:`~monai_medl.metrics.prevalence_only_score`)."""
    y_tr, s_tr = train["y"], train["sites"]
    p_mixed = prevalence_only_score(y_tr, s_tr, seen["sites"])
    pooled = float(np.mean(y_tr))
    return score(
        {"y": np.asarray(y_tr), "p": prevalence_only_score(y_tr, s_tr, s_tr)},
        {**seen, "p_mixed": p_mixed, "p_population": np.full(len(p_mixed), pooled), "h": None},
        {**unseen, "p": np.full(len(unseen["y"]), pooled)},
        seed,
    )
