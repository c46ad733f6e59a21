# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects autoencoder-classifier for tabular / omics vectors (dense layers)."""

from __future__ import annotations

from collections.abc import Sequence

from monai_medl.networks.nets.me_autoencoder import MixedEffectsAutoEncoder

__all__ = ["MixedEffectsVectorAutoEncoder", "MEVectorAutoEncoder"]


class MixedEffectsVectorAutoEncoder(MixedEffectsAutoEncoder):
    """:class:`MixedEffectsAutoEncoder` with dense layers for ``(batch, in_features)`` vectors (e.g. omics).

    Same design as the image version (FE autoencoder with adversary features, RE autoencoder whose norms are
    cluster scale/bias blocks over features, ``y_F`` and ``y_M`` classifiers); the encoder stages are linear
    layers of widths ``channels``. The FE branch uses layer norm by default, a per-sample norm like the image
    version's instance norm, so the adversary is trained against the features the network computes at inference
    (with batch norm it trains against train-mode batch statistics; measured on simulated omics data, see
    ``docs/method.md``, "Normalisation in the autoencoders"). The RE branch uses a layer norm followed by the
    cluster-specific scale and bias (as scMEDAL-RE does after its dense layers).

    Args:
        in_features: length of the input vectors.
        num_clusters: number of training batches (width of ``z``).
        out_channels: classifier outputs. Defaults to 1.
        latent_size: length of each latent. Defaults to 8.
        channels: hidden widths of the encoder (mirrored by the decoder). Defaults to ``(64, 32)``.
        act: activation. Defaults to ``"prelu"``.
        norm: FE branch norm (``"layer"``, ``"batch"`` or None). Defaults to ``"layer"``.
        dropout: dropout probability. Defaults to None.
        classifier_hidden: hidden width of both classifiers. Defaults to 32.
        fixed_effects: build the FE autoencoder. Defaults to True.
        random_effects: build the RE autoencoder. Defaults to True.
        output_act: activation of the reconstruction; None for real-valued (e.g. standardised) features.
            Defaults to None.
        prior_scale: prior s.d. of the cluster scale/bias effects. Defaults to 0.25.
        learn_prior_scale: learn that prior s.d. Defaults to False.
        post_loc_init_scale: s.d. of their initial posterior means. Defaults to 0.1.

    Example::

        >>> import torch
        >>> net = MixedEffectsVectorAutoEncoder(in_features=100, num_clusters=5)
        >>> out = net.forward_all(torch.randn(4, 100), torch.eye(5)[[0, 1, 2, 3]])
        >>> out.mixed.shape, out.reconstruction.shape
        (torch.Size([4, 1]), torch.Size([4, 100]))
    """

    def __init__(
        self,
        in_features: int,
        num_clusters: int,
        out_channels: int = 1,
        latent_size: int = 8,
        channels: Sequence[int] = (64, 32),
        act: str | tuple | None = "prelu",
        norm: str | tuple | None = "layer",
        dropout: float | None = None,
        classifier_hidden: int = 32,
        fixed_effects: bool = True,
        random_effects: bool = True,
        output_act: str | tuple | None = None,
        prior_scale: float = 0.25,
        learn_prior_scale: bool = False,
        post_loc_init_scale: float = 0.1,
    ) -> None:
        super().__init__(
            spatial_dims=0,
            in_shape=(in_features,),
            num_clusters=num_clusters,
            out_channels=out_channels,
            latent_size=latent_size,
            channels=channels,
            strides=(1,) * len(channels),
            kernel_size=1,
            act=act,
            norm=norm,
            dropout=dropout,
            classifier_hidden=classifier_hidden,
            fixed_effects=fixed_effects,
            random_effects=random_effects,
            output_act=output_act,
            reversible_norm=False,
            prior_scale=prior_scale,
            learn_prior_scale=learn_prior_scale,
            post_loc_init_scale=post_loc_init_scale,
        )


MEVectorAutoEncoder = MixedEffectsVectorAutoEncoder
