# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .autoencoder_branch import AutoEncoderBranch, AutoEncoderStage
from .backbone_layouts import BackboneLayout, backbone_layout, register_backbone_layout
from .cluster_classifier import ClusterAdversary, ClusterClassifier, ClusterPredictor
from .early_fusion_me_cnn import EarlyFusionMixedEffectsCNN
from .grouped_mixed_effects_net import GroupedMixedEffectsNet
from .image_cluster_predictor import ImageClusterPredictor
from .late_fusion_me_cnn import LateFusionMixedEffectsCNN
from .me_autoencoder import MEAutoEncoder, MixedEffectsAutoEncoder, MixedEffectsAutoEncoderOutput
from .me_cnn import MECNN, MixedEffectsCNN
from .me_mlp import MEMLP, MixedEffectsMLP, glorot_init_
from .me_unet import MEUNet, MixedEffectsUNet
from .me_vector_autoencoder import MEVectorAutoEncoder, MixedEffectsVectorAutoEncoder
from .mixed_effects_net import MixedEffectsNet, check_finite
from .modality_branch import CovariateEncoder, ModalityBranch
from .modality_encoders import ModalityEncoderFactory
from .modality_fallback import ModalityFallback
from .multimodal_me_cnn import MultimodalMECNN, MultimodalMixedEffectsCNN, make_multimodal_me_cnn
from .multimodal_me_net import MultimodalMixedEffectsNet
from .small_cnn import SmallCNN
