# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Site-aware data: datalist I/O and validation, site-aware splits, and the synthetic data sets
(:mod:`monai_medl.data.synthetic`)."""

from __future__ import annotations

from typing import Any

from . import datalist, image_info, splits, synthetic
from .datalist import *  # noqa: F403
from .image_info import *  # noqa: F403
from .splits import *  # noqa: F403
from .synthetic import generated_folder
from .synthetic.generated_folder import *  # noqa: F403

# the generators are imported on first use (see monai_medl.data.synthetic)
_LAZY = [name for name in synthetic.__all__ if name not in generated_folder.__all__]

__all__ = [*datalist.__all__, *generated_folder.__all__, *image_info.__all__, *splits.__all__, *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
