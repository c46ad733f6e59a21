# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Helpers over any module tree that contains random-effects layers."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from monai_medl.networks.layers.correlated_random_effects import CorrelatedRandomEffects
from monai_medl.networks.layers.random_effects import RandomEffects, gaussian_kl

__all__ = [
    "warn_deprecated",
    "unwrap_network",
    "random_effects_layers",
    "checked_random_effects_layers",
    "require_mean_field",
    "kl_divergence",
    "random_effects_parameters",
    "soft_design",
]


def unwrap_network(network: nn.Module) -> nn.Module:
    """Return the module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or the module itself)."""
    return network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network


def random_effects_layers(network: nn.Module) -> dict[str, RandomEffects]:
    """All :class:`RandomEffects` submodules of ``network`` keyed by their qualified names."""
    return {name: m for name, m in unwrap_network(network).named_modules() if isinstance(m, RandomEffects)}


def require_mean_field(network: nn.Module, purpose: str) -> None:
    """Raise unless every random effect of ``network`` is a single-factor mean-field :class:`RandomEffects` layer.

    Tools written for those layers (few-shot adaptation, ``monai_medl.utils.summary``) would otherwise silently
    skip the :class:`~monai_medl.networks.layers.CorrelatedRandomEffects` that a network with several grouping
    factors (``num_clusters={"site": ..., ...}``) or ``correlated=True`` carries.

    Raises:
        ValueError: naming ``purpose``, the correlated layers found and the supported configurations.
    """
    net = unwrap_network(network)
    grouped = [name for name, m in net.named_modules() if isinstance(m, CorrelatedRandomEffects)]
    if grouped:
        levels = getattr(net, "num_levels", None)
        raise ValueError(
            f"{purpose} supports networks with one grouping factor and correlated=False (mean-field RandomEffects "
            f"layers, an integer num_clusters) only; {type(net).__name__} has correlated/grouped random effects "
            f"{grouped}" + (f" for the grouping factors {list(levels)}" if levels else "") + ". For those, read "
            "each factor's prior_covariance() and loc from its GroupedRandomEffects layer, or fit tabular data with "
            "monai_medl.estimators (summary(), var_corr(), random_effects(); predict handles unseen levels)."
        )


def checked_random_effects_layers(network: nn.Module, purpose: str) -> tuple[dict[str, RandomEffects], int]:
    """The random-effects layers of ``network`` and their common number of clusters.

    Raises:
        ValueError: naming ``purpose`` when there is no such layer, or when the layers disagree on ``num_clusters``.
    """
    layers = random_effects_layers(network)
    if not layers:
        raise ValueError(f"{type(unwrap_network(network)).__name__} has no RandomEffects layers: {purpose}.")
    counts = {layer.num_clusters for layer in layers.values()}
    if len(counts) != 1:
        raise ValueError(f"random-effects layers disagree on the number of clusters: {sorted(counts)}.")
    return layers, counts.pop()


def kl_layers(network: nn.Module) -> tuple[list[RandomEffects], list[CorrelatedRandomEffects]]:
    """The layers :func:`kl_divergence` sums: ``(mean-field RandomEffects, CorrelatedRandomEffects)``, in module
    order (one walk over ``network``, no qualified names)."""
    layers: list[RandomEffects] = []
    correlated: list[CorrelatedRandomEffects] = []
    for m in unwrap_network(network).modules():
        if isinstance(m, RandomEffects):
            layers.append(m)
        elif isinstance(m, CorrelatedRandomEffects):
            correlated.append(m)
    return layers, correlated


def kl_divergence(
    network: nn.Module, layers: tuple[list[RandomEffects], list[CorrelatedRandomEffects]] | None = None
) -> torch.Tensor:
    """Sum of the KL terms of every random-effects layer in ``network`` (0 when it has none).

    Mean-field :class:`RandomEffects` layers are summed in one pass; correlated ones
    (:class:`~monai_medl.networks.layers.CorrelatedRandomEffects`, e.g. inside a grouped-factor network) add their
    own closed-form KL. ``layers``: :func:`kl_layers` of ``network`` when the caller keeps them (this runs every
    training step; the walk over the modules is then skipped).
    """
    mean_field, correlated = kl_layers(network) if layers is None else layers
    if not mean_field and not correlated:
        param = next(unwrap_network(network).parameters(), None)
        return torch.zeros((), device=None if param is None else param.device)
    terms = [layer.kl() for layer in correlated]
    if mean_field:
        terms.insert(0, gaussian_kl(mean_field))
    return terms[0] if len(terms) == 1 else torch.stack(terms).sum()


def random_effects_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Parameters of the random-effects layers only (what few-shot adaptation to a new cluster updates)."""
    return [p for layer in random_effects_layers(network).values() for p in layer.parameters()]


@torch.no_grad()
def soft_design(network: nn.Module, x, batch_size: int | None = None) -> torch.Tensor:
    """Soft design matrix ``softmax(network(x))`` of a cluster classifier: the inferred ``z``.

    Runs in eval mode (batch-norm statistics, no dropout) without gradients and restores the network's mode. This is
    the one implementation behind ``ClusterClassifier.predict_design``, :class:`~monai_medl.bundle.SoftDesign` and
    the benchmarks.

    Args:
        network: a cluster classifier returning ``(batch, num_clusters)`` logits.
        x: its input (a tensor, or what the classifier takes).
        batch_size: run ``x`` in chunks of this many rows (a tensor input only); None for one call.
    """
    was_training = network.training
    network.eval()
    try:
        if batch_size is None or not isinstance(x, torch.Tensor):
            return torch.softmax(network(x), dim=1)
        return torch.cat([torch.softmax(network(part), dim=1) for part in x.split(batch_size)])
    finally:
        network.train(was_training)


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """A ``DeprecationWarning`` that ``old`` goes in the next release and ``new`` replaces it (``stacklevel`` 3: the
    caller of the function or constructor that warns)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}.", DeprecationWarning, stacklevel
    )
