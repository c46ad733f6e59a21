# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MRI few-shot benchmark: adapting to a new scanner site from k labelled scans of it.

Per replicate ``r`` (the unit of replication: a new cohort, i.e. a new draw of scanners) and per cohort arm
(``threshold``: site-specific diagnostic thresholds; ``slope``: a site-specific disease effect size; see
:func:`monai_medl.data.generate_mri_cohort`), a cohort is generated with generator seed ``base + r`` and unseen-site
prevalence ``unseen_prevalences[r % 2]`` (0.2 or 0.8: never the balanced 0.5). A conventional CNN and a
mixed-effects CNN (:func:`benchmarks.mri.train_model`, the MRI benchmark's recipe) are trained on every seen-site
scan. Then, for each unseen site, each ``k`` in ``ks`` and each of ``draws`` draws, ``k`` labelled scans of that
site are drawn stratified by label (:func:`stratified_draw`) and every method adapts on them; all methods see the
same draws and are scored on the rest of the site's scans (within-site AUROC, log loss, ECE):

* ``me_fit_new_cluster``: :func:`monai_medl.engines.fit_new_cluster` (the new site's random slopes and intercept,
  MAP under the learned priors, everything else frozen), predicting with the new site's one-hot ``z``;
* ``me_fit_new_cluster_empirical``: the same, with each layer's prior s.d. re-estimated from the training sites'
  posteriors (``fit_new_cluster(prior_scale="empirical")``) instead of the fixed training prior. Added after the
  quick run, where the fixed intercept prior (s.d. 0.5) held the new site's intercept near 0 while the new sites'
  offsets were far larger; it is a secondary method (its comparisons are secondary, the primary family is
  unchanged) and its prior comes from the training sites only;
* ``me_population``: the same ME model at ``z = 0`` (no adaptation);
* ``conventional_unadapted``: the conventional CNN as trained;
* ``conventional_bias``: its logit plus one offset fitted on the k scans (maximum likelihood);
* ``conventional_last_layer``: logistic regression on its penultimate features, the weights penalised towards the
  trained ones (``penalty / 2 * |w - w_trained|^2``, intercept free), the penalty chosen by cross-validated log
  loss inside the k scans (:func:`cv_penalty`);
* ``conventional_platt``: Platt scaling of its logit (``a * logit + c``, ``a >= 0``: monotone, AUROC unchanged);
* ``conventional_finetune``: every weight fine-tuned on the k scans (Adam at a small learning rate, full batch,
  batch-norm statistics frozen).

``k = 0`` scores ``me_population`` and ``conventional_unadapted`` on all of the site's scans. A replicate's value of
a method is the mean over its draws and unseen sites; comparisons are paired per replicate (Student-t intervals,
Holm over the primary family).

Run ``python -m benchmarks.mri_few_shot [--quick] [--out DIR] [--workers N] [--arms A B]``.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize, special
from sklearn.metrics import log_loss
from sklearn.model_selection import LeaveOneOut, StratifiedKFold
from threadpoolctl import threadpool_limits

from benchmarks import mri
from benchmarks._common import (
    DEFAULT_OUT,
    Comparison,
    _resume_key,
    benchmark_parser,
    paired_difference,
    per_seed_values,
    run_benchmark,
    saved_rows,
)
from monai_medl.data.synthetic.mri_cohort import cohort_settings
from monai_medl.engines.few_shot import fit_new_cluster
from monai_medl.metrics.within_site import expected_calibration_error, holm, paired_t_pvalue, within_site_auroc

__all__ = [
    "NAME",
    "ME_METHODS",
    "CONVENTIONAL_METHODS",
    "default_config",
    "model_key",
    "model_order",
    "comparisons",
    "make_plan",
    "estimated_seconds",
    "stratified_draw",
    "penalised_logistic",
    "bias_refit",
    "platt_scaling",
    "last_layer_refit",
    "cv_penalty",
    "metric_summary",
    "ARM_SETTINGS",
    "cohort_kwargs",
    "fit_new_site",
    "fine_tune",
    "site_scores",
    "adapt_cohort",
    "run_replicate",
    "run",
    "main",
]

NAME = "mri_few_shot"
ME_METHODS = ("me_fit_new_cluster", "me_fit_new_cluster_empirical", "me_population")
CONVENTIONAL_METHODS = (
    "conventional_unadapted",
    "conventional_bias",
    "conventional_last_layer",
    "conventional_platt",
    "conventional_finetune",
)
UNADAPTED = ("me_population", "conventional_unadapted")  # the k = 0 rows
ADAPTED_BASELINES = CONVENTIONAL_METHODS[1:]
METRICS = {"auroc": True, "log_loss": False, "ece": False}  # metric -> higher is better
PRIMARY_METRICS = ("auroc", "log_loss")

# measured on the 2-core development machine (load ~1.5, one thread): seconds per scan of each step
UNIT_SECONDS = {"generate": 0.020, "train_epoch": 0.003, "forward": 0.0003, "finetune_step": 0.001}


def default_config(quick: bool = False) -> dict[str, Any]:
    """Every setting of a run: the MRI benchmark's training recipe (:func:`benchmarks.mri.default_config`) plus the
    few-shot protocol."""
    base = mri.default_config(quick)
    keep = ("batch_size", "lr", "channels", "kl_weight", "slope_prior_scale", "intercept_prior_scale")
    keep += ("lambda_fixed", "re_lr_scale", "threads")
    return {
        **{k: base[k] for k in keep},
        **mri.ADVERSARY_DEFAULTS,
        "lambda_g": 0.0,
        "adversary_objective": "confusion",
        "cohort": cohort_settings(
            "mri_bundle", num_subjects=400 if quick else 800, extra_unseen_subjects=60 if quick else 400
        ),
        "arms": ["threshold", "slope"],
        "unseen_prevalences": [0.2, 0.8],
        "replicates": 3 if quick else 12,
        "epochs": 6 if quick else 20,
        "me_kind": "me_no_adversary",
        "ks": [0, 4, 8, 16, 32],
        "draws": 10 if quick else 20,
        "fit_steps": 200,
        "fit_lr": 0.05,
        "variant_prior_scale": "empirical",
        "penalties": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
        "cv_folds": 4,
        "finetune_lr": 1e-4,
        "finetune_steps": 10 if quick else 20,
        "workers": 2,
    }


def model_key(arm: str, method: str, k: int) -> str:
    """The results' model key of ``method`` after ``k`` scans in ``arm``, e.g. ``"threshold/me_fit_new_cluster/k8"``."""
    return f"{arm}/{method}/k{k}"


def model_order(cfg: Mapping[str, Any]) -> list[str]:
    """Every model key of a run, arm by arm and k by k (``k = 0``: the unadapted models only)."""
    keys = []
    for arm in cfg["arms"]:
        for k in cfg["ks"]:
            keys += [model_key(arm, m, k) for m in (UNADAPTED if k == 0 else (*ME_METHODS, *CONVENTIONAL_METHODS))]
    return keys


def comparisons(cfg: Mapping[str, Any]) -> tuple[list[Comparison], list[Comparison]]:
    """``(primary, secondary)`` paired comparisons: the ME model (``fit_new_cluster``; at ``k = 0`` the population
    prediction) minus each conventional adaptation at the same ``k`` on within-site AUROC and log loss (primary,
    Holm-adjusted together), and the same on ECE plus each adaptation's gain over its unadapted model (secondary)."""
    primary, secondary = [], []
    for arm in cfg["arms"]:
        for k in cfg["ks"]:
            me = model_key(arm, "me_population" if k == 0 else "me_fit_new_cluster", k)
            refs = ("conventional_unadapted",) if k == 0 else ADAPTED_BASELINES
            for ref in refs:
                for metric, higher in METRICS.items():
                    c = Comparison(me, metric, model_key(arm, ref, k), higher_is_better=higher, key=_key(metric, ref))
                    (primary if metric in PRIMARY_METRICS else secondary).append(c)
            if k == 0:
                continue
            variant = model_key(arm, "me_fit_new_cluster_empirical", k)
            for ref in (*refs, "me_fit_new_cluster"):
                secondary += [
                    Comparison(variant, metric, model_key(arm, ref, k), higher_is_better=higher, key=_key(metric, ref))
                    for metric, higher in METRICS.items()
                ]
            pairs = (("me_fit_new_cluster", "me_population"), ("me_fit_new_cluster_empirical", "me_population"))
            for method, base in (*pairs, *[(m, UNADAPTED[1]) for m in refs]):
                a, b = model_key(arm, method, k), model_key(arm, base, k)
                secondary += [
                    Comparison(a, metric, b, higher_is_better=higher, key=_key(metric, base))
                    for metric, higher in METRICS.items()
                ]
    return primary, secondary


def _key(metric: str, reference: str) -> str:
    return f"paired_{metric}_minus_{reference}"


def estimated_seconds(cfg: Mapping[str, Any]) -> dict[str, float]:
    """Single-thread seconds of one replicate (every arm) from :data:`UNIT_SECONDS`, and the run's wall time with
    ``cfg["workers"]`` processes: the sizing written into the plan."""
    c = cfg["cohort"]
    scans = c["num_subjects"] + c["extra_unseen_subjects"]
    unseen_frac = c["unseen_sites"] / (c["sites"] + c["unseen_sites"])
    train = c["num_subjects"] * (1 - unseen_frac)
    site = c["num_subjects"] * unseen_frac / c["unseen_sites"] + c["extra_unseen_subjects"] / c["unseen_sites"]
    draws = c["unseen_sites"] * cfg["draws"]
    finetune = draws * sum(cfg["ks"]) * cfg["finetune_steps"] * UNIT_SECONDS["finetune_step"]
    score = draws * len(cfg["ks"]) * site * UNIT_SECONDS["forward"]
    per_cohort = (
        scans * UNIT_SECONDS["generate"] + 2 * cfg["epochs"] * train * UNIT_SECONDS["train_epoch"] + finetune + score
    )
    # the feature-level refits, fit_new_cluster and cross-validation: the quick run at d6e7ab0 took 600 / 609 s wall
    # per replicate at load 11.5 on 2 cores (about 105 CPU s at its share), 1.2 x the bare per-scan sum
    per_cohort *= 1.5
    replicate = per_cohort * len(cfg["arms"])
    waves = math.ceil(cfg["replicates"] / max(1, cfg["workers"]))
    return {"replicate_seconds": round(replicate), "wall_minutes": round(waves * replicate / 60, 1)}


def make_plan(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The pre-registered plan, written before the first fit."""
    primary, secondary = comparisons(cfg)
    prev = cfg["unseen_prevalences"]
    return {
        "unit_of_replication": f"{cfg['replicates']} replicates; replicate r generates one cohort per arm "
        f"{ {a: ARM_SETTINGS[a] for a in cfg['arms']} } with generator seed {cfg['cohort']['seed']} + r "
        "(new scanners) and unseen-site prevalence "
        f"{prev}[r % {len(prev)}]; a replicate's value is the mean over {cfg['draws']} draws x "
        f"{cfg['cohort']['unseen_sites']} unseen sites",
        "training": f"conventional and {cfg['me_kind']} (benchmarks.mri.train_model, {cfg['epochs']} epochs) on every "
        "seen-site scan; seed 1000 r",
        "draws": f"k in {cfg['ks']} labelled scans per unseen site, stratified by label (each class at least once), "
        "the same draws for every method; scored on the site's other scans (k = 0: all of them)",
        "methods": "me_fit_new_cluster (fit_new_cluster: the new site's random effects, MAP, rest frozen; "
        f"{cfg['fit_steps']} Adam steps at {cfg['fit_lr']}), me_fit_new_cluster_empirical (the same with "
        f"prior_scale={cfg['variant_prior_scale']!r}: each layer's prior s.d. re-estimated from the training sites' "
        "posteriors; secondary), conventional_bias (offset, ML), conventional_last_layer "
        f"(penalty in {cfg['penalties']} by {cfg['cv_folds']}-fold stratified cross-validated log loss inside the k "
        "scans, leave-one-out when a class has fewer than 2 scans), conventional_platt (a logit + c, a >= 0), "
        f"conventional_finetune (every weight, Adam {cfg['finetune_lr']}, {cfg['finetune_steps']} full-batch steps, "
        "batch-norm statistics frozen)",
        "metrics": "within-site AUROC, log loss, expected calibration error (10 equal-width bins) per unseen site",
        "primary_comparisons": [c.label for c in primary],
        "secondary_comparisons": f"{len(secondary)}: ECE of the same pairs; me_fit_new_cluster_empirical minus "
        "each conventional adaptation and minus me_fit_new_cluster; each adapted method minus its unadapted model at "
        "the same k",
        "decision_rule": "paired Student-t over replicates; a primary difference is claimed when its Holm-adjusted "
        f"two-sided p < 0.05 over the {len(primary)} primary comparisons; every result is reported",
        "sizing": {
            **estimated_seconds(cfg),
            "workers": cfg["workers"],
            "threads_per_worker": cfg["threads"],
            "basis": "single-thread CPU seconds per replicate (benchmarks.mri_few_shot.UNIT_SECONDS); wall time "
            "assumes the 2 cores are otherwise idle",
        },
    }


# --------------------------------------------------------------------------------------------------- the draws


def stratified_draw(labels: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(adapt, score)`` indices: ``k`` of ``labels`` drawn without replacement, stratified by label (the site's
    positive fraction of ``k``, rounded, and at least one scan of each class), and every other index.

    Raises:
        ValueError: when ``k`` scans cannot hold both classes and leave both in the scoring set.
    """
    labels = np.asarray(labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    n_pos = int(np.clip(round(k * len(pos) / len(labels)), 1, k - 1))
    if k < 2 or n_pos >= len(pos) or k - n_pos >= len(neg):
        raise ValueError(
            f"cannot draw k={k} stratified scans from a site with {len(pos)} positive and {len(neg)} negative scans "
            "(expected both classes in the draw and in the rest)."
        )
    adapt = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, k - n_pos, replace=False)])
    return np.sort(adapt), np.setdiff1d(np.arange(len(labels)), adapt)


