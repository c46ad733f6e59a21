# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Helpers for MONAI bundles built on monai_medl: site-aware datalists, per-site evaluation, logging."""

from __future__ import annotations

from .artifacts import (
    MANIFEST_NAME,
    ArtifactError,
    TrainingRun,
    file_sha256,
    open_artifacts,
    promote_artifacts,
    read_manifest,
    verify_artifacts,
    write_manifest,
)
from .flags import as_flag
from .input_profile import compare_to_profile, summarize_images
from .inputs import (
    VALIDATION_LEVELS,
    BundleInputError,
    BundleInputs,
    load_bundle_inputs,
    read_datalist_json,
    voxel_check,
)
from .locks import ModelsLock
from .optim import random_effects_param_groups
from .output_transforms import ScalarsFromOutput
from .prediction_stream import PredictionStream
from .resume import TrainingProgress
from .segmentation_evaluation import (
    SiteDiceCollector,
    segmentation_fields,
    segmentation_site_metrics,
    write_segmentation_evaluation,
    write_segmentations,
)
from .site_data import (
    UNKNOWN_SITE,
    InferenceInputs,
    SiteData,
    fit_intensity_stats,
    inference_inputs,
    prepare_site_data,
)
from .site_evaluation import (
    InvalidScansError,
    SitePredictionCollector,
    evaluate_modes,
    raise_for_invalid_scans,
    site_metrics,
    write_evaluation,
    write_predictions,
)
from .z_predictor import SoftDesign
