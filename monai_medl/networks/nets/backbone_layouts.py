# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""How to walk each supported backbone: its forward path without the classification layer, and default taps.

A layout lists the backbone's own modules in execution order up to the penultimate (flattened) features, so a
wrapper can run them explicitly, tap intermediate activations and drop the classification layer, without hooks
and without editing the backbone's code. Supported: MONAI ``DenseNet`` (121/169/201/264), ``ResNet`` (all
depths), ``SENet`` (SEResNet*/SEResNeXt*/SENet154), ``Regressor``/``Classifier``/``Discriminator``,
:class:`~monai_medl.networks.nets.SmallCNN` and plain ``nn.Sequential`` models. Other architectures can be added
with :func:`register_backbone_layout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from monai.networks.nets import DenseNet, Regressor, ResNet, SENet
from torch import nn

from monai_medl.networks.blocks.backbone_stages import iter_layers
from monai_medl.networks.nets.small_cnn import SmallCNN

__all__ = ["BackboneLayout", "backbone_layout", "register_backbone_layout"]


@dataclass
class BackboneLayout:
    """A backbone's forward path as explicit layers.

    Attributes:
        layers: ``(qualified_name, module)`` pairs in execution order, ending with the penultimate features.
        default_taps: layer or block names tapped for the adversary when the user names none.
        classifier: the classification layer that was left out (used to infer the output width), or None.
    """

    layers: list[tuple[str, nn.Module]]
    default_taps: list[str] = field(default_factory=list)
    classifier: nn.Module | None = None


_LAYOUTS: dict[type, Callable[[Any], BackboneLayout]] = {}  # class -> layout of an instance of it
_Net = TypeVar("_Net", bound=nn.Module)


def register_backbone_layout(cls: type) -> Callable:
    """Decorator registering ``fn(backbone) -> BackboneLayout`` for ``cls`` and its subclasses.

    A subclass that overrides ``forward`` is rejected (its forward path is unknown) unless it is registered itself.

    Example::

        >>> import torch
        >>> from monai_medl.networks.nets import MixedEffectsCNN
        >>> class MyNet(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        ...         self.fc = nn.Linear(4, 1)
        ...
        ...     def forward(self, x):
        ...         return self.fc(self.body(x).flatten(1))
        >>> @register_backbone_layout(MyNet)
        ... def _my_layout(net):
        ...     layers = list(iter_layers(net.body, "body")) + [("flat", nn.Flatten(1))]
        ...     return BackboneLayout(layers, default_taps=["body.0"], classifier=net.fc)
        >>> [name for name, _ in backbone_layout(MyNet()).layers]
        ['body.0', 'body.1', 'body.2', 'flat']
        >>> net = MixedEffectsCNN(num_clusters=3, backbone=MyNet())  # MyNet can now be a mixed-effects backbone
        >>> net(torch.randn(2, 1, 16, 16), torch.eye(3)[[0, 2]]).mixed.shape
        torch.Size([2, 1])
    """

    def decorator(fn: Callable[[_Net], BackboneLayout]) -> Callable[[_Net], BackboneLayout]:
        _LAYOUTS[cls] = fn
        return fn

    return decorator


def backbone_layout(backbone: nn.Module) -> BackboneLayout:
    """The :class:`BackboneLayout` of ``backbone`` (nearest registered class in its method resolution order).

    Raises:
        TypeError: for an unsupported backbone or a subclass that changes ``forward``, listing what is supported.
    """
    for cls in type(backbone).__mro__:
        if cls in _LAYOUTS:
            if type(backbone).forward is not getattr(cls, "forward", None):
                raise TypeError(
                    f"{type(backbone).__name__} overrides {cls.__name__}.forward, so its forward path is unknown; "
                    "register it with monai_medl.networks.nets.register_backbone_layout."
                )
            return _LAYOUTS[cls](backbone)
    supported = sorted(c.__name__ for c in _LAYOUTS)
    raise TypeError(
        f"unsupported backbone {type(backbone).__name__}; supported: {supported} and their subclasses, "
        "or register a layout with monai_medl.networks.nets.register_backbone_layout."
    )


def _children(module: nn.Module, names: list[str], prefix: str = "") -> list[tuple[str, nn.Module]]:
    layers: list[tuple[str, nn.Module]] = []
    for name in names:
        child = getattr(module, name, None)
        if child is not None:
            layers += list(iter_layers(child, prefix + name))
    return layers


def _present(layers: list[tuple[str, nn.Module]], taps: list[str]) -> list[str]:
    names = [n for n, _ in layers]
    return [t for t in taps if any(n == t or n.startswith(t + ".") for n in names)]


@register_backbone_layout(DenseNet)
def _densenet_layout(net: DenseNet) -> BackboneLayout:
    layers = list(iter_layers(net.features, "features"))
    head = [(f"class_layers.{n}", m) for n, m in net.class_layers.named_children() if n != "out"]
    taps = ["features.pool0"] + [f"features.{n}" for n, _ in net.features.named_children() if "transition" in n]
    return BackboneLayout(layers + head, _present(layers, taps), getattr(net.class_layers, "out", None))


@register_backbone_layout(SmallCNN)
def _small_cnn_layout(net: SmallCNN) -> BackboneLayout:
    layers = list(iter_layers(net.features, "features"))
    head = [(f"class_layers.{n}", m) for n, m in net.class_layers.named_children() if n != "out"]
    taps = [f"features.{n}" for n, _ in list(net.features.named_children())[:-1]]
    return BackboneLayout(layers + head, taps, net.class_layers.get_submodule("out"))


@register_backbone_layout(ResNet)
def _resnet_layout(net: ResNet) -> BackboneLayout:
    stem = ["conv1", "bn1", "act"] + ([] if net.no_max_pool else ["maxpool"])
    layers = _children(net, stem + ["layer1", "layer2", "layer3", "layer4", "avgpool"])
    layers.append(("flatten", nn.Flatten(1)))
    taps = [stem[-1], "layer1", "layer2", "layer3"]
    return BackboneLayout(layers, taps, net.fc)


@register_backbone_layout(SENet)
def _senet_layout(net: SENet) -> BackboneLayout:
    layers = _children(net, ["layer0", "layer1", "layer2", "layer3", "layer4", "adaptive_avg_pool", "dropout"])
    layers.append(("flatten", nn.Flatten(1)))
    return BackboneLayout(layers, ["layer0", "layer1", "layer2", "layer3"], net.last_linear)


@register_backbone_layout(Regressor)
def _regressor_layout(net: Regressor) -> BackboneLayout:
    # Regressor/Classifier/Discriminator: ``net`` blocks, then ``final`` = Flatten, Linear (+ optional last act)
    layers = list(iter_layers(net.net, "net"))
    flatten, linear = net.final[0], net.final[1]
    layers.append(("final.0", flatten))
    taps = [f"net.{n}" for n, _ in list(net.net.named_children())[:-1]]
    return BackboneLayout(layers, taps, linear)


@register_backbone_layout(nn.Sequential)
def _sequential_layout(net: nn.Module) -> BackboneLayout:
    layers = list(iter_layers(net, ""))
    classifier = None
    if isinstance(layers[-1][1], nn.Linear):
        classifier = layers.pop()[1]
    if not layers:
        raise TypeError("an nn.Sequential backbone needs layers before its final nn.Linear classifier.")
    return BackboneLayout(layers, [], classifier)
