# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Feature attribution of a model's fixed-effects path: which inputs the population-level prediction relies on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet

__all__ = [
    "fixed_effects_function",
    "input_gradients",
    "integrated_gradients",
    "fixed_effects_attribution",
    "attribution_share",
]


def fixed_effects_function(network: nn.Module, target: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> (batch,)`` scalar output of the fixed-effects path of ``network`` (eval mode).

    For a :class:`~monai_medl.networks.nets.MixedEffectsNet` it is the ``fixed`` prediction of ``forward_all(x)``
    (no cluster information), for any other module ``network(x)``. ``target`` picks the output channel; it may be
    None only for single-output networks.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = network.forward_all(x).fixed if isinstance(network, MixedEffectsNet) else network(x)
        out = out.reshape(out.shape[0], -1)
        if target is None:
            if out.shape[1] != 1:
                raise ValueError(f"the network has {out.shape[1]} outputs: pass target=<output index>.")
            return out[:, 0]
        if not 0 <= target < out.shape[1]:
            raise ValueError(f"target must be in [0, {out.shape[1]}), got {target}.")
        return out[:, target]

    return fn


def input_gradients(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``d fn(x)_i / d x_i`` for every item ``i`` (``fn`` maps ``(n, d)`` to ``(n,)`` item-wise), shape ``(n, d)``."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(x).sum(), x)
    return grad


def integrated_gradients(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor | None = None, steps: int = 32
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al., ICML 2017), ``(n, d)``.

    ``(x - baseline) * mean_k grad fn(baseline + a_k (x - baseline))`` with midpoint rule ``a_k = (k + 0.5) /
    steps``; the rows sum to ``fn(x) - fn(baseline)`` up to the quadrature error. ``baseline`` defaults to zeros
    (the mean of standardised features).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    total = torch.zeros_like(x)
    for k in range(steps):
        total += input_gradients(fn, baseline + (k + 0.5) / steps * (x - baseline))
    return (x - baseline) * total / steps


def fixed_effects_attribution(
    network: nn.Module,
    x: torch.Tensor,
    method: str = "gradient",
    target: int | None = None,
    baseline: torch.Tensor | None = None,
    steps: int = 32,
) -> torch.Tensor:
    """Mean absolute attribution of each input feature in the fixed-effects path, shape ``(d,)``.

    ``method="gradient"``: ``mean_i |d f(x_i) / d x_ij|``, the sensitivity of the fixed-effects output (a logit for
    classifiers) to feature ``j`` averaged over the samples ``x`` — the ARMED read-out, here averaged over data
    instead of evaluated at the mean input. Features should be on comparable scales (e.g. standardised).
    ``method="integrated_gradients"``: ``mean_i |IG_ij|`` with :func:`integrated_gradients`.

    Args:
        network: a mixed-effects network (its ``fixed`` output is attributed) or any module ``x -> output``.
        x: samples ``(n, d)`` at which to attribute (e.g. the test set).
        method: ``"gradient"`` or ``"integrated_gradients"``. Defaults to ``"gradient"``.
        target: output channel for multi-output networks. Defaults to None (single output).
        baseline: integrated-gradients baseline, broadcastable to ``x``. Defaults to zeros.
        steps: integrated-gradients steps. Defaults to 32.

    Example::

        >>> import torch
        >>> from monai_medl.data.synthetic.spirals import make_spirals
        >>> from monai_medl.engines import TabularTrainer
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> data = make_spirals(num_clusters=6, points_per_cluster=50, prevalence_sd=0.25, num_probes=2, seed=0)
        >>> x, y = torch.from_numpy(data.x), torch.from_numpy(data.y).float().unsqueeze(1)
        >>> site = torch.from_numpy(data.site)
        >>> net = MixedEffectsMLP(in_features=4, out_channels=1, num_clusters=6)
        >>> history = TabularTrainer(net, epochs=5, lr=1e-2).fit(x, y, z=torch.eye(6)[site])
        >>> x_test = x[::10]
        >>> attr = fixed_effects_attribution(net, x_test)
        >>> attr.shape  # one value per input feature: 2 spiral coordinates, 2 site-confounded probes
        torch.Size([4])
        >>> share = attribution_share(attr, columns=list(data.probe_columns))  # share of the probe features
        >>> 0.0 <= share <= 1.0
        True
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (samples, features), got shape {tuple(x.shape)}.")
    was_training = network.training
    network.eval()
    try:
        fn = fixed_effects_function(network, target)
        if method == "gradient":
            attr = input_gradients(fn, x)
        elif method == "integrated_gradients":
            attr = integrated_gradients(fn, x, baseline, steps)
        else:
            raise ValueError(f"method must be 'gradient' or 'integrated_gradients', got {method!r}.")
    finally:
        network.train(was_training)
    return attr.abs().mean(0)


def attribution_share(attribution: torch.Tensor, columns: Sequence[int]) -> float:
    """Fraction of the total attribution carried by ``columns`` (0 when the total is 0)."""
    attribution = attribution.abs()
    total = float(attribution.sum())
    if not columns:
        return 0.0
    if max(columns) >= attribution.numel() or min(columns) < 0:
        raise ValueError(f"columns {list(columns)} out of range for {attribution.numel()} features.")
    return float(attribution[list(columns)].sum()) / total if total > 0 else 0.0
