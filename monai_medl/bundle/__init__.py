# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Helpers for MONAI bundles built on monai_medl: site-aware datalists, per-site evaluation, logging."""

from __future__ import annotations

from .optim import random_effects_param_groups
from .output_transforms import ScalarsFromOutput
from .site_data import (
    UNKNOWN_SITE,
    SiteData,
    fit_intensity_stats,
    inference_datalist,
    load_split,
    prepare_site_data,
)
from .site_evaluation import SitePredictionCollector, evaluate_modes, site_metrics, write_evaluation, write_predictions
from .z_predictor import SoftDesign
