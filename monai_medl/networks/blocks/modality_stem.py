# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Early fusion of several modalities that honours a per-sample presence mask: a mean of per-modality convolutions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ModalityMeanConv", "scatter_rows", "zero_touch"]


def scatter_rows(values: torch.Tensor, index: torch.Tensor, batch: int) -> torch.Tensor:
    """``values`` placed at rows ``index`` of a zero tensor with ``batch`` rows (differentiable, any trailing shape).

    Example::

        >>> scatter_rows(torch.ones(2, 3), torch.tensor([0, 2]), 3)[:, 0]
        tensor([1., 0., 1.])
    """
    shape = [batch] + list(values.shape[1:])
    return values.new_zeros(shape).index_copy(0, index, values)


def zero_touch(module: nn.Module) -> torch.Tensor:
    """``0 * sum(trainable parameters)`` of a module that received no data in this step.

    Adding it to an output keeps every parameter in the autograd graph with an exactly zero gradient, so
    ``DistributedDataParallel`` works without ``find_unused_parameters``; no data passes through the module (batch-norm
    statistics are untouched).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return torch.zeros(())
    return torch.stack([p.sum() for p in params]).sum() * 0.0


class ModalityMeanConv(nn.Module):
    """One convolution per modality, averaged over the modalities each sample has, before any normalisation.

    ``y = mean_{m present} conv_m(x_m)``: with every modality present this is a convolution over the modalities
    stacked as channels (early fusion, scaled by ``1 / num_modalities``), so a following normalisation and
    activation see voxelwise combinations of the contrasts; with a modality absent its term is left out and the
    mean runs over the present ones (the channels of an absent modality are never read: nothing is imputed). This
    is the "mean over available modalities" of hetero-modal networks (`Havaei et al., HeMIS, MICCAI 2016
    <https://arxiv.org/abs/1607.05194>`_) taken before the first non-linearity, which is where the cross-contrast
    signal has to be formed (see the multimodal benchmark notes).

    Args:
        conv: template convolution (``nn.Conv1d/2d/3d``, ``groups=1``); one copy per modality is made with that
            modality's input channels (the template's own weights initialise the first modality).
        in_channels: input channels of each modality, in channel order of the stacked input.

    Example::

        >>> stem = ModalityMeanConv(nn.Conv3d(1, 8, 3, stride=2, padding=1), [1, 1])
        >>> x, present = torch.randn(2, 2, 16, 16, 16), torch.tensor([[True, True], [True, False]])
        >>> stem(x, present).shape
        torch.Size([2, 8, 8, 8, 8])
    """

    def __init__(self, conv: nn.Module, in_channels: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or conv.groups != 1:
            raise TypeError(f"conv must be an nn.Conv1d/2d/3d with groups=1, got {conv!r}.")
        widths = [int(c) for c in in_channels]
        if not widths or min(widths) < 1:
            raise ValueError(f"in_channels must list one positive width per modality, got {list(in_channels)}.")
        convs = []
        for c in widths:
            if c == conv.in_channels and not convs:
                convs.append(conv)
                continue
            convs.append(
                type(conv)(
                    c,
                    conv.out_channels,
                    conv.kernel_size,
                    stride=conv.stride,
                    padding=conv.padding,
                    dilation=conv.dilation,
                    bias=conv.bias is not None,
                    padding_mode=conv.padding_mode,
                )
            )
        self.convs = nn.ModuleList(convs)
        self.in_channels = widths
        self.starts = [int(sum(widths[:i])) for i in range(len(widths))]
        self.out_channels = int(conv.out_channels)
        self.spatial_dims = conv.weight.dim() - 2

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Mean of the present modalities' responses; ``present`` is boolean ``(batch, num_modalities)``.

        A sample with no modality present gets zeros.
        """
        batch = x.shape[0]
        total = torch.zeros(0)
        started = False
        touch = torch.zeros((), dtype=x.dtype, device=x.device)
        for m, conv in enumerate(self.convs):
            xm = x[:, self.starts[m] : self.starts[m] + self.in_channels[m]]
            col = present[:, m]
            if bool(col.any()):
                if bool(col.all()):
                    y = conv(xm)
                else:
                    idx = col.nonzero().squeeze(1)
                    y = scatter_rows(conv(xm.index_select(0, idx)), idx, batch)
                total = y if not started else total + y
                started = True
            elif self.training and not torch.jit.is_scripting():
                touch = touch + self._zero_touch(conv)
        count = present.to(x.dtype).sum(dim=1).clamp_min(1.0)
        return total / count.reshape([batch] + [1] * (total.dim() - 1)) + touch

    @torch.jit.unused
    def _zero_touch(self, conv: nn.Module) -> torch.Tensor:
        """:func:`zero_touch` of a modality absent from the whole batch."""
        return zero_touch(conv)