# ---------------------------------------------------------------------------------------- the adaptation methods


def penalised_logistic(
    x: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    penalty: np.ndarray | float,
    offset: np.ndarray | float = 0.0,
    bounds: Sequence[tuple[float | None, float | None]] | None = None,
) -> np.ndarray:
    """``argmin_b sum_i BCE(y_i, offset_i + x_i b) + sum_j penalty_j / 2 (b_j - start_j)^2`` (L-BFGS-B).

    The one fit behind the bias refit, Platt scaling and the last-layer refit: the penalty pulls the coefficients
    towards ``start`` (the trained values), a per-coefficient ``penalty`` of 0 leaves one free.
    """
    x, y, start = np.asarray(x, float), np.asarray(y, float), np.asarray(start, float)
    pen = np.broadcast_to(np.asarray(penalty, float), start.shape)

    def objective(b):
        logit = offset + x @ b
        loss = np.sum(np.logaddexp(0, logit) - y * logit) + 0.5 * np.sum(pen * (b - start) ** 2)
        grad = x.T @ (special.expit(logit) - y) + pen * (b - start)
        return loss, grad

    return optimize.minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds).x


_RIDGE = 1e-6  # keeps an unpenalised coefficient finite when the k scans are separable


def bias_refit(logit: np.ndarray, y: np.ndarray) -> float:
    """The offset ``c`` maximising the likelihood of ``sigmoid(logit + c)`` on the k scans."""
    return float(penalised_logistic(np.ones((len(y), 1)), y, np.zeros(1), _RIDGE, offset=logit)[0])


