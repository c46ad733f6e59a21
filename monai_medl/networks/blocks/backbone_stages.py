# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Split a backbone into scriptable stages at named layers: tap points for the adversary, cluster scale/bias blocks.

Forward hooks cannot be scripted, so a wrapped backbone is rebuilt as an explicit list of stages that reuse the
backbone's own modules (no copy, no edit of its code). Every stage ends at a tapped layer or at a normalisation
layer that receives cluster-specific scale and bias, and the wrapper walks the stages in its ``forward``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Optional

import torch
from torch import nn

from monai_medl.networks.layers.cluster_scale_bias import ClusterScaleBias

__all__ = ["BackboneStage", "global_avg_pool", "iter_layers", "find_layer", "norm_channels", "build_stages"]

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Average every channel over its spatial axes: ``(B, C, *spatial) -> (B, C)``; a ``(B, C)`` input is returned.

    This is ``AdaptiveAvgPool{1,2,3}d(1)`` followed by a flatten, for any number of spatial dimensions.
    """
    if x.dim() <= 2:
        return x
    if not torch.jit.is_scripting():
        if x.requires_grad:
            return _GlobalAvgPool.apply(x)
    return x.flatten(2).mean(2)


class _GlobalAvgPool(torch.autograd.Function):
    """``x.flatten(2).mean(2)`` whose backward pass returns ``grad / n`` broadcast as a view of the input's shape.

    Autograd's ``mean`` backward divides the expanded gradient, which allocates and writes a tensor the size of the
    feature map; a feature map that also feeds a decoder (the UNet's skips) or later stages then gets that full-size
    tensor added to its gradient. Dividing the ``(B, C)`` gradient first gives the same values (each element is
    ``grad / n`` either way) without the allocation.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(2).mean(2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        shape = ctx.shape
        n = 1
        for size in shape[2:]:
            n *= size
        return (grad / n).view(*shape[:2], *([1] * (len(shape) - 2))).expand(shape)


def _is_plain_sequential(module: nn.Module) -> bool:
    # a Sequential (or a subclass that keeps Sequential.forward) is exactly the composition of its children
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def iter_layers(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(qualified_name, layer)`` in execution order, opening every plain ``nn.Sequential`` recursively.

    ``monai.networks.blocks.Convolution``, ``ADN``, DenseNet blocks/transitions and ResNet layers are plain
    sequentials, so their inner layers become addressable (``"features.transition1.norm"``); any other module is a
    leaf whose own ``forward`` runs unchanged.
    """
    if _is_plain_sequential(module):
        for name, child in module.named_children():
            yield from iter_layers(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix, module


def find_layer(names: Sequence[str], name: str, what: str) -> int:
    """Index of the layer ``name`` in ``names``, or of the last layer inside the block ``name``.

    Raises:
        ValueError: naming ``what`` (e.g. ``"tap layer"``) and listing the available layer names.
    """
    found = [i for i, n in enumerate(names) if n == name or n.startswith(name + ".")]
    if not found:
        raise ValueError(f"{what} {name!r} is not a layer of the backbone's forward path; available: {list(names)}.")
    return found[-1]


def norm_channels(layer: nn.Module) -> int | None:
    """Number of channels of a batch/instance/group normalisation layer, None for any other layer."""
    if isinstance(layer, nn.GroupNorm):
        return int(layer.num_channels)
    if isinstance(layer, _NORM_TYPES[:2]):  # batch and instance norms
        return int(layer.num_features)
    return None


class BackboneStage(nn.Module):
    """A run of consecutive backbone layers, optionally ending in a cluster scale/bias block.

    Args:
        body: the backbone's own layers, run in order.
        cluster: a :class:`ClusterScaleBias` wrapping the normalisation layer that ends the stage, or None.
        tap: whether the stage's output (pooled) goes to the adversary.

    Example::

        >>> stage = BackboneStage(nn.Sequential(nn.Conv3d(1, 4, 3)), None, tap=True)
        >>> stage(torch.randn(2, 1, 8, 8, 8)).shape
        torch.Size([2, 4, 6, 6, 6])
    """

    def __init__(self, body: nn.Sequential, cluster: ClusterScaleBias | None = None, tap: bool = False) -> None:
        super().__init__()
        self.body = body
        self.cluster = cluster
        self.has_cluster = cluster is not None
        self.tap = tap

    def apply_cluster(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stage's normalisation with cluster scale/bias (identity for a stage without one)."""
        cluster = self.cluster
        if cluster is not None:
            x = cluster(x, z)
        return x

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.apply_cluster(self.body(x), z)

    def split_cluster(self, x: torch.Tensor, z: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(apply_cluster(x, None), apply_cluster(x, z))`` of the body's output ``x`` with the normalisation run
        once; the second is None when ``z`` is None or the stage has no cluster block.

        One norm call updates a batch norm's running statistics once per training step, as the backbone's own
        forward does (running it once per path updated them twice, i.e. with about twice the momentum), and saves
        its forward and backward pass. The fixed path gets a copy of the norm's output: an in-place layer after it
        must not change the map the cluster product saved for its backward pass."""
        cluster = self.cluster
        if cluster is None:
            return x, None
        normed = cluster.norm(x)
        if z is None:
            return normed, None
        return normed.clone(), cluster.modulate(normed, z)

    def split(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(stage(x, None), stage(x, z))`` with the body and the norm run once (see :meth:`split_cluster`)."""
        fixed, mixed = self.split_cluster(self.body(x), z)
        return fixed, fixed if mixed is None else mixed


def build_stages(
    layers: Sequence[tuple[str, nn.Module]],
    tap_layers: Sequence[str],
    cluster_layers: Sequence[str],
    spatial_dims: int,
    num_clusters: int,
    cluster_prior_scale: float = 0.25,
    learn_prior_scale: bool = False,
) -> tuple[nn.ModuleList, list[str]]:
    """Group ``layers`` into :class:`BackboneStage` objects that end at every tap and cluster scale/bias layer.

    Args:
        layers: ``(name, layer)`` pairs in execution order (see :func:`iter_layers`).
        tap_layers: layer or block names whose output is pooled for the adversary (a block name taps its last
            layer). The last layer is never tapped here (the wrapper always returns the penultimate features).
        cluster_layers: names of normalisation layers that become :class:`ClusterScaleBias` blocks. The backbone's
            own normalisation layer is kept inside the block (so ``z = 0`` reproduces the backbone exactly) and the
            cluster-specific ``(1 + gamma(z)) * x + beta(z)`` is applied to its output.
        spatial_dims: spatial dimensions of the feature maps.
        num_clusters: number of training clusters.
        cluster_prior_scale: prior s.d. of ``gamma`` and ``beta``. Defaults to 0.25.
        learn_prior_scale: learn those prior s.d.s. Defaults to False.

    Returns:
        the stages and the names of the tapped layers as given, in execution order.
    """
    names = [n for n, _ in layers]
    last = len(layers) - 1
    tap_index = {find_layer(names, t, "tap layer"): t for t in tap_layers}
    tap_index.pop(last, None)
    taps = set(tap_index)
    clusters: dict[int, int] = {}
    for name in cluster_layers:
        if name not in names:
            raise ValueError(
                f"cluster scale/bias layer {name!r} must name a normalisation layer of the backbone's forward path; "
                f"available: {names}."
            )
        idx = names.index(name)
        channels = norm_channels(layers[idx][1])
        if channels is None:
            raise ValueError(
                f"cluster scale/bias layer {name!r} is a {type(layers[idx][1]).__name__}, expected a batch, "
                "instance or group normalisation layer."
            )
        clusters[idx] = channels

    stages = nn.ModuleList()
    body: list[tuple[str, nn.Module]] = []
    for i, (name, layer) in enumerate(layers):
        cluster = None
        if i in clusters:
            cluster = ClusterScaleBias.around(
                layer, clusters[i], spatial_dims, num_clusters, cluster_prior_scale, learn_prior_scale
            )
        else:
            body.append((name.replace(".", "_"), layer))
        if cluster is not None or i in taps or i == last:
            stages.append(BackboneStage(nn.Sequential(OrderedDict(body)), cluster, tap=i in taps))
            body = []
    return stages, [tap_index[i] for i in sorted(taps)]
