# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Segmentation benchmark: brain tissue (CSF, grey and white matter) in 3D T1 scans across sites, seen and unseen.

Data (:func:`monai_medl.data.generate_segmentation_cohort`, a fresh cohort per seed, cohort
seed ``100 + seed``): MNI152 anatomy with subject variation and the MRI cohort's per-site scanner effects (contrast,
gamma, bias field, noise, blur, slice thickness); 4 seen (training) sites and 2 unseen sites (test only). The
**label-protocol option is on**: ``site_b`` annotates grey matter one voxel thicker (dilation) and ``site_d`` one
voxel thinner (erosion); the other sites and both unseen sites use the reference protocol. Volumes are 32^3 voxels
of 6 mm (the bundle's cohort grid); 60 subjects per cohort (36 in quick mode). Every scan is z-scored on its own
brain (non-zero) voxels, except for ``conventional_site_norm``.

Splits: the generator's seeded per-site split of each seen site into training, validation and test subjects; the
seen-site test subjects are the ``seen`` split, every scan of the unseen sites the ``unseen`` split. The seen sites'
validation subjects (``validation_dice``, every model) serve one choice only: the ME-UNet's cluster scale/bias
placement, made by :mod:`benchmarks.segmentation_variants` (its own plan and rule). Every other setting below is
fixed a priori (the bundle's defaults, ``bundles/mri_me_unet_segmentation/configs/train.json``) and the last epoch is
used. The number of epochs (40; 4 in quick mode) is the compute budget: the rare CSF class (about 2% of brain voxels
at 6 mm) is not learned within the bundle's 10 epochs (checked on the bundle's cohort, generator seed 2024, not one
of the benchmark's), and a full run (5 seeds x 5 trained networks + a site classifier on about 28 training volumes
of 32^3) stays within about 30 minutes of one core.

Models (one UNet backbone: channels 8-16-32-64, strides 2-2-2, no residual units; Adam, learning rate 3e-3 and 1e-2
for the random-effect posteriors; batch 4 whole volumes with random left-right flips; the same number of epochs;
``MixedEffectsLoss(task="dice_ce")`` in a MONAI ``SupervisedTrainer``), all :class:`MixedEffectsUNet`:

- ``conventional``: the bare UNet (no cluster layers, no intercepts; exactly MONAI's ``UNet``);
- ``conventional_site_norm``: the same, with every scan z-scored by its **site's** intensity statistics
  (:class:`~monai_medl.transforms.SiteIntensityStats`, brain voxels): a seen site's from its training scans, an
  unseen site's from all its own scans (no labels are used; transductive for unseen sites);
- ``domain_adversarial``: the bare UNet + :class:`~monai_medl.handlers.AdversaryHandler` on the pooled encoder
  outputs (confusion objective, ``lambda_g`` 0.1);
- ``me_no_adversary``: cluster scale/bias on the decoder norms (prior s.d. 0.25) and per-class random output
  intercepts (prior s.d. 0.5), both heads trained (KL weight 1e-3);
- ``me``: the same plus the adversary; seen sites: the mixed prediction with the true site's ``z``, unseen sites:
  the population prediction ``z = 0`` (the bare UNet path);
- ``me_last_stage``: ``me`` with cluster scale/bias on the last decoder stage only (``cluster_scale_bias="last"``:
  the fixed and mixed predictions share the rest of the decoder);
- ``me_inferred_z``: the ``me`` model with the soft ``z`` of an image site classifier (``SmallCNN`` 8-16-32-32 trained
  on the training scans only; :func:`~monai_medl.networks.utils.soft_design`) for seen and unseen scans.

Metrics (MONAI): ``DiceMetric`` per foreground class and ``HausdorffDistanceMetric(percentile=95)`` in mm, per
scan, averaged over the scans of a split; ``seen_dice``/``unseen_dice`` (the primary metric) are the means over the
three classes. A class the model never predicts in a scan where it is present has no finite HD95; it gets the
field-of-view diagonal (the largest possible distance) so that the model is penalised, not skipped.
``extra`` also holds ``seen_population_dice`` (``me*`` at ``z = 0`` on seen sites) and, for the models with random
intercepts, ``intercept_vs_protocol_r``: Pearson r over the seen sites between each site's learned grey-matter
intercept contrast (grey matter's intercept minus the mean of the other classes', softmax being shift invariant)
and the generator's recorded change of that site's labelled grey-matter volume by its protocol.

**Arms** (``--arm``): ``reference`` (above; writes ``segmentation.json``) and ``unseen_label_shift`` (writes
``segmentation_unseen_label_shift.json``): the same cohorts except that both unseen sites annotate grey matter two
voxels thicker (``unseen_label_shift=2``), a protocol that is not the mean of the seen ones (+1, -1, 0, 0), so that
the population prediction ``z = 0`` is no longer the best case on them. The seen sites' scans, labels and splits are
those of the reference arm (the generator draws them first), so the validation choice is the same in both arms.

Run ``python -m benchmarks.segmentation [--quick] [--out DIR] [--models NAME ...] [--arm ARM]``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot
from scipy.stats import pearsonr
from torch import nn

from benchmarks._common import Comparison, benchmark_parser, read_cohort, run_benchmark
from benchmarks._training import flipped_loader, train_supervised
from monai_medl.bundle.optim import random_effects_param_groups
from monai_medl.data.synthetic.segmentation_cohort import TISSUE_LABELS, generate_segmentation_cohort
from monai_medl.engines.prepare_batch import MixedEffectsPrepareBatch
from monai_medl.handlers.adversary_handler import AdversaryHandler
from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss
from monai_medl.networks.nets.me_unet import MixedEffectsUNet
from monai_medl.networks.nets.small_cnn import SmallCNN
from monai_medl.networks.utils import soft_design
from monai_medl.transforms.site import site_index_to_design
from monai_medl.transforms.site_intensity import SiteIntensityStats

__all__ = [
    "MODELS",
    "CLASSES",
    "PLAN",
    "COMPARISONS",
    "default_config",
    "load_cohort",
    "train_model",
    "segment",
    "segmentation_scores",
    "intercept_protocol_r",
    "run_seed",
    "run",
    "main",
]

NAME = "segmentation"
MODELS = (
    "conventional",
    "conventional_site_norm",
    "domain_adversarial",
    "me_no_adversary",
    "me",
    "me_last_stage",
    "me_inferred_z",
)
ME_KINDS = {"me_no_adversary": True, "me": True, "me_last_stage": "last", "me_intercept_only": False}
"""ME kind -> the UNet's ``cluster_scale_bias`` (``me_intercept_only``: trained by ``benchmarks.segmentation_variants``
only)."""
ADVERSARIAL_KINDS = ("domain_adversarial", "me", "me_last_stage", "me_intercept_only")
CLASSES = tuple(TISSUE_LABELS[str(i)] for i in range(1, len(TISSUE_LABELS)))  # foreground: csf, grey/white matter
_GM = 2  # the grey-matter label, the class the label protocols change


ARMS = {"reference": {}, "unseen_label_shift": {"unseen_label_shift": 2}}
"""Arm -> the cohort settings it adds (see the module docstring)."""


def default_config(quick: bool = False, arm: str = "reference") -> dict[str, Any]:
    """Every setting of a run (written to the results' ``config``); fixed a priori, see the module docstring."""
    if arm not in ARMS:
        raise ValueError(f"segmentation benchmark: arm must be one of {sorted(ARMS)}, got {arm!r}.")
    return {
        "arm": arm,
        "cohort": {
            "num_subjects": 36 if quick else 60,
            "sites": 4,
            "unseen_sites": 2,
            "spatial_size": [32, 32, 32],
            "spacing": [6.0, 6.0, 6.0],
            "label_shift": {"site_b": 1, "site_d": -1},
            **ARMS[arm],
        },
        "cohort_seed_offset": 100,
        "seeds": [0, 1] if quick else [0, 1, 2, 3, 4],
        "epochs": 4 if quick else 40,
        "z_predictor_epochs": 2 if quick else 10,
        "batch_size": 4,
        "lr": 3e-3,
        "re_lr": 1e-2,
        "channels": [8, 16, 32, 64],
        "strides": [2, 2, 2],
        "num_res_units": 0,
        "z_predictor_channels": [8, 16, 32, 32],
        "lambda_g": 0.1,
        "adversary_objective": "confusion",
        "kl_weight": 1e-3,
        "lambda_fixed": 1.0,
        "intercept_prior_scale": 0.5,
        "cluster_prior_scale": 0.25,
        "threads": 1,
    }


# ----------------------------------------------------------------------------------------------------------- data


def _zscore_brain(image: np.ndarray, center: float, scale: float) -> np.ndarray:
    """``(x - center) / scale`` on the brain (non-zero) voxels; the background stays 0."""
    return np.where(image != 0, (image - center) / scale, 0.0).astype(np.float32)


def load_cohort(cohort_dir: str, cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Generate the cohort of ``seed`` and load it: per-scan and per-site z-scored images, labels, sites, splits.

    Returns a dictionary with ``images`` and ``site_norm_images`` (``(n, 1, *spatial)`` float32), ``labels``
    (``(n, 1, *spatial)`` int64), ``sites``, ``splits`` (``training``/``validation``/``test``), ``seen_sites``,
    ``unseen_sites`` and the generator's ``truth``.
    """
    path = generate_segmentation_cohort(cohort_dir, seed=cfg["cohort_seed_offset"] + seed, **cfg["cohort"])
    sections, truth = read_cohort(path)
    entries = [dict(e, split=key) for key, e in sections]
    raw = [nib.load(os.path.join(cohort_dir, e["image"])).get_fdata(dtype=np.float32) for e in entries]
    labels = np.stack([np.asarray(nib.load(os.path.join(cohort_dir, e["label"])).dataobj) for e in entries])
    per_scan = [_zscore_brain(v, float(v[v != 0].mean()), float(v[v != 0].std())) for v in raw]
    # site statistics from each site's own images, never its labels: training scans of a seen site, all scans of an
    # unseen site (test-time, transductive)
    unseen = set(truth["unseen_sites"])
    fit_on = [
        {"image": v, "site": e["site"]} for v, e in zip(raw, entries) if e["split"] == "training" or e["site"] in unseen
    ]
    stats = SiteIntensityStats.fit(fit_on, keys="image", nonzero=True)
    per_site = [
        _zscore_brain(
            v, stats.get("image", e["site"], "error")["center"], stats.get("image", e["site"], "error")["scale"]
        )
        for v, e in zip(raw, entries)
    ]
    return {
        "entries": entries,
        "images": np.stack(per_scan)[:, None],
        "site_norm_images": np.stack(per_site)[:, None],
        "labels": labels[:, None].astype(np.int64),
        "sites": [e["site"] for e in entries],
        "splits": [e["split"] for e in entries],
        "seen_sites": list(truth["seen_sites"]),
        "unseen_sites": list(truth["unseen_sites"]),
        "truth": truth,
    }


# --------------------------------------------------------------------------------------------------------- models


def _unet(
    cfg: dict[str, Any], num_clusters: int, random_effects: bool, cluster_scale_bias: bool | str = True
) -> MixedEffectsUNet:
    return MixedEffectsUNet(
        num_clusters,
        spatial_dims=3,
        in_channels=1,
        out_channels=len(TISSUE_LABELS),
        channels=cfg["channels"],
        strides=cfg["strides"],
        num_res_units=cfg["num_res_units"],
        cluster_scale_bias=cluster_scale_bias if random_effects else False,
        random_intercept=random_effects,
        intercept_prior_scale=cfg["intercept_prior_scale"],
        cluster_prior_scale=cfg["cluster_prior_scale"],
        probe_size=cfg["cohort"]["spatial_size"],
    )


def train_model(
    kind: str, cfg: dict[str, Any], x: torch.Tensor, y: torch.Tensor, site: torch.Tensor, num_clusters: int, seed: int
) -> nn.Module:
    """Train ``conventional``, ``domain_adversarial``, ``me_no_adversary``, ``me`` or ``z_predictor`` in a MONAI
    ``SupervisedTrainer`` and return it in eval mode (``y``: label maps; the ``z_predictor`` learns the site)."""
    torch.manual_seed(seed)
    handlers: list = []
    prepare = None
    epochs = cfg["epochs"]
    if kind == "z_predictor":
        net: nn.Module = SmallCNN(3, 1, num_clusters, channels=cfg["z_predictor_channels"])
        loss: nn.Module = nn.CrossEntropyLoss()
        y, epochs = site.long(), cfg["z_predictor_epochs"]
    elif kind in ("conventional", "domain_adversarial", *ME_KINDS):
        me = kind in ME_KINDS
        net = _unet(cfg, num_clusters, random_effects=me, cluster_scale_bias=ME_KINDS.get(kind, False))
        lambda_fixed = cfg["lambda_fixed"] if me else 0.0
        loss = MixedEffectsLoss("dice_ce", lambda_mixed=1.0, lambda_fixed=lambda_fixed, kl_weight=cfg["kl_weight"])
        if me:
            prepare = MixedEffectsPrepareBatch(num_clusters)
        if kind in ADVERSARIAL_KINDS:
            adversary = net.make_adversary()
            optimizer = torch.optim.Adam(adversary.parameters(), cfg["lr"])
            handlers.append(
                AdversaryHandler(adversary, optimizer, cfg["lambda_g"], objective=cfg["adversary_objective"])
            )
    else:
        raise ValueError(
            f"kind must be one of conventional, domain_adversarial, {', '.join(ME_KINDS)}, z_predictor; got {kind!r}."
        )
    loader = flipped_loader(x, y, site, cfg["batch_size"], seed)
    optimizer = torch.optim.Adam(random_effects_param_groups(net, cfg["re_lr"]), cfg["lr"])
    return train_supervised(net, loss, loader, optimizer, epochs, handlers, prepare)


@torch.no_grad()
def segment(net: nn.Module, x: torch.Tensor, z: torch.Tensor | None, batch_size: int = 8) -> torch.Tensor:
    """Label maps ``(n, 1, *spatial)`` (argmax of the eval-mode logits) of ``x`` with design ``z`` (None: no z)."""
    out = []
    for i in range(0, len(x), batch_size):
        zb = None if z is None else z[i : i + batch_size]
        out.append(net(x[i : i + batch_size], zb).argmax(1, keepdim=True))
    return torch.cat(out)


# -------------------------------------------------------------------------------------------------------- metrics


def segmentation_scores(
    pred: torch.Tensor, label: torch.Tensor, spacing: Sequence[float], num_classes: int = len(TISSUE_LABELS)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-scan, per-foreground-class Dice and HD95 (mm) of label maps ``(n, 1, *spatial)`` with MONAI's metrics.

    Dice is NaN for a class absent from both maps. HD95 is NaN for a class absent from the ground truth and the
    field-of-view diagonal (mm) for a class present in the ground truth but never predicted (MONAI gives inf).

    Returns:
        ``(dice, hd95, missed)``, each ``(n, num_classes - 1)``; ``missed`` marks a class present in the ground truth
        but not predicted.
    """
    p, y = one_hot(pred.long(), num_classes), one_hot(label.long(), num_classes)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, y).numpy()
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    with warnings.catch_warnings():  # empty classes are handled below
        warnings.filterwarnings("ignore", message=".*may result in nan/inf distance")
        hd95 = hd(p, y, spacing=[float(s) for s in spacing]).numpy().astype(np.float64)
    diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape[2:], spacing))))
    present = y[:, 1:].flatten(2).any(2).numpy()
    predicted = p[:, 1:].flatten(2).any(2).numpy()
    missed = present & ~predicted
    return dice, np.where(missed, diagonal, np.where(present, hd95, np.nan)), missed