def platt_scaling(logit: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(a, c)`` of ``sigmoid(a * logit + c)`` by maximum likelihood with ``a >= 0`` (a monotone map: the
    ranking, hence AUROC, is unchanged unless ``a`` hits 0)."""
    x = np.stack([logit, np.ones_like(logit)], 1)
    a, c = penalised_logistic(x, y, np.array([1.0, 0.0]), _RIDGE, bounds=[(0.0, None), (None, None)])
    return float(a), float(c)


def last_layer_refit(h: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: float, penalty: float):
    """``(w, b)``: logistic regression on the features ``h`` with ``penalty / 2 * |w - weight|^2`` (the intercept
    free): the trained weights as ``penalty`` grows, an unrestricted refit as it shrinks."""
    x = np.concatenate([h, np.ones((len(h), 1))], 1)
    pen = np.append(np.full(len(weight), float(penalty)), _RIDGE)
    b = penalised_logistic(x, y, np.append(weight, bias), pen)
    return b[:-1], float(b[-1])


def cv_penalty(
    h: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: float, penalties: Sequence[float], folds: int, seed: int
) -> float:
    """The penalty of :func:`last_layer_refit` with the lowest cross-validated log loss inside the k scans:
    stratified ``folds``-fold (fewer when a class has fewer scans), leave-one-out when a class has one scan; ties
    go to the larger penalty (closer to the trained model)."""
    minority = int(min(y.sum(), len(y) - y.sum()))
    split = (
        LeaveOneOut().split(h)
        if minority < 2
        else StratifiedKFold(min(folds, minority), shuffle=True, random_state=seed).split(h, y)
    )
    split = list(split)
    losses = []
    for penalty in penalties:
        total = 0.0
        for tr, te in split:
            w, b = last_layer_refit(h[tr], y[tr], weight, bias, penalty)
            logit = h[te] @ w + b
            total += float(np.sum(np.logaddexp(0, logit) - y[te] * logit))
        losses.append(total)
    best = min(losses)
    return float(max(p for p, loss in zip(penalties, losses) if loss <= best + 1e-9))


def fit_new_site(
    head: torch.nn.Module, h: np.ndarray, y: np.ndarray, steps: int, lr: float, prior_scale: float | str | None = None
) -> torch.nn.Module:
    """A copy of the ME model's head with the new site's random effects fitted by
    :func:`~monai_medl.engines.fit_new_cluster` on the k scans' penultimate features ``h``.

    Exact for a model whose random effects are all in the head (no cluster scale/bias blocks): the frozen backbone
    maps each scan to the same ``h`` whatever the site, so fitting on ``h`` is fitting on the images."""
    head = copy.deepcopy(head)

    def task(pred, target):
        return F.binary_cross_entropy_with_logits(pred[0], target)  # the head returns (mixed, fixed)

    target = torch.from_numpy(y).float()[:, None]
    fit_new_cluster(head, torch.from_numpy(h), target, task=task, steps=steps, lr=lr, prior_scale=prior_scale)
    return head


def fine_tune(net: torch.nn.Module, x: torch.Tensor, y: np.ndarray, lr: float, steps: int) -> torch.nn.Module:
    """A copy of the conventional CNN with every weight fine-tuned on the k scans: Adam, full batch, BCE of the
    fixed-effects logit, eval mode (batch-norm statistics of the training sites kept: k scans cannot estimate
    them)."""
    net = copy.deepcopy(net).eval()
    optimizer = torch.optim.Adam(net.parameters(), lr)
    target = torch.from_numpy(y).float()
    for _ in range(steps):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(net.forward_all(x, None).fixed[:, 0], target).backward()
        optimizer.step()
    return net.eval()


# ------------------------------------------------------------------------------------------------------ scoring


def site_scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Within-site AUROC, log loss and expected calibration error (10 equal-width bins) of probabilities ``p`` of one
    site's scans (:mod:`monai_medl.metrics.within_site`)."""
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return {
        "auroc": within_site_auroc(y, p, sites=np.zeros(len(y)))["mean"],
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p, num_bins=10),
    }


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return special.expit(v)


