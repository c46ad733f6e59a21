# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .cluster_classifier import ClusterAdversary, ClusterClassifier, ClusterPredictor
from .me_mlp import MEMLP, MixedEffectsMLP, glorot_init_
from .mixed_effects_net import MixedEffectsNet, check_finite
