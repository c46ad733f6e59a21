# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Live-cell autoencoder-classifiers: conventional vs domain-adversarial vs RE-only vs mixed effects (ARMED Table V).

Data: :func:`monai_medl.data.make_livecell` (the real cell of ``skimage/data/cell.png`` re-rendered in
many tiles with an elongation phenotype measured from the warped mask, and per-batch imaging effects; 6 seen and
2 unseen imaging batches). Models (same 2D encoder/decoder, data, epochs, optimiser and loss weights; only the
branches and the adversary differ), all :class:`~monai_medl.networks.nets.MixedEffectsAutoEncoder`:

- ``conventional``: FE autoencoder + classifier on its latent, no adversary;
- ``domain_adversarial``: the same with the adversary (``AdversaryHandler``) on encoder activations + latent;
- ``re_only``: the RE autoencoder (cluster scale/bias blocks) + classifier on its latent, no adversary;
- ``me_no_adversary``: FE + RE autoencoders, ``y_M`` on the concatenated latents, no adversary;
- ``me``: the full ARMED-style model (FE with adversary + RE + ``y_M``); its adversary objective and learning rate
  are chosen per seed on validation data by the rule below (``train_seconds`` is the whole grid's);
- ``me_auroc_selected``: the same grid, the previous rule (best validation AUROC among the ``confusion`` configs),
  kept so the change of rule is visible (``train_seconds``: the three confusion models');
- ``me_ce_objective``: the grid's fixed ``ce`` / 5e-3 model (ARMED's original objective, maximise the adversary's
  cross-entropy); a fixed configuration, not a selection.

**Selection rule of** ``me`` (stated before the 10-seed run; validation data only, never a test split). Train the
grid objective in ``ME_OBJECTIVES`` = (``"confusion"``: push the adversary to uniform predictions, ``"ce"``: maximise
its cross-entropy) x adversary learning rate in ``ME_ADVERSARY_LR_GRID`` = (5e-3, 1e-3, 2e-4), six models per seed.
For each, on the seen batches' ``validation`` tiles: the phenotype AUROC, its standard error (seeded bootstrap over
validation tiles, ``BOOTSTRAP_RESAMPLES`` = 200 resamples, :func:`auroc_standard_error`), and the FE-latent batch-probe
accuracy (logistic regression fit on the *training* tiles' FE latents, scored on the *validation* tiles' FE latents).
Then the one-standard-error rule (Breiman et al. 1984; Hastie et al., ESL 7.10) adapted to two goals
(:func:`select_one_standard_error`): among the configurations whose validation AUROC is at least the best validation
AUROC minus one standard error of that best AUROC, choose the lowest validation batch-probe accuracy (the most
batch-invariant FE latent); ties go to the lower adversary learning rate, then to the grid order.

Every model is trained in a plain MONAI ``SupervisedTrainer`` with :class:`MixedEffectsPrepareBatch` and
:class:`MixedEffectsAutoEncoderLoss`. Metric: phenotype AUROC of the model's prediction (``y_M``; the FE-only models'
single head) on held-out tiles of seen batches (one-hot ``z``) and on unseen batches (``z = 0``, population).
``extra``: reconstruction MSE (x 1000) of the model's reconstruction (seen: RE branch with ``z`` when present;
unseen: the population-level reconstruction, i.e. the FE decoder, or the RE decoder at ``z = 0`` for ``re_only``),
Davies-Bouldin and Calinski-Harabasz of the z-scored FE latents of the training tiles by batch (RE latent for
``re_only``, which has no FE latent), and a logistic-regression batch probe on those latents (cross-validated
accuracy; chance = 1/6).

**Normalisation** (``norm``, ``reversible_norm``, every model alike) is the candidate ``benchmarks.livecell_selection``
chose on training batches only (one held out as pseudo-unseen per fresh selection seed, one-standard-error rule;
``results/livecell_selection.md``); :func:`main` reads it from that file. Earlier versions adopted instance norm and
reversible instance normalisation after looking at unseen-batch MSE of full runs, which is why the choice was redone
this way. Other settings were fixed during development and are not re-chosen here: the adversary learns 5x faster
than the autoencoder (two time-scale updates, so the single adversary step per iteration keeps tracking the moving
encoder), the classification weight is ARMED's 0.01 (chosen on seen-batch validation AUROC of seeds 0-1), and
``lambda_g`` is fixed because the adversary's learning rate, not ``lambda_g``, moved the batch probe on a 5-seed
grid; the ``me`` adversary's learning rate and objective are chosen per seed on validation data by the rule above.
Seeds 5-9 of the default run were never looked at before that rule was fixed: they are an out-of-sample check of it.
The results of the run with this rule (choices per seed, paired comparisons) are in ``benchmarks/results/livecell.md``,
rendered from ``livecell.json``.