# ----------------------------------------------------------------------------------------------------- protocol


ARM_SETTINGS: dict[str, dict[str, Any]] = {
    "nuisance": {"arm": "nuisance"},
    "threshold": {"arm": "threshold", "threshold_layout": "asymmetric"},
    "threshold_symmetric": {"arm": "threshold", "threshold_layout": "symmetric"},
    "slope": {"arm": "slope"},
    "shortcut": {"arm": "shortcut"},
}
"""The generator arguments of each arm name (:mod:`monai_medl.data.synthetic.mri_arms`, default ``arm_effect``).
``"threshold"`` puts the unseen sites' thresholds above the seen range (asymmetric): the case where the
population model is off at a new site and adaptation has something to fix."""


def cohort_kwargs(cfg: Mapping[str, Any], arm: str, replicate: int) -> dict[str, Any]:
    """The generator arguments of ``arm``'s cohort (:data:`ARM_SETTINGS`) in ``replicate``: seed ``base +
    replicate`` (new scanners), unseen prevalence ``unseen_prevalences[replicate % len]``."""
    if arm not in ARM_SETTINGS:
        raise ValueError(f"unknown arm {arm!r} in the config's 'arms'; expected one of {sorted(ARM_SETTINGS)}.")
    prevalences = cfg["unseen_prevalences"]
    kwargs = {"seed": cfg["cohort"]["seed"] + replicate, "unseen_prevalence": prevalences[replicate % len(prevalences)]}
    return cohort_settings("mri_bundle", **{**cfg["cohort"], **kwargs, **ARM_SETTINGS[arm]})


