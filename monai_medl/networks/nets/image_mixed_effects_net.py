# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""What the image mixed-effects networks share: the input-shape check and the adversary sized for their pooled
feature taps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from monai_medl.networks.nets.cluster_classifier import ClusterClassifier
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet

__all__ = ["ImageMixedEffectsNet"]


class ImageMixedEffectsNet(MixedEffectsNet):
    """A :class:`MixedEffectsNet` on ``(batch, in_channels, *spatial)`` images whose adversary reads the
    average-pooled feature maps listed in ``feature_sizes``.

    Subclasses set ``spatial_dims``, ``in_channels``, ``num_clusters`` and ``feature_sizes`` (declared for the type
    checker only: TorchScript would try to resolve class-level annotations when scripting the subclass).
    """

    if TYPE_CHECKING:
        spatial_dims: int
        in_channels: int
        num_clusters: int
        feature_sizes: list[int]

    @torch.jit.unused
    def _check_image(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input must have shape (batch, {self.in_channels}, {self.spatial_dims} spatial axes), "
                f"got {tuple(x.shape)}."
            )

    @torch.jit.unused
    def _probe_channels(
        self, module: nn.Module, run: Callable[[torch.Tensor], list[torch.Tensor]], spatial: Sequence[int], what: str
    ) -> list[int]:
        """Channel widths of the tensors ``run`` returns for one zero input of size ``spatial``, computed in eval mode
        without gradients; ``module``'s train/eval modes are restored (no state changes)."""
        param = next(module.parameters(), None)
        x = torch.zeros(1, self.in_channels, *spatial, device=param.device if param is not None else None)
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.no_grad():
                return [int(t.shape[1]) for t in run(x)]
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"could not run the {what} on a zero input of spatial size {tuple(spatial)} to measure its features "
                f"({e}); pass probe_size= a valid input size."
            ) from e
        finally:
            for m, mode in modes:
                m.training = mode

    @property
    def adversary_in_features(self) -> int:
        """Total length of the adversary's input (sum of :attr:`feature_sizes`)."""
        return int(sum(self.feature_sizes))

    @torch.jit.unused
    def make_adversary(
        self,
        hidden: Sequence[int] = (64, 32),
        act: str | tuple = "leakyrelu",
        dropout: float = 0.0,
        input_norm: bool = False,
        label_classes: int = 0,
    ):
        """A :class:`~monai_medl.networks.nets.ClusterClassifier` sized for this model's pooled activations
        (``input_norm``: standardise its inputs, see :class:`~monai_medl.networks.nets.ClusterClassifier`;
        ``label_classes``: that many extra inputs for the one-hot label of a label-conditional adversary, see
        :class:`~monai_medl.losses.AdversarialRegularizer`).

        The leaky activation keeps the adversary trainable: with ReLU units the feature extractor can silence the
        adversary (dead units, chance-level output) without removing the site information (measured on the 3D
        site-shortcut toy of ``tests/networks/test_me_cnn_training.py``; the numbers are in ``docs/method.md``,
        section 5).
        """
        width, k = self.adversary_in_features + label_classes, self.num_clusters
        return ClusterClassifier(width, k, hidden=hidden, act=act, dropout=dropout, input_norm=input_norm)