Run ``python -m benchmarks.livecell [--quick] [--out DIR]``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism
from scipy import stats
from sklearn.metrics import roc_auc_score

from benchmarks._common import (
    Comparison,
    benchmark_parser,
    paired_comparisons,
    run_benchmark,
    run_seeds,
    summarize_rows,
)
from monai_medl.data.synthetic.livecell import LiveCellData, make_livecell
from monai_medl.engines.prepare_batch import MixedEffectsPrepareBatch
from monai_medl.handlers.adversary_handler import AdversaryHandler
from monai_medl.losses.me_autoencoder_loss import MixedEffectsAutoEncoderLoss
from monai_medl.metrics.latent_mixing import batch_probe_accuracy, latent_batch_clustering
from monai_medl.networks.nets.cluster_classifier import ClusterClassifier
from monai_medl.networks.nets.me_autoencoder import MixedEffectsAutoEncoder

__all__ = [
    "selected_normalisation",
    "MODELS",
    "ME_OBJECTIVES",
    "ME_ADVERSARY_LR_GRID",
    "BOOTSTRAP_RESAMPLES",
    "PAIRED",
    "COMPARISONS",
    "site_indices",
    "make_loader",
    "train_model",
    "evaluate_model",
    "auroc_standard_error",
    "train_grid",
    "select_one_standard_error",
    "select_best_auroc",
    "select_by_validation",
    "run_seed",
    "results_notes",
    "run",
    "main",
]

NAME = "livecell"
MODELS = {
    "conventional": {"fixed_effects": True, "random_effects": False, "adversary": False},
    "domain_adversarial": {"fixed_effects": True, "random_effects": False, "adversary": True},
    "re_only": {"fixed_effects": False, "random_effects": True, "adversary": False},
    "me_no_adversary": {"fixed_effects": True, "random_effects": True, "adversary": False},
    "me": {"fixed_effects": True, "random_effects": True, "adversary": True},
    "me_auroc_selected": {"fixed_effects": True, "random_effects": True, "adversary": True},
    "me_ce_objective": {"fixed_effects": True, "random_effects": True, "adversary": True, "objective": "ce"},
}
DEFAULTS = {
    "latent_size": 16,
    "channels": (16, 32, 64),
    "strides": (2, 2, 2),
    "norm": "instance",
    "reversible_norm": True,
    "classifier_hidden": 32,
    "classifier_dropout": None,
    "lr": 1e-3,
    "adversary_lr": 5e-3,
    "batch_size": 32,
    "lambda_g": 0.05,
    "adversary_hidden": (64, 32),
    "lambda_class": 0.01,
    "kl_weight": 1e-7,
}
NETWORK_KEYS = (
    "latent_size",
    "channels",
    "strides",
    "norm",
    "reversible_norm",
    "classifier_hidden",
    "classifier_dropout",
)
"""The :data:`DEFAULTS` that are arguments of the autoencoder (the others set its training)."""
# the models taken from the per-seed grid of adversary objectives x learning rates (train_grid), not trained alone
GRID_MODELS = ("me", "me_auroc_selected", "me_ce_objective")
ME_OBJECTIVES = ("confusion", "ce")
ME_ADVERSARY_LR_GRID = (5e-3, 1e-3, 2e-4)
BOOTSTRAP_RESAMPLES = 200
# (metric, whether higher is better): me minus a reference model, paired by seed; the first five are ARMED's
# Table V pattern, the unseen-batch metrics are reported alongside
PAIRED_METRICS = (
    ("seen_auroc", True),
    ("mse_seen_x1000", False),
    ("davies_bouldin", True),
    ("calinski_harabasz", False),
    ("batch_probe_acc", False),
    ("unseen_auroc", True),
    ("mse_unseen_x1000", False),
)
PAIRED = (("me", "conventional"), ("me", "me_auroc_selected"))
COMPARISONS = tuple(Comparison(m, metric, ref, higher_is_better=h) for m, ref in PAIRED for metric, h in PAIRED_METRICS)
"""The plan's paired comparisons (stored in the model's ``extra`` as ``paired_<metric>_minus_<reference>``)."""
# the seeds whose results were seen before the one-standard-error rule was fixed; later seeds are out-of-sample
SEEDS_BEFORE_RULE = (0, 1, 2, 3, 4)


