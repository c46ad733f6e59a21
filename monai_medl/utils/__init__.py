# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .attribution import attribution_share, fixed_effects_attribution, input_gradients, integrated_gradients
from .readouts import InterceptPrevalence, random_intercept_vs_prevalence
from .summary import MixedEffectsSummary, VarianceComponent, random_intercepts, summary, variance_components
