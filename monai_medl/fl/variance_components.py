# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Variance components of a federation from what its sites share: the posterior moments of their random effects.

With a prior ``N(0, s^2)`` on every entry of a random-effects layer and a Gaussian posterior ``N(loc, sigma^2)`` per
entry, the evidence lower bound is maximised in ``s`` at ``s^2 = sum(loc^2 + sigma^2) / count`` over all clusters'
entries (the M-step of empirical Bayes). Each site holds the entries of its own cluster, so it shares
``sum(loc^2 + sigma^2)`` and ``count`` per layer, and the server adds them up.

That M-step alone converges very slowly in the direction where a shared parameter and the rows trade places (the
shared bias against the random intercept: per round the bias moves by ``sigma_e^2 / (n s^2 + sigma_e^2)`` of the
way, under 1 % for 60 items a site), so the rows keep a common offset that inflates ``s^2``. At the maximum-likelihood
point the rows of such an *additive* layer sum to zero over the clusters (Henderson's equations, with the shared
parameter among the fixed effects), so the server also centres them: the sites send the sum of their rows'
posterior means (``first``) and their number of clusters for those layers only, the server moves the mean ``c``
into the shared parameter (the prediction is unchanged), the sites subtract ``c`` from their rows when they receive
it, and ``s^2`` is taken about the centred rows, ``(sum(loc^2 + sigma^2) - K |c|^2) / count`` (parameter-expanded
EM). What that adds to what a site reveals: the signs of its intercept (and, without hidden layers, input-slope)
means, whose squares the second moment already gave.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from monai_medl.networks.utils import random_effects_layers, unwrap_network

__all__ = [
    "MOMENT_PREFIX",
    "SHIFT_META",
    "PooledMoments",
    "additive_layers",
    "posterior_moments",
    "pool_moments",
    "prior_scales",
    "recentre",
    "set_prior_scales",
    "variance_components",
]

MOMENT_PREFIX = "__moments__."
"""Prefix of the moment entries a site adds to what it sends: ``<prefix><layer>.sum`` and ``.count``; for additive
layers also ``.first`` (per unit) and ``.clusters``."""

SHIFT_META = "random_effects_shift"
"""Key of the global model's ``meta``: layer -> the mean of the rows moved into its shared parameter that round."""


def additive_layers(network: nn.Module) -> dict[str, str]:
    """Random-effects layer -> the shared parameter that a common shift of all its rows adds to, entry for entry.

    For a :class:`~monai_medl.networks.nets.MixedEffectsMLP`: the random intercept ``u_0`` adds to the read-out's
    bias; the input slopes ``x @ U_lin`` add to the read-out's weight when there are no hidden layers (then the
    read-out reads ``x``). The non-linear slopes multiply the features and have no such counterpart.

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> additive_layers(MixedEffectsMLP(2, 1, num_clusters=1, hidden=()))
        {'head.intercept': 'head.linear.bias', 'linear_slopes': 'head.linear.weight'}
        >>> additive_layers(MixedEffectsMLP(2, 1, num_clusters=1, hidden=(3,)))
        {'head.intercept': 'head.linear.bias'}
    """
    net = unwrap_network(network)
    head = getattr(net, "head", None)
    linear = getattr(head, "linear", None)
    layers = random_effects_layers(net)
    pairs = {}
    if "head.intercept" in layers and getattr(linear, "bias", None) is not None:
        pairs["head.intercept"] = "head.linear.bias"
    if "linear_slopes" in layers and linear is not None and len(getattr(net, "hidden", ())) == 0:
        pairs["linear_slopes"] = "head.linear.weight"
    params = dict(net.named_parameters())
    return {name: key for name, key in pairs.items() if params[key].numel() == layers[name].units}