def site_indices(data: LiveCellData) -> np.ndarray:
    """Batch index for seen batches, ``-1`` (unseen marker) for the unseen ones."""
    num_seen = len(data.effects) - data.config["num_unseen"]
    return np.where(data.batch < num_seen, data.batch, -1)


def make_loader(data: LiveCellData, idx: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """MONAI loader of ``{"image", "label", "site"}`` dictionaries for the tiles ``idx``."""
    sites = site_indices(data)
    items = [
        {"image": torch.from_numpy(data.image[i]), "label": int(data.label[i]), "site": int(sites[i])} for i in idx
    ]
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(Dataset(items), batch_size=batch_size, shuffle=shuffle, num_workers=0, generator=gen)


def build_model(data: LiveCellData, fixed_effects: bool, random_effects: bool, **overrides) -> MixedEffectsAutoEncoder:
    """The benchmark's autoencoder for ``data`` (2D, one channel)."""
    cfg = {**DEFAULTS, **overrides}
    tile = data.config["tile_size"]
    return MixedEffectsAutoEncoder(
        spatial_dims=2,
        in_shape=(1, tile, tile),
        num_clusters=len(data.effects) - data.config["num_unseen"],
        fixed_effects=fixed_effects,
        random_effects=random_effects,
        **{key: cfg[key] for key in NETWORK_KEYS},
    )


def train_model(
    data: LiveCellData,
    fixed_effects: bool = True,
    random_effects: bool = True,
    adversary: bool = True,
    objective: str = "confusion",
    epochs: int = 10,
    seed: int = 0,
    **overrides,
) -> tuple[MixedEffectsAutoEncoder, dict]:
    """Train one autoencoder-classifier on the training tiles in a MONAI ``SupervisedTrainer``.

    ``objective`` is the adversary's objective (``"confusion"`` or ``"ce"``, see :class:`AdversaryHandler`).
    Returns the network (eval mode) and a history dict (seconds, last adversary accuracy).
    """
    cfg = {**DEFAULTS, **overrides}
    set_determinism(seed)
    torch.manual_seed(seed)
    net = build_model(data, fixed_effects, random_effects, **overrides)
    num_clusters = net.num_clusters
    loader = make_loader(data, data.select("training"), cfg["batch_size"], shuffle=True, seed=seed)
    loss = MixedEffectsAutoEncoderLoss(
        lambda_mixed=cfg["lambda_class"], lambda_fixed=cfg["lambda_class"], kl_weight=cfg["kl_weight"]
    )
    handlers = []
    if adversary:
        adv = ClusterClassifier(net.adversary_in_features, num_clusters, hidden=cfg["adversary_hidden"])
        handlers.append(
            AdversaryHandler(
                adv,
                torch.optim.Adam(adv.parameters(), cfg["adversary_lr"]),
                lambda_g=cfg["lambda_g"],
                objective=objective,
            )
        )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), cfg["lr"]),
        loss_function=loss,
        prepare_batch=MixedEffectsPrepareBatch(num_clusters),
        train_handlers=handlers,
    )
    start = time.perf_counter()
    trainer.run()
    history = {"seconds": time.perf_counter() - start}
    if adversary:
        history["adv_acc"] = handlers[0].regularizer.last_accuracy
    set_determinism(None)
    return net.eval(), history


@torch.no_grad()
def evaluate_model(net: MixedEffectsAutoEncoder, data: LiveCellData, idx: np.ndarray) -> dict:
    """Reconstruction MSE, phenotype AUROC, probabilities and latents on tiles ``idx`` (one-hot ``z`` seen, ``z = 0``
    unseen)."""
    net.eval()
    sites = torch.as_tensor(site_indices(data)[idx])
    prep = MixedEffectsPrepareBatch(net.num_clusters)
    x = torch.from_numpy(data.image[idx])
    out = net.forward_all(x, prep.design(sites, x))
    mse = ((out.reconstruction - x) ** 2).flatten(1).mean(1)
    prob = torch.sigmoid(out.mixed).reshape(-1).numpy()
    latent = out.latent_fixed if out.latent_fixed is not None else out.latent_random
    return {
        "mse": float(mse.mean()),
        "auroc": float(roc_auc_score(data.label[idx], prob)),
        "prob": prob,
        "latent": latent.numpy(),
    }


