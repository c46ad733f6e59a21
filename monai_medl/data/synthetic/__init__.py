# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Synthetic data with known ground truth: the multi-site MNI-template MRI and segmentation cohorts, live-cell tiles,
spirals and grouped (mixed-model) simulations.

Each generator is a sequence of small steps (check the arguments -> draw the sites and subjects -> render -> write),
the template cohorts share their site names, scanner effects, subject anatomy and renderer in
:mod:`~monai_medl.data.synthetic.rendering` and their files in :mod:`~monai_medl.data.synthetic.cohort_files`.
Names are imported on first use, so that ``python -m monai_medl.data.synthetic.mri_cohort`` imports its module once.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GENERATED_MARKER": ".generated_folder",
    "claim_output_folder": ".generated_folder",
    "reuse_or_claim": ".generated_folder",
    "TEMPLATE_FILES": ".template",
    "template_dir": ".template",
    "template_checksums": ".template",
    "TissueTemplate": ".template",
    "load_tissue_template": ".template",
    "MEDIAL_TEMPORAL_CENTERS": ".rendering",
    "MEDIAL_TEMPORAL_SIGMA": ".rendering",
    "VENTRICLE_CENTER": ".rendering",
    "VENTRICLE_SIGMA": ".rendering",
    "cohort_grid": ".rendering",
    "site_names": ".rendering",
    "allocate_subjects": ".rendering",
    "sample_site_effects": ".rendering",
    "sample_subject": ".rendering",
    "TemplateRenderer": ".rendering",
    "write_nifti": ".rendering",
    "TEMPLATE_SOURCE": ".cohort_files",
    "add_cohort_arguments": ".cohort_files",
    "cohort_arguments": ".cohort_files",
    "check_grid": ".cohort_files",
    "check_num_subjects": ".cohort_files",
    "check_split_fractions": ".cohort_files",
    "record_splits": ".cohort_files",
    "write_cohort_datalist": ".cohort_files",
    "write_ground_truth": ".cohort_files",
    "MODALITY_KEYS": ".mri_cohort",
    "COHORT_PRESETS": ".mri_cohort",
    "cohort_settings": ".mri_cohort",
    "generate_mri_cohort": ".mri_cohort",
    "generate_preset_cohort": ".mri_cohort",
    "site_sizes": ".mri_cohort",
    "COHORT_ARMS": ".mri_arms",
    "THRESHOLD_LAYOUTS": ".mri_arms",
    "ARM_EFFECT_DEFAULTS": ".mri_arms",
    "TISSUE_LABELS": ".segmentation_cohort",
    "tissue_labels": ".segmentation_cohort",
    "apply_label_shift": ".segmentation_cohort",
    "generate_segmentation_cohort": ".segmentation_cohort",
    "CELL_IMAGE_SHA256": ".livecell",
    "ImagingBatchEffect": ".livecell",
    "LiveCellData": ".livecell",
    "load_cell_image": ".livecell",
    "sample_batch_effects": ".livecell",
    "render_cell_tile": ".livecell",
    "make_livecell": ".livecell",
    "generate_livecell_dataset": ".livecell",
    "SpiralData": ".spirals",
    "make_spirals": ".spirals",
    "spiral_points": ".spirals",
    "simulate_random_slope": ".grouped_simulation",
    "simulate_crossed": ".grouped_simulation",
    "simulate_nested": ".grouped_simulation",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
