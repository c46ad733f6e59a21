# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects CNN: any supported MONAI image backbone turned into an ARMED-style mixed-effects model."""

from __future__ import annotations

import pydoc
from collections.abc import Mapping, Sequence
from typing import Optional, cast

import torch
from monai.networks import nets as monai_nets
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_medl.networks.blocks.backbone_stages import build_stages, global_avg_pool, norm_channels
from monai_medl.networks.blocks.mixed_effects_head import MixedEffectsHead
from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.layers.factor_designs import check_num_levels
from monai_medl.networks.layers.random_effects_settings import (
    IMAGE_HEAD_KEYWORDS,
    RandomEffectsLike,
    RandomEffectsSettings,
)
from monai_medl.networks.nets.backbone_layouts import BackboneLayout, backbone_layout
from monai_medl.networks.nets.image_mixed_effects_net import ImageMixedEffectsNet
from monai_medl.networks.nets.small_cnn import SmallCNN

__all__ = ["MixedEffectsCNN", "MECNN"]

# spatial size of the dummy input that measures a backbone's feature widths, per spatial_dims
DEFAULT_PROBE_SIZE = {1: 256, 2: 64, 3: 32}


def instantiate_backbone(config: Mapping) -> nn.Module:
    """Build a backbone from a config-style mapping such as ``{"_target_": "DenseNet121", ...}``.

    ``_target_`` is a class of ``monai.networks.nets`` (short name) or a dotted import path; the other keys are its
    arguments. Networks stay independent of the bundle machinery: inside a bundle config the nested ``backbone``
    dictionary is instantiated by ``ConfigParser`` itself and arrives here as a module.
    """
    if "_target_" not in config:
        raise ValueError(f"a backbone config needs a '_target_' key (e.g. 'DenseNet121'), got keys {sorted(config)}.")
    target = config["_target_"]
    if isinstance(target, str):
        component = getattr(monai_nets, target, None) if "." not in target else pydoc.locate(target)
        if component is None:
            raise ValueError(f"backbone '_target_' {target!r} is neither in monai.networks.nets nor importable.")
        target = component
    net = target(**{k: v for k, v in config.items() if not k.startswith("_")})
    if not isinstance(net, nn.Module):
        raise TypeError(f"backbone config {config['_target_']!r} built a {type(net).__name__}, not an nn.Module.")
    return net


def first_conv(layers: Sequence[tuple[str, nn.Module]]) -> nn.modules.conv._ConvNd:
    """The first convolution inside the ``(name, layer)`` sequence (it fixes the input channels)."""
    for _, layer in layers:
        for m in layer.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                return m
    raise TypeError("the backbone has no convolution layer; MixedEffectsCNN wraps image (1D/2D/3D) networks.")


def _as_backbone(
    backbone: nn.Module | Mapping | None, spatial_dims: int | None, in_channels: int | None, out_channels: int | None
) -> nn.Module:
    """The backbone module: as given, built from its config dictionary, or the default ``SmallCNN``."""
    if backbone is None:
        return SmallCNN(spatial_dims or 3, in_channels or 1, out_channels or 1)
    if isinstance(backbone, Mapping):
        return instantiate_backbone(backbone)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be an nn.Module, a config dict or None, got {type(backbone).__name__}.")
    return backbone


def _backbone_io(
    backbone: nn.Module,
    layout: BackboneLayout,
    spatial_dims: int | None,
    in_channels: int | None,
    out_channels: int | None,
) -> tuple[int, int, int]:
    """``(spatial_dims, in_channels, out_channels)`` read from the backbone; given values are checked against it."""
    conv = first_conv(layout.layers)
    dims, chans = conv.weight.dim() - 2, int(conv.in_channels)
    for name, given, found in (("spatial_dims", spatial_dims, dims), ("in_channels", in_channels, chans)):
        if given is not None and int(given) != found:
            raise ValueError(f"{name}={given} does not match the backbone ({type(backbone).__name__}: {found}).")
    if out_channels is None:
        if not isinstance(layout.classifier, nn.Linear):
            raise ValueError(f"out_channels is required: {type(backbone).__name__} has no linear classifier.")
        out_channels = int(layout.classifier.out_features)
    return dims, chans, int(out_channels)


