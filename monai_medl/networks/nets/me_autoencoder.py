# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects autoencoder-classifier (ARMED-AEC): batch-invariant FE autoencoder, batch-specific RE autoencoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from monai_medl.networks.layers.reversible_instance_norm import ReversibleInstanceNorm
from monai_medl.networks.nets.autoencoder_branch import AutoEncoderBranch
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet, check_finite

__all__ = ["MixedEffectsAutoEncoderOutput", "MixedEffectsAutoEncoder", "MEAutoEncoder"]


class MixedEffectsAutoEncoderOutput(NamedTuple):
    """Everything a :class:`MixedEffectsAutoEncoder` computes in one pass.

    The first five fields follow :class:`~monai_medl.networks.blocks.MixedEffectsOutput`, so
    :class:`~monai_medl.losses.MixedEffectsLoss` and the adversary handler read it unchanged. It is what the network
    returns in training mode (with ``kl``) and what :meth:`MixedEffectsAutoEncoder.forward_all` returns.

    Attributes:
        mixed: ``y_M`` logits, classifier on the concatenated FE and RE latents.
        fixed: ``y_F`` logits, classifier on the FE latent alone.
        features: FE encoder activations (pooled per stage) and the FE latent, for the adversary.
        log_noise_scale: always None (kept for the loss contract).
        kl: summed KL of the random-effects layers in training mode, None from ``forward_all``.
        reconstruction: the model's reconstruction: RE branch with ``z`` for rows with a non-zero ``z``; the FE
            (population-level) reconstruction for rows with ``z = 0`` or ``z`` None, or without an RE branch
            (without an FE branch, the RE branch at ``z = 0``).
        reconstruction_fixed: FE reconstruction (batch-invariant latent; the RE one when there is no FE branch).
        latent_fixed: FE latent ``(batch, latent_size)`` or None without an FE branch.
        latent_random: RE latent or None without an RE branch.
        inputs: the input, the reconstruction target.
    """

    mixed: torch.Tensor
    fixed: torch.Tensor
    features: list[torch.Tensor]
    log_noise_scale: Optional[torch.Tensor]  # TorchScript needs typing.Optional in NamedTuples
    kl: Optional[torch.Tensor]
    reconstruction: torch.Tensor
    reconstruction_fixed: torch.Tensor
    latent_fixed: Optional[torch.Tensor]
    latent_random: Optional[torch.Tensor]
    inputs: torch.Tensor


class _LatentClassifier(nn.Module):
    """``(Dropout ->) Linear -> act -> Linear`` read-out of a latent vector."""

    def __init__(
        self, in_features: int, hidden: int, out_channels: int, act: str | tuple | None, dropout: float | None = None
    ) -> None:
        super().__init__()
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout else nn.Identity()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), get_act_layer(act or "relu"), nn.Linear(hidden, out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.dropout(x))


