# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Site-aware data: datalist I/O and validation, site-aware splits, the synthetic multi-site MRI cohort."""

from __future__ import annotations

from . import datalist, splits
from .cohort import generate_mri_cohort
from .datalist import *  # noqa: F403
from .splits import *  # noqa: F403
from .template import load_tissue_template

__all__ = [*datalist.__all__, *splits.__all__, "generate_mri_cohort", "load_tissue_template"]
