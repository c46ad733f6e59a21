# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Settings shared by the MRI study (``benchmarks.mri_study``) and its selection (``benchmarks.mri_study_selection``):
the cohort arms, the cohort size, the training recipe and the cost model used to size both runs."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from benchmarks import mri
from monai_medl.data.synthetic.mri_cohort import cohort_settings

__all__ = [
    "ARMS",
    "SECONDS_PER_SUBJECT_EPOCH",
    "SECONDS_PER_SCAN",
    "cohort_base",
    "recipe",
    "arm_cohort",
    "cohort_folder",
    "estimated_seconds",
]

ARMS: dict[str, dict[str, Any]] = {
    "nuisance": {"arm": "nuisance"},
    "threshold": {"arm": "threshold", "threshold_layout": "symmetric"},
    "threshold_asymmetric": {"arm": "threshold", "threshold_layout": "asymmetric"},
    "slope": {"arm": "slope"},
    "shortcut": {"arm": "shortcut"},
}
"""The study's cohort arms: their :func:`~monai_medl.data.generate_mri_cohort` options (ground truth in each cohort's
``ground_truth.json``): nuisance-only scanner effects (today's cohort); site-specific diagnostic thresholds,
symmetric and asymmetric around the unseen sites; a site-specific disease effect size (a true random slope); a
scanner cue tied to prevalence at the seen sites and reversed at the unseen ones."""

SECONDS_PER_SUBJECT_EPOCH = 0.002
"""Cost model: training seconds per subject and epoch at 32^3 on one thread, measured on this 2-core machine at load
1.4 (2026-12-07: 600 subjects x 5 epochs in 6.0 s; the brief's idle figure is 0.001). At load 12 the same machine
took 0.005-0.009 (every invariance mechanism alike): the run's wall time scales with the machine's load."""
SECONDS_PER_SCAN = 0.02
"""Cost model: generating and loading one 32^3 scan (800 scans in 13.7 s at load 1.4; 0.08 at load 12)."""


def cohort_base(quick: bool) -> dict[str, Any]:
    """The generator settings of every study and selection cohort (arm options and seed added per cohort): the
    benchmark's cohort (6 seen sites, prevalence 20%..80%, 2 balanced unseen sites, 32^3 voxels of 6 mm) with 200
    extra unseen-site scans (for the prevalence subsampling), 10% validation and 30% seen-site test subjects;
    quick: 320 subjects on a 16^3 grid of 12 mm."""
    if quick:
        return cohort_settings(
            "mri_bundle",
            num_subjects=320,
            extra_unseen_subjects=80,
            spatial_size=[16, 16, 16],
            spacing=[12.0, 12.0, 12.0],
            validation_fraction=0.1,
            test_fraction=0.3,
        )
    return cohort_settings("mri_bundle", extra_unseen_subjects=200, validation_fraction=0.1, test_fraction=0.3)


def recipe(quick: bool) -> dict[str, Any]:
    """The training recipe: :func:`benchmarks.mri.default_config` (its adversary settings are replaced per model)
    with 15 epochs (6 quick) and without the repeat/fold keys the study does not use."""
    cfg = mri.default_config(quick=False)
    for key in ("cohort", "folds", "repeats", "z_predictor_epochs"):
        cfg.pop(key, None)
    cfg["epochs"] = 6 if quick else 15
    return cfg


def arm_cohort(base: Mapping[str, Any], arm: str, seed: int) -> dict[str, Any]:
    """The generator settings of one cohort of ``arm``."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; the study's arms are {list(ARMS)}.")
    return {**base, **ARMS[arm], "seed": int(seed)}


def cohort_folder(cache: str | None, name: str, cohort: Mapping[str, Any]) -> str:
    """A folder for a generated cohort, named after its arm, seed and size (under ``cache`` or the temp folder)."""
    root = cache or os.path.join(tempfile.gettempdir(), "monai_medl_benchmarks", name)
    arm = cohort.get("arm", "plain") + ("_" + cohort["threshold_layout"] if "threshold_layout" in cohort else "")
    return os.path.join(root, f"{arm}_{cohort['seed']}_{cohort['num_subjects']}_{cohort['spatial_size'][0]}")


def estimated_seconds(fits: int, subjects: int, epochs: int, scans: int, workers: int, grid: int = 32) -> float:
    """Wall time of ``fits`` trainings on ``subjects`` subjects for ``epochs`` epochs plus ``scans`` generated,
    spread over ``workers`` processes (cost model above; a 16^3 grid costs about 1/8)."""
    scale = (grid / 32) ** 3
    total = fits * subjects * epochs * SECONDS_PER_SUBJECT_EPOCH * scale + scans * SECONDS_PER_SCAN
    return math.ceil(total / max(1, workers))
