# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .cluster_scale_bias import ClusterScaleBias
from .correlated_random_effects import CorrelatedRandomEffects, gaussian_kl_cholesky, lower_triangular
from .factor_designs import check_num_levels, factor_designs
from .gradient_reversal import GradientReversal, grad_reverse
from .grouped_random_effects import GroupedRandomEffects
from .random_effects import RandomEffects, inverse_softplus
from .random_effects_settings import RandomEffectsSettings, resolve_random_effects
from .reversible_instance_norm import ReversibleInstanceNorm