def _draw_predictions(
    models: Mapping[str, Any], feats: Mapping[str, np.ndarray], x: torch.Tensor, y: np.ndarray, a, s, cfg, seed
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every method's probabilities on the scoring scans ``s`` after adapting on the scans ``a`` of one site, and
    the last-layer refit's chosen penalty."""
    conv, me = models["conventional"], models["me"]
    h_c, h_m, logit_c = feats["conventional"], feats["me"], feats["logit"]
    weight, bias = conv.head.linear.weight[0].detach().numpy(), float(conv.head.linear.bias.detach()[0])
    preds = {"me_population": feats["me_population"][s], "conventional_unadapted": _sigmoid(logit_c[s])}
    for method, prior_scale in (
        ("me_fit_new_cluster", None),
        ("me_fit_new_cluster_empirical", cfg["variant_prior_scale"]),
    ):
        head = fit_new_site(me.head, h_m[a], y[a], cfg["fit_steps"], cfg["fit_lr"], prior_scale)
        z = torch.zeros(len(s), head.num_clusters)
        z[:, -1] = 1  # the new site's column
        with torch.no_grad():
            preds[method] = torch.sigmoid(head(torch.from_numpy(h_m[s]), z)[0][:, 0]).numpy()
    preds["conventional_bias"] = _sigmoid(logit_c[s] + bias_refit(logit_c[a], y[a]))
    scale, shift = platt_scaling(logit_c[a], y[a])
    preds["conventional_platt"] = _sigmoid(scale * logit_c[s] + shift)
    penalty = cv_penalty(h_c[a], y[a], weight, bias, cfg["penalties"], cfg["cv_folds"], seed)
    w, b = last_layer_refit(h_c[a], y[a], weight, bias, penalty)
    preds["conventional_last_layer"] = _sigmoid(h_c[s] @ w + b)
    tuned = fine_tune(conv, x[a], y[a], cfg["finetune_lr"], cfg["finetune_steps"])
    preds["conventional_finetune"] = mri.predict(tuned, x[s], None)[0]
    return preds, {"log10_penalty": math.log10(penalty)}


def _site_features(models: Mapping[str, Any], x: torch.Tensor) -> dict[str, np.ndarray]:
    """What the feature-level methods need of one site's scans (computed once): both models' penultimate features,
    the conventional logit and the ME model's population probabilities."""
    p_me, h_me = mri.predict(models["me"], x, torch.zeros(len(x), models["me"].num_clusters))
    _, h_c = mri.predict(models["conventional"], x, None)
    head = models["conventional"].head.linear
    logit = h_c @ head.weight[0].detach().numpy() + float(head.bias.detach()[0])
    return {"conventional": h_c.astype(np.float64), "me": h_me, "logit": logit, "me_population": p_me}


def adapt_cohort(data: Mapping[str, Any], cfg: Mapping[str, Any], arm: str, replicate: int, log=print):
    """Train both models on the seen sites of one cohort and score every method, ``k`` and draw on its unseen
    sites: ``{model_key: {metric: mean over sites and draws}}``."""
    seen = data["seen_sites"]
    sites = np.asarray(data["sites"])
    tr = np.flatnonzero(np.isin(sites, seen))
    images, labels = torch.from_numpy(data["images"]), np.asarray(data["labels"], np.float64)
    s_tr = torch.tensor([seen.index(s) for s in sites[tr]])
    seed = 1000 * replicate
    models = {}
    for name, kind in (("conventional", "conventional"), ("me", cfg["me_kind"])):
        start = time.perf_counter()
        models[name] = mri.train_model(kind, cfg, images[tr], torch.from_numpy(labels[tr]), s_tr, len(seen), seed)
        log(f"  replicate {replicate} {arm} {kind}: {len(tr)} scans, trained in {time.perf_counter() - start:.0f} s")
    if models["me"].cluster_layer_names:
        raise ValueError("fit_new_site fits the head only; the ME model must have no cluster scale/bias blocks.")
    scores: dict[str, list[dict[str, float]]] = {}
    for j, site in enumerate(data["unseen_sites"]):
        idx = np.flatnonzero(sites == site)
        x, y = images[idx], labels[idx]
        feats = _site_features(models, x)
        for k in cfg["ks"]:
            if k == 0:
                for method in UNADAPTED:
                    p = feats["me_population"] if method == "me_population" else _sigmoid(feats["logit"])
                    scores.setdefault(model_key(arm, method, 0), []).append(site_scores(y, p))
                continue
            for d in range(cfg["draws"]):
                a, s = stratified_draw(y, k, np.random.default_rng([replicate, j, k, d]))
                preds, extra = _draw_predictions(models, feats, x, y, a, s, cfg, seed + d)
                for method, p in preds.items():
                    row = site_scores(y[s], p)
                    scores.setdefault(model_key(arm, method, k), []).append(
                        {**row, **(extra if method == "conventional_last_layer" else {})}
                    )
    return {key: {m: float(np.mean([r[m] for r in rows])) for m in rows[0]} for key, rows in scores.items()}


def run_replicate(cfg: Mapping[str, Any], replicate: int, log: Callable[[str], Any] = print):
    """One replicate: a fresh cohort per arm (generated in a temporary folder, removed after), both models trained,
    every method scored; the row of :func:`benchmarks._common.run_seeds` (plus its timing under ``replicate``)."""
    torch.set_num_threads(cfg["threads"])
    start, cpu, row = time.perf_counter(), time.process_time(), {}
    with threadpool_limits(cfg["threads"]):  # BLAS threads too: the L-BFGS refits are many tiny BLAS calls
        for arm in cfg["arms"]:
            with tempfile.TemporaryDirectory(prefix="mri_few_shot_") as folder:
                data = mri.load_cohort(folder, {"cohort": cohort_kwargs(cfg, arm, replicate)})
            log(f"  replicate {replicate} {arm}: {len(data['sites'])} scans generated")
            row.update(adapt_cohort(data, cfg, arm, replicate, log))
    row["replicate"] = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,  # what the sizing predicts: wall time depends on the load
        "load_1min": os.getloadavg()[0],
        "unseen_prevalence": cohort_kwargs(cfg, cfg["arms"][0], replicate)["unseen_prevalence"],
    }
    return row


