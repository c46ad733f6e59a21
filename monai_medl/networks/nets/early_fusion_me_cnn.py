# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Early fusion: a per-modality first convolution averaged over the present modalities, then one shared encoder."""

from __future__ import annotations

import copy

import torch
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_medl.networks.blocks.modality_stem import ModalityMeanConv
from monai_medl.networks.nets.backbone_layouts import backbone_layout
from monai_medl.networks.nets.me_cnn import DEFAULT_PROBE_SIZE, first_conv
from monai_medl.networks.nets.modality_branch import ModalityBranch
from monai_medl.networks.nets.modality_encoders import ModalityEncoderFactory
from monai_medl.networks.nets.multimodal_me_net import MultimodalMixedEffectsNet

__all__ = ["EarlyFusionMixedEffectsCNN", "split_first_conv"]


def split_first_conv(backbone: nn.Module) -> tuple[nn.modules.conv._ConvNd, nn.Module]:
    """``(first_conv, rest)``: a copy of ``backbone`` whose first convolution is replaced by ``nn.Identity``.

    ``rest`` then starts at whatever followed the convolution (its normalisation and activation), so a module that
    computes the first convolution differently (e.g. :class:`~monai_medl.networks.blocks.ModalityMeanConv`) can be
    put in front of it. The user's backbone is not modified.

    Example::

        >>> from monai_medl.networks.nets import SmallCNN
        >>> conv, rest = split_first_conv(SmallCNN(2, channels=(4, 8)))
        >>> type(conv).__name__, type(rest.features.block0.conv).__name__
        ('Conv2d', 'Identity')
    """
    rest = copy.deepcopy(backbone)
    layers = backbone_layout(rest).layers
    conv = first_conv(layers)
    if not any(layer is conv for _, layer in layers):
        raise ValueError(
            f"fusion='early' needs the first convolution of {type(backbone).__name__} to be a layer of its forward "
            "path, but it sits inside a block (e.g. a residual unit) that also reads the input; use fusion='concat' "
            "or 'attention', or a backbone without such a first block."
        )
    name = next(n for n, m in rest.named_modules() if m is conv)
    parent, _, attr = name.rpartition(".")
    setattr(rest.get_submodule(parent) if parent else rest, attr, nn.Identity())
    return conv, rest


class EarlyFusionMixedEffectsCNN(MultimodalMixedEffectsNet):
    """Multimodal mixed-effects CNN with early fusion (2D or 3D), optional covariates and missing modalities.

    The backbone's first convolution is made once per modality and the responses are averaged over the modalities
    a sample has, before the first normalisation and activation
    (:class:`~monai_medl.networks.blocks.ModalityMeanConv`, attribute ``stem``); the rest of the backbone is one
    encoder shared by all modalities (``branches[0]``). With every modality present this is a convolution over the
    stacked contrasts, so the network can form voxel-wise cross-contrast features; an absent modality is left out
    of the mean. The image branch counts as present for a sample with any modality. Covariates (if any) are a second
    branch; the two embeddings are concatenated and read out by the mixed-effects head (random slopes on each
    branch embedding, random intercept on the fused one).

    Why this is the default of :func:`~monai_medl.networks.nets.make_multimodal_me_cnn`: the disease signal of
    the multimodal benchmark cohort is a voxel-wise combination of contrasts, which has to be formed before the first
    non-linearity (see ``benchmarks/results/multimodal.md``). Use
    :class:`~monai_medl.networks.nets.LateFusionMixedEffectsCNN` for modalities that are not co-registered or need
    different backbones.

    Input layout, masks, required modalities, outputs and all arguments are those of
    :class:`~monai_medl.networks.nets.MultimodalMixedEffectsNet`; ``backbone`` is one backbone (None, a module or a
    config dict) whose first convolution must be a layer of its forward path (not inside a residual unit).

    Example::

        >>> net = EarlyFusionMixedEffectsCNN(num_clusters=4, modalities=("t1", "flair"), spatial_dims=3,
        ...                                  num_covariates=2)
        >>> x = torch.randn(3, 2, 32, 32, 32)                  # T1 and FLAIR on the channel axis
        >>> z, mask = torch.eye(4)[[0, 1, 3]], torch.tensor([[1, 1], [1, 0], [0, 1]])  # FLAIR missing for item 1
        >>> net.eval()(x, z, mask, torch.randn(3, 2)).shape, net(x).shape
        (torch.Size([3, 1]), torch.Size([3, 1]))
        >>> adversary = net.make_adversary()                   # sized for the image and covariate branches
    """

    fusion_mode = "early"

    def _image_branches(
        self, factory: ModalityEncoderFactory, backbone, channels: list
    ) -> tuple[list[ModalityBranch], list[int], int]:
        """The backbone's first convolution, one per modality (``self.stem``), and one branch with the shared rest."""
        if isinstance(backbone, (list, tuple)):
            raise ValueError("fusion='early' takes one backbone (the shared encoder), not one per modality.")
        backbone = factory.resolve(backbone, channels[0])
        conv, rest = split_first_conv(backbone)
        self.stem = ModalityMeanConv(conv, [conv.in_channels if c is None else int(c) for c in channels])
        # the shared encoder is measured at the size of the first convolution's output, not of the image
        dims = self.stem.spatial_dims
        probe = factory.probe_size or getattr(backbone, "in_shape", None) or DEFAULT_PROBE_SIZE[dims]
        with torch.no_grad():
            x = torch.zeros(1, conv.in_channels, *ensure_tuple_rep(probe, dims), device=conv.weight.device)
            probe = list(conv(x).shape[2:])
        encoder = factory.encoder(rest, probe_size=probe)
        if encoder.in_channels != self.stem.out_channels:
            raise ValueError(
                f"fusion='early' needs the layers after the backbone's first convolution to take its "
                f"{self.stem.out_channels} output channels; {type(backbone).__name__} continues with "
                f"{encoder.in_channels}."
            )
        widths = self.stem.in_channels
        return [factory.branch(encoder, 0, sum(widths))], widths, dims

    def _branch_presence(self, present: torch.Tensor) -> torch.Tensor:
        """One image branch (present when any modality is), then the covariates."""
        images = present[:, : self.num_modalities].any(dim=1, keepdim=True)
        return torch.cat([images, present[:, self.num_modalities :]], dim=1)

    def _image_input(self, x: torch.Tensor, images: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The mean of the present modalities' first-convolution responses."""
        return self.stem(x[:, start:stop], images)
