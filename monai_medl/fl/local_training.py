# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""One site's training in a federated round: its own items, its own cluster row, the federation's prior."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from monai_medl.fl.feature_statistics import FederatedAlignmentLoss, class_statistics
from monai_medl.fl.site_datalist import SiteData
from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet
from monai_medl.networks.utils import random_effects_parameters

__all__ = ["LocalTrainingSettings", "train_locally", "site_feature_statistics"]


@dataclass
class LocalTrainingSettings:
    """What every site uses in a round (the job passes the same settings to every site).

    Args:
        task: task loss of :class:`~monai_medl.losses.MixedEffectsLoss` (``"gaussian_nll"`` for regression with the
            learned noise scale the variance components need, ``"bce"`` for binary labels).
        epochs: local epochs per round and phase (first the site's random effects, then the fixed effects).
        batch_size: items per step.
        lr: Adam learning rate (a fresh optimizer every round).
        lambda_fixed: weight of the fixed-effects head's loss (0 keeps the objective the evidence lower bound).
        align_weight: weight of the federated class-conditional alignment (0: off).
        label_classes: label classes of the alignment (0: unconditional, 2 for binary labels).
        fedprox_mu: weight of FedProx's proximal term ``mu / 2 * |w - w_global|^2`` on the shared parameters in the
            fixed-effects phase (0: plain FedAvg); it limits how far a site's shared weights drift from the global
            model it received.
        seed: base seed; each round and site derives its own from it.
    """

    task: str = "gaussian_nll"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.02
    lambda_fixed: float = 0.0
    align_weight: float = 0.0
    label_classes: int = 0
    fedprox_mu: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def train_locally(
    network: nn.Module,
    data: SiteData,
    settings: LocalTrainingSettings,
    federation_stats: Mapping[str, object] | None = None,
    seed: int = 0,
) -> int:
    """Train ``network`` (one cluster: the site's own row, ``z = 1``) on ``data``, in two phases of ``settings.epochs``.

    First the site's random effects alone, under the global fixed effects and prior (the E-step of empirical Bayes),
    then the fixed effects alone with the random effects held. Training both at once lets a site move its offset
    into the shared parameters (the prior pulls its own row towards 0 and nothing ties the shared intercept to the
    other sites): the classic client drift, which here would shrink every variance component round after round.
    The KL of the site's random effects enters with its evidence-lower-bound weight ``1 / n``. With
    ``settings.align_weight > 0`` and the federation's statistics, a :class:`FederatedAlignmentLoss` on the last hidden
    features joins the fixed-effects phase, and with ``settings.fedprox_mu > 0`` FedProx's proximal term on the
    shared parameters (about their values on entry, the global model). Returns the number of optimisation steps.
    """
    generator = torch.Generator().manual_seed(seed)
    loss_fn = MixedEffectsLoss(
        task=settings.task, lambda_fixed=settings.lambda_fixed, kl_weight="elbo", num_train_samples=len(data.labels)
    )
    align = None
    if settings.align_weight > 0 and federation_stats is not None:
        align = FederatedAlignmentLoss(federation_stats, settings.label_classes, settings.align_weight)
    own = {id(p) for p in random_effects_parameters(network)}
    shared = [p for p in network.parameters() if id(p) not in own and p.requires_grad]
    phases = (
        ([p for p in network.parameters() if id(p) in own], _penalty(None, None, 0.0)),
        (shared, _penalty(align, shared, settings.fedprox_mu)),
    )
    network.train()
    steps = 0
    for params, penalty in phases:
        if params:  # a network without random effects (a conventional federated baseline) has one phase
            steps += _fit(network, data, settings, loss_fn, params, penalty, generator)
    return steps


def _penalty(align, shared, mu: float):
    """The extra loss terms of a phase, ``(output, labels) -> tensor``, or None: the alignment on the last hidden
    features and the proximal term about the shared parameters' values now (those received from the server)."""
    anchors = [p.detach().clone() for p in shared] if mu > 0 and shared else None
    if align is None and anchors is None:
        return None

    def penalty(out, y):
        total = torch.zeros(())
        if align is not None:
            if not out.features:
                raise ValueError("align_weight > 0 needs a network with hidden layers (features to align).")
            total = total + align(out.features[-1], y)
        if anchors is not None:
            total = total + 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(shared, anchors))
        return total

    return penalty


def _fit(network, data, settings, loss_fn, params, penalty, generator) -> int:
    """``settings.epochs`` of Adam on ``params`` only (the others enter as constants), the learning rate decaying
    linearly to 0: with a constant rate the last iterate of a one-sample ELBO jitters by about ``lr`` around the
    optimum, which for the random-effects rows inflates their second moments, the variance components."""
    flags = {p: p.requires_grad for p in network.parameters()}
    chosen = {id(p) for p in params}
    for p in flags:
        p.requires_grad_(id(p) in chosen and flags[p])
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    n, steps = len(data.labels), 0
    total = settings.epochs * -(-n // settings.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    try:
        steps = _epochs(network, data, settings, loss_fn, (optimizer, schedule), penalty, generator, n)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return steps


def _epochs(network, data, settings, loss_fn, optimizer_schedule, penalty, generator, n) -> int:
    optimizer, schedule = optimizer_schedule
    steps = 0
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        for batch in order.split(settings.batch_size):
            x, y = data.features[batch], data.labels[batch]
            out = network(x, torch.ones(len(batch), 1))
            loss = loss_fn(out, y)
            if penalty is not None:
                loss = loss + penalty(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            steps += 1
    return steps


@torch.no_grad()
def site_feature_statistics(network: MixedEffectsNet, data: SiteData, label_classes: int) -> dict[str, torch.Tensor]:
    """Class-conditional statistics of the site's last hidden features (eval mode; what the site shares)."""
    network.eval()
    out = network.forward_all(data.features, torch.ones(len(data.features), 1))
    if not out.features:
        raise ValueError("feature statistics need a network with hidden layers.")
    return class_statistics(out.features[-1], data.labels, label_classes)