class _Replicates:
    """``run_seed`` for :func:`~benchmarks._common.run_benchmark`: replicates in ``workers`` spawned processes (one
    thread each), all submitted at the first call, i.e. after the plan is written; results are returned in order."""

    def __init__(self, cfg: Mapping[str, Any], pending: Sequence[int], log: Callable[[str], Any]) -> None:
        self.cfg, self.pending, self.log = dict(cfg), list(pending), log
        self.pool: ProcessPoolExecutor | None = None
        self.futures: dict[int, Any] = {}

    def __call__(self, replicate: int):
        if self.cfg["workers"] <= 1:
            return run_replicate(self.cfg, replicate, self.log)
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.cfg["workers"], mp_context=get_context("spawn"))
            self.futures = {r: self.pool.submit(run_replicate, self.cfg, r) for r in self.pending}
        return self.futures[replicate].result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def holm_adjust(models: dict[str, Any], primary: Sequence[Comparison]) -> None:
    """Store each primary comparison's paired t-test p and Holm-adjusted p in its model's ``extra``
    (``<comparison>_p``, ``<comparison>_holm_p``)."""
    splits = {"auroc": "unseen"}
    raw = {}
    for c in primary:
        a, b = (
            per_seed_values(models, c.model, c.metric, splits),
            per_seed_values(models, c.reference, c.metric, splits),
        )
        raw[c.label] = paired_t_pvalue(np.subtract(a, b))
    adjusted = holm(raw)
    for c in primary:
        r = adjusted[c.label]
        models[c.model]["extra"].update({f"{c.name}_p": r["p"], f"{c.name}_holm_p": r["p_holm"]})
        models[c.model]["extra"][f"{c.name}_holm_reject"] = r["reject"]


