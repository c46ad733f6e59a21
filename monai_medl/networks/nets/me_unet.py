# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects segmentation network: a MONAI encoder-decoder with cluster effects in its decoder and logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from monai.networks.nets import UNet
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_medl.networks.blocks.backbone_stages import global_avg_pool
from monai_medl.networks.blocks.encoder_decoder_path import encoder_decoder_path
from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.layers.random_effects import RandomEffects
from monai_medl.networks.layers.random_effects_settings import (
    UNET_KEYWORDS,
    RandomEffectsLike,
    RandomEffectsSettings,
)
from monai_medl.networks.nets.image_mixed_effects_net import ImageMixedEffectsNet
from monai_medl.networks.nets.me_cnn import instantiate_backbone

__all__ = ["MixedEffectsUNet", "MEUNet"]

DEFAULT_PROBE_SIZE = {2: 64, 3: 32}


class MixedEffectsUNet(ImageMixedEffectsNet):
    """Mixed-effects segmentation around a MONAI encoder-decoder (``UNet``, ``BasicUNet``, ``SegResNet``,
    ``SwinUNETR``; 2D or 3D).

    The network's own modules (not copies; its code is not edited) are walked by an
    :class:`~monai_medl.networks.blocks.EncoderDecoderPath`: the encoder runs once and, by default, so does the
    decoder, whose logits serve both predictions. Random effects act in two places:

    * **per-cluster, per-class intercepts** (the default's only random effect): a
      :class:`~monai_medl.networks.layers.RandomEffects` layer with one unit per output class adds ``u_0(z)`` to every
      voxel's logits (a site's systematic labelling tendency, e.g. a protocol that draws grey matter thicker);
    * **random slopes on feature maps** (opt-in): every reachable decoder normalisation layer
      (``cluster_scale_bias=True``), or only those of the last decoder stage that has any (``"last"``), is followed
      by a cluster scale/bias ``(1 + gamma(z)) * x + beta(z)``
      (:class:`~monai_medl.networks.layers.ClusterScaleBias` keeping the network's own norm), so each site gets its
      own contrast and offset of decoder features; the decoder then runs once without and once with ``z`` from its
      first cluster scale/bias block on (the layers before it are shared).

    The default (intercepts only) was chosen on the seen sites' validation scans by
    ``benchmarks.segmentation_variants``: no placement of cluster scale/bias was shown better there, and it trains
    at the lowest cost.

    The fixed-effects prediction is the decoder without ``z`` (the bare network, exactly); the mixed one adds the
    effects of ``z``. With ``z`` None or all zeros the mixed prediction equals the bare network's output exactly.
    The adversary sees every encoder output (the last is the bottleneck) average-pooled to a vector.

    Outputs (see :class:`~monai_medl.networks.nets.MixedEffectsNet`): in eval mode and under TorchScript
    ``net(x, z)`` returns the mixed logits ``(batch, out_channels, *spatial)`` in one pass, so
    ``SlidingWindowInferer``, Dice metrics and post-transforms see a tensor. A ``z`` with one row is broadcast over
    the batch (sliding-window inference passes windows in batches; see
    :class:`~monai_medl.inferers.SiteSlidingWindowInferer` for batches of several sites). In training mode it
    returns a :class:`~monai_medl.networks.blocks.MixedEffectsOutput` ``(mixed, fixed, features, None, kl)`` for
    :class:`~monai_medl.losses.MixedEffectsLoss` (``task="dice_ce"``) and
    :class:`~monai_medl.handlers.AdversaryHandler`.

    Args:
        num_clusters: number of training clusters ``K`` (width of ``z``).
        backbone: a supported MONAI network, a config dictionary with ``"_target_"`` (e.g. ``"BasicUNet"``), or None
            for ``UNet(spatial_dims, in_channels, out_channels, channels, strides, num_res_units=num_res_units)``.
        spatial_dims: spatial dimensions (checked against a given backbone). Defaults to 3.
        in_channels: input channels (checked against a given backbone). Defaults to 1.
        out_channels: classes (checked against a given backbone; required without one). Defaults to None.
        channels: UNet channels when ``backbone`` is None. Defaults to ``(16, 32, 64, 128)``.
        strides: UNet strides when ``backbone`` is None. Defaults to ``(2, 2, 2)``.
        num_res_units: UNet residual units when ``backbone`` is None. Defaults to 1.
        cluster_scale_bias: cluster scale/bias on the decoder's normalisation outputs: False (or ``"none"``) for a
            one-pass model whose only random effect is the per-class intercept, ``"last"`` on those of the last
            decoder block that has any (the fixed and mixed predictions then share the rest of the decoder, so
            training walks the decoder almost once), True (or ``"all"``) on every reachable one. Defaults to False.
        random_intercept: per-cluster, per-class logit intercepts. None: from ``random_effects`` (True by default).
        intercept_prior_scale: prior s.d. of the intercepts. None: from ``random_effects`` (0.5 by default, see
            :attr:`DEFAULT_RANDOM_EFFECTS`).
        cluster_prior_scale: prior s.d. of the cluster scale/bias effects. None: from ``random_effects`` (0.25 by
            default).
        learn_prior_scale: learn every prior s.d. (variance components). None: from ``random_effects`` (False by
            default).
        post_loc_init_scale: s.d. of the intercepts' initial posterior means. None: from ``random_effects`` (0.1
            by default).
        probe_size: spatial size of the zero input used once to measure the encoder widths; defaults to 32 (3D) or
            64 (2D) per axis, or the backbone's smallest trainable size if larger (64 for ``SwinUNETR``).
        random_effects: a :class:`~monai_medl.networks.layers.RandomEffectsSettings` (or its dictionary) holding
            the settings above; None for :attr:`DEFAULT_RANDOM_EFFECTS`. The UNet has no random slopes on feature
            vectors (its slopes are the cluster scale/bias blocks), so ``random_slopes`` and ``correlated`` must be
            False; ``linear_slopes`` does not apply.

    Example::

        >>> net = MixedEffectsUNet(num_clusters=4, spatial_dims=3, out_channels=4, channels=(8, 16, 32), strides=(2, 2))
        >>> x, z = torch.randn(2, 1, 16, 16, 16), torch.eye(4)[[0, 3]]
        >>> out = net(x, z)                                    # training mode: both predictions, adversary inputs, KL
        >>> out.mixed.shape, [f.shape[1] for f in out.features]
        (torch.Size([2, 4, 16, 16, 16]), [8, 16, 32])
        >>> adversary = net.make_adversary()
        >>> net.eval()(x).shape                                # eval, population level (z = None): the bare UNet
        torch.Size([2, 4, 16, 16, 16])

    In a bundle config::

        "network_def": {
            "_target_": "monai_medl.networks.nets.MixedEffectsUNet",
            "num_clusters": "@num_sites",
            "backbone": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4,
                         "channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 1}
        }
    """

    DEFAULT_RANDOM_EFFECTS = RandomEffectsSettings(random_slopes=False, intercept_prior_scale=0.5)
    """The UNet's random-effects defaults: no feature-vector slopes, a wider intercept prior (per-class logits)."""
    RANDOM_EFFECTS_KEYWORDS = UNET_KEYWORDS
    UNSUPPORTED_RANDOM_EFFECTS = dict.fromkeys(
        ("random_slopes", "correlated"), "its slopes are the decoder's cluster scale/bias blocks"
    )

    def __init__(
        self,
        num_clusters: int,
        backbone: nn.Module | Mapping | None = None,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 1,
        cluster_scale_bias: bool | str = False,
        probe_size: Sequence[int] | int | None = None,
        random_effects: RandomEffectsLike = None,
        **random_effects_kwargs: bool | float | None,
    ) -> None:
        super().__init__()
        settings = self.resolve_random_effects(random_effects, random_effects_kwargs)
        if int(num_clusters) < 1:
            raise ValueError(f"num_clusters must be >= 1 (the number of training clusters), got {num_clusters}.")
        if backbone is None:
            if out_channels is None:
                raise ValueError("out_channels (the number of classes) is required when no backbone is given.")
            backbone = UNet(spatial_dims, in_channels, out_channels, channels, strides, num_res_units=num_res_units)
        elif isinstance(backbone, Mapping):
            backbone = instantiate_backbone(backbone)
        elif not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, a config dict or None, got {type(backbone).__name__}.")
        self.num_clusters = int(num_clusters)
        self.path = encoder_decoder_path(
            backbone,
            self.num_clusters,
            cluster_scale_bias,
            settings.cluster_prior_scale,
            settings.learn_prior_scale,
        )
        given = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels}
        for name, value in given.items():
            found = getattr(self.path, name)
            if value is not None and int(value) != found:
                raise ValueError(f"{name}={value} does not match the backbone ({type(backbone).__name__}: {found}).")
        self.spatial_dims = int(self.path.spatial_dims)
        self.in_channels = int(self.path.in_channels)
        self.out_channels = int(self.path.out_channels)
        self.has_cluster_layers = self.path.num_cluster_layers > 0
        self.intercept: RandomEffects | None = None
        if settings.random_intercept:
            self.intercept = settings.effects(self.num_clusters, self.out_channels, settings.intercept_prior_scale)
        self.__dict__["backbone"] = backbone  # shared modules; not registered, so not saved twice
        default_probe = max(DEFAULT_PROBE_SIZE.get(self.spatial_dims, 64), self.path.min_size)
        spatial = ensure_tuple_rep(probe_size or default_probe, self.spatial_dims)
        self.feature_sizes = self._probe_channels(self.path, self.path.encode, spatial, "encoder")

    def _design(self, x: torch.Tensor, z: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``z`` with a single row broadcast over the batch (sliding-window batches of one image's windows)."""
        if z is not None and z.dim() == 2 and z.shape[0] == 1 and x.shape[0] > 1:
            return z.expand(x.shape[0], z.shape[1])
        return z

    def _add_intercept(self, logits: torch.Tensor, z: Optional[torch.Tensor], inplace: bool = False) -> torch.Tensor:
        intercept = self.intercept
        if z is None or intercept is None:
            return logits
        shape = [logits.shape[0], logits.shape[1]] + [1] * (logits.dim() - 2)
        if inplace:
            return logits.add_(intercept(z).view(shape))
        return logits + intercept(z).view(shape)

    def predict(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mixed logits in one pass (decoder cluster scale/bias and intercepts for ``z``); what eval mode returns."""
        z = self._design(x, z)
        if not torch.jit.is_scripting():
            self.check_inputs(x, z)
            self._check_image(x)
        logits = self.path(x, z)
        # the decoder's fresh output, not needed for a gradient (eval, no_grad): add in place, one logit map fewer
        return self._add_intercept(logits, z, inplace=not logits.requires_grad)

    @torch.jit.unused
    def forward_all(self, x: torch.Tensor, z: torch.Tensor | None = None) -> MixedEffectsOutput:
        z = self._design(x, z)
        self.check_inputs(x, z)
        self._check_image(x)
        skips = self.path.encode(x)
        if z is not None and self.has_cluster_layers:
            fixed, mixed = self.path.decode_pair(skips, z)  # one decoder walk up to the first cluster block
        else:
            fixed = mixed = self.path.decode(skips, None)
        if z is not None:
            mixed = self._add_intercept(mixed, z)
        return MixedEffectsOutput(mixed, fixed, [global_avg_pool(s) for s in skips], None, None)


MEUNet = MixedEffectsUNet
