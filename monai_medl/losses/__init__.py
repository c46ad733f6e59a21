# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .adversarial_regularizer import AdversarialRegularizer, label_indices
from .feature_scaling import FEATURE_SCALINGS, scale_invariant
from .loss_output import LossOutput, loss_terms
from .me_autoencoder_loss import MixedEffectsAutoEncoderLoss
from .mixed_effects_loss import MixedEffectsLoss, task_loss
from .site_alignment import SiteAlignmentLoss