def auroc_standard_error(labels, prob, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Bootstrap standard error of the AUROC of ``prob`` against binary ``labels`` (tiles resampled with replacement).

    ``scipy.stats.bootstrap`` (paired resampling of ``(label, prob)``) with a seeded generator, so the value is
    reproducible.

    Example::

        >>> y = np.repeat([0, 1], 50)
        >>> p = y + np.random.default_rng(0).normal(size=100)
        >>> 0.01 < auroc_standard_error(y, p, seed=0) < 0.1
        True
    """
    labels, prob = np.asarray(labels).reshape(-1), np.asarray(prob, dtype=np.float64).reshape(-1)
    if labels.shape != prob.shape or len(np.unique(labels)) != 2:
        raise ValueError(f"need equally long labels and prob with two classes, got {labels.shape}, {prob.shape}.")
    res = stats.bootstrap(
        (labels, prob),
        lambda y, p: roc_auc_score(y, p),
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.standard_error)


def train_grid(
    data: LiveCellData,
    spec: dict,
    epochs: int,
    seed: int,
    objectives: tuple[str, ...] = ME_OBJECTIVES,
    grid: tuple[float, ...] = ME_ADVERSARY_LR_GRID,
) -> list[dict]:
    """Train ``spec`` once per adversary objective x learning rate and measure each on the validation split.

    Returns one dict per configuration (objectives outer, learning rates inner): ``objective``, ``adversary_lr``,
    ``net`` (eval mode), ``seconds`` and the validation read-outs ``val_auroc``, ``val_auroc_se``
    (:func:`auroc_standard_error`, seeded with ``seed``) and ``val_probe_acc`` (batch probe fit on the training tiles'
    FE latents, scored on the validation tiles' FE latents). Only ``training`` and ``validation`` tiles are used.
    """
    train_idx, val_idx = data.select("training"), data.select("validation")
    configs = []
    for objective in objectives:
        for lr in grid:
            cfg = {**spec, "objective": objective, "adversary_lr": lr}
            net, hist = train_model(data, epochs=epochs, seed=seed, **cfg)
            val, train = evaluate_model(net, data, val_idx), evaluate_model(net, data, train_idx)
            probe = batch_probe_accuracy(
                train["latent"], data.batch[train_idx], eval_latents=val["latent"], eval_batches=data.batch[val_idx]
            )
            configs.append(
                {
                    "objective": objective,
                    "adversary_lr": lr,
                    "net": net,
                    "seconds": hist["seconds"],
                    "val_auroc": val["auroc"],
                    "val_auroc_se": auroc_standard_error(data.label[val_idx], val["prob"], seed=seed),
                    "val_probe_acc": probe,
                }
            )
    return configs


def select_one_standard_error(configs: list[dict]) -> int:
    """Index of the configuration the one-standard-error rule chooses (the rule of ``me``, see the module docstring).

    Among the configurations with ``val_auroc >= best val_auroc - val_auroc_se of the best``, the lowest
    ``val_probe_acc``; ties go to the lower ``adversary_lr``, then to the earlier configuration.

    Example::

        >>> grid = [{"val_auroc": 0.90, "val_auroc_se": 0.03, "val_probe_acc": 0.8, "adversary_lr": 1e-3},
        ...         {"val_auroc": 0.88, "val_auroc_se": 0.03, "val_probe_acc": 0.4, "adversary_lr": 5e-3},
        ...         {"val_auroc": 0.80, "val_auroc_se": 0.03, "val_probe_acc": 0.2, "adversary_lr": 5e-3}]
        >>> select_one_standard_error(grid)
        1
    """
    if not configs:
        raise ValueError("select_one_standard_error needs at least one configuration.")
    best = max(range(len(configs)), key=lambda i: configs[i]["val_auroc"])
    floor = configs[best]["val_auroc"] - configs[best]["val_auroc_se"]
    within = [i for i, c in enumerate(configs) if c["val_auroc"] >= floor]
    return min(within, key=lambda i: (configs[i]["val_probe_acc"], configs[i]["adversary_lr"], i))


def select_best_auroc(configs: list[dict], objective: str = "confusion") -> int:
    """Index of the best validation AUROC among the ``objective`` configurations (the earlier one on ties): the rule
    ``me`` used before the one-standard-error rule, kept as ``me_auroc_selected``."""
    candidates = [i for i, c in enumerate(configs) if c["objective"] == objective]
    if not candidates:
        raise ValueError(f"no configuration with objective {objective!r} in {[c['objective'] for c in configs]}.")
    return max(candidates, key=lambda i: (configs[i]["val_auroc"], -i))


def select_by_validation(
    data: LiveCellData, spec: dict, epochs: int, seed: int, grid: tuple[float, ...] = ME_ADVERSARY_LR_GRID
) -> tuple[MixedEffectsAutoEncoder, dict]:
    """Train ``spec`` once per adversary learning rate in ``grid``; keep the best phenotype AUROC on the validation
    split (:func:`select_best_auroc`, the ``me_auroc_selected`` rule, for ``spec``'s objective).

    The returned history holds ``adversary_lr`` (the chosen value), ``val_auroc`` (one value per grid entry) and
    ``seconds`` summed over the whole grid.
    """
    objective = spec.get("objective", "confusion")
    configs = train_grid(data, spec, epochs, seed, objectives=(objective,), grid=grid)
    chosen = configs[select_best_auroc(configs, objective)]
    hist = {
        "seconds": sum(c["seconds"] for c in configs),
        "adversary_lr": chosen["adversary_lr"],
        "val_auroc": [c["val_auroc"] for c in configs],
    }
    return chosen["net"], hist


def _test_values(net: MixedEffectsAutoEncoder, data: LiveCellData, seed: int, seconds: float) -> dict[str, float]:
    """The benchmark's test read-outs of one trained model (test splits; latent clustering on the training tiles)."""
    train_idx = data.select("training")
    seen = evaluate_model(net, data, data.select("test_seen"))
    unseen = evaluate_model(net, data, data.select("test_unseen"))
    train = evaluate_model(net, data, train_idx)
    mixing = latent_batch_clustering(train["latent"], data.batch[train_idx])
    return {
        "seen_auroc": seen["auroc"],
        "unseen_auroc": unseen["auroc"],
        "mse_seen_x1000": 1000 * seen["mse"],
        "mse_unseen_x1000": 1000 * unseen["mse"],
        "davies_bouldin": mixing["davies_bouldin"],
        "calinski_harabasz": mixing["calinski_harabasz"],
        "batch_probe_acc": batch_probe_accuracy(train["latent"], data.batch[train_idx], seed=seed),
        "train_seconds": seconds,
    }


def _grid_models(configs: list[dict]) -> dict[str, tuple[int, float]]:
    """``{model: (index of its configuration in configs, its train_seconds)}`` for the :data:`GRID_MODELS`."""
    fixed = [
        i
        for i, c in enumerate(configs)
        if c["objective"] == MODELS["me_ce_objective"]["objective"] and c["adversary_lr"] == DEFAULTS["adversary_lr"]
    ]
    if not fixed:
        raise ValueError(f"the grid lacks me_ce_objective's configuration (ce, {DEFAULTS['adversary_lr']}).")
    confusion_seconds = sum(c["seconds"] for c in configs if c["objective"] == "confusion")
    return {
        "me": (select_one_standard_error(configs), sum(c["seconds"] for c in configs)),
        "me_auroc_selected": (select_best_auroc(configs, "confusion"), confusion_seconds),
        "me_ce_objective": (fixed[0], configs[fixed[0]]["seconds"]),
    }


def run_seed(
    seed: int,
    epochs: int,
    tiles_per_batch: int,
    selection: dict | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict:
    """Train and evaluate every model on the data of ``seed``: ``{model: {metric: value}}``.

    ``settings`` override :data:`DEFAULTS` for every model (``main`` passes the normalisation that
    ``benchmarks.livecell_selection`` chose). ``selection``, when given, receives under ``seed`` the validation
    read-outs of every grid configuration and the configuration each grid model chose (``{"grid": [...], "me": {...},
    "me_auroc_selected": {...}, ...}``).
    """
    settings = dict(settings or {})
    data = make_livecell(tiles_per_batch=tiles_per_batch, seed=seed)
    per_model: dict[str, dict[str, float]] = {}
    for name, spec in MODELS.items():
        if name not in GRID_MODELS:
            net, hist = train_model(data, epochs=epochs, seed=seed, **spec, **settings)
            per_model[name] = _test_values(net, data, seed, hist["seconds"])
    configs = train_grid(data, {**MODELS["me"], **settings}, epochs, seed)
    record = {"grid": [{k: v for k, v in c.items() if k != "net"} for c in configs]}
    for c in record["grid"]:
        print(
            f"seed {seed} grid {c['objective']} lr {c['adversary_lr']:g}: val AUROC {c['val_auroc']:.3f} "
            f"(s.e. {c['val_auroc_se']:.3f}), val probe {c['val_probe_acc']:.3f}",
            flush=True,
        )
    for name, (i, seconds) in _grid_models(configs).items():
        per_model[name] = _test_values(configs[i]["net"], data, seed, seconds)
        record[name] = {"objective": configs[i]["objective"], "adversary_lr": configs[i]["adversary_lr"]}
    if selection is not None:
        selection[seed] = record
    print(f"seed {seed} chosen: me {record['me']}, me_auroc_selected {record['me_auroc_selected']}", flush=True)
    for name in MODELS:
        print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in per_model[name].items()), flush=True)
    return {name: per_model[name] for name in MODELS}


def run(
    quick: bool,
    seeds: list[int],
    epochs: int,
    tiles_per_batch: int,
    selection: dict | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict:
    """Every model for every seed (:func:`run_seed`); return the contract's ``models`` dict (every ``extra`` metric
    with its per-seed ``<metric>_values``). ``quick`` is kept for the call signature; the caller sets the sizes."""
    rows = run_seeds(seeds, lambda seed: run_seed(seed, epochs, tiles_per_batch, selection, settings))
    return summarize_rows(rows, "seen_auroc", "unseen_auroc", list(MODELS))


def selection_table(selection: dict) -> list[str]:
    """Markdown table of every seed's validation grid and the configurations ``me`` and ``me_auroc_selected`` chose."""
    lines = [
        "### Validation grid and choices per seed",
        "",
        "Each cell: validation AUROC (bootstrap s.e.) / validation batch-probe accuracy; chance probe = 1/6.",
        "",
    ]
    first = next(iter(selection.values()))["grid"]
    names = [f"{c['objective']} {c['adversary_lr']:g}" for c in first]
    lines += ["| seed | " + " | ".join(names) + " | me | me_auroc_selected |", "|" + "---|" * (len(names) + 3)]
    for seed, rec in selection.items():
        cells = [f"{c['val_auroc']:.3f} ({c['val_auroc_se']:.3f}) / {c['val_probe_acc']:.3f}" for c in rec["grid"]]
        chosen = [f"{rec[m]['objective']} {rec[m]['adversary_lr']:g}" for m in ("me", "me_auroc_selected")]
        lines.append(f"| {seed} | " + " | ".join(cells + chosen) + " |")
    return lines


COLUMNS = (
    "mse_seen_x1000",
    "mse_unseen_x1000",
    "davies_bouldin",
    "calinski_harabasz",
    "batch_probe_acc",
    "train_seconds",
)

NOTES = """
How to read: seen/unseen = phenotype AUROC of the model's prediction (y_M for the two-branch models) on held-out
tiles of training batches (one-hot z) and of the two unseen batches (z = 0). mse_*_x1000 = 1000 x reconstruction MSE
of the model's reconstruction (seen: RE decoder with the one-hot z for re_only/me*, FE decoder for the FE-only
models; unseen, z = 0: the FE decoder for every model with an FE branch, the population RE decoder for re_only).
davies_bouldin / calinski_harabasz / batch_probe_acc describe the training tiles' FE latents grouped by imaging
batch (RE latent for re_only): higher Davies-Bouldin, lower Calinski-Harabasz and a probe accuracy near 1/6 mean a
batch-invariant latent. Per-seed values: extra.<metric>_values in the JSON.

Selection rule of me (fixed before this run; validation tiles of the seen batches only, never a test split): train
adversary objective {confusion, ce} x adversary learning rate {5e-3, 1e-3, 2e-4} (6 models per seed); for each
measure the validation phenotype AUROC, its standard error (seeded bootstrap over validation tiles, 200 resamples)
and the FE-latent batch-probe accuracy (logistic regression fit on the training tiles' FE latents, scored on the
validation tiles' FE latents). One-standard-error rule (Breiman; Hastie et al.) adapted to two goals: among the
configurations with validation AUROC >= best validation AUROC - one s.e. of that best AUROC, choose the lowest
validation batch-probe accuracy; ties -> lower adversary learning rate. me_auroc_selected applies the previous rule
(best validation AUROC among the confusion configurations) to the same trained grid; me_ce_objective is the grid's
fixed ce / 5e-3 model. Their train_seconds: me the whole grid, me_auroc_selected the three confusion models.
Seeds 0-4 are those of the earlier runs that motivated the rule; seeds 5-9 are fresh data never looked at before
the rule was fixed, an out-of-sample check of it.

The phenotype is a measured elongation of one real cell re-rendered many times (see
monai_medl/data/synthetic/livecell.py), so it is an honest morphology read-out but not a biological cell state.
"""


def results_notes(models: dict, selection: dict, seeds: list[int]) -> str:
    """The markdown after the paired comparisons: the same comparisons on the seeds after :data:`SEEDS_BEFORE_RULE`
    (when there are at least two), the per-seed validation grid and :data:`NOTES`."""
    lines: list[str] = []
    fresh = [i for i, s in enumerate(seeds) if s not in SEEDS_BEFORE_RULE]
    if len(fresh) >= 2:
        title = f"Out-of-sample check: seeds {[seeds[i] for i in fresh]} only (fresh data, after the rule was fixed)"
        first = [c for c in COMPARISONS if (c.model, c.reference) == PAIRED[0]]
        lines += paired_comparisons(models, first, positions=fresh, title=title, splits=SPLITS) + [""]
    return "\n".join(lines + selection_table(selection)) + "\n\n" + NOTES.strip()


SPLITS = {"seen_auroc": "seen", "unseen_auroc": "unseen"}


PLAN = {
    "seeds": "0..9 (0, 1 quick); seeds 5..9 were drawn after the selection rule was fixed and are reported apart",
    "splits": "generated seen batches' training/validation/test tiles; 2 unseen batches test-only",
    "primary_comparisons": [
        "me - conventional: seen MSE, FE-latent Davies-Bouldin and Calinski-Harabasz, batch probe, seen AUROC",
        "me - me_auroc_selected (the previous rule)",
    ],
    "decision_rule": "me's adversary objective and learning rate by the one-standard-error rule on seen-batch "
    "validation tiles; a difference is claimed when its paired 95% t-interval over seeds excludes 0",
    "settings": "norm and reversible_norm of every model: the candidate benchmarks.livecell_selection chose on "
    "training batches only (seeds 100-104, one-standard-error rule; no test data)",
}


def selected_normalisation(results_dir=None) -> tuple[str, dict]:
    """``(candidate, {"norm", "reversible_norm"})`` that ``benchmarks.livecell_selection`` chose (training batches
    only)."""
    from benchmarks.selection import load_choice

    return load_choice("livecell_selection", results_dir)


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [0, 1] if args.quick else list(range(10))
    epochs = 8 if args.quick else 25
    tiles = 60 if args.quick else 100
    selection: dict[int, dict] = {}
    normalisation, settings = selected_normalisation()  # passed to every model; DEFAULTS stay the module's

    def config() -> dict:  # after the run: it records the choices of the selection rule
        return {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in {**DEFAULTS, **settings}.items()},
            "epochs": epochs,
            "tiles_per_batch": tiles,
            "num_batches": 8,
            "num_unseen": 2,
            "tile_size": 32,
            "unseen_mode": "population (z = 0)",
            "models": MODELS,
            "me_objectives": list(ME_OBJECTIVES),
            "me_adversary_lr_grid": list(ME_ADVERSARY_LR_GRID),
            "me_selection_rule": "one-standard-error: lowest validation batch probe among configs with validation "
            "AUROC >= best - 1 bootstrap s.e. (200 resamples) of the best; ties -> lower adversary lr",
            "me_auroc_selected_rule": "best validation AUROC among the confusion-objective configs",
            "me_selection": {str(k): v for k, v in selection.items()},
            "normalisation_selection": normalisation,
        }

    return run_benchmark(
        NAME,
        args.quick,
        PLAN,
        seeds,
        lambda seed: run_seed(seed, epochs, tiles, selection, settings),
        metric="auroc",
        seen="seen_auroc",
        unseen="unseen_auroc",
        config=config,
        comparisons=COMPARISONS,
        order=list(MODELS),
        notes=lambda models: results_notes(models, selection, seeds),
        extra_tables=[("", COLUMNS)],
        out_dir=args.out,
    )


if __name__ == "__main__":
    main()
