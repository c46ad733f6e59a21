# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .backbone_stages import BackboneStage, build_stages, global_avg_pool, iter_layers
from .encoder_decoder_path import (
    BasicUNetPath,
    DecoderBlock,
    EncoderDecoderPath,
    SegResNetPath,
    UNetPath,
    encoder_decoder_path,
)
from .mixed_effects_head import MixedEffectsHead
from .mixed_effects_output import MixedEffectsOutput
from .modality_fusion import FUSION_MODES, GatedAttentionPooling, ModalityFusion
from .modality_stem import ModalityMeanConv
