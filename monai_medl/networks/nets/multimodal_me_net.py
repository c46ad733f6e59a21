# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Shared part of the multimodal mixed-effects networks: inputs, presence, covariates, fusion, head, forward pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, List, Optional, cast  # noqa: UP035 (TorchScript reads List[int] in a local annotation)

import torch
from torch import nn

from monai_medl.networks.blocks.mixed_effects_head import MixedEffectsHead
from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.blocks.modality_fusion import ModalityFusion
from monai_medl.networks.blocks.modality_stem import scatter_rows
from monai_medl.networks.layers.random_effects_settings import (
    IMAGE_HEAD_KEYWORDS,
    RandomEffectsLike,
    RandomEffectsSettings,
)
from monai_medl.networks.nets.cluster_classifier import ClusterClassifier
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet, check_finite
from monai_medl.networks.nets.modality_branch import CovariateEncoder, ModalityBranch
from monai_medl.networks.nets.modality_encoders import ModalityEncoderFactory

__all__ = ["MultimodalMixedEffectsNet"]


def _modalities_and_channels(
    modalities: Sequence[str] | int, in_channels: int | Sequence[int] | None
) -> tuple[list[str], list[int | None]]:
    """The modality names (``modality0``... for a count) and one input-channel count per modality (None: from the
    backbone), checked."""
    names = [f"modality{i}" for i in range(modalities)] if isinstance(modalities, int) else list(modalities)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"modalities must be distinct non-empty names (or a positive count), got {modalities!r}.")
    given: int | Sequence[int | None] = [None] * len(names) if in_channels is None else in_channels
    channels: list[int | None] = [given] * len(names) if isinstance(given, int) else list(given)
    if len(channels) != len(names):
        raise ValueError(f"in_channels must be an int or list one value per modality ({len(names)}), got {channels}.")
    return names, channels


