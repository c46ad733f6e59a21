# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The adversary's two losses for a one-backward training step (simultaneous update of the adversary and the model).

:class:`~monai_medl.losses.AdversarialRegularizer` updates the adversary first (its own forward, backward and
optimizer step) and then evaluates the updated, frozen adversary for the main model's term: two backward passes and
two optimizer steps per iteration, which on a tabular model of a hundred weights cost more than the model itself.
:func:`adversary_losses` returns both losses of one iteration from the same, not yet updated adversary so that one
backward of their sum gives every parameter its gradient and one optimizer step (the adversary as a second
parameter group) moves both: the adversary's loss reads detached activations (it moves the adversary only), the
adversarial term reads the live activations through the adversary with its parameters frozen for that forward pass
(it moves the model only). This is the simultaneous-update order of a gradient-reversal layer; the two-step
regulariser is its alternating counterpart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.networks.nets.cluster_classifier import ClusterClassifier

__all__ = ["adversary_losses"]


def adversary_losses(
    adversary: nn.Module, features: Sequence[torch.Tensor], sites: torch.Tensor, lambda_g: float, objective: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(adversary_loss, adversarial_term, adversary_accuracy)`` of one batch, for one backward of their sum.

    Args:
        adversary: cluster classifier on the activations (a :class:`ClusterClassifier` reads them concatenated).
        features: the model's fixed-effects activations ``(batch, n_i)``.
        sites: cluster index per item, negative for unknown (weight zero in both losses).
        lambda_g: weight of the adversarial term (>= 0).
        objective: ``"confusion"`` (``lambda_g * CE(uniform, A(h))``) or ``"ce"`` (``-lambda_g * CE(site, A(h))``).

    Example::

        >>> from monai_medl.networks.nets import ClusterClassifier
        >>> adv = ClusterClassifier(in_features=4, num_clusters=3, hidden=(8,))
        >>> h = torch.randn(6, 4, requires_grad=True)
        >>> loss_a, term, acc = adversary_losses(adv, [h], torch.tensor([0, 1, 2, 0, 1, -1]), 0.5, "confusion")
        >>> (loss_a + term).backward()   # one backward: the adversary's gradient from loss_a, h's from term
        >>> h.grad.shape
        torch.Size([6, 4])
    """
    if objective not in ("confusion", "ce"):
        raise ValueError(f"objective must be 'confusion' or 'ce', got {objective!r}.")
    concat = isinstance(adversary, ClusterClassifier)
    live = [torch.cat([f.flatten(1) for f in features], 1)] if concat else list(features)
    sites = sites.reshape(-1).long()
    weight = (sites >= 0).to(live[0].dtype)
    count = weight.sum().clamp_min(1.0)
    target = sites.clamp_min(0)
    detached = [f.detach() for f in live]
    logits = adversary(detached[0] if concat else detached)
    adversary_loss = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / count
    accuracy = ((logits.detach().argmax(1) == target).to(weight.dtype) * weight).sum() / count
    if lambda_g == 0:
        return adversary_loss, live[0].new_zeros(()), accuracy
    params = [p for p in adversary.parameters() if p.requires_grad]
    for p in params:  # frozen for this forward only: the term's gradient reaches the model, not the adversary
        p.requires_grad_(False)
    try:
        frozen = adversary(live[0] if concat else live)
    finally:
        for p in params:
            p.requires_grad_(True)
    if objective == "confusion":
        per_item = -F.log_softmax(frozen, dim=1).mean(1)
    else:
        per_item = -F.cross_entropy(frozen, target, reduction="none")
    return adversary_loss, lambda_g * (per_item * weight).sum() / count, accuracy
