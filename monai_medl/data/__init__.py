# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Site-aware data: datalist I/O and validation, site-aware splits, synthetic cohorts."""

from __future__ import annotations

from . import datalist, splits
from .datalist import *  # noqa: F403
from .spirals import SpiralData, make_spirals, spiral_points
from .splits import *  # noqa: F403

__all__ = [*datalist.__all__, *splits.__all__]
