# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Site-aware transforms: site vocabulary and design vectors, per-site normalisation, site-effect augmentation."""

from __future__ import annotations

from . import modality, site, site_augment, site_intensity
from .modality import *  # noqa: F403
from .site import *  # noqa: F403
from .site_augment import *  # noqa: F403
from .site_intensity import *  # noqa: F403

__all__ = [*site.__all__, *site_intensity.__all__, *site_augment.__all__, *modality.__all__]
