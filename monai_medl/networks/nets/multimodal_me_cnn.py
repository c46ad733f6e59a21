# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Multimodal mixed-effects CNN: one encoder per modality, optional covariates, fusion, per-sample missing inputs."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from monai.networks.layers.utils import get_act_layer
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_medl.networks.blocks.mixed_effects_head import MixedEffectsHead
from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.blocks.modality_fusion import FUSION_MODES, ModalityFusion
from monai_medl.networks.blocks.modality_stem import ModalityMeanConv, scatter_rows, zero_touch
from monai_medl.networks.layers.random_effects import RandomEffects
from monai_medl.networks.nets.backbone_layouts import backbone_layout
from monai_medl.networks.nets.cluster_classifier import ClusterAdversary
from monai_medl.networks.nets.me_cnn import DEFAULT_PROBE_SIZE, MixedEffectsCNN, first_conv, instantiate_backbone
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet, check_finite
from monai_medl.networks.nets.small_cnn import SmallCNN

__all__ = ["MultimodalMixedEffectsCNN", "MultimodalMECNN", "ModalityBranch", "CovariateEncoder"]

FUSIONS = ("early",) + FUSION_MODES


def split_first_conv(backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(first_conv, rest)``: a copy of ``backbone`` whose first convolution is replaced by ``nn.Identity``.

    ``rest`` then starts at whatever followed the convolution (its normalisation and activation), so a module that
    computes the first convolution differently (e.g. :class:`~monai_medl.networks.blocks.ModalityMeanConv`) can be
    put in front of it. The user's backbone is not modified.
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


class CovariateEncoder(nn.Module):
    """MLP embedding of tabular covariates with the branch interface of :meth:`MixedEffectsCNN.encode`.

    Args:
        in_features: number of covariates.
        channels: hidden widths; the last one is the embedding length.
        act: activation after every layer. Defaults to ``"relu"``.

    Example::

        >>> enc = CovariateEncoder(3, (8,))
        >>> features, h = enc.encode(torch.randn(2, 3))
        >>> h.shape, features[-1] is h
        (torch.Size([2, 8]), True)
    """

    def __init__(self, in_features: int, channels: Sequence[int], act: str | tuple = "relu") -> None:
        super().__init__()
        if not channels:
            raise ValueError("covariate_channels must list at least one width when num_covariates > 0.")
        layers: list[nn.Module] = []
        width = int(in_features)
        for units in channels:
            layers += [nn.Linear(width, int(units)), get_act_layer(act)]
            width = int(units)
        self.net = nn.Sequential(*layers)
        self.feature_sizes = [width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def encode(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([h], h)``: covariates have no cluster scale/bias, so the fixed and ``z`` paths coincide."""
        h = self.net(x)
        return [h], h


class ModalityBranch(nn.Module):
    """One input branch: an encoder for a slice of the input channels and random slopes on its embedding.

    ``encoder`` is a :class:`~monai_medl.networks.nets.MixedEffectsCNN` (its backbone stages, pooled taps and
    optional cluster scale/bias blocks; its own head is not used) or, for tabular covariates, a
    :class:`CovariateEncoder`; anything with ``encode(x, z) -> (features, h_z)`` works. The mixed-effects
    embedding is ``h_z * (1 + u_s(z))`` with ``h_z`` the encoder's ``z`` path and ``u_s`` the branch's
    :class:`~monai_medl.networks.layers.RandomEffects` slopes.

    Args:
        encoder: the branch encoder.
        slopes: random slopes on the embedding, or None.
        start: first input channel of the branch (image branches). Defaults to 0.
        stop: one past the last input channel (image branches). Defaults to 0.
        is_image: True when the branch reads ``x[:, start:stop]``, False when it reads the covariates.
            Defaults to True.
    """

    def __init__(
        self,
        encoder: nn.Module,
        slopes: RandomEffects | None,
        start: int = 0,
        stop: int = 0,
        is_image: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.slopes = slopes
        self.start = int(start)
        self.stop = int(stop)
        self.is_image = is_image
        self.feature_sizes = [int(n) for n in encoder.feature_sizes]
        self.embedding_dim = self.feature_sizes[-1]

    def forward(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(features, mixed_embedding)``; ``features[-1]`` is the fixed-effects embedding."""
        features, hm = self.encoder.encode(x, z)
        slopes = self.slopes
        if z is not None and slopes is not None:
            hm = hm * (1 + slopes(z))
        return features, hm


class MultimodalMixedEffectsCNN(MixedEffectsNet):
    """Mixed-effects CNN for several imaging modalities (2D or 3D), optional tabular covariates and missing inputs.

    Two ways to fuse the modalities (``fusion``), both honouring a per-sample presence mask:

    * ``"early"`` (default): the backbone's first convolution is made once per modality and the responses are
      averaged over the modalities a sample has, before the first normalisation and activation
      (:class:`~monai_medl.networks.blocks.ModalityMeanConv`); the rest of the backbone is one encoder shared by
      all modalities. With every modality present this is a convolution over the stacked contrasts (early fusion),
      so the network can form voxel-wise cross-contrast features; an absent modality is left out of the mean.
    * ``"concat"`` / ``"attention"`` (late fusion): every modality has its own encoder, any backbone
      :class:`~monai_medl.networks.nets.MixedEffectsCNN` wraps (SmallCNN by default, MONAI DenseNet/ResNet/SENet/
      Regressor/Classifier, or one per modality), or one encoder shared by all modalities (``shared_weights=True``);
      the branch embeddings ``h_m`` are fused by :class:`~monai_medl.networks.blocks.ModalityFusion`
      (concatenation or gated attention).

    Why early is the default: on the two-contrast benchmark cohort (``python -m benchmarks.multimodal``) every
    model fits its training set (AUROC 1.0), but late fusion generalised worse than FLAIR alone, and so did a mean
    of the per-modality feature maps after the first block's activation; averaging the per-modality convolutions
    before it matched early fusion. The disease signal is a voxel-wise combination of contrasts, which has to be
    formed before the first non-linearity. Late fusion remains the choice for modalities that are not
    co-registered or need different backbones.

    Optional covariates (age, sex, ...) go through a small MLP branch, concatenated to the image embedding(s).
    Fixed effects: the fused embedding is read out by a linear layer. Random effects: cluster scale/bias blocks in
    the encoder(s) (``cluster_scale_bias``), random slopes on each branch embedding, ``h_m * (1 + u_m(z))`` (per
    modality with late fusion, on the shared image embedding with early fusion, and on the covariate embedding);
    on the fused embedding, the :class:`~monai_medl.networks.blocks.MixedEffectsHead` adds a random intercept (and
    optionally random slopes). The adversary sees the pooled taps of every branch (see :meth:`make_adversary`).

    **Input layout.** ``x`` holds the modalities stacked on the channel axis in the order of ``modalities``
    (``in_channels`` channels each), so MONAI tools that feed one tensor (``verify_net_in_out``, inferers) work.
    **Missing modalities.** ``mask`` (``(batch, num_modalities)``, or ``(batch, num_modalities + 1)`` with a last
    column for the covariates; 1 = present, 0 = absent) says which inputs each sample has. The channels of an
    absent modality are never read (any placeholder, zeros or NaN, gives the same result) and nothing is imputed:
    with early fusion the modality is left out of the mean of first-layer responses; with late fusion its branch
    is run only on the samples that have it (batch statistics are not polluted) and it contributes nothing to the
    fused embedding (exactly zero in the concatenation, zero attention weight in attention fusion). Modalities
    listed in ``required`` raise a ValueError naming the modality when absent.
    ``modality_dropout`` drops present, non-required inputs at random during training (at least one input per
    sample is kept) so the model learns to predict from any subset; it costs accuracy with every input present
    (see the benchmark), so it is off by default; switching it on only after a warm-up
    (:class:`~monai_medl.handlers.ModalityDropoutWarmup`) reduces that cost. Covariates given as None are absent.

    Outputs follow :class:`~monai_medl.networks.nets.MixedEffectsNet`: ``net(x, z, mask, covariates)`` returns the
    mixed prediction (the fixed one when ``z`` is None or zero), ``forward_all`` the full
    :class:`~monai_medl.networks.blocks.MixedEffectsOutput` whose ``features`` are, per branch, the pooled taps and
    the embedding (zeros for samples without that input; with early fusion one image branch), then the fused
    embedding for attention fusion.
    Everything scripts with ``torch.jit.script``.

    Args:
        num_clusters: number of training clusters ``K`` (width of ``z``).
        modalities: modality names in channel order, or their number. Defaults to ``("t1", "flair")``.
        backbone: encoder backbone: None (``SmallCNN``), an ``nn.Module`` (copied once per modality unless
            ``shared_weights``), a MONAI config dict with ``"_target_"`` (instantiated per modality), or a sequence
            with one of those per modality. Defaults to None.
        spatial_dims: spatial dimensions; inferred from the backbone (3 for the default). Defaults to None.
        in_channels: channels per modality (int or one per modality); inferred from the backbone (1 for the
            default). Defaults to None.
        out_channels: outputs of the heads. Defaults to 1.
        shared_weights: late fusion only: one encoder (and its cluster scale/bias) shared by all modalities; the
            random slopes on the embeddings stay per modality. Defaults to False.
        num_covariates: number of tabular covariates (0 for none). Defaults to 0.
        covariate_channels: hidden widths of the covariate MLP (the last is its embedding). Defaults to ``(16,)``.
        act: activation of the covariate MLP and of the attention projections. Defaults to ``"relu"``.
        fusion: ``"early"`` (per-modality first convolution, mean over present modalities, shared encoder),
            ``"concat"`` or ``"attention"`` (late fusion of per-modality encoders; gated attention over the present
            inputs). Defaults to ``"early"``.
        fusion_dim: width of the fused embedding with attention fusion. Defaults to 64.
        required: modality names that must be present in every sample, or True for all. Defaults to ``()``.
        modality_dropout: probability of dropping each present, non-required input of a sample in training.
            Defaults to 0.0.
        tap_layers: adversary taps of each encoder (see ``MixedEffectsCNN``). Defaults to None (the backbone's).
        cluster_scale_bias: cluster scale/bias on the encoders' normalisation layers (see ``MixedEffectsCNN``).
            Defaults to False.
        branch_random_slopes: random slopes on every branch embedding. Defaults to True.
        random_slopes: random slopes on the fused embedding in the head (redundant with ``branch_random_slopes``
            under concatenation, hence off by default). Defaults to False.
        random_intercept: random intercept in the head. Defaults to True.
        slope_prior_scale: prior s.d. of every random slope. Defaults to 0.1.
        intercept_prior_scale: prior s.d. of the random intercept. Defaults to 0.1.
        cluster_prior_scale: prior s.d. of the cluster scale/bias effects. Defaults to 0.25.
        learn_prior_scale: learn every prior s.d. (variance components). Defaults to False.
        post_loc_init_scale: s.d. of the initial posterior means of the slopes and intercept. Defaults to 0.1.
        learn_noise_scale: learned noise s.d. for regression with ``task="gaussian_nll"``. Defaults to False.
        probe_size: spatial size used once to measure each encoder's feature widths (see ``MixedEffectsCNN``).
            Defaults to None.

    Example::

        >>> net = MultimodalMixedEffectsCNN(num_clusters=4, modalities=("t1", "flair"), spatial_dims=3,
        ...                                 num_covariates=2)  # early fusion; fusion="attention" for late fusion
        >>> x = torch.randn(3, 2, 32, 32, 32)                  # T1 and FLAIR on the channel axis
        >>> z, mask = torch.eye(4)[[0, 1, 3]], torch.tensor([[1, 1], [1, 0], [0, 1]])  # FLAIR missing for item 1
        >>> net(x, z, mask, torch.randn(3, 2)).shape, net(x).shape
        (torch.Size([3, 1]), torch.Size([3, 1]))
        >>> adversary = net.make_adversary()                   # sized for every branch's pooled taps

    In a bundle config::

        "network_def": {"_target_": "monai_medl.networks.nets.MultimodalMixedEffectsCNN", "num_clusters": 4,
                        "modalities": ["t1", "flair"], "spatial_dims": 3, "fusion": "early"}
    """

    __jit_unused_properties__ = ["feature_sizes", "adversary_in_features"]

    def __init__(
        self,
        num_clusters: int,
        modalities: Sequence[str] | int = ("t1", "flair"),
        backbone: nn.Module | Mapping | Sequence[nn.Module | Mapping | None] | None = None,
        spatial_dims: int | None = None,
        in_channels: int | Sequence[int] | None = None,
        out_channels: int = 1,
        shared_weights: bool = False,
        num_covariates: int = 0,
        covariate_channels: Sequence[int] = (16,),
        act: str | tuple = "relu",
        fusion: str = "early",
        fusion_dim: int = 64,
        required: Sequence[str] | bool = (),
        modality_dropout: float = 0.0,
        tap_layers: Sequence[str] | None = None,
        cluster_scale_bias: bool | Sequence[str] = False,
        branch_random_slopes: bool = True,
        random_slopes: bool = False,
        random_intercept: bool = True,
        slope_prior_scale: float = 0.1,
        intercept_prior_scale: float = 0.1,
        cluster_prior_scale: float = 0.25,
        learn_prior_scale: bool = False,
        post_loc_init_scale: float = 0.1,
        learn_noise_scale: bool = False,
        probe_size: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__()
        names = [f"modality{i}" for i in range(modalities)] if isinstance(modalities, int) else list(modalities)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"modalities must be distinct non-empty names (or a positive count), got {modalities!r}.")
        if not 0.0 <= float(modality_dropout) < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}.")
        if int(num_covariates) < 0:
            raise ValueError(f"num_covariates must be >= 0, got {num_covariates}.")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion mode must be one of {FUSIONS}, got {fusion!r}.")
        num_mod = len(names)
        early = fusion == "early"
        if early and shared_weights:
            raise ValueError(
                "shared_weights applies to late fusion ('concat'/'attention'); fusion='early' already shares the "
                "encoder after the per-modality first convolution."
            )
        if early and isinstance(backbone, Sequence) and not isinstance(backbone, (str, Mapping)):
            raise ValueError("fusion='early' takes one backbone (the shared encoder), not one per modality.")
        backbones = self._per_modality(backbone, num_mod, shared_weights)
        channels = [None] * num_mod if in_channels is None else in_channels
        channels = [channels] * num_mod if isinstance(channels, int) else list(channels)
        if len(channels) != num_mod:
            raise ValueError(f"in_channels must be an int or list one value per modality ({num_mod}), got {channels}.")

        self.num_clusters = int(num_clusters)
        self.modalities = names
        self.num_modalities = num_mod
        self.out_channels = int(out_channels)
        self.shared_weights = bool(shared_weights)
        self.modality_dropout = float(modality_dropout)
        slope_kwargs = {
            "prior_scale": slope_prior_scale,
            "learn_prior_scale": learn_prior_scale,
            "post_loc_init_scale": post_loc_init_scale,
        }

        encoder_kwargs = {
            "spatial_dims": spatial_dims,
            "out_channels": self.out_channels,
            "tap_layers": tap_layers,
            "cluster_scale_bias": cluster_scale_bias,
            "random_slopes": False,
            "random_intercept": False,
            "cluster_prior_scale": cluster_prior_scale,
            "learn_prior_scale": learn_prior_scale,
            "probe_size": probe_size,
        }
        branches = nn.ModuleList()
        self.stem: ModalityMeanConv | None = None
        if early:
            self.stem, encoder = self._early_encoder(backbone, channels, encoder_kwargs)
            slopes = None
            if branch_random_slopes:
                slopes = RandomEffects(self.num_clusters, units=encoder.feature_dim, **slope_kwargs)
            branches.append(ModalityBranch(encoder, slopes, 0, sum(self.stem.in_channels)))
            channels = self.stem.in_channels
        start = 0
        shared: MixedEffectsCNN | None = None
        for i, name in enumerate([] if early else names):
            encoder = shared
            if encoder is None:
                encoder = MixedEffectsCNN(
                    self.num_clusters,
                    backbone=backbones[i],
                    in_channels=channels[i],
                    **encoder_kwargs,
                )
                encoder.head.requires_grad_(False)  # the encoder's own read-out is not used (the fused head is)
                if shared_weights:
                    shared = encoder
            if channels[i] is not None and int(channels[i]) != encoder.in_channels:
                raise ValueError(
                    f"in_channels for modality {name!r} is {channels[i]}, the encoder takes {encoder.in_channels}."
                )
            if i > 0 and encoder.spatial_dims != branches[0].encoder.spatial_dims:
                raise ValueError(
                    f"modality {name!r} has a {encoder.spatial_dims}D encoder, modality {names[0]!r} a "
                    f"{branches[0].encoder.spatial_dims}D one; all encoders must share spatial_dims."
                )
            slopes = (
                RandomEffects(self.num_clusters, units=encoder.feature_dim, **slope_kwargs)
                if branch_random_slopes
                else None
            )
            branches.append(ModalityBranch(encoder, slopes, start, start + encoder.in_channels))
            start += encoder.in_channels
            channels[i] = encoder.in_channels
        self.spatial_dims = branches[0].encoder.spatial_dims if self.stem is None else self.stem.spatial_dims
        self.modality_channels = [int(c) for c in channels]
        self.in_channels = sum(self.modality_channels)
        self.num_covariates = int(num_covariates)
        self.has_covariates = self.num_covariates > 0
        if self.has_covariates:
            encoder = CovariateEncoder(self.num_covariates, covariate_channels, act)
            width = encoder.feature_sizes[-1]
            slopes = RandomEffects(self.num_clusters, units=width, **slope_kwargs) if branch_random_slopes else None
            branches.append(ModalityBranch(encoder, slopes, is_image=False))
        self.branches = branches
        self.num_inputs = num_mod + (1 if self.has_covariates else 0)
        self.input_names = names + (["covariates"] if self.has_covariates else [])

        if required is True:
            required = names
        elif required is False or required is None:
            required = []
        required = [required] if isinstance(required, str) else list(required)
        unknown = [r for r in required if r not in names]
        if unknown:
            raise ValueError(f"required modalities {unknown} are not among the modalities {names}.")
        self.required = required
        self.required_index = [names.index(r) for r in required]
        required_mask = torch.zeros(self.num_inputs, dtype=torch.bool)
        required_mask[self.required_index] = True
        self.register_buffer("required_mask", required_mask, persistent=False)

        self.fusion_mode = fusion
        self.fusion = ModalityFusion(
            [b.embedding_dim for b in branches], mode="concat" if early else fusion, fusion_dim=fusion_dim, act=act
        )
        self.fuse_features = fusion == "attention"  # a concatenation is already in the branch features
        self.feature_dim = self.fusion.out_features
        self.head = MixedEffectsHead(
            self.feature_dim,
            self.out_channels,
            self.num_clusters,
            random_slopes=random_slopes,
            random_intercept=random_intercept,
            slope_prior_scale=slope_prior_scale,
            intercept_prior_scale=intercept_prior_scale,
            learn_prior_scale=learn_prior_scale,
            post_loc_init_scale=post_loc_init_scale,
            learn_noise_scale=learn_noise_scale,
        )

    def _early_encoder(
        self, backbone, channels: list, encoder_kwargs: dict
    ) -> tuple[ModalityMeanConv, MixedEffectsCNN]:
        """The backbone's first convolution, one per modality (:class:`ModalityMeanConv`), and the shared rest."""
        if backbone is None:
            dims = encoder_kwargs["spatial_dims"] or 3
            backbone = SmallCNN(dims, channels[0] or 1, self.out_channels)
        elif isinstance(backbone, Mapping):
            backbone = instantiate_backbone(backbone)
        elif not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, a config dict or None, got {type(backbone).__name__}.")
        conv, rest = split_first_conv(backbone)
        stem = ModalityMeanConv(conv, [conv.in_channels if c is None else int(c) for c in channels])
        # the shared encoder is probed at the size of the first convolution's output, not of the image
        dims = stem.spatial_dims
        probe = encoder_kwargs["probe_size"] or getattr(backbone, "in_shape", None) or DEFAULT_PROBE_SIZE[dims]
        with torch.no_grad():
            x = torch.zeros(1, conv.in_channels, *ensure_tuple_rep(probe, dims), device=conv.weight.device)
            probe = list(conv(x).shape[2:])
        encoder = MixedEffectsCNN(self.num_clusters, backbone=rest, **{**encoder_kwargs, "probe_size": probe})
        encoder.head.requires_grad_(False)  # the encoder's own read-out is not used (the fused head is)
        if encoder.in_channels != stem.out_channels:
            raise ValueError(
                f"fusion='early' needs the layers after the backbone's first convolution to take its "
                f"{stem.out_channels} output channels; {type(backbone).__name__} continues with {encoder.in_channels}."
            )
        return stem, encoder

    @staticmethod
    def _per_modality(backbone, num_mod: int, shared: bool) -> list:
        if isinstance(backbone, Sequence) and not isinstance(backbone, (str, Mapping)):
            if shared:
                raise ValueError("shared_weights=True takes one backbone, not a list of per-modality backbones.")
            if len(backbone) != num_mod:
                raise ValueError(f"backbone lists {len(backbone)} entries but there are {num_mod} modalities.")
            return list(backbone)
        if isinstance(backbone, nn.Module) and not shared:
            return [backbone] + [copy.deepcopy(backbone) for _ in range(num_mod - 1)]
        return [backbone] * num_mod

    @property
    def feature_sizes(self) -> list[int]:
        """Widths of :attr:`MixedEffectsOutput.features`: each branch's pooled taps and embedding, then fusion."""
        sizes = [n for b in self.branches for n in b.feature_sizes]
        return sizes + ([self.feature_dim] if self.fuse_features else [])

    @property
    def adversary_in_features(self) -> int:
        """Total length of the adversary's input (sum of :attr:`feature_sizes`)."""
        return int(sum(self.feature_sizes))

    @torch.jit.unused
    def make_adversary(self, hidden: Sequence[int] = (64, 32), act: str | tuple = "leakyrelu", dropout: float = 0.0):
        """A :class:`~monai_medl.networks.nets.ClusterAdversary` sized for every branch's pooled activations.

        Leaky ReLU by default, as :meth:`MixedEffectsCNN.make_adversary` (dead ReLU units let the encoders silence
        the adversary without removing site information).
        """
        return ClusterAdversary(self.adversary_in_features, self.num_clusters, hidden=hidden, act=act, dropout=dropout)

    def presence(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,  # noqa: UP045
        covariates: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> torch.Tensor:
        """Boolean ``(batch, num_inputs)`` presence of every input (modalities, then covariates).

        All modalities are present when ``mask`` is None; the covariates when they are given (and their mask
        column, if any, is 1).

        Raises:
            ValueError: when a modality listed in ``required`` is absent for some sample.
        """
        present = self._presence(x.shape[0], x.device, mask, covariates)
        missing = (~present) & self.required_mask
        if bool(missing.any()):
            for j, name in enumerate(self.modalities):
                if bool(missing[:, j].any()):
                    raise ValueError(
                        "modality '"
                        + name
                        + "' is required but the mask marks it absent for "
                        + str(int(missing[:, j].sum()))
                        + " sample(s); supply it or build the network without it in required."
                    )
        return present

    def _presence(
        self,
        batch: int,
        device: torch.device,
        mask: Optional[torch.Tensor],  # noqa: UP045
        covariates: Optional[torch.Tensor],  # noqa: UP045
    ) -> torch.Tensor:
        if mask is None:
            present = torch.ones(batch, self.num_modalities, dtype=torch.bool, device=device)
        else:
            present = mask.to(device=device) > 0
        if self.has_covariates:
            if present.shape[1] == self.num_modalities:
                present = torch.cat([present, torch.ones_like(present[:, :1])], dim=1)
            if covariates is None:
                present = torch.cat([present[:, : self.num_modalities], torch.zeros_like(present[:, :1])], dim=1)
        return present

    def _drop_inputs(self, present: torch.Tensor) -> torch.Tensor:
        """Training-time modality dropout: drop present, droppable inputs, keeping at least one per sample."""
        drop = (torch.rand(present.shape, device=present.device) < self.modality_dropout) & ~self.required_mask
        kept = present & ~drop
        return torch.where(kept.any(dim=1, keepdim=True), kept, present)

    def forward_all(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,  # noqa: UP045
        mask: Optional[torch.Tensor] = None,  # noqa: UP045
        covariates: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> MixedEffectsOutput:
        if not torch.jit.is_scripting():
            self._check_inputs(x, z, mask, covariates)
        present = self.presence(x, mask, covariates)
        if self.training and self.modality_dropout > 0.0:
            present = self._drop_inputs(present)
        batch = x.shape[0]
        stem = self.stem
        images = present[:, : self.num_modalities]
        branch_present = present  # late fusion: one branch per input
        if stem is not None:  # early fusion: one image branch (any modality present), then the covariates
            branch_present = torch.cat([images.any(dim=1, keepdim=True), present[:, self.num_modalities :]], dim=1)
        features: list[torch.Tensor] = []
        fixed_emb: list[torch.Tensor] = []
        mixed_emb: list[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            if branch.is_image:
                xi = x[:, branch.start : branch.stop]
            elif covariates is not None:
                xi = covariates.to(x.dtype)
            else:
                xi = x.new_zeros(batch, self.num_covariates)  # never run: the covariate branch is absent
            col = branch_present[:, i]
            if bool(col.all()):
                if stem is not None and branch.is_image:
                    xi = stem(xi, images)
                feats, hm = branch(xi, z)
            elif bool(col.any()):
                idx = col.nonzero().squeeze(1)
                zi: Optional[torch.Tensor] = None  # noqa: UP045
                if z is not None:
                    zi = z.index_select(0, idx)
                xi = xi.index_select(0, idx)
                if stem is not None and branch.is_image:
                    xi = stem(xi, images.index_select(0, idx))
                sub, hm_sub = branch(xi, zi)
                feats = [scatter_rows(f, idx, batch) for f in sub]
                hm = scatter_rows(hm_sub, idx, batch)
            else:
                feats = [x.new_zeros(batch, n) for n in branch.feature_sizes]
                if self.training and not torch.jit.is_scripting():
                    feats[-1] = feats[-1] + self._zero_touch(branch)
                    if stem is not None and branch.is_image:
                        feats[-1] = feats[-1] + self._zero_touch(stem)
                hm = feats[-1]
            features.extend(feats)
            fixed_emb.append(feats[-1])
            mixed_emb.append(hm)
        fused = self.fusion(fixed_emb, branch_present)
        if self.fuse_features:
            features.append(fused)
        fixed = self.head.linear(fused)
        if z is None:
            mixed = fixed
        else:
            mixed = self.head(self.fusion(mixed_emb, branch_present), z)[0]
        return MixedEffectsOutput(mixed, fixed, features, self.head.log_noise_scale, None)

    @torch.jit.unused
    def _zero_touch(self, branch: nn.Module) -> torch.Tensor:
        """:func:`~monai_medl.networks.blocks.modality_stem.zero_touch` of a branch absent from the whole batch (an
        exactly zero term, so ``DistributedDataParallel`` works without ``find_unused_parameters``)."""
        return zero_touch(branch)

    def forward(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,  # noqa: UP045
        mask: Optional[torch.Tensor] = None,  # noqa: UP045
        covariates: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> torch.Tensor:
        # as MixedEffectsNet.forward: the prediction tensor in eval mode and TorchScript, the structured output
        # (with the KL) in eager training mode
        if torch.jit.is_scripting():
            return self.forward_all(x, z, mask, covariates).mixed
        if not self.training:
            return self.forward_all(x, z, mask, covariates).mixed
        return self.with_kl(self.forward_all(x, z, mask, covariates))

    @torch.jit.unused
    def _check_inputs(
        self,
        x: torch.Tensor,
        z: torch.Tensor | None,
        mask: torch.Tensor | None,
        covariates: torch.Tensor | None,
    ) -> None:
        """Eager validation with messages naming the input; image values are checked per branch (present only)."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            layout = " + ".join(f"{c} {n}" for n, c in zip(self.modalities, self.modality_channels))
            raise ValueError(
                f"input must have shape (batch, {self.in_channels} channels = {layout}, {self.spatial_dims} spatial "
                f"axes), got {tuple(x.shape)}."
            )
        self.check_inputs(x.new_zeros(x.shape[0], 0), z)  # z width and batch
        if mask is not None:
            widths = [self.num_modalities] + ([self.num_inputs] if self.has_covariates else [])
            if mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] not in widths:
                raise ValueError(
                    f"mask must have shape (batch={x.shape[0]}, {' or '.join(map(str, widths))}) with columns "
                    f"{self.input_names}, got {tuple(mask.shape)}."
                )
            values = torch.unique(mask.detach().float().cpu())
            if not all(v in (0.0, 1.0) for v in values.tolist()):
                raise ValueError(f"mask must hold 0 (absent) or 1 (present), got values {values.tolist()}.")
            present = self._presence(x.shape[0], x.device, mask, covariates)
            empty = (~present.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(
                    f"sample(s) {empty} have no input present (mask and covariates): nothing to predict from."
                )
            for j in self.required_index:
                absent = (~present[:, j]).nonzero().flatten().tolist()
                if absent:
                    raise ValueError(
                        f"modality {self.modalities[j]!r} is required but absent (mask column {j}) for sample(s) "
                        f"{absent}; supply it, or build the network without it in required={self.required}."
                    )
        if covariates is not None:
            if not self.has_covariates:
                raise ValueError("covariates were given but the network was built with num_covariates=0.")
            if covariates.dim() != 2 or covariates.shape != (x.shape[0], self.num_covariates):
                raise ValueError(
                    f"covariates must have shape (batch={x.shape[0]}, {self.num_covariates}), "
                    f"got {tuple(covariates.shape)}."
                )
            check_finite(covariates, "covariates")


MultimodalMECNN = MultimodalMixedEffectsCNN
