# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The one place where the multimodal networks turn a backbone spec into encoders and branches."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from monai_medl.networks.layers.random_effects_settings import (
    RandomEffectsLike,
    RandomEffectsSettings,
)
from monai_medl.networks.nets.me_cnn import MixedEffectsCNN, instantiate_backbone
from monai_medl.networks.nets.modality_branch import CovariateEncoder, ModalityBranch
from monai_medl.networks.nets.small_cnn import SmallCNN

__all__ = ["ModalityEncoderFactory"]


class ModalityEncoderFactory:
    """Builds the image encoders and the branches (encoder + random slopes) of the multimodal networks.

    Early and late fusion (:class:`~monai_medl.networks.nets.EarlyFusionMixedEffectsCNN`,
    :class:`~monai_medl.networks.nets.LateFusionMixedEffectsCNN`) and the covariate branch all build through one
    factory, so the encoder settings and the random-effects hyper-parameters are forwarded in one place.

    An encoder is a :class:`~monai_medl.networks.nets.MixedEffectsCNN` around the backbone (stages, pooled taps,
    optional cluster scale/bias) whose own read-out is frozen: the multimodal network reads out the fused embedding.

    Args:
        num_clusters: number of training clusters ``K``.
        out_channels: outputs of the default ``SmallCNN`` backbone (its read-out is not used).
        spatial_dims: spatial dimensions (checked against the backbone; 3 for the default). Defaults to None.
        tap_layers: adversary taps of each encoder. Defaults to None (the backbone's).
        cluster_scale_bias: cluster scale/bias on the encoders' normalisation layers. Defaults to False.
        probe_size: spatial size used once to measure an encoder's feature widths. Defaults to None.
        branch_random_slopes: random slopes on every branch embedding. Defaults to True.
        random_effects: :class:`~monai_medl.networks.layers.RandomEffectsSettings` (or its dictionary) of the
            branch slopes (``slope_prior_scale``, ``learn_prior_scale``, ``post_loc_init_scale``) and the
            encoders' cluster scale/bias (``cluster_prior_scale``); None for the defaults.

    Example::

        >>> factory = ModalityEncoderFactory(4, out_channels=1, spatial_dims=2)
        >>> encoder = factory.encoder(None, in_channels=1)          # SmallCNN, 2D, one channel
        >>> branch = factory.branch(encoder, start=0, stop=1)       # with random slopes on its embedding
        >>> branch.embedding_dim == encoder.feature_dim
        True
    """

    def __init__(
        self,
        num_clusters: int,
        out_channels: int,
        spatial_dims: int | None = None,
        tap_layers: Sequence[str] | None = None,
        cluster_scale_bias: bool | Sequence[str] = False,
        probe_size: Sequence[int] | int | None = None,
        branch_random_slopes: bool = True,
        random_effects: RandomEffectsLike = None,
    ) -> None:
        settings = RandomEffectsSettings.from_any(random_effects)
        self.num_clusters = int(num_clusters)
        self.out_channels = int(out_channels)
        self.spatial_dims = spatial_dims
        self.probe_size = probe_size
        self.encoder_kwargs: dict[str, Any] = {
            "tap_layers": tap_layers,
            "cluster_scale_bias": cluster_scale_bias,
            # the encoders' own read-outs are unused: no slopes or intercept there
            "random_effects": settings.replace(random_slopes=False, random_intercept=False),
        }
        self.branch_random_slopes = bool(branch_random_slopes)
        self.random_effects_settings = settings

    def resolve(self, backbone: nn.Module | Mapping | None, in_channels: int | None = None) -> nn.Module:
        """The backbone module: ``SmallCNN`` for None, an instantiated config dict, or the module itself."""
        if backbone is None:
            return SmallCNN(self.spatial_dims or 3, in_channels or 1, self.out_channels)
        if isinstance(backbone, Mapping):
            return instantiate_backbone(backbone)
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, a config dict or None, got {type(backbone).__name__}.")
        return backbone

    @staticmethod
    def per_modality(backbone, num_modalities: int, shared: bool) -> list:
        """One backbone spec per modality: a list is checked, a module is copied (unless ``shared``)."""
        if isinstance(backbone, Sequence) and not isinstance(backbone, (str, Mapping)):
            if shared:
                raise ValueError("shared_weights=True takes one backbone, not a list of per-modality backbones.")
            if len(backbone) != num_modalities:
                raise ValueError(f"backbone lists {len(backbone)} entries but there are {num_modalities} modalities.")
            return list(backbone)
        if isinstance(backbone, nn.Module) and not shared:
            return [backbone] + [copy.deepcopy(backbone) for _ in range(num_modalities - 1)]
        return [backbone] * num_modalities

    def encoder(
        self,
        backbone: nn.Module | Mapping | None,
        in_channels: int | None = None,
        probe_size: Sequence[int] | int | None = None,
    ) -> MixedEffectsCNN:
        """A :class:`MixedEffectsCNN` encoder around ``backbone`` with its own read-out frozen (unused).

        ``probe_size`` overrides the factory's (an encoder that starts after a first convolution is measured at that
        convolution's output size).
        """
        encoder = MixedEffectsCNN(
            self.num_clusters,
            backbone=self.resolve(backbone, in_channels),
            spatial_dims=self.spatial_dims,
            in_channels=in_channels,
            out_channels=self.out_channels,
            probe_size=self.probe_size if probe_size is None else probe_size,
            **self.encoder_kwargs,
        )
        encoder.head.requires_grad_(False)  # the encoder's own read-out is not used (the fused head is)
        return encoder

    def branch(
        self, encoder: MixedEffectsCNN | CovariateEncoder, start: int = 0, stop: int = 0, is_image: bool = True
    ) -> ModalityBranch:
        """``encoder`` with random slopes on its embedding (when ``branch_random_slopes``)."""
        slopes = None
        if self.branch_random_slopes:
            settings = self.random_effects_settings
            slopes = settings.effects(self.num_clusters, int(encoder.feature_sizes[-1]), settings.slope_prior_scale)
        return ModalityBranch(encoder, slopes, start, stop, is_image)
