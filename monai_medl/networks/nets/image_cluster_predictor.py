# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Image-based z-predictor: a small CNN that predicts the site of a scan, giving a soft ``z`` for unseen sites."""

from __future__ import annotations

from collections.abc import Sequence

from monai_medl.networks.nets.cluster_classifier import ClusterClassifier
from monai_medl.networks.nets.small_cnn import SmallCNN

__all__ = ["ImageClusterPredictor"]


class ImageClusterPredictor(SmallCNN):
    """A :class:`~monai_medl.networks.nets.SmallCNN` with one logit per training cluster, for the inferred-z mode.

    Train it on training data only (cross-entropy on the site index, e.g. with
    :class:`~monai_medl.handlers.ClusterPredictorHandler` inside the main trainer); :meth:`predict_design` returns
    ``softmax(logits)``, the soft design vector ``z`` that makes a mixed-effects model use the probability-weighted
    mix of the seen sites' random effects for a scan from an unseen site. Pass ``predictor.predict_design`` as
    ``z_predictor`` to :class:`~monai_medl.engines.MixedEffectsPrepareBatch` (``mode="mixed"`` or ``"inferred"``).
    Batch normalisation (the default) keeps the global intensity and contrast differences that identify a site.

    Args:
        num_clusters: number of training clusters (width of ``z``).
        spatial_dims: spatial dimensions. Defaults to 3.
        in_channels: input channels. Defaults to 1.
        channels: block widths. Defaults to ``(8, 16, 32, 64)``.
        strides: block strides. Defaults to 2.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        dropout: dropout probability. Defaults to None.

    Example::

        >>> import torch
        >>> from monai_medl.engines import MixedEffectsPrepareBatch
        >>> predictor = ImageClusterPredictor(num_clusters=4, spatial_dims=3)
        >>> design = predictor.predict_design(torch.randn(2, 1, 32, 32, 32))
        >>> design.shape, torch.allclose(design.sum(1), torch.ones(2))
        (torch.Size([2, 4]), True)
        >>> prepare = MixedEffectsPrepareBatch(num_clusters=4, z_predictor=predictor.predict_design)
    """

    def __init__(
        self,
        num_clusters: int,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32, 64),
        strides: Sequence[int] | int = 2,
        act: tuple | str = "relu",
        norm: tuple | str = "batch",
        dropout: float | None = None,
    ) -> None:
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2 to predict a cluster, got {num_clusters}.")
        super().__init__(
            spatial_dims, in_channels, num_clusters, channels, strides, act=act, norm=norm, dropout=dropout
        )
        self.num_clusters = num_clusters

    predict_design = ClusterClassifier.predict_design
