# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""One encoder/decoder branch shared by the convolutional (1D/2D/3D) and dense (vector) ME-autoencoders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
from monai.networks.layers.factories import Conv, split_args
from monai.networks.layers.utils import get_act_layer, get_dropout_layer, get_norm_layer
from torch import nn

from monai_medl.networks.layers.cluster_scale_bias import ClusterScaleBias

__all__ = ["AutoEncoderStage", "AutoEncoderBranch"]


class AutoEncoderStage(nn.Module):
    """``op -> norm -> act (-> dropout)`` where ``op`` is a (transposed) convolution, or a linear layer for vectors.

    The norm is an ordinary MONAI norm (fixed-effects branch) or, when ``num_clusters`` is given, a
    :class:`~monai_medl.networks.layers.ClusterScaleBias` block whose scale and bias depend on the cluster design
    ``z`` (random-effects branch).

    Args:
        spatial_dims: 0 for ``(batch, features)`` vectors, else 1, 2 or 3.
        in_channels: input channels (features for vectors).
        out_channels: output channels (features for vectors).
        strides: convolution stride (1 for vectors). Defaults to 1.
        kernel_size: convolution kernel size (odd). Defaults to 3.
        act: activation name or ``(name, kwargs)``. Defaults to ``"prelu"``.
        norm: norm name or ``(name, kwargs)`` for the fixed-effects branch; None for no norm. Defaults to ``"batch"``.
        dropout: dropout probability or None. Defaults to None.
        is_transposed: upsampling transposed convolution (exact ``strides`` x upsampling). Defaults to False.
        num_clusters: use a cluster scale/bias block with this many clusters instead of ``norm``. Defaults to None.
        cluster_kwargs: extra arguments of the cluster scale/bias block (``prior_scale``, ...). Defaults to None.

    Example::

        >>> stage = AutoEncoderStage(spatial_dims=2, in_channels=1, out_channels=8, strides=2, num_clusters=3)
        >>> stage(torch.rand(2, 1, 16, 16), torch.eye(3)[[0, 2]]).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int = 1,
        kernel_size: int = 3,
        act: str | tuple | None = "prelu",
        norm: str | tuple | None = "batch",
        dropout: float | None = None,
        is_transposed: bool = False,
        num_clusters: int | None = None,
        cluster_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"spatial_dims must be 0 (vectors), 1, 2 or 3, got {spatial_dims}.")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        if spatial_dims == 0:
            if strides != 1:
                raise ValueError(f"vector stages (spatial_dims=0) need strides 1, got {strides}.")
            self.op: nn.Module = nn.Linear(in_channels, out_channels)
        elif is_transposed:
            self.op = Conv[Conv.CONVTRANS, spatial_dims](
                in_channels,
                out_channels,
                kernel_size,
                stride=strides,
                padding=kernel_size // 2,
                output_padding=strides - 1,
            )
        else:
            self.op = Conv[Conv.CONV, spatial_dims](
                in_channels, out_channels, kernel_size, stride=strides, padding=kernel_size // 2
            )
        self.cluster_norm: ClusterScaleBias | None = None
        self.norm: nn.Module = nn.Identity()
        if num_clusters is not None:
            self.cluster_norm = ClusterScaleBias(spatial_dims, out_channels, num_clusters, **(cluster_kwargs or {}))
        elif norm is not None:
            if spatial_dims == 0 and "instance" in str(norm).lower():
                raise ValueError("instance norm is undefined for vectors (spatial_dims=0); use 'batch' or 'layer'.")
            name, args = split_args(norm)
            if spatial_dims == 0 and str(name).lower() == "layer":  # MONAI's factory cannot size a LayerNorm
                args = {"normalized_shape": out_channels, **args}
            self.norm = get_norm_layer((name, args), spatial_dims=max(spatial_dims, 1), channels=out_channels)
        self.act: nn.Module = get_act_layer(act) if act is not None else nn.Identity()
        self.dropout: nn.Module = (
            get_dropout_layer(("dropout", {"p": dropout}), dropout_dim=max(spatial_dims, 1))
            if dropout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.op(x)
        cluster_norm = self.cluster_norm
        if cluster_norm is not None:
            x = cluster_norm(x, z)
        else:
            x = self.norm(x)
        return self.dropout(self.act(x))


class AutoEncoderBranch(nn.Module):
    """Encoder to a latent vector and mirrored decoder, for images (``spatial_dims`` 1-3) or vectors (0).

    Encoder: one :class:`AutoEncoderStage` per entry of ``channels``/``strides``, then (images) flatten and a linear
    map to ``latent_size``. Decoder: linear map back to the smallest feature map, transposed-convolution stages
    mirroring the encoder, and a final convolution (linear layer for vectors) to the input channels with
    ``output_act``. With ``num_clusters`` every stage uses a cluster scale/bias block (random-effects branch: the
    encoder can remove and the decoder re-apply cluster-specific appearance); without, a plain MONAI norm
    (fixed-effects branch). The encoder also returns every stage's output averaged over space (the whole vector
    for dense stages) plus the latent: the activations an adversary sees.

    Args:
        spatial_dims: 0 for vectors, else 1, 2 or 3.
        in_shape: input shape without batch: ``(channels, *spatial)`` for images, ``(features,)`` for vectors.
        latent_size: length of the latent vector.
        channels: output channels (hidden widths for vectors) of the encoder stages.
        strides: stride of each encoder stage (all 1 for vectors); spatial sizes must be divisible by their product.
        kernel_size: convolution kernel size. Defaults to 3.
        act: activation. Defaults to ``"prelu"``.
        norm: norm of the fixed-effects branch. Defaults to ``"batch"``.
        dropout: dropout probability. Defaults to None.
        num_clusters: build the random-effects branch with this many clusters. Defaults to None.
        cluster_kwargs: arguments of the cluster scale/bias blocks. Defaults to None.
        output_act: activation of the reconstruction (``"sigmoid"`` for images in [0, 1], None for real vectors).
            Defaults to ``"sigmoid"``.

    Example::

        >>> branch = AutoEncoderBranch(2, (1, 32, 32), latent_size=8, channels=(8, 16), strides=(2, 2))
        >>> latent, features = branch.encode(torch.rand(2, 1, 32, 32))
        >>> latent.shape, branch.decode(latent).shape
        (torch.Size([2, 8]), torch.Size([2, 1, 32, 32]))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_shape: Sequence[int],
        latent_size: int,
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: int = 3,
        act: str | tuple | None = "prelu",
        norm: str | tuple | None = "batch",
        dropout: float | None = None,
        num_clusters: int | None = None,
        cluster_kwargs: dict | None = None,
        output_act: str | tuple | None = "sigmoid",
    ) -> None:
        super().__init__()
        in_shape = [int(s) for s in in_shape]
        if len(in_shape) != spatial_dims + 1:
            raise ValueError(
                f"in_shape must be (channels, *spatial) with {spatial_dims} spatial dims (or (features,) for vectors), "
                f"got {tuple(in_shape)}."
            )
        if len(channels) == 0 or len(channels) != len(strides):
            raise ValueError(f"channels and strides need the same non-zero length, got {channels} and {strides}.")
        factor = math.prod(strides)
        if any(s % factor for s in in_shape[1:]):
            raise ValueError(f"spatial sizes {in_shape[1:]} must be divisible by prod(strides)={factor}.")
        self.spatial_dims = spatial_dims
        self.in_shape = in_shape
        self.latent_size = latent_size
        self.feature_sizes = [int(c) for c in channels] + [latent_size]
        common: dict[str, Any] = {
            "spatial_dims": spatial_dims,
            "kernel_size": kernel_size,
            "act": act,
            "norm": norm,
            "dropout": dropout,
            "num_clusters": num_clusters,
            "cluster_kwargs": cluster_kwargs,
        }
        chans = [in_shape[0]] + [int(c) for c in channels]
        self.encoder = nn.ModuleList(
            AutoEncoderStage(in_channels=chans[i], out_channels=chans[i + 1], strides=int(strides[i]), **common)
            for i in range(len(channels))
        )
        self.small_shape = [chans[-1]] + [s // factor for s in in_shape[1:]]
        flat = math.prod(self.small_shape)
        self.to_latent = nn.Linear(flat, latent_size)
        self.from_latent = nn.Linear(latent_size, flat)
        self.from_latent_act: nn.Module = get_act_layer(act) if act is not None else nn.Identity()
        # mirrored decoder: stage i maps chans[i + 1] -> chans[max(i, 1)] and undoes stride i
        self.decoder = nn.ModuleList(
            AutoEncoderStage(
                in_channels=chans[i + 1],
                out_channels=chans[max(i, 1)],
                strides=int(strides[i]),
                is_transposed=True,
                **common,
            )
            for i in reversed(range(len(channels)))
        )
        if spatial_dims == 0:
            self.head: nn.Module = nn.Linear(chans[1], in_shape[0])
        else:
            self.head = Conv[Conv.CONV, spatial_dims](chans[1], in_shape[0], kernel_size, padding=kernel_size // 2)
        self.output_act: nn.Module = get_act_layer(output_act) if output_act is not None else nn.Identity()

    def encode(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Latent ``(batch, latent_size)`` and the pooled stage activations plus the latent (adversary inputs)."""
        features: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x, z)
            features.append(x.flatten(2).mean(2) if self.spatial_dims > 0 else x)
        latent = self.to_latent(x.flatten(1))
        features.append(latent)
        return latent, features

    def decode(self, latent: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reconstruction ``(batch, *in_shape)`` from a latent."""
        x = self.from_latent_act(self.from_latent(latent))
        x = x.view([latent.shape[0]] + self.small_shape)
        for stage in self.decoder:
            x = stage(x, z)
        return self.output_act(self.head(x))

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.decode(self.encode(x, z)[0], z)
