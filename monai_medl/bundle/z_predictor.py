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

        >>> import torch
        >>> from monai_medl.engines import MixedEffectsPrepareBatch
        >>> from monai_medl.networks.nets import SmallCNN
        >>> site_cnn = SmallCNN(spatial_dims=2, in_channels=1, out_channels=6, channels=(4, 8))  # 6 training sites
        >>> prepare = MixedEffectsPrepareBatch(num_clusters=6, mode="inferred", z_predictor=SoftDesign(site_cnn))
        >>> batch = {"image": torch.randn(3, 1, 16, 16), "label": torch.ones(3, 1), "site": torch.tensor([0, 2, -1])}
        >>> image, label, (z,), kwargs = prepare(batch)
        >>> z.shape, torch.allclose(z.sum(1), torch.ones(3)), site_cnn.training  # soft rows; mode restored
        (torch.Size([3, 6]), True, True)
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return soft_design(self.network, x)
