# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Early fusion of several modalities that honours a per-sample presence mask: a mean of per-modality convolutions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["ModalityMeanConv", "scatter_rows"]


def scatter_rows(values: torch.Tensor, index: torch.Tensor, batch: int) -> torch.Tensor:
    """``values`` placed at rows ``index`` of a zero tensor with ``batch`` rows (differentiable, any trailing shape).

    Example::

        >>> scatter_rows(torch.ones(2, 3), torch.tensor([0, 2]), 3)[:, 0]
        tensor([1., 0., 1.])
    """
    shape = [batch] + list(values.shape[1:])
    return values.new_zeros(shape).index_copy(0, index, values)


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
        convs: list[nn.Module] = []
        # torch types a conv's kernel_size/stride/... as tuple[int, ...]; they have the length its class expects
        conv_type: Callable[..., nn.Module] = type(conv)
        for c in widths:
            if c == conv.in_channels and not convs:
                convs.append(conv)
                continue
            convs.append(
                conv_type(
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

        Every convolution runs on the whole batch with an absent modality's channels zero-filled and its response
        masked to zero (a convolution is per sample, so this equals running it on the samples that have the
        modality; no data-dependent branch, and every convolution stays in the graph). A sample with no modality
        present gets zeros.
        """
        batch = x.shape[0]
        responses: list[torch.Tensor] = []
        for m, conv in enumerate(self.convs):
            xm = x[:, self.starts[m] : self.starts[m] + self.in_channels[m]]
            col = present[:, m].reshape([batch] + [1] * (x.dim() - 1))
            y = conv(torch.where(col, xm, torch.zeros_like(xm)))
            responses.append(torch.where(col, y, torch.zeros_like(y)))
        total = responses[0]
        for y in responses[1:]:
            total = total + y
        count = present.to(x.dtype).sum(dim=1).clamp_min(1.0)
        return total / count.reshape([batch] + [1] * (total.dim() - 1))
