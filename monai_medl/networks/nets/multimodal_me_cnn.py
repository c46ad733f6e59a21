# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``make_multimodal_me_cnn(fusion=...)``: the early- or late-fusion network, for configs and code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from monai_medl.networks.blocks.modality_fusion import FUSION_MODES
from monai_medl.networks.nets.early_fusion_me_cnn import EarlyFusionMixedEffectsCNN
from monai_medl.networks.nets.late_fusion_me_cnn import LateFusionMixedEffectsCNN
from monai_medl.networks.nets.multimodal_me_net import MultimodalMixedEffectsNet
from monai_medl.networks.utils import warn_deprecated

__all__ = ["make_multimodal_me_cnn", "MultimodalMixedEffectsCNN", "MultimodalMECNN", "FUSIONS"]

FUSIONS = ("early",) + FUSION_MODES


def make_multimodal_me_cnn(
    num_clusters: int,
    modalities: Sequence[str] | int = ("t1", "flair"),
    backbone: nn.Module | Mapping | Sequence[nn.Module | Mapping | None] | None = None,
    *,
    fusion: str = "early",
    fusion_dim: int = 64,
    shared_weights: bool = False,
    **kwargs,
) -> MultimodalMixedEffectsNet:
    """A multimodal mixed-effects CNN: :class:`EarlyFusionMixedEffectsCNN` or :class:`LateFusionMixedEffectsCNN`.

    One entry point for code, bundle configs (``"_target_"``), benchmarks and tutorials that choose the fusion by
    name: it builds ``EarlyFusionMixedEffectsCNN`` for ``fusion="early"`` (the default) and
    ``LateFusionMixedEffectsCNN(fusion=fusion)`` for ``"concat"``/``"attention"``, with the same parameter and
    buffer names as before the split (shipped checkpoints load unchanged). Both are
    :class:`~monai_medl.networks.nets.MultimodalMixedEffectsNet`, the class to use in ``isinstance`` checks. New
    code can build the two classes directly.

    Args:
        num_clusters: number of training clusters ``K`` (width of ``z``).
        modalities: modality names in channel order, or their number. Defaults to ``("t1", "flair")``.
        backbone: encoder backbone (see the two classes). Defaults to None (``SmallCNN``).
        fusion: ``"early"`` (per-modality first convolution, mean over present modalities, shared encoder),
            ``"concat"`` or ``"attention"`` (late fusion of per-modality encoders). Defaults to ``"early"``.
        fusion_dim: late fusion: width of the fused embedding with attention fusion. Defaults to 64.
        shared_weights: late fusion: one encoder shared by all modalities. Defaults to False.
        kwargs: the other arguments of :class:`~monai_medl.networks.nets.MultimodalMixedEffectsNet`
            (``spatial_dims``, ``in_channels``, ``num_covariates``, ``required``, the random-effects settings, ...).

    Raises:
        ValueError: for an unknown ``fusion``, or late-fusion-only options with ``fusion="early"``.

    Example::

        >>> net = make_multimodal_me_cnn(num_clusters=4, modalities=("t1", "flair"), spatial_dims=3,
        ...                              num_covariates=2)  # early fusion; fusion="attention" for late fusion
        >>> type(net).__name__
        'EarlyFusionMixedEffectsCNN'

    In a bundle config::

        "network_def": {"_target_": "monai_medl.networks.nets.make_multimodal_me_cnn", "num_clusters": 4,
                        "modalities": ["t1", "flair"], "spatial_dims": 3, "fusion": "early"}
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion mode must be one of {FUSIONS}, got {fusion!r}.")
    if fusion != "early":
        return LateFusionMixedEffectsCNN(
            num_clusters,
            modalities,
            backbone,
            fusion=fusion,
            fusion_dim=fusion_dim,
            shared_weights=shared_weights,
            **kwargs,
        )
    if shared_weights:
        raise ValueError(
            "shared_weights applies to late fusion ('concat'/'attention'); fusion='early' already shares the "
            "encoder after the per-modality first convolution."
        )
    return EarlyFusionMixedEffectsCNN(num_clusters, modalities, backbone, **kwargs)


def MultimodalMixedEffectsCNN(*args: Any, **kwargs: Any) -> MultimodalMixedEffectsNet:  # noqa: N802 (the old name)
    """Deprecated name of :func:`make_multimodal_me_cnn` (a function named like a class), removed in the next
    release."""
    warn_deprecated("MultimodalMixedEffectsCNN", "make_multimodal_me_cnn")
    return make_multimodal_me_cnn(*args, **kwargs)


def MultimodalMECNN(*args: Any, **kwargs: Any) -> MultimodalMixedEffectsNet:  # noqa: N802 (the old name)
    """Deprecated name of :func:`make_multimodal_me_cnn`, removed in the next release."""
    warn_deprecated("MultimodalMECNN", "make_multimodal_me_cnn")
    return make_multimodal_me_cnn(*args, **kwargs)
