# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .mixed_effects_inferer import MixedEffectsInferer
from .site_sliding_window_inferer import SiteSlidingWindowInferer
