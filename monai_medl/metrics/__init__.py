# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .latent_mixing import batch_probe_accuracy, latent_batch_clustering
from .site_metrics import SITE_METRICS, SiteMetric, compute_site_metrics, flatten_site_metrics, youden_threshold
from .within_site import (
    balanced_accuracy_at,
    expected_calibration_error,
    holm,
    paired_t_pvalue,
    prevalence_only_score,
    resample_prevalence,
    tost,
    within_site_auroc,
)
