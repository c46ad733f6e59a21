# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Scriptable encoder/decoder walks over MONAI segmentation networks, with cluster scale/bias in the decoder.

A mixed-effects segmentation wrapper needs three things from a MONAI encoder-decoder that its ``forward`` does not
give: the encoder's feature maps (what the cluster adversary sees), a way to run the encoder once and the decoder
twice (without and with the cluster design ``z``), and ``z`` at the decoder's normalisation layers. Forward hooks
cannot carry ``z`` under TorchScript, so each supported network is walked explicitly, reusing its own modules (no
copy, no edit of its code): the encoder blocks run as they are, and every decoder block that is a plain
``nn.Sequential`` (MONAI ``Convolution``/``ADN``/``TwoConv`` are) is split by
:func:`~monai_medl.networks.blocks.build_stages` at its normalisation layers, each of which becomes a
:class:`~monai_medl.networks.layers.ClusterScaleBias` that keeps the network's own norm and applies
``(1 + gamma(z)) * x + beta(z)`` to its output. With ``z`` None or all zeros the walk computes exactly what the
network's ``forward`` computes.

Supported: ``monai.networks.nets.UNet`` (decoder norms of the up-convolutions; norms inside a ``ResidualUnit`` stay
fixed), ``BasicUNet`` (every norm of the ``UpCat`` convolutions), ``SegResNet`` (the norm of its final block;
its decoder ``ResBlock`` norms stay fixed) and ``SwinUNETR`` (the two main-path norms of every decoder
``UnetrUpBlock``'s residual block; the norm of the residual projection stays fixed). ``SwinUNETR`` itself cannot be
scripted (MONAI's implementation is not TorchScript-compatible), so neither can its walk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional, cast

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, SegResNet, SwinUNETR, UNet
from monai.utils import deprecated_arg
from torch import nn

from monai_medl import __version__
from monai_medl.networks.blocks.backbone_stages import build_stages, iter_layers, norm_channels
from monai_medl.networks.layers.cluster_scale_bias import ClusterScaleBias

__all__ = [
    "DecoderBlock",
    "UnetResBlockWalk",
    "EncoderDecoderPath",
    "UNetPath",
    "BasicUNetPath",
    "SegResNetPath",
    "SwinUNETRPath",
    "encoder_decoder_path",
    "cluster_mode",
]

CLUSTER_MODES = ("all", "last", "none")


def _renamed(old: str, new: str) -> Callable[[Callable], Callable]:
    """MONAI's ``deprecated_arg`` for a walk's first argument, now ``new`` in every walk: ``old=`` still works for
    one release, with a ``DeprecationWarning``."""
    # MONAI annotates warning_category as type[FutureWarning]; it takes any warning class
    category: Any = DeprecationWarning
    suffix = f"Use {new}= (or pass the network's module positionally)."
    return deprecated_arg(old, __version__, None, suffix, __version__, new, category)


def cluster_mode(value: bool | str | None) -> str:
    """The decoder's cluster scale/bias placement: ``"all"`` (True), ``"last"`` or ``"none"`` (False or None)."""
    if value is True:
        return "all"
    if value is False or value is None:
        return "none"
    if isinstance(value, str) and value in CLUSTER_MODES:
        return value
    raise ValueError(f"cluster_scale_bias must be True, False or one of {CLUSTER_MODES}, got {value!r}.")


def _decoder_blocks(
    block: Callable[..., nn.Module],
    modules: list[nn.Module],
    spatial_dims: int,
    num_clusters: int,
    cluster_scale_bias: bool | str,
    prior_scale: float,
    learn_prior_scale: bool,
) -> nn.ModuleList:
    """``block(module, spatial_dims, num_clusters, with_cluster, prior_scale, learn_prior_scale)`` for each decoder
    module in decoding order, with cluster scale/bias as :func:`cluster_mode` places it: ``"last"`` keeps it only in
    the last block that gets any (the decoder stage nearest the logits)."""
    mode = cluster_mode(cluster_scale_bias)

    def make(m: nn.Module, with_cluster: bool) -> nn.Module:
        return block(m, spatial_dims, num_clusters, with_cluster, prior_scale, learn_prior_scale)

    blocks = [make(m, mode != "none") for m in modules]
    if mode == "last":
        has = [i for i, b in enumerate(blocks) if any(isinstance(c, ClusterScaleBias) for c in b.modules())]
        keep = has[-1] if has else -1
        blocks = [b if i == keep else make(m, False) for i, (b, m) in enumerate(zip(blocks, modules))]
    return nn.ModuleList(blocks)


class BlockWalk(nn.Module):
    """Base of the decoder block walks: a block of the wrapped network run from its own modules, with cluster
    scale/bias (:class:`~monai_medl.networks.layers.ClusterScaleBias`) on the outputs of its normalisation layers.

    Args:
        module: the network's own block.
        spatial_dims: spatial dimensions.
        num_clusters: width of ``z``.
        cluster_scale_bias: give the block's normalisation layers cluster scale/bias (False: the block as it is).
        prior_scale: prior s.d. of the cluster scale/bias effects.
        learn_prior_scale: learn that prior s.d.
    """

    def __init__(
        self,
        module: nn.Module,
        spatial_dims: int,
        num_clusters: int,
        cluster_scale_bias: bool,
        prior_scale: float,
        learn_prior_scale: bool,
    ) -> None:
        super().__init__()
        self._walk(module, cluster_scale_bias, (spatial_dims, num_clusters, prior_scale, learn_prior_scale))

    def _walk(self, module: nn.Module, cluster_scale_bias: bool, settings: tuple[int, int, float, bool]) -> None:
        """Set this walk's modules from the network's ``module``; ``settings`` are those of the cluster scale/bias
        layers after the channels: ``(spatial_dims, num_clusters, prior_scale, learn_prior_scale)``."""
        raise NotImplementedError


class DecoderBlock(BlockWalk):
    """A decoder block of the wrapped network run as stages that end at its reachable normalisation layers.

    Args:
        module: the network's own block (its plain ``nn.Sequential`` parts are opened, see
            :func:`~monai_medl.networks.blocks.iter_layers`).
        spatial_dims, num_clusters, prior_scale, learn_prior_scale: as for :class:`BlockWalk`.
        cluster_scale_bias: give every reachable normalisation layer cluster scale/bias.
    """

    def _walk(self, module: nn.Module, cluster_scale_bias: bool, settings: tuple[int, int, float, bool]) -> None:
        layers = list(iter_layers(module, "block"))
        norms = [n for n, m in layers if norm_channels(m) is not None] if cluster_scale_bias else []
        self.stages, _ = build_stages(layers, [], norms, *settings)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x, z)
        return x

    def pair(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(block(x, None), block(x, z))`` sharing the layers before the first cluster scale/bias block; the second
        is None when the block has none (both are then the first)."""
        xm: Optional[torch.Tensor] = None
        for stage in self.stages:
            if xm is not None:
                xm = stage(xm, z)
                x = stage(x, None)
            elif stage.has_cluster:
                # ignore: a ModuleList's items are typed Module (and TorchScript has no cast)
                x, xm = stage.split(x, z)  # type: ignore[operator]
            else:
                # ignore: a ModuleList's items are typed Module (and TorchScript has no cast)
                x = stage.body(x)  # type: ignore[operator]
        return x, xm


class UnetResBlockWalk(BlockWalk):
    """A ``UnetResBlock`` or ``UnetBasicBlock`` (MONAI's DynUNet blocks, used by UNETR and SwinUNETR decoders) run
    from its own modules, with cluster scale/bias on the outputs of its main-path norms ``norm1`` and ``norm2``.

    The residual projection (``conv3``/``norm3`` of a ``UnetResBlock``) stays fixed. With ``z`` None or all zeros the
    walk computes exactly what the block's ``forward`` computes.

    Args:
        module: the network's own ``UnetResBlock`` or ``UnetBasicBlock`` (``block=``, its former name, still works
            with a ``DeprecationWarning``).
        spatial_dims, num_clusters, prior_scale, learn_prior_scale: as for :class:`BlockWalk`.
        cluster_scale_bias: give ``norm1`` and ``norm2`` cluster scale/bias (False: the block as it is).
    """

    @_renamed("block", "module")
    def __init__(self, module: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(module, *args, **kwargs)

    def _walk(self, block: nn.Module, cluster_scale_bias: bool, settings: tuple[int, int, float, bool]) -> None:
        if not isinstance(block, (UnetResBlock, UnetBasicBlock)):
            raise TypeError(f"expected a MONAI UnetResBlock or UnetBasicBlock, got {type(block).__name__}.")
        self.residual = isinstance(block, UnetResBlock)
        self.conv1, self.conv2, self.lrelu = block.conv1, block.conv2, block.lrelu
        norms = []
        for norm in (block.norm1, block.norm2):
            channels = norm_channels(norm)
            if cluster_scale_bias and channels is not None:
                norm = ClusterScaleBias.around(norm, channels, *settings)
            norms.append(norm)
        self.norm1, self.norm2 = norms
        projection = getattr(block, "conv3", None) if self.residual else None
        self.conv3 = projection if projection is not None else nn.Identity()
        norm3 = getattr(block, "norm3", None) if self.residual else None
        self.norm3 = norm3 if norm3 is not None else nn.Identity()

    def _norm(self, norm: nn.Module, x: torch.Tensor, z: Optional[torch.Tensor]) -> torch.Tensor:
        if isinstance(norm, ClusterScaleBias):
            return norm(x, z)
        return norm(x)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.lrelu(self._norm(self.norm1, self.conv1(x), z))
        out = self._norm(self.norm2, self.conv2(out), z)
        if self.residual:
            return self.lrelu(out + self.norm3(self.conv3(x)))
        return self.lrelu(out)


def pad_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pad ``x`` at the end of each spatial axis (replicate) to the spatial size of ``ref`` (odd encoder sizes)."""
    pads: list[int] = []
    for i in range(x.dim() - 1, 1, -1):  # F.pad lists the last axis first
        pads += [0, ref.shape[i] - x.shape[i]]
    if sum(pads) == 0:
        return x
    return F.pad(x, pads, "replicate")


DecoderFactory = Callable[[Callable[..., nn.Module], "list[nn.Module]"], nn.ModuleList]
"""``decoder(block, modules)``: the decoder blocks of a walk (a :class:`BlockWalk` class and the network's modules,
in decoding order), with the walk's cluster scale/bias settings."""


class EncoderDecoderPath(nn.Module):
    """Base of the walks: :meth:`encode` gives the encoder outputs, :meth:`decode` the logits for a ``z``.

    Args:
        net: the supported MONAI network (``UNetPath`` also takes ``unet=``, its former name, with a
            ``DeprecationWarning``).
        num_clusters: width of ``z``.
        cluster_scale_bias: where the decoder gets cluster scale/bias (see :func:`encoder_decoder_path`).
            Defaults to True (every reachable decoder normalisation layer).
        prior_scale: prior s.d. of the cluster scale/bias effects. Defaults to 0.25.
        learn_prior_scale: learn that prior s.d. Defaults to False.

    Attributes:
        spatial_dims, in_channels, out_channels: of the wrapped network.
        num_cluster_layers: number of decoder normalisation layers with cluster scale/bias.
        min_size: smallest spatial size per axis the network runs on in training mode (0: no constraint known).
    """

    min_size: int = 0
    if TYPE_CHECKING:  # set by the walks, for the type checker only (TorchScript reads no postponed annotations)
        spatial_dims: int
        in_channels: int
        out_channels: int

    def __init__(
        self,
        net: nn.Module,
        num_clusters: int,
        cluster_scale_bias: bool | str = True,
        prior_scale: float = 0.25,
        learn_prior_scale: bool = False,
    ) -> None:
        super().__init__()

        def decoder(block: Callable[..., nn.Module], modules: list[nn.Module]) -> nn.ModuleList:
            settings = (num_clusters, cluster_scale_bias, prior_scale, learn_prior_scale)
            return _decoder_blocks(block, modules, self.spatial_dims, *settings)

        self._walk(net, decoder)
        self.num_cluster_layers = sum(1 for m in self.modules() if isinstance(m, ClusterScaleBias))

    def _walk(self, net: nn.Module, decoder: DecoderFactory) -> None:
        """Set this walk's modules and ``spatial_dims``/``in_channels``/``out_channels`` from ``net``, building the
        decoder blocks with ``decoder`` (after ``spatial_dims`` is set)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs, shallow to deep; the last one is the bottleneck."""
        raise NotImplementedError

    def decode(self, skips: list[torch.Tensor], z: Optional[torch.Tensor]) -> torch.Tensor:
        """Logits from the encoder outputs, with the decoder's cluster scale/bias for ``z`` (None: none)."""
        raise NotImplementedError

    def decode_pair(self, skips: list[torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(decode(skips, None), decode(skips, z))``; walks that can share the decoder layers before the first
        cluster scale/bias block override this (all but ``SwinUNETR``)."""
        return self.decode(skips, None), self.decode(skips, z)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.decode(self.encode(x), z)


class _UpCatPath(EncoderDecoderPath):
    """Decoder shared by the walks whose decoder blocks take ``cat([skip, upsample(x)])`` and end in ``final_conv``:
    ``BasicUNet`` (its ``UpCat`` upsampling, padded to the skip's size as ``UpCat`` pads) and ``UNet`` (identity
    upsampling and ``final_conv``: its up-convolutions upsample inside the blocks; no padding, so sizes that
    ``UNet`` itself cannot concatenate fail here too)."""

    if TYPE_CHECKING:  # set by the walks, for the type checker only (TorchScript reads no postponed annotations)
        upsamples: nn.ModuleList
        ups: nn.ModuleList
        final_conv: nn.Module
        pad_skips: bool

    def _join(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A decoder block's input: the skip, then ``x`` (padded to the skip's size where the network pads)."""
        return torch.cat([skip, pad_to(x, skip) if self.pad_skips else x], 1)

    def decode(self, skips: list[torch.Tensor], z: Optional[torch.Tensor]) -> torch.Tensor:
        return self._decode_consuming(list(skips), z)

    def _decode_consuming(self, skips: list[torch.Tensor], z: Optional[torch.Tensor]) -> torch.Tensor:
        """:meth:`decode` that pops every encoder output off ``skips`` once it is used, so a pass that keeps no
        other reference to them (:meth:`forward`) frees each one as the network's own forward does."""
        x = skips.pop()
        for upsample, block in zip(self.upsamples, self.ups):
            x = block(self._join(skips.pop(), upsample(x)), z)
        return self.final_conv(x)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._decode_consuming(self.encode(x), z)

    def decode_pair(self, skips: list[torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, xm = skips[-1], None
        n = len(skips) - 1
        for i, (upsample, block) in enumerate(zip(self.upsamples, self.ups)):
            skip = skips[n - 1 - i]
            if xm is None:
                # ignore: a ModuleList's items are typed Module (and TorchScript has no cast)
                x, xm = block.pair(self._join(skip, upsample(x)), z)  # type: ignore[operator]
            else:
                x = block(self._join(skip, upsample(x)), None)
                xm = block(self._join(skip, upsample(xm)), z)
        x = self.final_conv(x)
        return x, (x if xm is None else self.final_conv(xm))


class UNetPath(_UpCatPath):
    """Walk of ``monai.networks.nets.UNet``: ``Sequential(down, SkipConnection(inner), up)`` unrolled level by level.

    Example::

        >>> unet = UNet(3, 1, 4, channels=(8, 16, 32), strides=(2, 2))
        >>> path = UNetPath(unet, num_clusters=3)
        >>> x = torch.randn(1, 1, 16, 16, 16)
        >>> torch.equal(path.eval()(x), unet.eval()(x))
        True
    """

    @_renamed("unet", "net")
    def __init__(self, net: UNet, *args: Any, **kwargs: Any) -> None:
        super().__init__(net, *args, **kwargs)

    def _walk(self, unet: nn.Module, decoder: DecoderFactory) -> None:
        unet = cast(UNet, unet)
        downs, ups = [], []
        block: nn.Module = unet.model
        while True:
            if not (isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection)):
                raise TypeError(f"unexpected UNet structure at {type(block).__name__}; was UNet.model overridden?")
            skip = block[1]
            if skip.mode != "cat" or skip.dim != 1:
                raise TypeError(f"UNetPath needs channel concatenation skips, got mode={skip.mode!r} dim={skip.dim}.")
            downs.append(block[0])
            ups.append(block[2])
            inner = skip.submodule
            if isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection):
                block = inner
            else:
                self.bottom = inner
                break
        self.spatial_dims = int(unet.dimensions)
        self.in_channels = int(unet.in_channels)
        self.out_channels = int(unet.out_channels)
        self.downs = nn.ModuleList(downs)
        self.ups = decoder(DecoderBlock, list(reversed(ups)))  # deepest first
        self.upsamples = nn.ModuleList([nn.Identity() for _ in ups])
        self.final_conv = nn.Identity()
        self.pad_skips = False

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips: list[torch.Tensor] = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.append(self.bottom(x))
        return skips


class BasicUNetPath(_UpCatPath):
    """Walk of ``monai.networks.nets.BasicUNet``: ``conv_0``, ``down_1..4``, ``upcat_4..1``, ``final_conv``.

    Each ``UpCat`` runs as upsample, pad to the skip's size, concatenate (skip first), then its convolutions split at
    their normalisation layers.

    Example::

        >>> net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4))
        >>> x = torch.randn(1, 1, 32, 32)
        >>> torch.equal(BasicUNetPath(net, num_clusters=2).eval()(x), net.eval()(x))
        True
    """

    def _walk(self, net: nn.Module, decoder: DecoderFactory) -> None:
        net = cast(BasicUNet, net)
        # MONAI adds TwoConv's convolutions with add_module, so they are untyped
        first = cast("nn.Conv1d | nn.Conv2d | nn.Conv3d", net.get_submodule("conv_0.conv_0.conv"))
        self.spatial_dims = first.weight.dim() - 2
        self.in_channels = int(first.in_channels)
        self.out_channels = int(net.final_conv.out_channels)
        self.encoders = nn.ModuleList([net.conv_0, net.down_1, net.down_2, net.down_3, net.down_4])
        upcats = [net.upcat_4, net.upcat_3, net.upcat_2, net.upcat_1]
        self.upsamples = nn.ModuleList([u.upsample for u in upcats])
        self.ups = decoder(DecoderBlock, [u.convs for u in upcats])
        self.final_conv = net.final_conv
        self.pad_skips = True

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        return skips


class SegResNetPath(EncoderDecoderPath):
    """Walk of ``monai.networks.nets.SegResNet`` (``convInit``, ``down_layers``; ``up_samples``/``up_layers``).

    Example::

        >>> net = SegResNet(3, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,))
        >>> x = torch.randn(1, 1, 16, 16, 16)
        >>> torch.equal(SegResNetPath(net, num_clusters=2).eval()(x), net.eval()(x))
        True
    """

    def _walk(self, net: nn.Module, decoder: DecoderFactory) -> None:
        net = cast(SegResNet, net)
        self.spatial_dims = int(net.spatial_dims)
        self.in_channels = int(net.in_channels)
        convs = [m for m in net.conv_final.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        self.out_channels = int(convs[-1].out_channels) if net.use_conv_final else int(net.init_filters)
        self.conv_init = net.convInit
        self.dropout = net.dropout if net.dropout_prob is not None else nn.Identity()
        self.down_layers = net.down_layers
        self.up_samples = net.up_samples
        self.up_layers = net.up_layers
        # one decoder stage with norms: "last" is "all"
        final = decoder(DecoderBlock, [net.conv_final if net.use_conv_final else nn.Identity()])[0]
        self.final = cast(DecoderBlock, final)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.dropout(self.conv_init(x))
        skips: list[torch.Tensor] = []
        for down in self.down_layers:
            x = down(x)
            skips.append(x)
        return skips

    def _trunk(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        n = len(skips) - 1
        for i, (up, layer) in enumerate(zip(self.up_samples, self.up_layers)):
            x = layer(up(x) + skips[n - 1 - i])
        return x

    def decode(self, skips: list[torch.Tensor], z: Optional[torch.Tensor]) -> torch.Tensor:
        return self.final(self._trunk(skips), z)

    def decode_pair(self, skips: list[torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, xm = self.final.pair(self._trunk(skips), z)
        return x, (x if xm is None else xm)


class SwinUNETRPath(EncoderDecoderPath):
    """Walk of ``monai.networks.nets.SwinUNETR``: the Swin transformer and ``encoder1..4``/``encoder10`` as they are,
    each decoder ``UnetrUpBlock`` as transposed convolution, concatenation and a :class:`UnetResBlockWalk`.

    The encoder outputs (what the adversary sees) are ``encoder1..4``, the transformer's fourth stage and the
    ``encoder10`` bottleneck. Inputs must be divisible by ``patch_size ** 5`` per spatial axis (32 by default), as
    for ``SwinUNETR`` itself.

    Example::

        >>> net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1),
        ...                 num_heads=(1, 1, 1, 1))
        >>> x = torch.randn(1, 1, 64, 64)
        >>> torch.equal(SwinUNETRPath(net, num_clusters=2).eval()(x), net.eval()(x))
        True
    """

    def _walk(self, net: nn.Module, decoder: DecoderFactory) -> None:
        net = cast(SwinUNETR, net)
        out_conv = net.out.conv.conv
        self.spatial_dims = out_conv.weight.dim() - 2
        self.in_channels = int(net.swinViT.patch_embed.proj.in_channels)
        self.out_channels = int(out_conv.out_channels)
        self.divisor = [int(p) ** 5 for p in net.swinViT.patch_size]
        self.min_size = 2 * max(self.divisor)  # the bottleneck's instance norm needs more than one voxel
        self.normalize = bool(net.normalize)
        self.swin = net.swinViT
        self.encoders = nn.ModuleList([net.encoder1, net.encoder2, net.encoder3, net.encoder4])
        self.bottleneck = net.encoder10
        decoders = [net.decoder5, net.decoder4, net.decoder3, net.decoder2, net.decoder1]  # deepest first
        self.upsamples = nn.ModuleList([d.transp_conv for d in decoders])
        self.ups = decoder(UnetResBlockWalk, [d.conv_block for d in decoders])
        self.out = net.out

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.jit.is_scripting():
            bad = [int(s) for s, d in zip(x.shape[2:], self.divisor) if int(s) % d]
            if bad:
                raise ValueError(
                    f"SwinUNETR needs spatial sizes divisible by {self.divisor} (patch_size ** 5), got "
                    f"{list(x.shape[2:])}."
                )
        hidden = self.swin(x, self.normalize)
        inputs = [x, hidden[0], hidden[1], hidden[2]]
        skips = [encoder(h) for encoder, h in zip(self.encoders, inputs)]
        return skips + [hidden[3], self.bottleneck(hidden[4])]

    def decode(self, skips: list[torch.Tensor], z: Optional[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        n = len(skips) - 1
        for i, (upsample, block) in enumerate(zip(self.upsamples, self.ups)):
            x = block(torch.cat([upsample(x), skips[n - 1 - i]], 1), z)
        return self.out(x)


def encoder_decoder_path(
    network: nn.Module,
    num_clusters: int,
    cluster_scale_bias: bool | str = True,
    prior_scale: float = 0.25,
    learn_prior_scale: bool = False,
) -> EncoderDecoderPath:
    """The :class:`EncoderDecoderPath` for a supported MONAI segmentation network (subclasses included).

    ``cluster_scale_bias``: True or ``"all"`` for every reachable decoder normalisation layer, ``"last"`` for those of
    the last decoder block that has any (the stage nearest the logits: :meth:`EncoderDecoderPath.decode_pair` then
    shares the rest of the decoder between the fixed and the mixed prediction), False or ``"none"`` for none.

    Raises:
        TypeError: for an unsupported network, naming the supported ones.
    """
    walks: tuple[tuple[type[nn.Module], Callable[..., EncoderDecoderPath]], ...] = (
        (UNet, UNetPath),
        (BasicUNet, BasicUNetPath),
        (SegResNet, SegResNetPath),
        (SwinUNETR, SwinUNETRPath),
    )
    for cls, path in walks:
        if isinstance(network, cls):
            return path(network, num_clusters, cluster_scale_bias, prior_scale, learn_prior_scale)
    raise TypeError(
        f"no encoder-decoder walk for {type(network).__name__}; supported: monai.networks.nets UNet, BasicUNet, "
        "SegResNet, SwinUNETR (and their subclasses)."
    )
