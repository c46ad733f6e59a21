# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Few-shot adaptation to a new cluster: fit only its random-effect rows from a handful of labelled samples."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from monai_medl.losses.mixed_effects_loss import task_loss
from monai_medl.networks.layers.random_effects import RandomEffects
from monai_medl.networks.utils import (
    checked_random_effects_layers,
    random_effects_layers,
    require_mean_field,
    unwrap_network,
)

__all__ = ["add_clusters", "fit_new_cluster"]


@torch.no_grad()
def add_clusters(network: nn.Module, num_new: int = 1) -> int:
    """Append ``num_new`` rows to every random-effects layer of ``network``, in place.

    New rows start at the prior mean (0, i.e. population level) with a small posterior s.d., and
    ``network.num_clusters`` grows accordingly, so ``z`` becomes ``num_new`` columns wider. Returns the index of the
    first new cluster.
    """
    if num_new < 1:
        raise ValueError(f"num_new must be >= 1, got {num_new}.")
    net = unwrap_network(network)
    require_mean_field(net, "few-shot adaptation (add_clusters, fit_new_cluster)")
    layers, first_new = checked_random_effects_layers(net, "nothing to extend")
    for layer in layers.values():
        _grow(layer, num_new)
    # torch types Module attributes as Tensor | Module; a plain int attribute is fine at run time
    net.num_clusters = first_new + num_new  # type: ignore[assignment]
    return first_new


def _grow(layer: RandomEffects, num_new: int) -> None:
    loc = torch.cat([layer.loc, layer.loc.new_zeros(num_new, layer.units)])
    rho = torch.cat([layer.rho, layer.rho.min().expand(num_new, layer.units)])
    layer.loc = nn.Parameter(loc)
    layer.rho = nn.Parameter(rho)
    layer.num_clusters += num_new


def fit_new_cluster(
    network: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    task: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "bce",
    steps: int = 200,
    lr: float = 0.05,
    prior_scale: float | str | None = None,
) -> int:
    """Add one cluster to ``network`` and fit only its random effects on a few labelled samples.

    Every other parameter (fixed effects, the training clusters' random effects, the prior s.d.s) stays frozen. The
    new cluster's effects are the maximum-a-posteriori estimate under each layer's prior ``N(0, s^2)``: the task
    loss on the samples plus ``sum(u^2 / (2 s^2)) / n``, so with few samples the estimate shrinks towards the
    population (``u = 0``), like a best linear unbiased predictor in a linear mixed model. The network is left in
    eval mode.

    Args:
        network: a trained mixed-effects network (``forward(x, z)``).
        inputs: the new cluster's labelled inputs, batch first (all in one batch).
        targets: their targets.
        task: task loss name (see :func:`~monai_medl.losses.task_loss`) or callable ``(pred, target) -> loss``.
        steps: optimisation steps (full batch). Defaults to 200.
        lr: Adam learning rate. Defaults to 0.05.
        prior_scale: the prior s.d. ``s`` of the new cluster's effects. None: each layer's own prior (learned or
            fixed in training). ``"empirical"``: re-estimated per layer from the training clusters' posteriors,
            ``s^2 = mean(mu^2 + sigma^2)`` over clusters and units (the EM update of a variance component; useful
            when the prior was fixed in training and is narrower than the sites' actual spread). A positive float:
            that s.d. for every layer. Defaults to None.

    Returns:
        the new cluster's column index in ``z``.

    Example::

        >>> import torch
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=3)  # stands in for a trained net
        >>> x_few, y_few = torch.randn(8, 2), torch.ones(8, 1)  # 8 labelled samples of a new, all-positive cluster
        >>> k = fit_new_cluster(net, x_few, y_few, task="bce", steps=50)
        >>> k, net.num_clusters
        (3, 4)
        >>> x_test = torch.randn(5, 2)
        >>> z = torch.zeros(len(x_test), net.num_clusters); z[:, k] = 1
        >>> pred = net(x_test, z)
        >>> bool((pred > net(x_test, torch.zeros_like(z))).all())  # the new cluster's effects raise its logits
        True
    """
    if len(inputs) == 0 or len(inputs) != len(targets):
        raise ValueError(f"need the same non-zero number of inputs and targets, got {len(inputs)} and {len(targets)}.")
    net = unwrap_network(network)
    scales = _prior_scales(net, prior_scale)
    new = add_clusters(net, 1)
    layers = random_effects_layers(net)
    rows = {name: nn.Parameter(layer.loc[new].detach().clone()) for name, layer in layers.items()}
    optimizer = torch.optim.Adam(rows.values(), lr=lr)
    z = inputs.new_zeros(len(inputs), new + 1)  # add_clusters made ``new`` the last cluster
    z[:, new] = 1
    net.eval()  # deterministic: posterior means, frozen batch-norm statistics
    trainable = {p: p.requires_grad for p in net.parameters()}
    for p in trainable:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            # only the new rows carry gradients: every other parameter enters as a constant
            locs = {f"{name}.loc": _with_row(layers[name].loc, new, row) for name, row in rows.items()}
            pred = torch.func.functional_call(net, locs, (inputs, z))
            loss = task(pred, targets) if callable(task) else task_loss(task, pred, targets)
            prior = sum((r.square() / (2 * scales[n].square())).sum() for n, r in rows.items())
            (loss + prior / len(inputs)).backward()
            optimizer.step()
    finally:
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    with torch.no_grad():
        for name, row in rows.items():
            layers[name].loc[new] = row
    return new


def _prior_scales(net: nn.Module, prior_scale: float | str | None) -> dict[str, torch.Tensor]:
    """Each random-effects layer's prior s.d. for the new cluster (see :func:`fit_new_cluster`), computed before
    the new row is added, detached."""
    layers = random_effects_layers(net)
    if prior_scale is None:
        return {n: layer.prior_scale.detach() for n, layer in layers.items()}
    if prior_scale == "empirical":
        return {n: layer.posterior_second_moment().mean().sqrt().detach() for n, layer in layers.items()}
    if isinstance(prior_scale, str) or not prior_scale > 0:
        raise ValueError(f"prior_scale must be None, 'empirical' or a positive float, got {prior_scale!r}.")
    return {n: torch.tensor(float(prior_scale)) for n in layers}


def _with_row(loc: torch.Tensor, index: int, row: torch.Tensor) -> torch.Tensor:
    return torch.cat([loc[:index], row.unsqueeze(0), loc[index + 1 :]])
