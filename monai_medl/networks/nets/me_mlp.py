# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects multilayer perceptron for tabular data (the ME-DFNN)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional, cast

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from monai_medl.networks.blocks.mixed_effects_head import MixedEffectsHead
from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.layers.factor_designs import check_num_levels
from monai_medl.networks.layers.grouped_random_effects import GroupedRandomEffects
from monai_medl.networks.layers.random_effects import RandomEffects
from monai_medl.networks.layers.random_effects_settings import (
    MLP_KEYWORDS,
    RandomEffectsLike,
)
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet

__all__ = ["MixedEffectsMLP", "MEMLP", "glorot_init_"]


def glorot_init_(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every ``nn.Linear`` in ``module``.

    Tiny tabular MLPs (4-4-4) collapse to a constant predictor far more often with PyTorch's default
    Kaiming-uniform initialisation than with this one (the Keras default); see ``docs/method.md``.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class MixedEffectsMLP(MixedEffectsNet):
    """Mixed-effects MLP: fixed-effects MLP plus linear and non-linear random slopes and a random intercept.

    Fixed effects: ``f(x)``, an MLP whose last hidden layer ``h`` feeds a linear read-out. Mixed effects::

        mixed = W [h * (1 + u_s(z))] + b + x @ U_lin(z) + u_0(z)

    where ``U_lin(z)`` (one random slope per input feature and output, additive as in a linear mixed model),
    ``u_s(z)`` (non-linear slopes on ``h``) and ``u_0(z)`` (intercept) are random-effects layers. With
    ``hidden=()``, ``nonlinear_slopes=False`` it is exactly a linear (or logistic) mixed model with uncorrelated
    random intercept and slopes, whose learned prior s.d.s estimate the variance components.

    **Grouping factors and correlated effects.** ``num_clusters`` may map several grouping factors to their numbers
    of levels (crossed, e.g. ``{"site": 6, "scanner": 3}``, or nested, e.g. ``{"site": 6, "subject": 120}`` where a
    subject level is a ``(site, subject)`` pair); ``z`` is then a dictionary ``factor -> design`` holding
    ``(batch, K_f)`` one-hot/soft/zero rows or ``(batch,)`` level indices (``-1``: unseen in training). The intercept
    and the input slopes ``x @ U_lin`` of every factor then come from one
    :class:`~monai_medl.networks.layers.GroupedRandomEffects` per output channel (a joint Gaussian per level with a
    learned prior covariance when ``correlated=True``, lme4's ``(x | site) + (x | subject)``, else independent
    terms); the non-linear slopes on ``h`` are one mean-field layer per factor in the head. Each factor has its own
    variance components. A level unseen in training contributes its factor's population value 0 while the other
    factors still apply: a known site with a new subject gets the site's effect and no subject effect.
    ``correlated=True`` with a single integer ``num_clusters`` gives the same correlated model for one factor (``z``
    stays a ``(batch, K)`` tensor). These grouped variants run eagerly (and under ``torch.compile``);
    ``torch.jit.script`` supports the default single-factor, uncorrelated model only and raises for them.

    Args:
        in_features: number of input features.
        out_channels: outputs (1 for binary classification or regression, C for C-class).
        num_clusters: number of training clusters (width of ``z``), or a mapping grouping factor -> its number of
            training levels.
        hidden: hidden layer widths. Defaults to ``(4, 4, 4)`` (the ARMED DFNN).
        act: hidden activation. Defaults to ``"relu"``.
        dropout: dropout after each hidden layer. Defaults to 0.0.
        linear_slopes: random slopes on the inputs. None: from ``random_effects`` (True by default).
        nonlinear_slopes: random slopes on the last hidden layer. None: ``random_effects.random_slopes`` (True by
            default).
        random_intercept: random intercept per output. None: from ``random_effects`` (True by default).
        slope_prior_scale: prior s.d. of the random slopes. None: from ``random_effects`` (0.1 by default).
        intercept_prior_scale: prior s.d. of the random intercept. None: from ``random_effects`` (0.1 by default).
        learn_prior_scale: learn the prior s.d.s (variance components). None: from ``random_effects`` (False by
            default).
        post_loc_init_scale: s.d. of the initial posterior means. None: from ``random_effects`` (0.1 by default).
        learn_noise_scale: learned Gaussian noise s.d. for ``MixedEffectsLoss(task="gaussian_nll")``.
            Defaults to False.
        glorot_init: Glorot-uniform/zero-bias initialisation of the fixed-effects layers. Defaults to True.
        random_effects: a :class:`~monai_medl.networks.layers.RandomEffectsSettings` (or its dictionary) holding
            the random-effects settings, including ``correlated``. Defaults to None (the settings' defaults).

    Example::

        >>> net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=10)
        >>> x, z = torch.randn(8, 2), torch.eye(10)[torch.randint(0, 10, (8,))]
        >>> out = net(x, z)  # training mode: mixed, fixed, features (hidden activations), log_noise_scale, kl
        >>> out.mixed.shape
        torch.Size([8, 1])
        >>> net.eval()(x, z).shape  # eval mode: the mixed prediction
        torch.Size([8, 1])
        >>> nested = MixedEffectsMLP(2, 1, num_clusters={"site": 3, "subject": 12},
        ...                          random_effects={"correlated": True, "learn_prior_scale": True})
        >>> z = {"site": torch.tensor([0, 2]), "subject": torch.tensor([5, -1])}  # a new subject at a known site
        >>> nested.eval()(torch.randn(2, 2), z).shape
        torch.Size([2, 1])
    """

    RANDOM_EFFECTS_KEYWORDS = MLP_KEYWORDS
    RANDOM_EFFECTS_ALIASES = {"nonlinear_slopes": "random_slopes"}

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        num_clusters: int | Mapping[str, int],
        hidden: Sequence[int] = (4, 4, 4),
        act: str | tuple = "relu",
        dropout: float = 0.0,
        learn_noise_scale: bool = False,
        glorot_init: bool = True,
        random_effects: RandomEffectsLike = None,
        **random_effects_kwargs: bool | float | None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_channels < 1:
            raise ValueError(f"in_features and out_channels must be >= 1, got {in_features}, {out_channels}.")
        settings = self.resolve_random_effects(random_effects, random_effects_kwargs)
        if isinstance(num_clusters, Mapping):
            self.num_levels: dict[str, int] | None = check_num_levels(num_clusters)
        elif settings.correlated:
            self.num_levels = {"cluster": int(num_clusters)}
        else:
            self.num_levels = None
        self.grouped = self.num_levels is not None
        # the width of a single-factor z; for several factors, the levels of the first one (e.g. the adversary's)
        self.num_clusters = (
            int(cast(int, num_clusters)) if self.num_levels is None else next(iter(self.num_levels.values()))
        )
        self.in_features = in_features
        self.out_channels = out_channels
        layers = []
        width = in_features
        for units in hidden:
            block = [nn.Linear(width, units), get_act_layer(act)]
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            layers.append(nn.Sequential(*block))
            width = units
        self.hidden = nn.ModuleList(layers)
        additive = self.grouped and (settings.linear_slopes or settings.random_intercept)
        self.head = MixedEffectsHead(
            in_features=width,
            out_channels=out_channels,
            num_clusters=num_clusters if self.num_levels is None else self.num_levels,
            learn_noise_scale=learn_noise_scale,
            # grouped: the intercept is part of each factor's (intercept, input slopes) block below
            random_effects=settings.replace(
                random_slopes=settings.random_slopes and len(layers) > 0,
                random_intercept=settings.random_intercept and not additive,
            ),
        )
        self.linear_slopes: RandomEffects | None = None
        if settings.linear_slopes and not self.grouped:
            units = in_features * out_channels
            self.linear_slopes = settings.effects(self.num_clusters, units, settings.slope_prior_scale)
        if additive:
            num_levels = cast(dict[str, int], self.num_levels)  # additive effects come with grouping factors
            columns = list(range(in_features)) if settings.linear_slopes else []
            self.random_effects = nn.ModuleList(
                GroupedRandomEffects(
                    num_levels,
                    slope_columns={name: columns for name in num_levels},
                    intercept=settings.random_intercept,
                    correlated=settings.correlated,
                    posterior="full" if settings.correlated else "diagonal",
                    prior_scale=settings.slope_prior_scale,
                    intercept_prior_scale=settings.intercept_prior_scale,
                    learn_prior_scale=settings.learn_prior_scale,
                    post_loc_init_scale=settings.post_loc_init_scale,
                )
                for _ in range(out_channels)
            )
        if glorot_init:
            glorot_init_(self.hidden)
            glorot_init_(self.head.linear)

    def __prepare_scriptable__(self):
        if self.grouped:
            raise NotImplementedError(
                f"torch.jit.script supports the single-factor, uncorrelated MixedEffectsMLP only; this one has the "
                f"grouping factors {list(self.num_levels)} (correlated={self.random_effects_settings.correlated}). "
                "Use it in eager mode or with torch.compile."
            )
        return self

    def forward_all(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> MixedEffectsOutput:
        if not torch.jit.is_scripting():
            self.check_inputs(x, z)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (batch, {self.in_features}), got {list(x.shape)}.")
        features: list[torch.Tensor] = []
        h = x
        for layer in self.hidden:
            h = layer(h)
            features.append(h)
        mixed, fixed = self.head(h, z)
        if not torch.jit.is_scripting():  # TorchScript compiles the single-factor path only
            if z is not None and self.grouped:
                mixed = self._add_grouped(mixed, x, z)
        slopes = self.linear_slopes
        if z is not None and slopes is not None:
            u = slopes(z).view(-1, self.out_channels, self.in_features)
            mixed = mixed + torch.bmm(u, x.unsqueeze(-1)).squeeze(-1)
        return MixedEffectsOutput(mixed, fixed, features, self.head.log_noise_scale, None)

    @torch.jit.unused
    def _add_grouped(self, mixed: torch.Tensor, x: torch.Tensor, z) -> torch.Tensor:  # z: Mapping[str, Tensor]
        """Add every factor's (possibly correlated) intercept and input slopes, one grouped layer per output."""
        grouped = getattr(self, "random_effects", None)
        if grouped is None:
            return mixed
        designs = self.head.designs(z, x.shape[0])
        return mixed + torch.cat([layer(designs, x) for layer in grouped], dim=1).to(mixed.dtype)


MEMLP = MixedEffectsMLP