def _split_scores(prefix: str, dice: np.ndarray, hd95: np.ndarray, missed: np.ndarray) -> dict[str, float]:
    """``<prefix>_dice`` (mean over scans of the class mean), per-class ``<prefix>_dice_<class>``, and the same for
    ``hd95``; NaN-aware means (a class absent from a scan does not count); ``<prefix>_missed_class_rate``: the
    fraction of (scan, present class) pairs whose class was never predicted (the pairs scored with the diagonal)."""
    present = np.isfinite(hd95)
    out: dict[str, float] = {f"{prefix}_missed_class_rate": float(missed[present].mean()) if present.any() else 0.0}
    for name, values in (("dice", dice), ("hd95", hd95)):
        out[f"{prefix}_{name}"] = float(np.nanmean(np.nanmean(values, axis=1)))
        for c, cls in enumerate(CLASSES):
            col = values[:, c]
            out[f"{prefix}_{name}_{cls}"] = float(np.nanmean(col)) if np.isfinite(col).any() else math.nan
    return out


def intercept_protocol_r(net: MixedEffectsUNet, truth: dict[str, Any], seen_sites: Sequence[str]) -> float:
    """Pearson r over the seen sites between the grey-matter intercept contrast (its posterior mean minus the mean
    of the other classes') and the generator's ``gm_volume_change`` of the site's label protocol (NaN when the
    protocols do not vary over the seen sites)."""
    loc = net.intercept.loc.detach().numpy()  # (num_sites, num_classes)
    others = [c for c in range(loc.shape[1]) if c != _GM]
    contrast = loc[:, _GM] - loc[:, others].mean(1)
    change = np.array([truth["sites"][s]["gm_volume_change"] for s in seen_sites])
    if np.ptp(change) == 0 or np.ptp(contrast) == 0:
        return math.nan
    return float(pearsonr(contrast, change)[0])