class MultimodalMixedEffectsNet(MixedEffectsNet):
    """Base of the multimodal mixed-effects CNNs: several imaging modalities, optional covariates, missing inputs.

    Subclasses decide only how the images are encoded (:meth:`_image_branches`, :meth:`_image_input`,
    :meth:`_branch_presence`): :class:`~monai_medl.networks.nets.EarlyFusionMixedEffectsCNN` (one shared encoder
    after a per-modality first convolution) and :class:`~monai_medl.networks.nets.LateFusionMixedEffectsCNN` (one
    encoder per modality, fused by :class:`~monai_medl.networks.blocks.ModalityFusion`). Everything else lives
    here once: argument checks, the encoders (through one
    :class:`~monai_medl.networks.nets.ModalityEncoderFactory`), the covariate branch, the presence mask and the
    required-modality check, modality dropout, the fused mixed-effects head and the forward pass.

    **Input layout.** ``x`` holds the modalities stacked on the channel axis in the order of ``modalities``
    (``in_channels`` channels each), so MONAI tools that feed one tensor (``verify_net_in_out``, inferers) work.
    **Missing modalities.** ``mask`` (``(batch, num_modalities)``, or ``(batch, num_modalities + 1)`` with a last
    column for the covariates; 1 = present, 0 = absent) says which inputs each sample has. The channels of an
    absent input are never used (any placeholder, zeros or NaN, gives the same result), nothing is imputed, and an
    absent branch contributes nothing to the fused embedding. In training mode a branch runs on the samples that
    have its input only (batch statistics are not polluted; a branch nobody in the batch has runs on zero rows, so
    its parameters get an exactly zero gradient and stay in the graph for ``DistributedDataParallel``). In eval mode
    and TorchScript every branch runs on the whole batch with absent inputs zero-filled and their outputs masked to
    zero, which gives the same per-sample result without data-dependent shapes. Modalities in ``required`` raise a
    ValueError naming the modality and samples when absent. ``modality_dropout`` drops present, non-required inputs
    at random in training (at least one input per sample is kept). Covariates given as None are absent.

    Outputs follow :class:`~monai_medl.networks.nets.MixedEffectsNet`: ``net(x, z, mask, covariates)`` returns the
    mixed prediction (the fixed one when ``z`` is None or zero) in eval mode and TorchScript and the structured
    :class:`~monai_medl.networks.blocks.MixedEffectsOutput` (with the KL) in eager training mode; ``features`` are,
    per branch, the pooled taps and the embedding (zeros for samples without that input), then the fused embedding
    when the fusion adds its own (attention).

    Args:
        num_clusters: number of training clusters ``K`` (width of ``z``).
        modalities: modality names in channel order, or their number. Defaults to ``("t1", "flair")``.
        backbone: encoder backbone: None (``SmallCNN``), an ``nn.Module``, or a MONAI config dict with
            ``"_target_"`` (late fusion also takes one per modality). Defaults to None.
        spatial_dims: spatial dimensions; inferred from the backbone (3 for the default). Defaults to None.
        in_channels: channels per modality (int or one per modality); inferred from the backbone (1 for the
            default). Defaults to None.
        out_channels: outputs of the head. Defaults to 1.
        num_covariates: number of tabular covariates (0 for none). Defaults to 0.
        covariate_channels: hidden widths of the covariate MLP (the last is its embedding). Defaults to ``(16,)``.
        act: activation of the covariate MLP and of the attention projections. Defaults to ``"relu"``.
        required: modality names that must be present in every sample, or True for all. Defaults to ``()``.
        modality_dropout: probability of dropping each present, non-required input of a sample in training.
            Defaults to 0.0.
        tap_layers: adversary taps of each encoder (see ``MixedEffectsCNN``). Defaults to None (the backbone's).
        cluster_scale_bias: cluster scale/bias on the encoders' normalisation layers (see ``MixedEffectsCNN``).
            Defaults to False.
        branch_random_slopes: random slopes on every branch embedding. Defaults to True.
        random_slopes: random slopes on the fused embedding in the head. None: from ``random_effects`` (False by
            default, see :attr:`DEFAULT_RANDOM_EFFECTS`).
        random_intercept: random intercept in the head. None: from ``random_effects`` (True by default).
        slope_prior_scale: prior s.d. of every random slope (branches and head). None: from ``random_effects``.
        intercept_prior_scale: prior s.d. of the random intercept. None: from ``random_effects``.
        cluster_prior_scale: prior s.d. of the cluster scale/bias effects. None: from ``random_effects``.
        learn_prior_scale: learn every prior s.d. (variance components). None: from ``random_effects``.
        post_loc_init_scale: s.d. of the initial posterior means of the slopes and intercept. None: from
            ``random_effects``.
        learn_noise_scale: learned noise s.d. for regression with ``task="gaussian_nll"``. Defaults to False.
        probe_size: spatial size used once to measure each encoder's feature widths (see ``MixedEffectsCNN``).
            Defaults to None.
        random_effects: a :class:`~monai_medl.networks.layers.RandomEffectsSettings` (or its dictionary) holding
            the settings above, shared by the branches, the encoders and the head; None for
            :attr:`DEFAULT_RANDOM_EFFECTS`. A setting given both here and as a keyword raises.

    Example::

        >>> from monai_medl.networks.nets import EarlyFusionMixedEffectsCNN
        >>> net = EarlyFusionMixedEffectsCNN(4, modalities=("t1", "flair"), spatial_dims=2, probe_size=16)
        >>> isinstance(net, MultimodalMixedEffectsNet), net.input_names
        (True, ['t1', 'flair'])
    """

    __jit_unused_properties__ = ["feature_sizes", "adversary_in_features"]
    if TYPE_CHECKING:  # a buffer, for the type checker only (TorchScript reads no postponed annotations)
        required_mask: torch.Tensor
    # the fused embedding carries no head slopes by default: every branch embedding has its own
    DEFAULT_RANDOM_EFFECTS = RandomEffectsSettings(random_slopes=False)
    RANDOM_EFFECTS_KEYWORDS = IMAGE_HEAD_KEYWORDS
    UNSUPPORTED_RANDOM_EFFECTS = {"correlated": "their random slopes act on learned embeddings, not on covariates"}

    def __init__(
        self,
        num_clusters: int,
        modalities: Sequence[str] | int = ("t1", "flair"),
        backbone: nn.Module | Mapping | Sequence[nn.Module | Mapping | None] | None = None,
        spatial_dims: int | None = None,
        in_channels: int | Sequence[int] | None = None,
        out_channels: int = 1,
        num_covariates: int = 0,
        covariate_channels: Sequence[int] = (16,),
        act: str | tuple = "relu",
        required: Sequence[str] | bool = (),
        modality_dropout: float = 0.0,
        tap_layers: Sequence[str] | None = None,
        cluster_scale_bias: bool | Sequence[str] = False,
        branch_random_slopes: bool = True,
        learn_noise_scale: bool = False,
        probe_size: Sequence[int] | int | None = None,
        random_effects: RandomEffectsLike = None,
        **random_effects_kwargs: bool | float | None,
    ) -> None:
        super().__init__()
        settings = self.resolve_random_effects(random_effects, random_effects_kwargs)
        names, channels = _modalities_and_channels(modalities, in_channels)
        if not 0.0 <= float(modality_dropout) < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}.")
        if int(num_covariates) < 0:
            raise ValueError(f"num_covariates must be >= 0, got {num_covariates}.")
        self.num_clusters = int(num_clusters)
        self.modalities = names
        self.num_modalities = len(names)
        self.out_channels = int(out_channels)
        self.modality_dropout = float(modality_dropout)

        factory = ModalityEncoderFactory(
            self.num_clusters,
            self.out_channels,
            spatial_dims=spatial_dims,
            tap_layers=tap_layers,
            cluster_scale_bias=cluster_scale_bias,
            probe_size=probe_size,
            branch_random_slopes=branch_random_slopes,
            random_effects=settings,
        )
        image_branches, found_channels, spatial_dims = self._image_branches(factory, backbone, channels)
        branches = nn.ModuleList(image_branches)
        self.spatial_dims = int(spatial_dims)
        self.modality_channels = [int(c) for c in found_channels]
        self.in_channels = sum(self.modality_channels)
        self.num_covariates = int(num_covariates)
        self.has_covariates = self.num_covariates > 0
        if self.has_covariates:
            branches.append(
                factory.branch(CovariateEncoder(self.num_covariates, covariate_channels, act), is_image=False)
            )
        self.branches = branches
        self.num_inputs = self.num_modalities + (1 if self.has_covariates else 0)
        self.input_names = names + (["covariates"] if self.has_covariates else [])

        self._set_required(required)
        self.fusion = self._make_fusion([cast(ModalityBranch, b).embedding_dim for b in branches], act)
        self.fuse_features = self.fusion.mode == "attention"  # a concatenation is already in the branch features
        self.feature_dim = self.fusion.out_features
        self.head = MixedEffectsHead(
            self.feature_dim,
            self.out_channels,
            self.num_clusters,
            learn_noise_scale=learn_noise_scale,
            random_effects=settings,
        )

    def _set_required(self, required: Sequence[str] | str | bool | None) -> None:
        """The modalities that must be present (True: all, False or None: none) and their input mask."""
        names = self.modalities
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

    # --- what a subclass provides -----------------------------------------------------------------------------------
    def _image_branches(
        self, factory: ModalityEncoderFactory, backbone, channels: list
    ) -> tuple[list[ModalityBranch], list[int], int]:
        """``(image branches, channels per modality, spatial_dims)``; ``channels`` may hold None (from the backbone)."""
        raise NotImplementedError

    def _make_fusion(self, widths: list[int], act: str | tuple) -> ModalityFusion:
        """The fusion of the branch embeddings (a concatenation unless a subclass says otherwise)."""
        return ModalityFusion(widths, mode="concat", act=act)

    def _branch_presence(self, present: torch.Tensor) -> torch.Tensor:
        """``(batch, num_branches)`` presence of each branch's input, from the per-input presence."""
        return present

    def _image_input(self, x: torch.Tensor, images: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The input of the image branch reading channels ``start:stop`` (``images``: per-modality presence)."""
        return x[:, start:stop]

    # --- shared -----------------------------------------------------------------------------------------------------
    @property
    def feature_sizes(self) -> list[int]:
        """Widths of :attr:`MixedEffectsOutput.features`: each branch's pooled taps and embedding, then fusion."""
        sizes = [n for b in self.branches for n in cast(ModalityBranch, b).feature_sizes]
        return sizes + ([self.feature_dim] if self.fuse_features else [])

    @property
    def adversary_in_features(self) -> int:
        """Total length of the adversary's input (sum of :attr:`feature_sizes`)."""
        return int(sum(self.feature_sizes))

    @torch.jit.unused
    def make_adversary(self, hidden: Sequence[int] = (64, 32), act: str | tuple = "leakyrelu", dropout: float = 0.0):
        """A :class:`~monai_medl.networks.nets.ClusterClassifier` sized for every branch's pooled activations.

        Leaky ReLU by default, as :meth:`MixedEffectsCNN.make_adversary` (dead ReLU units let the encoders silence
        the adversary without removing site information).
        """
        return ClusterClassifier(self.adversary_in_features, self.num_clusters, hidden=hidden, act=act, dropout=dropout)

    def presence(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        covariates: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Boolean ``(batch, num_inputs)`` presence of every input (modalities, then covariates).

        All modalities are present when ``mask`` is None; the covariates when they are given (and their mask
        column, if any, is 1).

        Raises:
            ValueError: when a modality listed in ``required`` is absent for some sample (eager and TorchScript).
        """
        present = self._presence_mask(x, mask, covariates)
        self._check_required(present)
        return present

    def _presence_mask(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],
        covariates: Optional[torch.Tensor],
    ) -> torch.Tensor:
        if mask is None:
            present = torch.ones(x.shape[0], self.num_modalities, dtype=torch.bool, device=x.device)
        else:
            present = mask.to(device=x.device) > 0
        if self.has_covariates:
            if present.shape[1] == self.num_modalities:
                present = torch.cat([present, torch.ones_like(present[:, :1])], dim=1)
            if covariates is None:
                present = torch.cat([present[:, : self.num_modalities], torch.zeros_like(present[:, :1])], dim=1)
        return present

    def _check_required(self, present: torch.Tensor) -> None:
        """The one required-modality check (a validation that raises, not a branch of the computation)."""
        missing = (~present) & self.required_mask
        if not bool(missing.any()):
            return
        for j, name in enumerate(self.modalities):
            absent = missing[:, j].nonzero().flatten()
            if absent.numel() > 0:
                samples: List[int] = absent.tolist()  # noqa: UP006
                raise ValueError(
                    "modality '"
                    + name
                    + "' is required but absent (mask column "
                    + str(j)
                    + ") for sample(s) "
                    + str(samples)
                    + "; supply it, or build the network without it in required."
                )

    def _drop_inputs(self, present: torch.Tensor) -> torch.Tensor:
        """Training-time modality dropout: drop present, droppable inputs, keeping at least one per sample."""
        drop = (torch.rand(present.shape, device=present.device) < self.modality_dropout) & ~self.required_mask
        kept = present & ~drop
        return torch.where(kept.any(dim=1, keepdim=True), kept, present)

    def _rows(self, col: torch.Tensor) -> torch.Tensor:
        """The samples a branch runs on: in training those that have its input (batch statistics see only them),
        otherwise all (per-sample computation; absent inputs are zero-filled and their outputs masked)."""
        if self.training:
            return col.nonzero().flatten()
        return torch.arange(col.shape[0], device=col.device)

    def forward_all(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        covariates: Optional[torch.Tensor] = None,
    ) -> MixedEffectsOutput:
        if not torch.jit.is_scripting():
            self._check_inputs(x, z, mask, covariates)
        present = self.presence(x, mask, covariates)
        if self.training and self.modality_dropout > 0.0:
            present = self._drop_inputs(present)
        batch = x.shape[0]
        images = present[:, : self.num_modalities]
        branch_present = self._branch_presence(present)
        if covariates is None:
            covariates = x.new_zeros(batch, self.num_covariates)  # the covariate branch is then absent
        features: list[torch.Tensor] = []
        fixed_emb: list[torch.Tensor] = []
        mixed_emb: list[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            col = branch_present[:, i]
            rows = self._rows(col)
            keep = col.index_select(0, rows)  # all True in training; masks the absent samples otherwise
            if branch.is_image:
                # ignore: a ModuleList's items are typed Module (and TorchScript has no cast)
                xi = self._image_input(x, images, branch.start, branch.stop)  # type: ignore[arg-type]
                xi = xi.index_select(0, rows)
            else:
                xi = covariates.to(x.dtype).index_select(0, rows)
            xi = torch.where(keep.reshape([-1] + [1] * (xi.dim() - 1)), xi, torch.zeros_like(xi))
            zi: Optional[torch.Tensor] = None
            if z is not None:
                zi = z.index_select(0, rows)
            sub, hm = branch(xi, zi)
            feats = [self._place(f, keep, rows, batch) for f in sub]
            features.extend(feats)
            fixed_emb.append(feats[-1])
            mixed_emb.append(self._place(hm, keep, rows, batch))
        fused = self.fusion(fixed_emb, branch_present)
        if self.fuse_features:
            features.append(fused)
        fixed = self.head.linear(fused)
        if z is None:
            mixed = fixed
        else:
            mixed = self.head(self.fusion(mixed_emb, branch_present), z)[0]
        return MixedEffectsOutput(mixed, fixed, features, self.head.log_noise_scale, None)

    @staticmethod
    def _place(values: torch.Tensor, keep: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
        """Branch outputs of ``rows`` put back in the batch, zero for samples without the input."""
        values = torch.where(keep.unsqueeze(1), values, torch.zeros_like(values))
        return scatter_rows(values, rows, batch)

    def forward(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        covariates: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # as MixedEffectsNet.forward: the prediction tensor in eval mode and TorchScript, the structured output
        # (with the KL) in eager training mode
        if torch.jit.is_scripting():
            return self.forward_all(x, z, mask, covariates).mixed
        if not self.training:
            return self.forward_all(x, z, mask, covariates).mixed
        # ignore: the eager training-mode output, outside the Tensor signature TorchScript exports
        return self.with_kl(self.forward_all(x, z, mask, covariates))  # type: ignore[return-value]

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
            present = self._presence_mask(x, mask, covariates)
            empty = (~present.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(
                    f"sample(s) {empty} have no input present (mask and covariates): nothing to predict from."
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
