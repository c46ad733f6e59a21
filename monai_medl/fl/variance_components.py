# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Variance components of a federation from what its sites share: the posterior moments of their random effects.

With a prior ``N(0, s^2)`` on every entry of a random-effects layer and a Gaussian posterior ``N(loc, sigma^2)`` per
entry, the evidence lower bound is maximised in ``s`` at ``s^2 = sum(loc^2 + sigma^2) / count`` over all clusters'
entries (the M-step of empirical Bayes, what a pooled fit with a learned prior scale converges to). Each site holds
the entries of its own cluster, so it shares two numbers per layer, ``sum(loc^2 + sigma^2)`` and ``count``, and the
server adds them up: the rows themselves never leave the site.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from monai_medl.networks.utils import random_effects_layers

__all__ = ["MOMENT_PREFIX", "posterior_moments", "prior_scales", "set_prior_scales", "variance_components"]

MOMENT_PREFIX = "__moments__."
"""Prefix of the moment entries a site adds to what it sends (``<prefix><layer>.sum`` and ``<prefix><layer>.count``)."""


@torch.no_grad()
def posterior_moments(network: nn.Module) -> dict[str, torch.Tensor]:
    """Per random-effects layer of ``network``: ``sum(loc^2 + sigma^2)`` and the number of entries (float64).

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(2, 1, num_clusters=1, hidden=(), linear_slopes=False)
        >>> sorted(posterior_moments(net))
        ['__moments__.head.intercept.count', '__moments__.head.intercept.sum']
    """
    moments = {}
    for name, layer in random_effects_layers(network).items():
        second = layer.posterior_second_moment(torch.float64)
        moments[f"{MOMENT_PREFIX}{name}.sum"] = second.sum().reshape(1)
        moments[f"{MOMENT_PREFIX}{name}.count"] = torch.tensor([float(second.numel())], dtype=torch.float64)
    return moments


def prior_scales(site_moments: list[Mapping[str, object]]) -> dict[str, float]:
    """Layer name -> the prior s.d. ``sqrt(sum over sites of sum(loc^2 + sigma^2) / sum of counts)``.

    ``site_moments`` holds one mapping per site (tensors or arrays, as :func:`posterior_moments` gives or as they
    arrive at the server); keys without :data:`MOMENT_PREFIX` are ignored.

    Raises:
        ValueError: when a layer's entries have a zero count or the sites disagree on the layers.
    """
    totals: dict[str, list[float]] = {}
    layer_sets = []
    for moments in site_moments:
        layers = set()
        for key, value in moments.items():
            if not key.startswith(MOMENT_PREFIX):
                continue
            name, kind = key[len(MOMENT_PREFIX) :].rsplit(".", 1)
            layers.add(name)
            totals.setdefault(name, [0.0, 0.0])[0 if kind == "sum" else 1] += float(torch.as_tensor(value).sum())
        layer_sets.append(layers)
    if any(layers != layer_sets[0] for layers in layer_sets):
        raise ValueError(f"sites sent moments of different random-effects layers: {[sorted(s) for s in layer_sets]}.")
    for name, (_, count) in totals.items():
        if count <= 0:
            raise ValueError(f"random-effects layer {name!r}: the sites' moments have a zero count.")
    return {name: math.sqrt(total / count) for name, (total, count) in totals.items()}


@torch.no_grad()
def set_prior_scales(network: nn.Module, scales: Mapping[str, float]) -> None:
    """Set each random-effects layer's prior s.d. (``log_prior_scale``) from ``scales`` (layer name -> s.d.)."""
    layers = random_effects_layers(network)
    missing = sorted(set(layers) - set(scales))
    if missing:
        raise KeyError(f"no prior scale for the random-effects layers {missing}; got {sorted(scales)}.")
    for name, layer in layers.items():
        layer.log_prior_scale.fill_(math.log(scales[name]))


def variance_components(network: nn.Module) -> dict[str, dict[str, float]]:
    """lme4-style variance components of the (global) model: layer -> ``{"variance", "std"}`` of its prior.

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(2, 1, num_clusters=1, hidden=(), linear_slopes=False, intercept_prior_scale=0.5)
        >>> variance_components(net)
        {'head.intercept': {'variance': 0.25, 'std': 0.5}}
    """
    out = {}
    for name, layer in random_effects_layers(network).items():
        std = float(layer.prior_scale)
        out[name] = {"variance": round(std * std, 12), "std": round(std, 12)}
    return out
