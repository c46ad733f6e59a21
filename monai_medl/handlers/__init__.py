# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .adversary_handler import AdversaryHandler
from .cluster_predictor_handler import ClusterPredictorHandler
from .counterfactual_image_handler import CounterfactualImageHandler
from .epoch_means import TRAIN_SCALARS, EpochMeansHandler, OutputMeans
from .fresh_probe import FreshProbeHandler
from .loss_terms_handler import LossTermsHandler
from .modality_dropout_warmup import ModalityDropoutWarmup
from .site_alignment_handler import SiteAlignmentHandler
from .site_metric import SiteMetricHandler
from .tensorboard_handler import DEFAULT_TERM_TAGS, RandomEffectsTensorBoardHandler
