# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Late fusion: one encoder per modality, the branch embeddings fused by concatenation or gated attention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from monai_medl.networks.blocks.modality_fusion import FUSION_MODES, ModalityFusion
from monai_medl.networks.nets.modality_branch import ModalityBranch
from monai_medl.networks.nets.modality_encoders import ModalityEncoderFactory
from monai_medl.networks.nets.multimodal_me_net import MultimodalMixedEffectsNet

__all__ = ["LateFusionMixedEffectsCNN"]


class LateFusionMixedEffectsCNN(MultimodalMixedEffectsNet):
    """Multimodal mixed-effects CNN with late fusion (2D or 3D), optional covariates and missing modalities.

    Every modality has its own encoder, any backbone :class:`~monai_medl.networks.nets.MixedEffectsCNN` wraps
    (SmallCNN by default, MONAI DenseNet/ResNet/SENet/Regressor/Classifier, or one per modality), or one encoder
    shared by all modalities (``shared_weights=True``); the branch embeddings ``h_m`` (and the covariate embedding)
    are fused by :class:`~monai_medl.networks.blocks.ModalityFusion`: concatenation (an absent input's slot is
    exactly zero) or gated attention over the present inputs (zero weight for an absent one). Random slopes act on
    every branch embedding, ``h_m * (1 + u_m(z))``, and the head adds a random intercept on the fused embedding.
    This suits modalities that are not co-registered or need different backbones; for co-registered contrasts see
    :class:`~monai_medl.networks.nets.EarlyFusionMixedEffectsCNN`.

    Input layout, masks, required modalities, outputs and the other arguments (``**kwargs``) are those of
    :class:`~monai_medl.networks.nets.MultimodalMixedEffectsNet`.

    Args:
        num_clusters: number of training clusters ``K`` (width of ``z``).
        modalities: modality names in channel order, or their number. Defaults to ``("t1", "flair")``.
        backbone: None (``SmallCNN``), an ``nn.Module`` (copied once per modality unless ``shared_weights``), a
            MONAI config dict with ``"_target_"`` (instantiated per modality), or a sequence with one of those per
            modality. Defaults to None.
        fusion: ``"concat"`` or ``"attention"``. Defaults to ``"concat"``.
        fusion_dim: width of the fused embedding with attention fusion. Defaults to 64.
        shared_weights: one encoder (and its cluster scale/bias) shared by all modalities; the random slopes on the
            embeddings stay per modality. Defaults to False.
        kwargs: the arguments of :class:`~monai_medl.networks.nets.MultimodalMixedEffectsNet` (``spatial_dims``,
            ``in_channels``, ``num_covariates``, ``required``, the random-effects settings, ...).

    Example::

        >>> import torch
        >>> net = LateFusionMixedEffectsCNN(num_clusters=4, modalities=("t1", "flair"), spatial_dims=2,
        ...                                 fusion="attention", probe_size=32)
        >>> x, mask = torch.randn(3, 2, 32, 32), torch.tensor([[1, 1], [1, 0], [0, 1]])
        >>> net.eval()(x, torch.eye(4)[[0, 1, 3]], mask).shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        num_clusters: int,
        modalities: Sequence[str] | int = ("t1", "flair"),
        backbone: nn.Module | Mapping | Sequence[nn.Module | Mapping | None] | None = None,
        fusion: str = "concat",
        fusion_dim: int = 64,
        shared_weights: bool = False,
        **kwargs,
    ) -> None:
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {('early',) + FUSION_MODES}, got {fusion!r}.")
        # plain settings read by the build hooks below, which the base class calls from its __init__
        self.fusion_mode = fusion
        self.fusion_dim = int(fusion_dim)
        self.shared_weights = bool(shared_weights)
        super().__init__(num_clusters, modalities, backbone, **kwargs)

    def _image_branches(
        self, factory: ModalityEncoderFactory, backbone, channels: list
    ) -> tuple[list[ModalityBranch], list[int], int]:
        """One encoder per modality (or one shared), each with its own random slopes, on consecutive channels."""
        backbones = factory.per_modality(backbone, self.num_modalities, self.shared_weights)
        branches: list[ModalityBranch] = []
        widths: list[int] = []
        encoder = None
        for i, name in enumerate(self.modalities):
            if encoder is None or not self.shared_weights:
                encoder = factory.encoder(backbones[i], channels[i])
            if channels[i] is not None and int(channels[i]) != encoder.in_channels:
                raise ValueError(
                    f"in_channels for modality {name!r} is {channels[i]}, the encoder takes {encoder.in_channels}."
                )
            if i == 0:
                dims = encoder.spatial_dims
            elif encoder.spatial_dims != dims:
                raise ValueError(
                    f"modality {name!r} has a {encoder.spatial_dims}D encoder, modality {self.modalities[0]!r} a "
                    f"{dims}D one; all encoders must share spatial_dims."
                )
            start = sum(widths)
            branches.append(factory.branch(encoder, start, start + encoder.in_channels))
            widths.append(encoder.in_channels)
        return branches, widths, dims

    def _make_fusion(self, widths: list[int], act: str | tuple) -> ModalityFusion:
        return ModalityFusion(widths, mode=self.fusion_mode, fusion_dim=self.fusion_dim, act=act)
