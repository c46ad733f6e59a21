# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Small MLP that predicts the cluster: the adversary (from activations) and the z-predictor (from inputs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn
from torch.nn import functional as F

from monai_medl.networks.utils import soft_design, warn_deprecated

__all__ = ["ClusterClassifier", "ClusterAdversary", "ClusterPredictor"]


class ClusterClassifier(nn.Module):
    """MLP from one tensor, or a list of ``(batch, n_i)`` tensors concatenated, to ``num_clusters`` logits.

    Two roles in a mixed-effects model share this network. As the **adversary** it reads the fixed-effects
    activations (a list, e.g. every hidden layer of an MLP or pooled block outputs of a CNN) and the main model is
    trained to defeat it. As the **cluster predictor** (z-predictor) it is trained on training data only to map an
    input to its cluster; ``softmax`` of its logits is the soft ``z`` for clusters never seen in training.

    Args:
        in_features: total input length (sum of the ``n_i``).
        num_clusters: number of training clusters.
        hidden: hidden layer widths. Defaults to ``(8, 8, 4)`` (ARMED's tabular adversary).
        act: activation, MONAI name or ``(name, kwargs)``. Defaults to ``"relu"``.
        dropout: dropout probability after each hidden layer. Defaults to 0.0.
        input_norm: standardise each input feature first (batch statistics in training, running statistics in
            eval mode or for a single-item batch; no learned scale). As an adversary this stops the feature
            extractor from defeating it by shrinking the activations' scale, which hides the site from the
            adversary but not from a probe on standardised features. Defaults to False.

    Example::

        >>> adv = ClusterClassifier(in_features=12, num_clusters=10)
        >>> adv([torch.randn(5, 4)] * 3).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_clusters: int,
        hidden: Sequence[int] = (8, 8, 4),
        act: str | tuple = "relu",
        dropout: float = 0.0,
        input_norm: bool = False,
    ) -> None:
        super().__init__()
        if in_features < 1 or num_clusters < 2:
            raise ValueError(
                f"in_features must be >= 1 and num_clusters >= 2, got in_features={in_features}, "
                f"num_clusters={num_clusters}."
            )
        self.in_features = in_features
        self.num_clusters = num_clusters
        layers: list[nn.Module] = []
        width = in_features
        for units in hidden:
            layers += [nn.Linear(width, units), get_act_layer(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, num_clusters))
        self.net = nn.Sequential(*layers)
        self.input_norm = nn.BatchNorm1d(in_features, affine=False) if input_norm else None

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.cat([t.flatten(1) for t in x], dim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features in total, got {x.shape[-1]}.")
        norm = self.input_norm
        if norm is not None:
            if self.training and x.shape[0] < 2:  # batch statistics need two items: use the running ones
                x = F.batch_norm(x, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
            else:
                x = norm(x)
        return self.net(x)

    def predict_design(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Soft design matrix ``softmax(logits)`` (eval mode, no gradient): the inferred ``z``."""
        return soft_design(self, x)


class ClusterAdversary(ClusterClassifier):
    """Deprecated name of :class:`ClusterClassifier` (the adversary role), removed in the next release."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warn_deprecated("ClusterAdversary", "ClusterClassifier")
        super().__init__(*args, **kwargs)


class ClusterPredictor(ClusterClassifier):
    """Deprecated name of :class:`ClusterClassifier` (the z-predictor role), removed in the next release."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warn_deprecated("ClusterPredictor", "ClusterClassifier")
        super().__init__(*args, **kwargs)
