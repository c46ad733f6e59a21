# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Site-aware data: datalist I/O and validation, site-aware splits, the synthetic multi-site MRI cohort."""

from __future__ import annotations

from typing import Any

from . import datalist, splits
from .datalist import *  # noqa: F403
from .splits import *  # noqa: F403

__all__ = [*datalist.__all__, *splits.__all__, "generate_mri_cohort", "load_tissue_template"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that ``python -m monai_medl.data.cohort`` does not import the module twice
    if name == "generate_mri_cohort":
        from .cohort import generate_mri_cohort

        return generate_mri_cohort
    if name == "load_tissue_template":
        from .template import load_tissue_template

        return load_tissue_template
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
