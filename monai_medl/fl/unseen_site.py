# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A site that joins after training: the population model, then its own random effects fitted locally."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch

from monai_medl.engines.few_shot import fit_new_cluster
from monai_medl.fl.local_state import load_shared
from monai_medl.fl.network import site_network
from monai_medl.losses.mixed_effects_loss import task_loss
from monai_medl.networks.nets import MixedEffectsMLP
from monai_medl.networks.utils import random_effects_layers

__all__ = ["population_network", "join_federation"]


@torch.no_grad()
def population_network(global_params: Mapping[str, object], spec: Mapping) -> MixedEffectsMLP:
    """The federation's population model: shared fixed effects and prior scales, the placeholder row zeroed.

    With ``z = 0`` (or the zeroed row 0) it predicts from the fixed effects only. The network is in eval mode.

    Example::

        >>> from monai_medl.fl.local_state import shared_state
        >>> spec = {"in_features": 2, "out_channels": 1, "hidden": [3]}
        >>> trained = site_network(spec)  # stands in for the global model a federation produced
        >>> net = population_network(trained.state_dict(), spec)
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(net(x, torch.ones(4, 1)), net(x, torch.zeros(4, 1)))
        True
    """
    network = site_network(spec)
    load_shared(network, global_params, origin="the federation's global model")
    for layer in random_effects_layers(network).values():
        layer.loc.zero_()
    return network.eval()


def join_federation(
    global_params: Mapping[str, object],
    spec: Mapping,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    task: str = "gaussian_nll",
    steps: int = 200,
    lr: float = 0.05,
) -> tuple[MixedEffectsMLP, int]:
    """Population model plus a new site's random effects, fitted on its few labelled items only (at the site).

    Calls :func:`~monai_medl.engines.few_shot.fit_new_cluster`: everything but the new row is frozen, and the row
    shrinks towards the population under the federation's prior scales. Nothing is sent anywhere. Returns
    ``(network, column)``: set ``z[:, column] = 1`` for the new site's items.
    """
    network = population_network(global_params, spec)
    loss: str | Callable = task
    if task == "gaussian_nll":  # the federation's noise scale, frozen like every shared parameter
        if network.head.log_noise_scale is None:
            raise ValueError("task 'gaussian_nll' needs a network spec with learn_noise_scale=true.")
        noise = network.head.log_noise_scale.detach()
        loss = partial(_gaussian_nll, log_noise_scale=noise)
    column = fit_new_cluster(network, inputs, targets, task=loss, steps=steps, lr=lr)
    return network, column


def _gaussian_nll(pred: torch.Tensor, target: torch.Tensor, log_noise_scale: torch.Tensor) -> torch.Tensor:
    return task_loss("gaussian_nll", pred, target, log_noise_scale)
