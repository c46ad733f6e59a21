# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A small 2D/3D convolutional classifier that trains in minutes on a CPU: the default mixed-effects backbone."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Strided convolution blocks (conv, norm, activation), global average pooling and a linear classifier.

    Laid out like MONAI's DenseNet (``features`` then ``class_layers`` ending in ``out``), so
    :class:`~monai_medl.networks.nets.MixedEffectsCNN` wraps it like any MONAI backbone: the blocks
    ``features.block0`` ... are the default adversary taps and their ``adn.N`` normalisation layers can carry
    cluster scale/bias (random slopes on feature maps).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3). Defaults to 3.
        in_channels: input channels. Defaults to 1.
        out_channels: outputs (1 for a binary logit or a regression target). Defaults to 1.
        channels: output channels of each block. Defaults to ``(8, 16, 32, 64)``.
        strides: stride of each block. Defaults to 2 for every block.
        kernel_size: convolution kernel size. Defaults to 3.
        act: activation, MONAI name or ``(name, kwargs)``. Defaults to ``"relu"``.
        norm: normalisation, MONAI name or ``(name, kwargs)``. Defaults to ``"batch"``.
        dropout: dropout probability inside the blocks and before the classifier. Defaults to None.

    Example::

        >>> net = SmallCNN(spatial_dims=3, in_channels=1, out_channels=2)
        >>> net(torch.randn(2, 1, 32, 32, 32)).shape
        torch.Size([2, 2])

    In a bundle config: ``{"_target_": "monai_medl.networks.nets.SmallCNN", "spatial_dims": 3, "in_channels": 1}``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32, 64),
        strides: Sequence[int] | int = 2,
        kernel_size: Sequence[int] | int = 3,
        act: tuple | str = "relu",
        norm: tuple | str = "batch",
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if len(channels) < 1:
            raise ValueError("channels must list at least one block width.")
        strides = [strides] * len(channels) if isinstance(strides, int) else list(strides)
        if len(strides) != len(channels):
            raise ValueError(f"strides must have one entry per block ({len(channels)}), got {len(strides)}.")
        blocks = []
        width = in_channels
        for i, (c, s) in enumerate(zip(channels, strides)):
            block = Convolution(
                spatial_dims, width, c, strides=s, kernel_size=kernel_size, act=act, norm=norm, dropout=dropout
            )
            blocks.append((f"block{i}", block))
            width = c
        self.features = nn.Sequential(OrderedDict(blocks))
        head: list[tuple[str, nn.Module]] = [
            ("pool", Pool[Pool.ADAPTIVEAVG, spatial_dims](1)),
            ("flatten", nn.Flatten(1)),
        ]
        if dropout:
            head.append(("dropout", nn.Dropout(dropout)))
        head.append(("out", nn.Linear(width, out_channels)))
        self.class_layers = nn.Sequential(OrderedDict(head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_layers(self.features(x))