# ------------------------------------------------------------------------------------------------------ protocol


def run_seed(
    seed: int, cfg: dict[str, Any], cohort_root: str, models: Sequence[str] = MODELS, log=print
) -> dict[str, dict[str, float]]:
    """Generate the cohort of ``seed``, train ``models`` on its training scans and score the seen and unseen scans."""
    start = time.perf_counter()
    data = load_cohort(os.path.join(cohort_root, f"seed{seed}"), cfg, seed)
    seen_sites = data["seen_sites"]
    index = {s: i for i, s in enumerate(seen_sites)}
    K = len(seen_sites)
    splits, sites = np.array(data["splits"]), data["sites"]
    site_idx = np.array([index.get(s, -1) for s in sites])
    tr = np.flatnonzero(splits == "training")
    te = np.flatnonzero((splits == "test") & (site_idx >= 0))
    va = np.flatnonzero((splits == "validation") & (site_idx >= 0))
    un = np.flatnonzero(site_idx < 0)
    log(
        f"seed {seed}: cohort {len(sites)} scans ({len(tr)} training, {len(te)} seen test, {len(un)} unseen) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    labels = torch.from_numpy(data["labels"])
    spacing = cfg["cohort"]["spacing"]
    s_tr = torch.from_numpy(site_idx[tr]).long()
    z_te, zeros_te, zeros_un = site_index_to_design(site_idx[te], K), torch.zeros(len(te), K), torch.zeros(len(un), K)
    z_va = site_index_to_design(site_idx[va], K)
    train_seed = 1000 * seed
    results: dict[str, dict[str, float]] = {}

    def deep(name, kind, images):
        t0, c0 = time.perf_counter(), time.process_time()
        net = train_model(kind, cfg, images[tr], labels[tr], s_tr, K, train_seed)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        log(f"  seed {seed} {name}: trained in {wall:.0f} s ({cpu:.0f} s CPU)")
        return net

    def dice(pred, idx, prefix):
        return _split_scores(prefix, *segmentation_scores(pred, labels[idx], spacing))

    def scores(pred_te, pred_un):
        return {**dice(pred_te, te, "seen"), **dice(pred_un, un, "unseen")}

    x = torch.from_numpy(data["images"])
    for name, kind, images in (
        ("conventional", "conventional", x),
        ("conventional_site_norm", "conventional", torch.from_numpy(data["site_norm_images"])),
        ("domain_adversarial", "domain_adversarial", x),
    ):
        if name in models:
            net = deep(name, kind, images)
            results[name] = scores(segment(net, images[te], None), segment(net, images[un], None))
            results[name]["validation_dice"] = dice(segment(net, images[va], None), va, "validation")["validation_dice"]

    for kind in ME_KINDS:
        if kind not in models and not (kind == "me" and "me_inferred_z" in models):
            continue
        net = deep(kind, kind, x)
        fe = {
            "intercept_vs_protocol_r": intercept_protocol_r(net, data["truth"], seen_sites),
            "seen_population_dice": dice(segment(net, x[te], zeros_te), te, "seen")["seen_dice"],
            "validation_dice": dice(segment(net, x[va], z_va), va, "validation")["validation_dice"],
        }
        results[kind] = {**scores(segment(net, x[te], z_te), segment(net, x[un], zeros_un)), **fe}
        if kind == "me" and "me_inferred_z" in models:
            z_predictor = deep("z_predictor", "z_predictor", x)
            zi_te, zi_un = (soft_design(z_predictor, x[a], batch_size=16) for a in (te, un))
            results["me_inferred_z"] = {
                **scores(segment(net, x[te], zi_te), segment(net, x[un], zi_un)),
                **fe,
                "seen_z_predictor_accuracy": float((zi_te.argmax(1).numpy() == site_idx[te]).mean()),
            }
    for name in results:
        r = results[name]
        log(
            f"  seed {seed} {name:>22}: Dice seen {r['seen_dice']:.3f} unseen {r['unseen_dice']:.3f} | "
            f"HD95 seen {r['seen_hd95']:.1f} unseen {r['unseen_hd95']:.1f} mm"
        )
    return {m: results[m] for m in models if m in results}


PLAN = {
    "seeds": "0..4 (0, 1 in quick mode); seed s generates its own cohort (generator seed 100 + s) and seeds the "
    "models' initialisation, batch order and flips with 1000 * s",
    "splits": "the generator's per-site training/validation/test split of the 4 seen sites; seen = the seen sites' "
    "test subjects, unseen = every scan of the 2 unseen sites; validation = the seen sites' validation subjects (used "
    "only to choose the ME-UNet's cluster scale/bias placement)",
    "primary_comparisons": [
        "me - conventional, unseen-site mean Dice, paired per seed",
        "me - me_no_adversary, unseen-site mean Dice, paired per seed",
        "me - conventional, seen-site mean Dice, paired per seed",
        "me_last_stage - me, validation mean Dice (mixed prediction, true site), paired per seed: the ME-UNet's "
        "cluster scale/bias placement (last decoder stage vs every decoder norm)",
    ],
    "secondary": "me - conventional unseen HD95 (lower wins); intercept_vs_protocol_r of me (label protocols on: "
    "site_b +1 voxel, site_d -1 voxel of grey matter)",
    "decision_rule": "a difference is claimed only when its paired 95% t-interval over seeds excludes 0; every "
    "setting is fixed a priori (the bundle's defaults), the last epoch is used; the one choice made on data, the "
    "ME-UNet's cluster scale/bias placement, is made on the validation scans by benchmarks.segmentation_variants "
    "(its own plan); test and unseen scans play no part in it",
}

COMPARISONS = (
    Comparison("me", "unseen_dice", "conventional", key="paired_unseen_dice_minus_conventional"),
    Comparison("me", "unseen_dice", "me_no_adversary", key="paired_unseen_dice_minus_me_no_adversary"),
    Comparison("me", "seen_dice", "conventional", key="paired_seen_dice_minus_conventional"),
    Comparison(
        "me", "unseen_hd95", "conventional", higher_is_better=False, key="paired_unseen_hd95_minus_conventional"
    ),
    Comparison("me_last_stage", "validation_dice", "me", key="paired_validation_dice_minus_me"),
    Comparison("me_last_stage", "unseen_dice", "me", key="paired_unseen_dice_minus_me"),
)
"""The plan's comparisons (paired per seed; stored in ``me``'s ``extra`` under these keys)."""

COLUMNS = [
    "validation_dice",
    "seen_hd95",
    "unseen_hd95",
    "seen_missed_class_rate",
    "unseen_missed_class_rate",
    *[f"{split}_dice_{c}" for split in ("seen", "unseen") for c in CLASSES],
    "seen_population_dice",
    "intercept_vs_protocol_r",
]

NOTES = """
How to read: `seen`/`unseen` = Dice averaged over CSF, grey and white matter (per scan, then over the scans of the
split), mean [t-based 95% CI] over seeds. HD95 in mm, lower is better; a class present in a scan but never predicted
scores the field-of-view diagonal, and `*_missed_class_rate` is the fraction of such (scan, class) pairs. `me` uses
the true site's random effects on seen sites and the population prediction (z = 0) on unseen sites;
`me_inferred_z` the soft z of a site classifier everywhere. Label protocols differ by site (site_b draws grey matter
thicker, site_d thinner); the seen-site labels follow them, the unseen sites use the reference protocol (arm
`reference`) or draw grey matter two voxels thicker (arm `unseen_label_shift`, see the config's `arm`).
`intercept_vs_protocol_r`: Pearson r over the 4 seen sites between the learned grey-matter intercept contrast and
the site's true protocol change of grey-matter volume.
"""


def run_on_cohorts(
    name: str, quick: bool, plan: dict, cfg: dict[str, Any], models: Sequence[str], cohort_root, out_dir, log, **report
) -> dict[str, Any]:
    """``run_benchmark`` over ``cfg``'s seeds, :func:`run_seed` training ``models`` on cohorts generated under
    ``cohort_root`` (a temporary folder, removed afterwards, when None); ``report``: the comparisons, order, notes and
    tables of ``run_benchmark``. The one runner of this benchmark and of :mod:`benchmarks.segmentation_variants`."""
    torch.set_num_threads(cfg["threads"])
    tmp = None
    if cohort_root is None:
        tmp = cohort_root = tempfile.mkdtemp(prefix=f"{name}_")
    try:
        return run_benchmark(
            name,
            quick,
            plan,
            cfg["seeds"],
            lambda s: run_seed(s, cfg, cohort_root, models=models, log=log),
            metric="dice",
            seen="seen_dice",
            unseen="unseen_dice",
            config=cfg,
            out_dir=out_dir,
            log=log,
            **report,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(
    quick: bool = False,
    out_dir=None,
    config: dict[str, Any] | None = None,
    cohort_root: str | None = None,
    log=print,
    models: Sequence[str] = MODELS,
    arm: str = "reference",
) -> dict[str, Any]:
    """The benchmark: every model on every seed; writes ``segmentation.json`` / ``segmentation.md`` (arm
    ``reference``) or ``segmentation_<arm>.json`` / ``.md``; a given ``config`` carries its own arm."""
    cfg = config or default_config(quick, arm)
    arm = cfg.get("arm", "reference")
    name = NAME if arm == "reference" else f"{NAME}_{arm}"
    return run_on_cohorts(
        name,
        quick,
        PLAN,
        cfg,
        models,
        cohort_root,
        out_dir,
        log,
        comparisons=[c for c in COMPARISONS if c.model in models and c.reference in models],
        order=[m for m in MODELS if m in models],
        notes=NOTES,
        extra_tables=[("", COLUMNS)],
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--cohort-root", default=None, help="keep the generated cohorts here (default: a temp folder)")
    parser.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS), help="models to train")
    parser.add_argument("--arm", choices=sorted(ARMS), default="reference", help="cohort arm (module docstring)")
    args = parser.parse_args(argv)
    run(quick=args.quick, out_dir=args.out, cohort_root=args.cohort_root, models=args.models, arm=args.arm)


if __name__ == "__main__":
    main()