@torch.no_grad()
def posterior_moments(network: nn.Module) -> dict[str, torch.Tensor]:
    """Per random-effects layer of ``network``: ``sum(loc^2 + sigma^2)`` and the number of entries; for the
    :func:`additive_layers` also the per-unit sum of ``loc`` over the clusters and the number of clusters (float64).

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(2, 1, num_clusters=1, hidden=(), linear_slopes=False)
        >>> sorted(posterior_moments(net))  # doctest: +NORMALIZE_WHITESPACE
        ['__moments__.head.intercept.clusters', '__moments__.head.intercept.count',
         '__moments__.head.intercept.first', '__moments__.head.intercept.sum']
    """
    moments = {}
    additive = additive_layers(network)
    for name, layer in random_effects_layers(network).items():
        second = layer.posterior_second_moment(torch.float64)
        moments[f"{MOMENT_PREFIX}{name}.sum"] = second.sum().reshape(1)
        moments[f"{MOMENT_PREFIX}{name}.count"] = torch.tensor([float(second.numel())], dtype=torch.float64)
        if name in additive:
            moments[f"{MOMENT_PREFIX}{name}.first"] = layer.loc.detach().double().sum(0)
            moments[f"{MOMENT_PREFIX}{name}.clusters"] = torch.tensor([float(layer.num_clusters)], dtype=torch.float64)
    return moments


@dataclass
class PooledMoments:
    """One layer's moments added up over the sites: ``second`` (sum of ``E[w^2]``), ``count`` (entries) and, for an
    additive layer, ``first`` (per-unit sum of the posterior means) and ``clusters``."""

    second: float = 0.0
    count: float = 0.0
    first: np.ndarray | None = None
    clusters: float = 0.0

    @property
    def shift(self) -> np.ndarray | None:
        """The mean row ``c`` over all clusters (``None`` for a layer that is not centred)."""
        return None if self.first is None else self.first / self.clusters

    @property
    def scale(self) -> float:
        """The prior s.d.: ``sqrt(second / count)``, about the centred rows for an additive layer."""
        shift = self.shift
        centred = self.second - (0.0 if shift is None else self.clusters * float(np.square(shift).sum()))
        return math.sqrt(max(centred, 0.0) / self.count)

    def add(self, kind: str, value: np.ndarray) -> None:
        if kind == "first":
            self.first = value if self.first is None else self.first + value
        elif kind in ("sum", "count", "clusters"):
            attr = "second" if kind == "sum" else kind
            setattr(self, attr, getattr(self, attr) + float(value.sum()))
        else:
            raise ValueError(f"unknown moment entry {kind!r}; expected sum, count, first or clusters.")


def pool_moments(site_moments: list[Mapping[str, object]]) -> dict[str, PooledMoments]:
    """Layer name -> :class:`PooledMoments` of the sites' :func:`posterior_moments` (tensors or arrays, as they
    arrive at the server); keys without :data:`MOMENT_PREFIX` are ignored.

    Raises:
        ValueError: when a layer's entries have a zero count, a centred layer misses its first moments at a site, or
            the sites disagree on the layers.
    """
    pooled: dict[str, PooledMoments] = {}
    layer_sets = []
    for moments in site_moments:
        kinds: dict[str, set[str]] = {}
        for key, value in moments.items():
            if not key.startswith(MOMENT_PREFIX):
                continue
            name, kind = key[len(MOMENT_PREFIX) :].rsplit(".", 1)
            kinds.setdefault(name, set()).add(kind)
            pooled.setdefault(name, PooledMoments()).add(kind, torch.as_tensor(value).double().numpy().reshape(-1))
        layer_sets.append({name: frozenset(k) for name, k in kinds.items()})
    if any(layers != layer_sets[0] for layers in layer_sets):
        raise ValueError(f"sites sent moments of different random-effects layers: {[sorted(s) for s in layer_sets]}.")
    for name, layer in pooled.items():
        if layer.count <= 0 or (layer.first is not None and layer.clusters <= 0):
            raise ValueError(f"random-effects layer {name!r}: the sites' moments have a zero count.")
    return pooled


def prior_scales(site_moments: list[Mapping[str, object]]) -> dict[str, float]:
    """Layer name -> the prior s.d. of :func:`pool_moments` (centred for the additive layers)."""
    return {name: layer.scale for name, layer in pool_moments(site_moments).items()}


@torch.no_grad()
def recentre(network: nn.Module, shifts: Mapping[str, object] | None) -> None:
    """Subtract the server's shift (``meta[SHIFT_META]``, layer -> per-unit mean row) from every row of the layers.

    Raises:
        KeyError: naming a layer of ``shifts`` that ``network`` lacks.
    """
    layers = random_effects_layers(network)
    for name, shift in (shifts or {}).items():
        if name not in layers:
            raise KeyError(f"the server shifted random-effects layer {name!r}, which the network lacks: {list(layers)}")
        layer = layers[name]
        layer.loc.sub_(torch.as_tensor(shift, dtype=layer.loc.dtype).reshape(1, -1))


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