def metric_summary(entry: Mapping[str, Any], metric: str) -> tuple[float, tuple[float, float]]:
    """``(mean, (low, high))`` over replicates of one metric of a results entry: AUROC from its ``unseen`` summary,
    the other metrics from ``extra`` (``<metric>``, ``<metric>_ci95``)."""
    if metric == "auroc":
        mean, ci = entry["unseen"]["mean"], entry["unseen"]["ci95"]
    else:
        mean, ci = entry["extra"][metric], entry["extra"][f"{metric}_ci95"]
    return float(mean), (float(ci[0]), float(ci[1]))


def _cell(models: Mapping[str, Any], key: str, metric: str) -> str:
    entry = models.get(key)
    if entry is None:
        return "-"
    mean, (lo, hi) = metric_summary(entry, metric)
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def notes(cfg: Mapping[str, Any], models: Mapping[str, Any]) -> str:
    """The few-shot curves (method x k, per arm and metric), the Holm-adjusted primary comparisons and the
    replicates' timing, as markdown."""
    lines = []
    for arm in cfg["arms"]:
        for metric in METRICS:
            lines += [f"### {arm}: within-site {metric} by k (mean [95% t-interval] over replicates)", ""]
            lines += [
                "| method | " + " | ".join(f"k={k}" for k in cfg["ks"]) + " |",
                "|---" * (len(cfg["ks"]) + 1) + "|",
            ]
            for method in (*ME_METHODS, *CONVENTIONAL_METHODS):
                cells = [_cell(models, model_key(arm, method, k), metric) for k in cfg["ks"]]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [
        "### Primary comparisons, Holm-adjusted (paired t over replicates)",
        "",
        "| comparison | mean | 95% t-interval | p | Holm p | claimed |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons(cfg)[0]:
        extra = models[c.model]["extra"]
        a, b = (
            per_seed_values(models, c.model, c.metric, {"auroc": "unseen"}),
            per_seed_values(models, c.reference, c.metric, {"auroc": "unseen"}),
        )
        d = paired_difference(a, b, c.higher_is_better)
        claimed = "yes" if extra[f"{c.name}_holm_reject"] else "no"
        lines.append(
            f"| {c.label} | {d['mean']:+.4f} | [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | {extra[f'{c.name}_p']:.3g} "
            f"| {extra[f'{c.name}_holm_p']:.3g} | {claimed} |"
        )
    rep = models["replicate"]["extra"]
    lines += [
        "",
        f"Replicate CPU seconds: {[round(v) for v in rep.get('cpu_seconds_values', [])]}. Replicate seconds "
        f"(one thread each): {[round(v) for v in rep['seconds_values']]}; 1-min load "
        f"at their end: {[round(v, 2) for v in rep['load_1min_values']]}; unseen prevalence: "
        f"{rep['unseen_prevalence_values']}.",
    ]
    return "\n".join(lines)


def run(quick: bool = False, out_dir=None, config: Mapping[str, Any] | None = None, log=print) -> dict[str, Any]:
    """The benchmark: writes ``mri_few_shot.json`` / ``.md`` (plan first; resumes a cut-off run of the same clean
    commit and plan from ``mri_few_shot.rows.jsonl``)."""
    cfg = dict(config or default_config(quick))
    out = DEFAULT_OUT if out_dir is None else out_dir
    seeds = list(range(cfg["replicates"]))
    plan = make_plan(cfg)
    primary, secondary = comparisons(cfg)
    done = saved_rows(os.path.join(out, f"{NAME}.rows.jsonl"), _resume_key(NAME, quick, plan, seeds, cfg))
    runner = _Replicates(cfg, [s for s in seeds if s not in done], log)

    def derive(models, rows):
        holm_adjust(models, primary)

    try:
        return run_benchmark(
            NAME,
            quick,
            plan,
            seeds,
            runner,
            metric="within_site_auroc",
            seen=None,
            unseen="auroc",
            config=cfg,
            comparisons=[*primary, *secondary],
            order=[*model_order(cfg), "replicate"],
            derive=derive,
            notes=lambda models: notes(cfg, models),
            extra_tables=[
                ("Unseen sites, scored on the scans not used to adapt", ["log_loss", "ece", "log10_penalty"])
            ],
            out_dir=out,
            log=log,
        )
    finally:
        runner.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="replicates run in parallel (default 2)")
    parser.add_argument("--arms", nargs="+", default=None, help="cohort arms (default: threshold slope)")
    args = parser.parse_args(argv)
    cfg = default_config(args.quick)
    if args.workers is not None:
        cfg["workers"] = args.workers
    if args.arms is not None:
        cfg["arms"] = list(args.arms)
    run(quick=args.quick, out_dir=args.out, config=cfg)


if __name__ == "__main__":
    main()
