# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Input branches of the multimodal networks: an encoder (image or covariate MLP) with random slopes on its output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Protocol

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from monai_medl.networks.layers.random_effects import RandomEffects

__all__ = ["CovariateEncoder", "ModalityBranch"]


class _BranchEncoder(Protocol):
    """What a branch needs of its encoder (a MixedEffectsCNN, a CovariateEncoder or any such module)."""

    feature_sizes: list[int]

    def encode(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> tuple[list[torch.Tensor], torch.Tensor]: ...


class CovariateEncoder(nn.Module):
    """MLP embedding of tabular covariates with the branch interface of :meth:`MixedEffectsCNN.encode`.

    Args:
        in_features: number of covariates.
        channels: hidden widths; the last one is the embedding length.
        act: activation after every layer. Defaults to ``"relu"``.

    Example::

        >>> enc = CovariateEncoder(3, (8,))
        >>> features, h = enc.encode(torch.randn(2, 3))
        >>> h.shape, features[-1] is h
        (torch.Size([2, 8]), True)
    """

    def __init__(self, in_features: int, channels: Sequence[int], act: str | tuple = "relu") -> None:
        super().__init__()
        if not channels:
            raise ValueError("covariate_channels must list at least one width when num_covariates > 0.")
        layers: list[nn.Module] = []
        width = int(in_features)
        for units in channels:
            layers += [nn.Linear(width, int(units)), get_act_layer(act)]
            width = int(units)
        self.net = nn.Sequential(*layers)
        self.feature_sizes = [width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def encode(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([h], h)``: covariates have no cluster scale/bias, so the fixed and ``z`` paths coincide."""
        h = self.net(x)
        return [h], h


class ModalityBranch(nn.Module):
    """One input branch: an encoder for a slice of the input channels and random slopes on its embedding.

    ``encoder`` is a :class:`~monai_medl.networks.nets.MixedEffectsCNN` (its backbone stages, pooled taps and
    optional cluster scale/bias blocks; its own head is not used) or, for tabular covariates, a
    :class:`CovariateEncoder`; anything with ``encode(x, z) -> (features, h_z)`` works. The mixed-effects
    embedding is ``h_z * (1 + u_s(z))`` with ``h_z`` the encoder's ``z`` path and ``u_s`` the branch's
    :class:`~monai_medl.networks.layers.RandomEffects` slopes.

    Args:
        encoder: the branch encoder.
        slopes: random slopes on the embedding, or None.
        start: first input channel of the branch (image branches). Defaults to 0.
        stop: one past the last input channel (image branches). Defaults to 0.
        is_image: True when the branch reads ``x[:, start:stop]``, False when it reads the covariates.
            Defaults to True.

    Example::

        >>> branch = ModalityBranch(CovariateEncoder(3, (8,)), RandomEffects(4, units=8), is_image=False)
        >>> features, mixed = branch(torch.randn(2, 3), torch.eye(4)[:2])
        >>> [f.shape for f in features], mixed.shape
        ([torch.Size([2, 8])], torch.Size([2, 8]))
    """

    def __init__(
        self,
        encoder: _BranchEncoder,
        slopes: RandomEffects | None,
        start: int = 0,
        stop: int = 0,
        is_image: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.slopes = slopes
        self.start = int(start)
        self.stop = int(stop)
        self.is_image = is_image
        self.feature_sizes = [int(n) for n in encoder.feature_sizes]
        self.embedding_dim = self.feature_sizes[-1]

    def forward(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(features, mixed_embedding)``; ``features[-1]`` is the fixed-effects embedding."""
        features, hm = self.encoder.encode(x, z)
        slopes = self.slopes
        if z is not None and slopes is not None:
            hm = hm * (1 + slopes(z))
        return features, hm
