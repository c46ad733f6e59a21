# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Site-aware data: datalist I/O and validation, site-aware splits, the synthetic multi-site MRI cohort."""

from __future__ import annotations

import importlib
from typing import Any

from . import datalist, generated_folder, image_info, splits
from .datalist import *  # noqa: F403
from .generated_folder import *  # noqa: F403
from .image_info import *  # noqa: F403
from .splits import *  # noqa: F403

# imported on first use, so that ``python -m monai_medl.data.cohort`` does not import the module twice
_LAZY = {"generate_mri_cohort": ".cohort", "load_tissue_template": ".template"}

__all__ = [*datalist.__all__, *generated_folder.__all__, *image_info.__all__, *splits.__all__, *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
