# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from .few_shot import add_clusters, fit_new_cluster
from .multimodal_prepare_batch import MultimodalPrepareBatch
from .prepare_batch import MixedEffectsPrepareBatch
from .tabular import TabularHistory, TabularTrainer, data_dependent_init_, make_adam, predict_tabular
from .unseen_sites import FewShotPrepareBatch, fit_unseen_sites
