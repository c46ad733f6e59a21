# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects multilayer perceptron for tabular data (the ME-DFNN)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from monai_medl.networks.blocks.mixed_effects_head import MixedEffectsHead
from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.layers.random_effects import RandomEffects
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

    Args:
        in_features: number of input features.
        out_channels: outputs (1 for binary classification or regression, C for C-class).
        num_clusters: number of training clusters (width of ``z``).
        hidden: hidden layer widths. Defaults to ``(4, 4, 4)`` (the ARMED DFNN).
        act: hidden activation. Defaults to ``"relu"``.
        dropout: dropout after each hidden layer. Defaults to 0.0.
        linear_slopes: random slopes on the inputs. Defaults to True.
        nonlinear_slopes: random slopes on the last hidden layer. Defaults to True.
        random_intercept: random intercept per output. Defaults to True.
        slope_prior_scale: prior s.d. of the random slopes. Defaults to 0.1.
        intercept_prior_scale: prior s.d. of the random intercept. Defaults to 0.1.
        learn_prior_scale: learn the prior s.d.s (variance components). Defaults to False.
        post_loc_init_scale: s.d. of the initial posterior means. Defaults to 0.1.
        learn_noise_scale: learned Gaussian noise s.d. for ``MixedEffectsLoss(task="gaussian_nll")``.
            Defaults to False.
        glorot_init: Glorot-uniform/zero-bias initialisation of the fixed-effects layers. Defaults to True.

    Example::

        >>> net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=10)
        >>> x, z = torch.randn(8, 2), torch.eye(10)[torch.randint(0, 10, (8,))]
        >>> out = net(x, z)  # training mode: mixed, fixed, features (hidden activations), log_noise_scale, kl
        >>> out.mixed.shape
        torch.Size([8, 1])
        >>> net.eval()(x, z).shape  # eval mode: the mixed prediction
        torch.Size([8, 1])
    """

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        num_clusters: int,
        hidden: Sequence[int] = (4, 4, 4),
        act: str | tuple = "relu",
        dropout: float = 0.0,
        linear_slopes: bool = True,
        nonlinear_slopes: bool = True,
        random_intercept: bool = True,
        slope_prior_scale: float = 0.1,
        intercept_prior_scale: float = 0.1,
        learn_prior_scale: bool = False,
        post_loc_init_scale: float = 0.1,
        learn_noise_scale: bool = False,
        glorot_init: bool = True,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_channels < 1:
            raise ValueError(f"in_features and out_channels must be >= 1, got {in_features}, {out_channels}.")
        self.num_clusters = num_clusters
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
        self.head = MixedEffectsHead(
            in_features=width,
            out_channels=out_channels,
            num_clusters=num_clusters,
            random_slopes=nonlinear_slopes and len(layers) > 0,
            random_intercept=random_intercept,
            slope_prior_scale=slope_prior_scale,
            intercept_prior_scale=intercept_prior_scale,
            learn_prior_scale=learn_prior_scale,
            post_loc_init_scale=post_loc_init_scale,
            learn_noise_scale=learn_noise_scale,
        )
        self.linear_slopes: RandomEffects | None = (
            RandomEffects(
                num_clusters,
                units=in_features * out_channels,
                prior_scale=slope_prior_scale,
                learn_prior_scale=learn_prior_scale,
                post_loc_init_scale=post_loc_init_scale,
            )
            if linear_slopes
            else None
        )
        if glorot_init:
            glorot_init_(self.hidden)
            glorot_init_(self.head.linear)

    def forward_all(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> MixedEffectsOutput:  # noqa: UP045
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
        slopes = self.linear_slopes
        if z is not None and slopes is not None:
            u = slopes(z).view(-1, self.out_channels, self.in_features)
            mixed = mixed + torch.bmm(u, x.unsqueeze(-1)).squeeze(-1)
        return MixedEffectsOutput(mixed, fixed, features, self.head.log_noise_scale, None)


MEMLP = MixedEffectsMLP
