# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A trained site classifier as the ``z_predictor`` of :class:`~monai_medl.engines.MixedEffectsPrepareBatch`."""

from __future__ import annotations

import torch
from torch import nn

from monai_medl.networks.utils import soft_design

__all__ = ["SoftDesign"]


class SoftDesign:
    """Soft design vector ``z`` = softmax of a site classifier's logits, computed in eval mode without gradients.

    Wraps any network that maps an input batch to ``(batch, num_sites)`` logits (e.g. a ``SmallCNN`` trained by
    :class:`~monai_medl.handlers.ClusterPredictorHandler`) so a bundle config can pass it as ``z_predictor``; each
    call is :func:`~monai_medl.networks.soft_design` (eval mode for the call, the network's mode restored).

    Args:
        network: the site classifier.

    Example::

        >>> prepare = MixedEffectsPrepareBatch(num_clusters=6, mode="inferred", z_predictor=SoftDesign(site_cnn))
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return soft_design(self.network, x)
