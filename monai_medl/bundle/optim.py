# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Optimizer parameter groups for mixed-effects networks."""

from __future__ import annotations

from typing import Any

from torch import nn

from monai_medl.networks.utils import random_effects_parameters

__all__ = ["random_effects_param_groups"]


def random_effects_param_groups(network: nn.Module, random_effects_lr: float | None = None) -> list[dict[str, Any]]:
    """Two parameter groups: everything but the random-effects layers, and the random-effects layers.

    Adam moves every parameter by at most about ``lr`` per step, so a random intercept that must reach a site's
    log-odds offset (about 1 for prevalences of 25% vs 50%) needs hundreds of steps at ``lr = 1e-3``; a small CPU
    training run does not have them and the site effects stay shrunk towards zero. The random-effects layers are
    few parameters with consistent gradients, so giving them a larger learning rate is safe and lets the
    per-site effects be learned within the budget.

    Args:
        network: the mixed-effects network (may be wrapped in DistributedDataParallel).
        random_effects_lr: learning rate of the random-effects group; None keeps the optimizer's default.

    Returns:
        ``[{"params": fixed}, {"params": random_effects, "lr": random_effects_lr}]`` (the second group is left out
        when the network has no random-effects layer).

    Example::

        >>> import torch
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(in_features=4, out_channels=1, num_clusters=3)
        >>> opt = torch.optim.Adam(random_effects_param_groups(net, random_effects_lr=1e-2), lr=1e-3)
        >>> [group["lr"] for group in opt.param_groups]  # fixed effects, random effects
        [0.001, 0.01]

    In a bundle config::

        "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001,
                      "params": "$monai_medl.bundle.random_effects_param_groups(@network, 0.01)"}
    """
    re_params = random_effects_parameters(network)
    ids = {id(p) for p in re_params}
    groups: list[dict[str, Any]] = [{"params": [p for p in network.parameters() if id(p) not in ids]}]
    if re_params:
        group: dict[str, Any] = {"params": re_params}
        if random_effects_lr is not None:
            group["lr"] = float(random_effects_lr)
        groups.append(group)
    return groups
