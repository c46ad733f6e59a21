# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Counterfactual panels: each image, its reconstruction, and its decoding as if acquired in every training batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from monai_medl.networks.nets.me_autoencoder import MixedEffectsAutoEncoder

__all__ = ["counterfactual_panel", "counterfactual_grid", "plot_counterfactual_panel"]


@torch.no_grad()
def counterfactual_panel(
    network: MixedEffectsAutoEncoder, images: torch.Tensor, z: torch.Tensor | None, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Stack ``[input, reconstruction, counterfactual_0, ..., counterfactual_{T-1}]`` for every image.

    Args:
        network: a :class:`~monai_medl.networks.nets.MixedEffectsAutoEncoder` with a random-effects branch.
        images: ``(B, C, *spatial)`` inputs.
        z: their design matrix ``(B, K)`` (None or zeros for population level).
        targets: ``(T, K)`` target designs; defaults to the identity (every training batch).

    Returns:
        ``(B, T + 2, C, *spatial)`` tensor (network evaluated in eval mode).

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsAutoEncoder
        >>> net = MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 32, 32), num_clusters=4)
        >>> x = torch.rand(2, 1, 32, 32)  # two images, acquired in batches 0 and 2
        >>> panel = counterfactual_panel(net, x, torch.eye(4)[[0, 2]])
        >>> panel.shape  # 2 images, input + recon + 4 batches
        torch.Size([2, 6, 1, 32, 32])
        >>> counterfactual_grid(panel).shape  # one TensorBoard image: 2 rows x 6 columns of 32 x 32, 1-pixel gaps
        torch.Size([1, 65, 197])
    """
    was_training = network.training
    network.eval()
    try:
        k = network.num_clusters
        targets = torch.eye(k, dtype=images.dtype, device=images.device) if targets is None else targets.to(images)
        cols = [images, network.reconstruct(images, z)]
        for t in targets:
            cols.append(network.counterfactual(images, z, t.expand(images.shape[0], -1)))
        return torch.stack(cols, dim=1)
    finally:
        network.train(was_training)


def _to_2d(panel: torch.Tensor) -> torch.Tensor:
    """``(B, T, C, *spatial)`` -> ``(B, T, H, W)``: first channel, middle slice of the last axis for 3D."""
    x = panel[:, :, 0]
    if x.dim() == 5:
        x = x[..., x.shape[-1] // 2]
    if x.dim() == 3:  # 1D signals: one row
        x = x.unsqueeze(2)
    return x


def counterfactual_grid(panel: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Tile a :func:`counterfactual_panel` into one ``(1, rows * H, cols * W)`` image in [0, 1] (TensorBoard).

    Rows are images, columns are input, reconstruction, then one counterfactual per target batch. Values are
    clipped to [0, 1]; 3D volumes show their middle slice along the last axis.
    """
    x = _to_2d(panel).clamp(0, 1)
    b, t, h, w = x.shape
    grid = x.new_ones(b * (h + pad) - pad, t * (w + pad) - pad)
    for i in range(b):
        for j in range(t):
            grid[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = x[i, j]
    return grid.unsqueeze(0)


def plot_counterfactual_panel(
    panel: torch.Tensor, target_names: Sequence[str] | None = None, row_names: Sequence[str] | None = None
):
    """Matplotlib figure of a :func:`counterfactual_panel` (rows = images, columns = input, recon, batches).

    Args:
        panel: ``(B, T + 2, C, *spatial)``.
        target_names: names of the ``T`` target batches. Defaults to ``batch 0``, ``batch 1``, ...
        row_names: a label per image (e.g. its own batch). Defaults to none.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    x = _to_2d(panel).clamp(0, 1).cpu().numpy()
    b, t = x.shape[:2]
    names = list(target_names) if target_names is not None else [f"batch {i}" for i in range(t - 2)]
    if len(names) != t - 2:
        raise ValueError(f"target_names needs {t - 2} names (one per counterfactual column), got {len(names)}.")
    titles = ["input", "reconstruction", *[f"as {n}" for n in names]]
    fig, axes = plt.subplots(b, t, figsize=(1.3 * t, 1.3 * b), squeeze=False)
    for i in range(b):
        for j in range(t):
            ax = axes[i][j]
            ax.imshow(x[i, j], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=7)
            if j == 0 and row_names is not None:
                ax.set_ylabel(str(row_names[i]), fontsize=7)
    fig.tight_layout()
    return fig
