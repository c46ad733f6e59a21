# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Spiral benchmark: ARMED's clustered two-spiral simulation, seen and unseen clusters, every baseline.

Data (:func:`monai_medl.data.make_spirals`): 10 clusters x 1000 points, cluster radius ``~N(1, 0.3^2)``, noise 0.1,
360 degrees, drawn once with ``data_seed`` (the reference notebook also fixes the data and varies the model seeds).
Confounded variant: per-cluster prevalence ``p_k ~ N(0.5, 0.3^2)`` clipped to [0.1, 0.9] and two probe features
``~N(p_k, 0.2^2)`` that say nothing about the spiral.

Protocol per repeat ``r`` (seed ``r``): clusters ``2r mod 10`` and ``2r + 1 mod 10`` are held out entirely (unseen;
``z`` has only the 8 seen columns, as in the reference's leave-2-clusters-out run); the 8 seen clusters are split
by a 10-fold ``StratifiedKFold`` on label x cluster (no shuffle, as the reference). Every fold model is trained on
~7,200 samples and tested on its held-out fold (seen) and on the two unseen clusters. Per repeat a metric is the
mean over folds; tables show mean and t-based 95% CI over repeats. Features are standardised on the training fold.

Models (same 4-4-4 ReLU MLP, Glorot-uniform weights and zero biases, batch 32, Adam 1e-3, 10 epochs):
``conventional``; ``cluster_input`` (one-hot z concatenated to x, zeros for unseen clusters);
``domain_adversarial`` (the MLP + cluster adversary on its three hidden layers); ``me_no_adversary``;
``me`` (mixed-effects MLP + adversary; seen: mixed prediction with the true z, unseen: the fixed-effects
(population) prediction); ``me_randomized_z`` (the ``me`` model with a random one-hot z); ``me_inferred_z`` (the
``me`` model with the soft z of a cluster predictor trained on the training fold only, seen and unseen);
``traditional`` (scikit-learn HistGradientBoostingClassifier on the same features); ``shuffled_label`` (the ``me``
recipe trained on permuted labels: chance); ``gpboost`` (an additional baseline, the peer a statistician would
pick: GPBoost's boosted trees with the ``traditional`` row's tree settings + a grouped random intercept per training
cluster, ``bernoulli_probit``, rounds by early stopping on the training fold's rows; seen: the cluster's predicted
random effect, unseen: random effect 0, the population prediction; see :mod:`benchmarks._gpboost`). Metric:
accuracy at probability 0.5; AUROC, training time per fold and per epoch (one CPU thread) and, for the confounded
variant, the share of the fixed-effects attribution ``mean |d logit_F / d x|`` carried by the probe features, in
``extra``.

Run ``python -m benchmarks.spirals [--quick] [--out DIR]``; ``--timing`` trains one repeat x 3 folds of the
random-radius variant only and writes ``spirals_timing.json``/``.md`` (run it on an otherwise idle machine: the
load average at the end is recorded in ``env``). ``--fused`` trains every adversarial model with
``TabularTrainer(fused=True)`` (one backward and one optimizer step for the model and its adversary, simultaneous
updates) and writes ``<name>_fused.json``/``.md``. Every MLP trains with ``TabularTrainer``'s default step, the
hand-written gradients (equal to autograd up to rounding); ``--autograd`` trains them with autograd instead
(``manual_backward=False``) and writes ``<name>_autograd.json``/``.md``, ``--manual`` insists on the hand-written
step (``manual_backward=True``) and writes ``<name>_manual.json``/``.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from benchmarks._common import (
    CONTRACT_MODELS,
    Comparison,
    announce_plan,
    benchmark_parser,
    run_benchmark,
    summarize,
    write_results,
)
from benchmarks._gpboost import GPBOOST_EARLY_STOPPING, GPBOOST_TREE_PARAMS, fit_gpboost, predict_gpboost
from monai_medl.data.synthetic.spirals import SpiralData, make_spirals
from monai_medl.engines.tabular import TabularTrainer, data_dependent_init_, predict_tabular
from monai_medl.networks.nets.cluster_classifier import ClusterClassifier
from monai_medl.networks.nets.me_mlp import MixedEffectsMLP
from monai_medl.utils.attribution import attribution_share, fixed_effects_attribution, input_gradients

__all__ = [
    "MODELS",
    "COMPARISONS",
    "default_config",
    "make_data",
    "run_fold",
    "run_variant_repeat",
    "run_repeat",
    "run",
    "run_reference_protocol",
    "main",
]

NAME = "spirals"
MODELS = (*CONTRACT_MODELS, "gpboost")
TORCH_MODELS = ("conventional", "cluster_input", "domain_adversarial", "me_no_adversary", "me", "shuffled_label")


PLAN = {
    "seeds": "repeats 0..9 (0..2 quick); repeat r holds out clusters 2r, 2r+1 (mod 10) as unseen",
    "splits": "10-fold StratifiedKFold on label x cluster of the 8 seen clusters (no shuffle); features standardised "
    "on the training fold",
    "primary_comparisons": [
        "me vs conventional: seen and unseen accuracy (mean over folds per repeat, t-interval over repeats)",
        "confounded variant: probe-feature attribution share, me vs conventional and domain_adversarial",
    ],
    "additional_baselines": "gpboost (GPBoost: boosted trees + grouped random intercept; default tree settings, "
    "the traditional row's, rounds by early stopping on the training fold's rows) on the same folds, reported beside "
    "the other rows, not a primary comparison",
    "decision_rule": "a difference is claimed only when its 95% t-interval over repeats excludes 0; every fixed "
    "setting is in config, none is tuned on unseen clusters",
}


def default_config(quick: bool = False) -> dict[str, Any]:
    """Every setting of the benchmark (written into the results' ``config``)."""
    return {
        "data": {
            "num_clusters": 10,
            "points_per_cluster": 1000,
            "mean_radius": 1.0,
            "radius_sd": 0.3,
            "noise": 0.1,
            "degrees": 360,
        },
        "confounded": {"prevalence_sd": 0.3, "num_probes": 2, "probe_sd": 0.2},
        "data_seed": 48,
        "variants": ["random_radius", "confounded"],
        "repeats": 3 if quick else 10,
        "folds": 10,
        "folds_run": 3 if quick else 10,
        "unseen_per_repeat": 2,
        "hidden": [4, 4, 4],
        "epochs": 10,
        "batch_size": 32,
        "lr": 1e-3,
        "lambda_g": 0.5,
        "adversary_hidden": [8, 8, 4],
        "adversary_objective": "confusion",
        "kl_weight": 1e-5,
        "linear_slopes": False,
        "nonlinear_slopes": True,
        "random_intercept": True,
        "slope_prior_scale": 0.3,
        "intercept_prior_scale": 0.1,
        "post_loc_init_scale": 0.1,
        "learn_prior_scale": True,
        "z_predictor_hidden": [8, 8, 4],
        "z_predictor_epochs": 10,
        "traditional": "HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, early_stopping=False)",
        "gpboost": {
            "likelihood": "bernoulli_probit",
            "num_boost_round": None,  # chosen per fold by early stopping on the training fold's own rows
            "early_stopping": GPBOOST_EARLY_STOPPING,
            "tree_params": GPBOOST_TREE_PARAMS,
            "random_effects": "grouped random intercept per training cluster (covariance fitted by GPBoost)",
        },
        "threshold": 0.5,
        "standardize": True,
        "data_init": True,
        "fused_step": False,  # TabularTrainer(fused=...): one backward for the model and its adversary (--fused)
        # TabularTrainer(manual_backward=...) for every MLP: None (the trainer's default) trains all of them with the
        # hand-written gradients (the same step as autograd up to rounding; the z-predictor, task "ce", with
        # autograd), True the same or an error, False autograd for all (--autograd)
        "manual_backward": None,
        # every torch model: torch.optim.Adam(fused=True), stepped through monai_medl.engines.adam_step.AdamStep
        "optimizer": "Adam(fused=True) via AdamStep",
    }


def make_data(cfg: dict[str, Any], variant: str) -> SpiralData:
    """The spiral data of ``variant`` (``"random_radius"`` or ``"confounded"``), drawn with ``cfg["data_seed"]``."""
    extra = cfg["confounded"] if variant == "confounded" else {}
    return make_spirals(**cfg["data"], **extra, seed=cfg["data_seed"])


def _mlp(cfg: dict[str, Any], in_features: int, num_clusters: int, mixed: bool) -> MixedEffectsMLP:
    re = {"linear_slopes": False, "nonlinear_slopes": False, "random_intercept": False}
    if mixed:
        re = {k: cfg[k] for k in ("linear_slopes", "nonlinear_slopes", "random_intercept")}
    return MixedEffectsMLP(
        in_features,
        1,
        num_clusters,
        hidden=cfg["hidden"],
        slope_prior_scale=cfg["slope_prior_scale"],
        intercept_prior_scale=cfg["intercept_prior_scale"],
        learn_prior_scale=cfg["learn_prior_scale"],
        post_loc_init_scale=cfg["post_loc_init_scale"],
        glorot_init=True,
        **re,
    )


class _Clock:
    """Wall-clock and CPU (process) seconds of a ``with`` block, accumulated over uses."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Clock:
        self._t = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._t[0]
        self.cpu += time.process_time() - self._t[1]

    def __add__(self, other: _Clock) -> _Clock:
        total = _Clock()
        total.wall, total.cpu = self.wall + other.wall, self.cpu + other.cpu
        return total


def _train(cfg, seed, x, y, z, sites, num_clusters, mixed: bool, adversary: bool):
    """Build (seeded) and train one MLP; return the network and the :class:`_Clock` of its training."""
    torch.manual_seed(seed)
    net = _mlp(cfg, x.shape[1], num_clusters, mixed)
    adv = None
    if adversary:
        adv = ClusterClassifier(sum(cfg["hidden"]), num_clusters, hidden=cfg["adversary_hidden"])
    trainer = TabularTrainer(
        net,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        kl_weight=cfg["kl_weight"],
        adversary=adv,
        lambda_g=cfg["lambda_g"] if adversary else 0.0,
        adversary_lr=cfg["lr"],
        adversary_objective=cfg["adversary_objective"],
        seed=seed,
        fused=cfg["fused_step"],
        manual_backward=cfg.get("manual_backward"),
    )
    with _Clock() as clock:
        if cfg["data_init"]:
            data_dependent_init_(net, x)
        trainer.fit(x, y, z if mixed else None, sites)
    return net, clock


def _scores(y: np.ndarray, prob: np.ndarray, threshold: float) -> tuple[float, float]:
    return float(accuracy_score(y, prob >= threshold)), float(roc_auc_score(y, prob))


def _prob(logits: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(logits.reshape(-1)).numpy()


def run_fold(
    data: SpiralData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    unseen_idx: np.ndarray,
    seen_clusters: Sequence[int],
    cfg: dict[str, Any],
    seed: int,
) -> dict[str, dict[str, float]]:
    """Train every model on ``train_idx``; score it on ``test_idx`` (seen) and ``unseen_idx`` (unseen clusters).

    Returns ``{model: {"seen_accuracy", "seen_auroc", "unseen_accuracy", "unseen_auroc", "collapsed", "seconds",
    "cpu_seconds", ...}}`` (``"probe_share"`` on the confounded variant).
    """
    remap = {c: i for i, c in enumerate(seen_clusters)}
    k = len(seen_clusters)
    x = data.x.astype(np.float64)
    if cfg["standardize"]:
        mean, sd = x[train_idx].mean(0), x[train_idx].std(0)
        x = (x - mean) / sd
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(data.y, dtype=torch.float32)
    site = torch.as_tensor([remap.get(int(s), -1) for s in data.site])
    z = torch.zeros(len(site), k)
    seen_rows = site >= 0
    z[seen_rows, site[seen_rows]] = 1.0
    tr, te, un = (torch.as_tensor(i) for i in (train_idx, test_idx, unseen_idx))
    y_te, y_un = data.y[test_idx], data.y[unseen_idx]
    thr = cfg["threshold"]
    rng = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    clocks: dict[str, _Clock] = {}

    def record(name, p_seen, p_unseen, clock: _Clock):
        acc_s, auc_s = _scores(y_te, p_seen, thr)
        acc_u, auc_u = _scores(y_un, p_unseen, thr)
        out[name] = {"seen_accuracy": acc_s, "seen_auroc": auc_s, "unseen_accuracy": acc_u, "unseen_auroc": auc_u}
        # a collapsed model predicts (almost) one class for everything
        out[name]["collapsed"] = float(not 0.05 <= float(np.mean(p_seen >= thr)) <= 0.95)
        out[name].update(seconds=clock.wall, cpu_seconds=clock.cpu)
        clocks[name] = clock

    # fixed-effects MLPs: conventional and domain-adversarial
    nets: dict[str, torch.nn.Module] = {}
    for name, adversary in (("conventional", False), ("domain_adversarial", True)):
        net, clock = _train(cfg, seed, x[tr], y[tr], z[tr], site[tr], k, mixed=False, adversary=adversary)
        record(name, _prob(predict_tabular(net, x[te])), _prob(predict_tabular(net, x[un])), clock)
        nets[name] = net
    # cluster as input: z concatenated (all zeros for unseen clusters)
    xz = torch.cat([x, z], dim=1)
    net, clock = _train(cfg, seed, xz[tr], y[tr], z[tr], site[tr], k, mixed=False, adversary=False)
    record("cluster_input", _prob(predict_tabular(net, xz[te])), _prob(predict_tabular(net, xz[un])), clock)
    nets["cluster_input"] = net
    # mixed effects without and with adversary; shuffled labels
    for name, adversary in (("me_no_adversary", False), ("me", True)):
        net, clock = _train(cfg, seed, x[tr], y[tr], z[tr], site[tr], k, mixed=True, adversary=adversary)
        p_seen = _prob(predict_tabular(net, x[te], z[te]))
        record(name, p_seen, _prob(predict_tabular(net, x[un], head="fixed")), clock)
        nets[name] = net
    y_perm = y[tr][torch.randperm(len(tr), generator=rng)]
    net, clock = _train(cfg, seed, x[tr], y_perm, z[tr], site[tr], k, mixed=True, adversary=True)
    record(
        "shuffled_label",
        _prob(predict_tabular(net, x[te], z[te])),
        _prob(predict_tabular(net, x[un], head="fixed")),
        clock,
    )
    nets["shuffled_label"] = net
    me = nets["me"]
    # randomized z: a random one-hot row for every test sample
    z_rand = torch.eye(k)[torch.randint(0, k, (len(site),), generator=rng)]
    record(
        "me_randomized_z",
        _prob(predict_tabular(me, x[te], z_rand[te])),
        _prob(predict_tabular(me, x[un], z_rand[un])),
        clocks["me"],
    )
    # inferred z: a cluster predictor trained on the training fold only
    torch.manual_seed(seed)
    predictor = ClusterClassifier(x.shape[1], k, hidden=cfg["z_predictor_hidden"])
    zp_trainer = TabularTrainer(
        predictor, task="ce", epochs=cfg["z_predictor_epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed
    )
    with _Clock() as zp_clock:
        if cfg["data_init"]:
            data_dependent_init_(predictor, x[tr])
        zp_trainer.fit(x[tr], site[tr])
    z_hat = predictor.predict_design(x)
    record(
        "me_inferred_z",
        _prob(predict_tabular(me, x[te], z_hat[te])),
        _prob(predict_tabular(me, x[un], z_hat[un])),
        clocks["me"] + zp_clock,
    )
    out["me_inferred_z"]["seen_z_predictor_accuracy"] = float((z_hat[te].argmax(1) == site[te]).float().mean())
    # traditional: gradient boosting on the same features
    with threadpool_limits(1):
        hgb = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, early_stopping=False, random_state=seed)
        with _Clock() as clock:
            hgb.fit(x[tr].numpy(), data.y[train_idx])
        record("traditional", hgb.predict_proba(x[te].numpy())[:, 1], hgb.predict_proba(x[un].numpy())[:, 1], clock)
    # gpboost: the same trees + a grouped random intercept; unseen clusters are new levels (random effect 0)
    gcfg = cfg["gpboost"]
    with threadpool_limits(1), _Clock() as clock:
        booster = fit_gpboost(
            x[tr].numpy(),
            data.y[train_idx],
            data.site[train_idx],
            gcfg["likelihood"],
            gcfg["num_boost_round"],
            gcfg["tree_params"],
            seed=seed,
            early_stopping=gcfg["early_stopping"],
        )
    record(
        "gpboost",
        predict_gpboost(booster, x[te].numpy(), data.site[test_idx]),
        predict_gpboost(booster, x[un].numpy(), data.site[unseen_idx]),
        clock,
    )
    out["gpboost"]["boost_rounds"] = float(booster.current_iteration())
    # attribution of the probe features in each fixed-effects path (confounded variant)
    if data.probe_columns:
        probes = list(data.probe_columns)
        for name in TORCH_MODELS:
            net = nets[name]
            if name == "cluster_input":
                z_te = z[te]
                grads = input_gradients(lambda xx, net=net, z_te=z_te: net(torch.cat([xx, z_te], 1)).reshape(-1), x[te])
                attr = grads.abs().mean(0)
            else:
                attr = fixed_effects_attribution(net, x[te])
            out[name]["probe_share"] = attribution_share(attr, probes)
        for name, src in (("me_randomized_z", "me"), ("me_inferred_z", "me")):
            out[name]["probe_share"] = out[src]["probe_share"]
    return out


def unseen_clusters(repeat: int, num_clusters: int, count: int) -> list[int]:
    """Clusters held out in ``repeat``: ``count`` consecutive clusters, rotating so that each pair recurs."""
    start = (count * repeat) % num_clusters
    return [(start + i) % num_clusters for i in range(count)]


def run_variant_repeat(data: SpiralData, cfg: dict[str, Any], r: int, seed: int, log=print) -> dict[str, dict]:
    """One repeat of one data variant: every fold model; returns ``{model: {measure: mean over folds}}``."""
    held = unseen_clusters(r, data.num_clusters, cfg["unseen_per_repeat"])
    seen = [c for c in range(data.num_clusters) if c not in held]
    seen_idx = np.flatnonzero(np.isin(data.site, seen))
    unseen_idx = np.flatnonzero(np.isin(data.site, held))
    strata = data.y[seen_idx] * data.num_clusters + data.site[seen_idx]
    splits = list(StratifiedKFold(n_splits=cfg["folds"]).split(seen_idx, strata))[: cfg["folds_run"]]
    variant = "confounded" if data.probe_columns else "random_radius"
    fold_results = []
    for f, (a, b) in enumerate(splits):
        res = run_fold(data, seen_idx[a], seen_idx[b], unseen_idx, seen, cfg, seed * 1000 + f)
        fold_results.append(res)
        log(
            f"[{variant}] repeat {r} (seed {seed}, unseen {held}) fold {f}: "
            + ", ".join(f"{m} {res[m]['seen_accuracy']:.3f}/{res[m]['unseen_accuracy']:.3f}" for m in MODELS)
        )
    return {m: {k: float(np.mean([fr[m][k] for fr in fold_results])) for k in fold_results[0][m]} for m in MODELS}


# results keys of the per-repeat fold means (the split first, as in every benchmark: seen_auroc, unseen_auroc);
# the confounded variant's carry the prefix "confounded_"
MEASURES = {
    "seen_accuracy": "seen_accuracy",
    "unseen_accuracy": "unseen_accuracy",
    "seen_auroc": "seen_auroc",
    "unseen_auroc": "unseen_auroc",
    "collapsed": "collapsed_fold_rate",
    "seconds": "time_per_fold_s",
    "cpu_seconds": "cpu_time_per_fold_s",
    "seen_z_predictor_accuracy": "seen_z_predictor_accuracy",
    "boost_rounds": "gpboost_boost_rounds",
}
CONFOUNDED_MEASURES = {
    "seen_accuracy": "confounded_seen_accuracy",
    "unseen_accuracy": "confounded_unseen_accuracy",
    "seen_auroc": "confounded_seen_auroc",
    "unseen_auroc": "confounded_unseen_auroc",
    "probe_share": "confounded_probe_attribution_share",
}


def run_repeat(cfg: dict[str, Any], datasets: dict[str, SpiralData], r: int, log=print) -> dict[str, dict]:
    """Repeat ``r`` (seed ``r``) of every variant in ``datasets``: ``{model: {metric: value}}`` (main variant
    ``random_radius``, or the first; the confounded variant's metrics prefixed ``confounded_``)."""
    per_variant = {v: run_variant_repeat(d, cfg, r, r, log) for v, d in datasets.items()}
    base = per_variant.get("random_radius") or next(iter(per_variant.values()))
    conf = per_variant.get("confounded")
    row = {}
    for m in MODELS:
        row[m] = {key: base[m][k] for k, key in MEASURES.items() if k in base[m]}
        row[m]["time_per_epoch_s"] = base[m]["seconds"] / cfg["epochs"]
        if conf is not None:
            row[m].update({key: conf[m][k] for k, key in CONFOUNDED_MEASURES.items() if k in conf[m]})
    return row


def _accuracy_sd(models: dict[str, Any], rows) -> None:
    """``seen_accuracy_sd``: s.d. of the per-repeat seen accuracy over repeats (0 with one repeat)."""
    for entry in models.values():
        values = entry["seen"]["values"]
        entry["extra"]["seen_accuracy_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


COMPARISONS = (
    Comparison("me", "seen_accuracy", "conventional"),
    Comparison("me", "unseen_accuracy", "conventional"),
    Comparison("me", "confounded_probe_attribution_share", "conventional", higher_is_better=False),
    Comparison("me", "confounded_probe_attribution_share", "domain_adversarial", higher_is_better=False),
)
"""The plan's primary comparisons, paired per repeat (stored in ``me``'s ``extra``)."""


RANDOM_RADIUS_COLUMNS = [
    "seen_auroc",
    "unseen_auroc",
    "seen_accuracy_sd",
    "collapsed_fold_rate",
    "seen_z_predictor_accuracy",
]
TIME_COLUMNS = ["time_per_fold_s", "time_per_epoch_s", "cpu_time_per_fold_s"]
CONFOUNDED_COLUMNS = [
    "confounded_seen_accuracy",
    "confounded_unseen_accuracy",
    "confounded_seen_auroc",
    "confounded_unseen_auroc",
    "confounded_probe_attribution_share",
]

NOTES = """
How to read: `seen`/`unseen` = accuracy (threshold 0.5) on held-out samples of the 8 training clusters / on the two
clusters never seen in training. `seen_accuracy_sd` = s.d. of the per-repeat seen accuracy over repeats;
`collapsed_fold_rate` = share of fold models predicting one class for more than 95% of the seen test fold.
Times: training of one fold model (data-dependent init + 10 epochs), wall clock and CPU (process) seconds, one torch
thread, on a 2-core machine shared with other jobs (wall time is inflated by contention; CPU time less so). Every
MLP trains with the same step path (config `manual_backward`: None = the trainer's default, hand-written gradients
for all of them) and the same fused Adam.
`me_randomized_z` and `me_inferred_z` reuse the `me` networks (the latter's time adds the z-predictor's).
`seen_z_predictor_accuracy`: accuracy of the cluster predictor on the seen test fold (chance 1/8).
Confounded variant: per-cluster prevalence ~N(0.5, 0.3^2) clipped to [0.1, 0.9] and two probe features
~N(prevalence, 0.2^2); `confounded_probe_attribution_share` = share of mean |d logit_F / d x| (standardised inputs,
seen test fold) carried by the probe features in each model's fixed-effects path (lower = less reliance on the
site shortcut; `traditional` and `gpboost` have no gradient; `cluster_input` is differentiated w.r.t. x with the
true z appended).
`gpboost` (additional baseline, not a primary comparison): GPBoost's boosted trees with the `traditional` row's tree
settings plus a grouped random intercept per training cluster (`bernoulli_probit`, covariance fitted by GPBoost),
the number of rounds chosen per fold by early stopping on 20% of the training fold's rows (`gpboost_boost_rounds`);
seen = GPBoost's predictive probability with the cluster's predicted random effect, unseen = the cluster as a new
level (random effect 0: the population prediction). Its time is GPBoost's training on one thread.
"""


# --timing: training times only, one repeat x 3 folds of the random-radius variant, for a run on an idle machine
# (the full run shares the CPU with whatever else runs, which inflates even the CPU times of a busy 2-core host)
TIMING_CONFIG = {"variants": ["random_radius"], "repeats": 1, "folds_run": 3}


def run(
    quick: bool = False, out_dir=None, config: dict[str, Any] | None = None, log=print, name: str = NAME
) -> dict[str, Any]:
    """Run the benchmark and write ``<name>.json``/``<name>.md``; ``config`` overrides :func:`default_config`."""
    torch.set_num_threads(1)
    cfg = default_config(quick)
    cfg.update(config or {})
    datasets = {v: make_data(cfg, v) for v in cfg["variants"]}
    confounded = "confounded" in datasets
    tables = [
        ("Random-radius spirals", RANDOM_RADIUS_COLUMNS),
        ("Training time per fold (10 epochs, one thread)", TIME_COLUMNS),
        ("Confounded variant (site-dependent prevalence + 2 probe features)", CONFOUNDED_COLUMNS),
    ]
    return run_benchmark(
        name,
        quick,
        PLAN,
        list(range(cfg["repeats"])),
        lambda r: run_repeat(cfg, datasets, r, log),
        metric="accuracy",
        seen="seen_accuracy",
        unseen="unseen_accuracy",
        config=cfg,
        comparisons=[c for c in COMPARISONS if confounded or not c.metric.startswith("confounded_")],
        order=MODELS,
        derive=_accuracy_sd,
        notes=NOTES,
        extra_tables=tables if confounded else tables[:2],
        out_dir=out_dir,
        log=log,
    )


REFERENCE_PLAN = {
    "seeds": "0, 1, 2 (model seeds; the data are drawn once with data_seed, as in the reference notebook)",
    "splits": "the reference's own protocol: every cluster seen, 10-fold StratifiedKFold on label x cluster of all "
    "10 clusters (no shuffle); features standardised on the training fold",
    "primary_comparisons": ["me vs conventional: seen accuracy per fold (random-radius spirals)"],
    "decision_rule": "me must not collapse: no fold below 0.70 seen accuracy; mean accuracies reported with the "
    "minimum fold, whatever they are",
}


def run_reference_protocol(
    quick: bool = False, out_dir=None, config: dict[str, Any] | None = None, log=print
) -> dict[str, Any]:
    """The reference notebook's protocol (all clusters seen, 10 stratified folds, 3 model seeds) for ``conventional``
    and ``me``; writes ``spirals_reference.json``/``.md`` with the per-seed mean and the minimum fold accuracy.
    ``config`` overrides :func:`default_config` (tests use smaller data)."""
    torch.set_num_threads(1)
    cfg = {**default_config(quick), **(config or {})}
    seeds = [0] if quick else [0, 1, 2]
    folds_run = 3 if quick else cfg["folds"]
    name = f"{NAME}_reference"
    kwargs = {} if out_dir is None else {"out_dir": out_dir}
    announce_plan(name, quick, REFERENCE_PLAN, seeds, **kwargs)
    data = make_data(cfg, "random_radius")
    k = data.num_clusters
    strata = data.y * k + data.site
    splits = list(StratifiedKFold(n_splits=cfg["folds"]).split(data.x, strata))[:folds_run]
    site = torch.as_tensor(data.site)
    z = torch.eye(k)[site]
    y = torch.as_tensor(data.y, dtype=torch.float32)
    folds: dict[str, list[list[float]]] = {"conventional": [], "me": []}
    for seed in seeds:
        for m in folds:
            folds[m].append([])
        for f, (tr, te) in enumerate(splits):
            x = data.x.astype(np.float64)
            x = torch.as_tensor((x - x[tr].mean(0)) / x[tr].std(0), dtype=torch.float32)
            tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
            for m, mixed in (("conventional", False), ("me", True)):
                net, _ = _train(cfg, seed * 1000 + f, x[tr_t], y[tr_t], z[tr_t], site[tr_t], k, mixed, adversary=mixed)
                logits = predict_tabular(net, x[te_t], z[te_t] if mixed else None)
                acc, _ = _scores(data.y[te], _prob(logits), cfg["threshold"])
                folds[m][-1].append(acc)
            log(f"[reference] seed {seed} fold {f}: " + ", ".join(f"{m} {folds[m][-1][-1]:.3f}" for m in folds))
    models = {}
    for m, per_seed in folds.items():
        flat = [a for s in per_seed for a in s]
        models[m] = {
            "seen": summarize([float(np.mean(s)) for s in per_seed]),
            "unseen": None,
            "extra": {
                "seen_min_fold_accuracy": min(flat),
                "seen_folds_below_0.70": sum(a < 0.70 for a in flat),
                "seen_fold_accuracies": flat,
            },
        }
    config = {**cfg, "protocol": "reference", "seeds": seeds, "folds_run": folds_run}
    notes = (
        "seen = accuracy on the held-out fold (all 10 clusters are training clusters, z one-hot for me), mean over "
        "folds per seed, t-interval over seeds; seen_min_fold_accuracy over every fold of every seed."
    )
    return write_results(
        name, quick, "accuracy", len(seeds), models, config, seeds, notes=notes, plan=REFERENCE_PLAN,
        extra_tables=[("", ["seen_min_fold_accuracy", "seen_folds_below_0.70"])], **kwargs,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--timing", action="store_true", help=f"training times only (1 repeat x 3 folds) -> {NAME}_timing.json/.md"
    )
    parser.add_argument(
        "--protocol",
        choices=["package", "reference"],
        default="package",
        help="package: held-out clusters, every model (default); reference: the ARMED notebook's protocol "
        f"(all clusters seen, conventional vs me) -> {NAME}_reference.json/.md",
    )
    parser.add_argument(
        "--fused", action="store_true", help="train with the fused one-backward adversary step (-> <name>_fused)"
    )
    backward = parser.add_mutually_exclusive_group()
    backward.add_argument(
        "--manual", action="store_true", help="TabularTrainer(manual_backward=True) for every MLP (-> <name>_manual)"
    )
    backward.add_argument(
        "--autograd",
        action="store_true",
        help="TabularTrainer(manual_backward=False) for every MLP (-> <name>_autograd)",
    )
    args = parser.parse_args(argv)
    fused, suffix = {"fused_step": True} if args.fused else {}, "_fused" if args.fused else ""
    if args.manual or args.autograd:
        fused, suffix = (
            {**fused, "manual_backward": bool(args.manual)},
            suffix + ("_manual" if args.manual else "_autograd"),
        )
    if args.protocol == "reference":
        run_reference_protocol(quick=args.quick, out_dir=args.out)
    elif args.timing:
        run(quick=False, out_dir=args.out, config={**TIMING_CONFIG, **fused}, name=f"{NAME}_timing{suffix}")
    else:
        run(quick=args.quick, out_dir=args.out, config=fused, name=NAME + suffix)


if __name__ == "__main__":
    main()