class MixedEffectsAutoEncoder(MixedEffectsNet):
    """Mixed-effects autoencoder-classifier for images (2D/3D) after ARMED's ME-AEC (Nguyen et al., TPAMI 2023).

    Two autoencoders share the input (`ARMED <https://arxiv.org/abs/2202.11783>`_, Fig. "ME-AEC"):

    * **fixed effects (FE)**: encoder/decoder with ordinary norms; its pooled encoder activations and latent are
      exposed in ``features`` so an adversary (:class:`~monai_medl.handlers.AdversaryHandler` or
      :class:`~monai_medl.losses.AdversarialRegularizer`) can make the latent batch-invariant;
    * **random effects (RE)**: the same topology whose norms are
      :class:`~monai_medl.networks.layers.ClusterScaleBias` blocks driven by the batch design ``z``
      (batch-specific appearance, learned with a KL penalty towards a zero-mean prior).

    A classifier on the FE latent gives ``y_F`` (:attr:`fixed`) and one on the concatenated latents ``y_M``
    (:attr:`mixed`). The model's reconstruction uses the RE branch with the item's ``z``; at population level
    (``z = 0`` or None, e.g. an unseen batch) it is the FE reconstruction, as the mixed prediction of an ME classifier
    falls back to its fixed effects. In eval mode and TorchScript :meth:`forward` returns ``y_M`` logits (the ordinary
    tensor MONAI engines, metrics and TorchScript see); in training mode, and from :meth:`forward_all` in any mode,
    it returns a :class:`MixedEffectsAutoEncoderOutput` with the reconstructions and latents (evaluators get them
    with :class:`~monai_medl.inferers.MixedEffectsInferer`). Unseen batches use the same modes as the ME
    classifiers: ``z = 0`` (population: plain instance norm in the RE branch), a soft ``z`` from a cluster
    predictor, or a random one-hot row (ablation).
    :meth:`counterfactual` decodes an image as if acquired in another batch.

    With ``reversible_norm`` (default) both branches see each image normalised by its own per-channel mean and s.d.
    and their decoders' outputs are mapped back with the same statistics
    (:class:`~monai_medl.networks.layers.ReversibleInstanceNorm`, after RevIN, Kim et al. ICLR 2022): the latents
    carry no per-image brightness/contrast (what the adversary wants removed) while the reconstruction keeps them,
    including at population level (unseen batch, ``z = 0``). A counterfactual keeps the source image's own
    statistics but moves them by the difference between the target and the source batch's average statistics
    (accumulated from the training images in training mode), and the RE decoder adds the target batch's learned
    appearance; with ``z = 0`` the source counts as an average batch. ``fixed_effects=False`` or
    ``random_effects=False`` give the single-branch ablations (RE-only; conventional or domain-adversarial
    autoencoder).

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_shape: input shape ``(channels, *spatial)``; spatial sizes divisible by ``prod(strides)``.
        num_clusters: number of training batches (width of ``z``).
        out_channels: classifier outputs (1 for a binary phenotype logit). Defaults to 1.
        latent_size: length of each latent. Defaults to 16.
        channels: encoder stage channels. Defaults to ``(16, 32, 64)``.
        strides: encoder stage strides. Defaults to ``(2, 2, 2)``.
        kernel_size: convolution kernel size. Defaults to 3.
        act: activation. Defaults to ``"prelu"``.
        norm: FE branch norm. Defaults to ``"instance"``: a per-sample norm, like the RE branch's cluster
            scale/bias blocks (instance norm plus a cluster affine), so the adversary trains against the same
            function the model computes in eval mode. With ``"batch"`` the mini-batch statistics couple the items
            seen by the adversary and the eval-mode running statistics drift from them under the adversarial game
            (measured on the live-cell benchmark; see ``docs/method.md``, "Normalisation in the autoencoders").
        dropout: dropout probability in the stages. Defaults to None.
        classifier_hidden: hidden width of both classifiers. Defaults to 32.
        fixed_effects: build the FE autoencoder. Defaults to True.
        random_effects: build the RE autoencoder. Defaults to True.
        output_act: activation of the reconstructions without ``reversible_norm`` (with it the decoders predict the
            normalised, unbounded image and no activation is applied). Defaults to ``"sigmoid"``.
        prior_scale: prior s.d. of the cluster scale/bias effects. Defaults to 0.25.
        learn_prior_scale: learn that prior s.d. (variance component). Defaults to False.
        post_loc_init_scale: s.d. of their initial posterior means. Defaults to 0.1.
        reversible_norm: normalise each image by its own per-channel mean/s.d. before both branches and restore them
            on the reconstructions (images only). Defaults to True: on the live-cell benchmark (seeds 0-1) it lowered
            the seen reconstruction MSE of every model (conventional x1e3 5.2/6.2 -> 3.0/4.6, ME 2.8/4.7 ->
            2.7/4.1) and the unseen (``z = 0``) MSE from 12-24 to 2.5-4.8, without more batch clustering of the FE
            latent (ME Davies-Bouldin 9.5/7.4 -> 9.7/8.1, probe 0.40/0.57 -> 0.43/0.51).
        classifier_dropout: dropout probability on the input of both latent classifiers. Defaults to None.

    Raises:
        ValueError: for a bad shape configuration or when both branches are switched off.

    Example::

        >>> net = MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 32, 32), num_clusters=4)
        >>> x, z = torch.rand(2, 1, 32, 32), torch.eye(4)[[0, 3]]
        >>> out = net(x, z)  # training mode: both classifiers, both reconstructions, latents, KL
        >>> type(out).__name__, out.mixed.shape, out.reconstruction.shape
        ('MixedEffectsAutoEncoderOutput', torch.Size([2, 1]), torch.Size([2, 1, 32, 32]))
        >>> net.eval()(x, z).shape  # eval mode: the y_M logits
        torch.Size([2, 1])
        >>> net.counterfactual(x, z, torch.eye(4)[[1, 1]]).shape
        torch.Size([2, 1, 32, 32])
    """

    __jit_unused_properties__ = ["adversary_in_features"]

    def __init__(
        self,
        spatial_dims: int,
        in_shape: Sequence[int],
        num_clusters: int,
        out_channels: int = 1,
        latent_size: int = 16,
        channels: Sequence[int] = (16, 32, 64),
        strides: Sequence[int] = (2, 2, 2),
        kernel_size: int = 3,
        act: str | tuple | None = "prelu",
        norm: str | tuple | None = "instance",
        dropout: float | None = None,
        classifier_hidden: int = 32,
        fixed_effects: bool = True,
        random_effects: bool = True,
        output_act: str | tuple | None = "sigmoid",
        prior_scale: float = 0.25,
        learn_prior_scale: bool = False,
        post_loc_init_scale: float = 0.1,
        reversible_norm: bool = True,
        classifier_dropout: float | None = None,
    ) -> None:
        super().__init__()
        if not (fixed_effects or random_effects):
            raise ValueError("at least one of fixed_effects and random_effects must be True.")
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}.")
        if reversible_norm and spatial_dims == 0:
            raise ValueError(
                "reversible_norm normalises over spatial dims; it is undefined for vectors (spatial_dims=0)."
            )
        self.num_clusters = num_clusters
        self.in_shape = [int(s) for s in in_shape]
        self.reversible_norm = reversible_norm
        # with reversible_norm the decoders predict the normalised (unbounded) image: no output activation there
        self.revin: ReversibleInstanceNorm | None = (
            ReversibleInstanceNorm(self.in_shape[0], num_clusters) if reversible_norm else None
        )
        branch: dict[str, Any] = {
            "spatial_dims": spatial_dims,
            "in_shape": in_shape,
            "latent_size": latent_size,
            "channels": channels,
            "strides": strides,
            "kernel_size": kernel_size,
            "act": act,
            "norm": norm,
            "dropout": dropout,
            "output_act": None if reversible_norm else output_act,
        }
        cluster_kwargs = {
            "prior_scale": prior_scale,
            "learn_prior_scale": learn_prior_scale,
            "post_loc_init_scale": post_loc_init_scale,
        }
        self.fe: AutoEncoderBranch | None = AutoEncoderBranch(**branch) if fixed_effects else None
        self.re: AutoEncoderBranch | None = (
            AutoEncoderBranch(**branch, num_clusters=num_clusters, cluster_kwargs=cluster_kwargs)
            if random_effects
            else None
        )
        self.classifier_fixed: _LatentClassifier | None = (
            _LatentClassifier(latent_size, classifier_hidden, out_channels, act, classifier_dropout)
            if fixed_effects
            else None
        )
        self.classifier_mixed: _LatentClassifier | None = (
            _LatentClassifier(
                latent_size * (int(fixed_effects) + 1), classifier_hidden, out_channels, act, classifier_dropout
            )
            if random_effects
            else None
        )

    @property
    def adversary_in_features(self) -> int:
        """Total length of :attr:`MixedEffectsAutoEncoderOutput.features` (adversary input size; 0 without FE)."""
        return 0 if self.fe is None else sum(self.fe.feature_sizes)

    @torch.jit.unused
    def check_inputs(self, x: torch.Tensor, z: torch.Tensor | None, values: bool = True) -> None:
        if list(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"input must have shape (batch, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}."
            )
        super().check_inputs(x, z, values)

    # ignore: the output has MixedEffectsOutput's fields and more (a NamedTuple cannot extend another one)
    def forward_all(  # type: ignore[override]
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,
    ) -> MixedEffectsAutoEncoderOutput:
        if not torch.jit.is_scripting():
            self.check_inputs(x, z)
        features: list[torch.Tensor] = []
        latent_fixed: Optional[torch.Tensor] = None
        latent_random: Optional[torch.Tensor] = None
        recon_fixed: Optional[torch.Tensor] = None
        recon: Optional[torch.Tensor] = None
        y_fixed: Optional[torch.Tensor] = None
        y_mixed: Optional[torch.Tensor] = None
        fe, re = self.fe, self.re
        clf_f, clf_m = self.classifier_fixed, self.classifier_mixed
        h, stats = self._normalize(x, z)
        if fe is not None:
            latent_fixed, features = fe.encode(h, None)
            recon_fixed = self._restore(fe.decode(latent_fixed, None), stats)
            if clf_f is not None:
                y_fixed = clf_f.forward(latent_fixed)
        if re is not None:
            latent_random = re.encode(h, z)[0]
            recon = self._restore(re.decode(latent_random, z), stats)
            joint = latent_random if latent_fixed is None else torch.cat([latent_fixed, latent_random], dim=1)
            if clf_m is not None:
                y_mixed = clf_m.forward(joint)
            if recon_fixed is not None:
                # population level (z None or an all-zero row): the fixed-effects reconstruction
                if z is None:
                    recon = recon_fixed
                else:
                    population = (z.abs().sum(1) == 0).view([x.shape[0]] + [1] * (x.dim() - 1))
                    recon = torch.where(population, recon_fixed, recon)
        if recon is None:
            recon = recon_fixed
        if recon_fixed is None:
            recon_fixed = recon
        if y_mixed is None:
            y_mixed = y_fixed
        if y_fixed is None:
            y_fixed = y_mixed
        assert recon is not None and recon_fixed is not None and y_mixed is not None and y_fixed is not None
        return MixedEffectsAutoEncoderOutput(
            y_mixed, y_fixed, features, None, None, recon, recon_fixed, latent_fixed, latent_random, x
        )

    def _normalize(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor],
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The branches' input and, with ``reversible_norm``, the tiles' statistics (accumulated per cluster in
        training)."""
        revin = self.revin
        if revin is None:
            return x, None
        h, stats = revin.normalize(x)
        if self.training and z is not None:
            revin.update(stats, z)
        return h, stats

    def _restore(self, y: torch.Tensor, stats: Optional[torch.Tensor]) -> torch.Tensor:
        revin = self.revin
        if revin is None or stats is None:
            return y
        return revin.denormalize(y, stats)

    @torch.jit.unused
    def reconstruct(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The model's reconstruction of ``x`` (RE branch with ``z``; FE for rows with ``z = 0`` or None)."""
        return self.forward_all(x, z).reconstruction

    @torch.jit.unused
    def counterfactual(self, x: torch.Tensor, z: torch.Tensor | None, z_target: torch.Tensor) -> torch.Tensor:
        """Decode ``x`` (acquired in batch ``z``) as if acquired in batch ``z_target``.

        The RE encoder removes the appearance of ``z`` with its cluster scale/bias blocks, the RE decoder re-applies
        that of ``z_target``. With ``reversible_norm`` the output is de-normalised with the source image's own
        mean/s.d. moved by the target batch's minus the source batch's average statistics (training images), so the
        counterfactual takes the target batch's brightness and contrast while keeping the image's own deviation
        from its batch. ``z`` may be None or zero (population level) for an unseen batch.

        Raises:
            ValueError: without an RE branch, or when ``z_target`` is not ``(batch, num_clusters)``.
        """
        if self.re is None:
            raise ValueError("counterfactual decoding needs the random-effects branch (random_effects=True).")
        self.check_inputs(x, z)
        if z_target.dim() != 2 or z_target.shape != (x.shape[0], self.num_clusters):
            raise ValueError(
                f"z_target must have shape ({x.shape[0]}, {self.num_clusters}), got {tuple(z_target.shape)}."
            )
        check_finite(z_target, "z_target")
        z_target = z_target.to(x)
        if self.revin is None:
            return self.re.decode(self.re.encode(x, z)[0], z_target)
        h, stats = self.revin.normalize(x)
        decoded = self.re.decode(self.re.encode(h, z)[0], z_target)
        # the source tile's own statistics, moved from its batch's average to the target batch's average
        return self.revin.denormalize(decoded, self.revin.shift(stats, z, z_target))


MEAutoEncoder = MixedEffectsAutoEncoder