class MixedEffectsCNN(ImageMixedEffectsNet):
    """Mixed-effects CNN around an existing MONAI network (2D or 3D), built in one call.

    The backbone's own modules (not copies; its code is not edited) form the fixed-effects path. Its
    classification layer is left out and a :class:`~monai_medl.networks.blocks.MixedEffectsHead` reads the
    penultimate features ``h``: ``fixed = W h + b`` and ``mixed = W [h * (1 + u_s(z))] + b + u_0(z)``. Intermediate
    activations at ``tap_layers`` are average-pooled over space into vectors and returned, with ``h``, for the
    cluster adversary, so the adversary stays cheap in 3D. Optionally the backbone's normalisation layers become
    cluster scale/bias blocks (random slopes and intercepts on feature maps): the backbone's norm layer is kept and
    ``(1 + gamma(z)) * x + beta(z)`` is applied to its output, so ``z = 0`` reproduces the backbone exactly. The
    backbone is walked as an explicit list of stages split at those layers, so the model scripts with
    ``torch.jit.script`` (no hooks).

    Supported backbones (and their subclasses): MONAI ``DenseNet`` (DenseNet121/169/201/264; default taps
    ``features.pool0`` and every transition), ``ResNet`` (``resnet10`` ... ``resnet200``; taps the stem and
    ``layer1``-``layer3``), ``SENet`` (SEResNet50/101/152, SEResNeXt, SENet154; ``layer0``-``layer3``),
    ``Regressor``/``Classifier``/``Discriminator`` (every block of ``net`` but the last; the last activation, e.g.
    a sigmoid, is dropped: the heads give logits), :class:`~monai_medl.networks.nets.SmallCNN` (the default, every
    block but the last) and plain ``nn.Sequential`` models; add others with
    :func:`~monai_medl.networks.nets.register_backbone_layout`. Layer names are the backbone's qualified module
    names (``"features.transition2"``, ``"layer3"``, ``"features.block1.adn.N"``); a block name means its output.

    Outputs (see :class:`~monai_medl.networks.nets.MixedEffectsNet`). In eval mode and under TorchScript
    ``net(x, z)`` returns one tensor, the mixed prediction, computed in one pass (it is the fixed-effects prediction
    when ``z`` is None or all zeros; ``z`` is one-hot for a seen cluster, a probability vector for an inferred one).
    In training mode it returns a :class:`~monai_medl.networks.blocks.MixedEffectsOutput`
    ``(mixed, fixed, features, log_noise_scale, kl)`` where ``features`` are the pooled taps followed by ``h``:
    :class:`~monai_medl.losses.MixedEffectsLoss` takes it as ``pred`` and
    :class:`~monai_medl.handlers.AdversaryHandler` reads it from ``engine.state.output``; ``net.forward_all(x, z)``
    returns the same in either mode (``kl`` None). With cluster scale/bias blocks and a given ``z`` the layers after
    the first block run twice in training (a ``z``-free pass gives the fixed prediction and the adversary's
    activations, a pass with ``z`` the mixed prediction).

    The wrapped backbone stays reachable as ``net.backbone`` (not registered, so it is not saved twice); load
    pretrained weights into it before or after wrapping. The state-dict keys of the wrapper are its own
    (``stages.<i>.body.<name with dots as underscores>``, ``head.*``).

    Args:
        num_clusters: number of training clusters ``K`` (width of ``z``), or a mapping grouping factor -> its
            number of training levels.
        backbone: an ``nn.Module``, a MONAI config dictionary with ``"_target_"``, or None for
            ``SmallCNN(spatial_dims, in_channels, out_channels)``. Defaults to None.
        spatial_dims: spatial dimensions; inferred from the backbone's first convolution (3 for the default
            backbone). Defaults to None.
        in_channels: input channels; inferred from the backbone (1 for the default backbone). Defaults to None.
        out_channels: outputs of the heads; defaults to the backbone's classification layer width (1 for the
            default backbone).
        feature_dim: expected length of the penultimate features; inferred (a given value is checked).
            Defaults to None.
        tap_layers: layers whose pooled outputs the adversary sees (``h`` is always included); None for the
            backbone's defaults, ``[]`` for ``h`` only. Defaults to None.
        cluster_scale_bias: True to give every normalisation layer on the backbone's forward path cluster
            scale/bias, ``"last"`` for the last one only (the fixed and mixed paths then share every stage before
            it, so training runs almost nothing twice), or a list of those layers' names. Defaults to False.
        learn_noise_scale: learned noise s.d. for regression with ``task="gaussian_nll"``. Defaults to False.
        probe_size: spatial size of the zero input used once at construction to measure the tap widths; defaults
            to the backbone's ``in_shape`` if it has one, else 32 (3D), 64 (2D) or 256 (1D) per axis.
        random_effects: a :class:`~monai_medl.networks.layers.RandomEffectsSettings` (or, in a bundle config, its
            dictionary), the one way to set the random effects: ``random_slopes`` (on ``h`` in the head),
            ``random_intercept``, ``slope_prior_scale``, ``intercept_prior_scale``, ``cluster_prior_scale`` (of the
            cluster scale/bias effects), ``learn_prior_scale`` (variance components; use ``kl_weight="elbo"`` in
            the loss) and ``post_loc_init_scale``; ``linear_slopes`` does not apply (no input slopes) and
            ``correlated=True`` is rejected. Defaults to None (the settings' defaults).
        random_effects_kwargs: deprecated, removed in the next release: the same settings as individual keywords
            (``slope_prior_scale=0.2``); they still work, with a ``DeprecationWarning``.

    **Several grouping factors.** ``num_clusters`` may map grouping factors to their numbers of levels (e.g.
    ``{"site": 6, "subject": 120}``, crossed or nested); ``z`` is then a dictionary of per-factor designs or level
    indices and the head holds each factor's slopes and intercept (see
    :class:`~monai_medl.networks.blocks.MixedEffectsHead`, which also documents unseen levels). Cluster scale/bias
    blocks need a single factor; ``make_adversary`` predicts the first factor. The multi-factor model runs eagerly
    (``torch.jit.script`` raises a clear error).

    Example::

        >>> from monai.networks.nets import DenseNet121
        >>> net = MixedEffectsCNN(num_clusters=4, backbone=DenseNet121(spatial_dims=3, in_channels=1, out_channels=1))
        >>> x, z = torch.randn(2, 1, 32, 32, 32), torch.eye(4)[[0, 3]]
        >>> out = net(x, z)                                    # training mode: both heads, adversary inputs, KL
        >>> out.mixed.shape, out.fixed.shape
        (torch.Size([2, 1]), torch.Size([2, 1]))
        >>> [f.shape[1] for f in out.features] == net.feature_sizes
        True
        >>> adversary = net.make_adversary()                   # ClusterClassifier sized for out.features
        >>> net.eval()(x, z).shape, net(x).shape               # eval: the mixed, and population-level (z = None)
        (torch.Size([2, 1]), torch.Size([2, 1]))

    In a bundle config (``configs/inference.json`` / ``train.json``)::

        "network_def": {
            "_target_": "monai_medl.networks.nets.MixedEffectsCNN",
            "num_clusters": "@num_sites",
            "backbone": {"_target_": "DenseNet121", "spatial_dims": 3, "in_channels": 1, "out_channels": 1},
            "cluster_scale_bias": false
        },
        "adversary": "$@network_def.make_adversary()"

    or ``"backbone": {"_target_": "monai_medl.networks.nets.SmallCNN", "spatial_dims": 3}``. ``verify_net_in_out``
    and ``ckpt_export`` work because ``z`` is optional; the bundle's ``prepare_batch``
    (:class:`~monai_medl.engines.MixedEffectsPrepareBatch`) passes ``z`` during training and evaluation.
    """

    RANDOM_EFFECTS_KEYWORDS = IMAGE_HEAD_KEYWORDS
    RANDOM_EFFECTS_KEYWORDS_DEPRECATED = True  # random_effects=RandomEffectsSettings(...) is the one way
    UNSUPPORTED_RANDOM_EFFECTS = {"correlated": "its random slopes act on learned features, not on covariates"}

    def __init__(
        self,
        num_clusters: int | Mapping[str, int],
        backbone: nn.Module | Mapping | None = None,
        spatial_dims: int | None = None,
        in_channels: int | None = None,
        out_channels: int | None = None,
        feature_dim: int | None = None,
        tap_layers: Sequence[str] | None = None,
        cluster_scale_bias: bool | Sequence[str] = False,
        learn_noise_scale: bool = False,
        probe_size: Sequence[int] | int | None = None,
        random_effects: RandomEffectsLike = None,
        **random_effects_kwargs: bool | float | None,
    ) -> None:
        super().__init__()
        settings = self.resolve_random_effects(random_effects, random_effects_kwargs)
        self.num_levels = check_num_levels(num_clusters) if isinstance(num_clusters, Mapping) else None
        if self.num_levels is not None:
            num_clusters = next(iter(self.num_levels.values()))
        if int(cast(int, num_clusters)) < 1:  # a count by now (the first factor's levels when grouped)
            raise ValueError(f"num_clusters must be >= 1 (the number of training clusters), got {num_clusters}.")
        backbone = _as_backbone(backbone, spatial_dims, in_channels, out_channels)
        layout = backbone_layout(backbone)
        self.num_clusters = int(cast(int, num_clusters))
        self.spatial_dims, self.in_channels, self.out_channels = _backbone_io(
            backbone, layout, spatial_dims, in_channels, out_channels
        )
        cluster_layers = self._cluster_layers(layout, cluster_scale_bias, type(backbone).__name__)
        self.stages, self.tap_names = build_stages(
            layout.layers,
            list(layout.default_taps if tap_layers is None else tap_layers),
            cluster_layers,
            self.spatial_dims,
            self.num_clusters,
            settings.cluster_prior_scale,
            settings.learn_prior_scale,
        )
        self.cluster_layer_names = cluster_layers
        self.__dict__["backbone"] = backbone  # shared modules; not registered, so not saved twice
        self._build_head(layout, feature_dim, probe_size, learn_noise_scale, settings)

    def _cluster_layers(
        self, layout: BackboneLayout, cluster_scale_bias: bool | str | Sequence[str], backbone: str
    ) -> list[str]:
        """The names of the layers that get cluster scale/bias (see ``cluster_scale_bias``)."""
        if cluster_scale_bias is True or cluster_scale_bias == "last":
            cluster_layers = [n for n, m in layout.layers if norm_channels(m) is not None]
            if cluster_scale_bias == "last":
                if not cluster_layers:
                    raise ValueError(
                        f"cluster_scale_bias='last' needs a normalisation layer in {backbone}, found none."
                    )
                cluster_layers = cluster_layers[-1:]
        elif cluster_scale_bias is False or cluster_scale_bias is None:
            cluster_layers = []
        else:
            cluster_layers = [cluster_scale_bias] if isinstance(cluster_scale_bias, str) else list(cluster_scale_bias)
        if cluster_layers and self.num_levels is not None:
            raise ValueError(
                f"cluster_scale_bias needs an integer num_clusters (one grouping factor), got {self.num_levels}; "
                "expected cluster_scale_bias=False."
            )
        return cluster_layers

    def _build_head(
        self,
        layout: BackboneLayout,
        feature_dim: int | None,
        probe_size: Sequence[int] | int | None,
        learn_noise_scale: bool,
        settings: RandomEffectsSettings,
    ) -> None:
        """Measure the tap widths on a zero input, then build the head (started as the backbone's classifier)."""
        if probe_size is None:
            probe_size = getattr(self.backbone, "in_shape", None) or DEFAULT_PROBE_SIZE[self.spatial_dims]
        self.feature_sizes = self._probe_channels(
            self.stages, lambda x: self._walk(x, None)[0], ensure_tuple_rep(probe_size, self.spatial_dims), "backbone"
        )
        if feature_dim is not None and int(feature_dim) != self.feature_sizes[-1]:
            raise ValueError(
                f"feature_dim={feature_dim} but the backbone's penultimate features have "
                f"{self.feature_sizes[-1]} values."
            )
        self.feature_dim = self.feature_sizes[-1]
        self.head = MixedEffectsHead(
            self.feature_dim,
            self.out_channels,
            self.num_clusters if self.num_levels is None else self.num_levels,
            learn_noise_scale=learn_noise_scale,
            random_effects=settings,
        )
        classifier = layout.classifier
        if isinstance(classifier, nn.Linear) and classifier.weight.shape == self.head.linear.weight.shape:
            # start the fixed-effects path as the backbone itself (keeps a pretrained classifier)
            with torch.no_grad():
                self.head.linear.weight.copy_(classifier.weight)
                if classifier.bias is not None:
                    self.head.linear.bias.copy_(classifier.bias)

    def _walk(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor],
    ) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        """Run the stages: pooled taps + ``h`` of the ``z``-free path, and ``h`` of the ``z`` path (if it differs)."""
        features: list[torch.Tensor] = []
        h = x
        hm: Optional[torch.Tensor] = None
        # the ignores: a ModuleList's items are typed Module (and TorchScript has no cast)
        for stage in self.stages:
            if hm is not None:
                hm = stage(hm, z)
                h = stage(h, None)
            else:
                h = stage.body(h)  # type: ignore[operator]
                if stage.has_cluster:
                    # the paths split at the first cluster scale/bias block (its norm runs once for both)
                    h, hm = stage.split_cluster(h, z)  # type: ignore[operator]
            if stage.tap:
                features.append(global_avg_pool(h))
        features.append(global_avg_pool(h))
        if hm is not None:
            hm = global_avg_pool(hm)
        return features, hm

    def predict(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mixed prediction in one pass (cluster scale/bias applied for ``z``, no taps, no fixed-effects pass).

        This is what eval mode and TorchScript return; it equals ``forward_all(x, z).mixed`` in eval mode.
        """
        if not torch.jit.is_scripting():
            # eval mode changes no state: NaN/Inf in x are caught through the prediction (no pass over the image)
            self.check_inputs(x, z, values=self.training)
            self._check_image(x)
        h = x
        # the ignores: a ModuleList's items are typed Module (and TorchScript has no cast)
        for stage in self.stages:
            h = stage.body(h)  # type: ignore[operator]
            if stage.has_cluster:
                h = stage.apply_cluster(h, z)  # type: ignore[operator]
        pred = self.head.predict(global_avg_pool(h), z)
        if not torch.jit.is_scripting():
            if not self.training:
                self.check_prediction(pred, x, z)
        return pred

    @torch.jit.export
    def forward_all(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> MixedEffectsOutput:
        if not torch.jit.is_scripting():
            self.check_inputs(x, z)
            self._check_image(x)
        features, hm = self._walk(x, z)
        h = features[-1]
        if hm is None:
            mixed, fixed = self.head(h, z)
        else:
            mixed = self.head(hm, z)[0]
            fixed = self.head.linear(h)
        return MixedEffectsOutput(mixed, fixed, features, self.head.log_noise_scale, None)

    def encode(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The backbone's side of :meth:`forward_all`, without the head (for models that fuse several branches).

        Returns:
            ``(features, h_mixed)``: ``features`` are the pooled taps followed by the fixed-effects penultimate
            features ``h`` (what the adversary sees, as in ``forward_all``); ``h_mixed`` are the penultimate features
            of the path with cluster scale/bias for ``z``, which is ``h`` itself when ``z`` is None or the model
            has no cluster scale/bias blocks.
        """
        if not torch.jit.is_scripting():
            self.check_inputs(x, z)
            self._check_image(x)
        features, hm = self._walk(x, z)
        if hm is None:
            return features, features[-1]
        return features, hm


MECNN = MixedEffectsCNN
