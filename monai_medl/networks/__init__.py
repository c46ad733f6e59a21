# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .blocks import MixedEffectsHead, MixedEffectsOutput
from .layers import ClusterScaleBias, GradientReversal, RandomEffects, grad_reverse
from .nets import ClusterAdversary, ClusterClassifier, ClusterPredictor, MixedEffectsNet
from .utils import kl_divergence, random_effects_layers, random_effects_parameters, unwrap_network
