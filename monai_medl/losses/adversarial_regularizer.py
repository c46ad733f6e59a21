# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""One adversarial iteration: update the cluster adversary, then return the term that penalises the main model."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from monai_medl.networks.nets.cluster_classifier import ClusterClassifier

__all__ = ["AdversarialRegularizer"]


class AdversarialRegularizer:
    """Trains a cluster adversary and yields the adversarial (generalisation) term for the main loss.

    Each :meth:`step` (1) updates the adversary alone on the detached fixed-effects activations with its own
    optimizer, then (2) evaluates the freshly updated, frozen adversary on the live activations and returns the
    term whose gradient pushes the feature extractor towards cluster-invariant features:

    * ``objective="ce"``: ``-lambda_g * CE(site, A(features))``, ARMED's generalisation loss (maximise the
      adversary's error). On a toy problem we measured that this fools the current adversary (its accuracy
      falls) without removing site information: a freshly fitted linear probe still decodes the site as well as
      before, because the cheapest way to raise CE is to make the adversary confidently *wrong*.
    * ``objective="confusion"`` (default): ``lambda_g * CE(uniform, A(features))``, i.e. push the adversary
      towards chance-level, uniform predictions. On the same toy problem it lowered a fresh site probe's
      accuracy towards chance; the measurements are in ``docs/method.md`` (section 5).

    Items whose site index is negative (the unseen marker) get weight zero in both terms (a batch of such items only
    gives zero gradients; no per-step host synchronisation to count them). Used by
    :class:`~monai_medl.handlers.AdversaryHandler` inside MONAI trainers and directly in plain training loops.

    Args:
        adversary: network mapping a list of ``(batch, n_i)`` activations to ``(batch, num_clusters)`` logits.
        optimizer: optimizer over the adversary's parameters only.
        lambda_g: weight of the generalisation (adversarial) term. Defaults to 0.1.
        objective: ``"confusion"`` or ``"ce"`` (see above). Defaults to ``"confusion"``.
        steps: adversary updates per :meth:`step`, all on the same detached activations, before the term is
            computed. More than one keeps the adversary close to the best classifier of the current features (the
            iterative-unlearning idea of training the domain classifier towards optimality before each confusion
            step). Defaults to 1.
        memory: number of past batches whose detached activations (and sites) the adversary also trains on, so that
            it approximates a classifier fitted on many recent items rather than chasing the features batch by
            batch (the stored activations are up to ``memory`` iterations old; they are not checkpointed).
            Defaults to 0 (the current batch only).

    Example::

        >>> reg = AdversarialRegularizer(adv, torch.optim.Adam(adv.parameters(), 1e-3), lambda_g=0.5)
        >>> loss = task_loss + reg.step(out.features, site_index)
    """

    def __init__(
        self,
        adversary: nn.Module,
        optimizer: torch.optim.Optimizer,
        lambda_g: float = 0.1,
        objective: str = "confusion",
        steps: int = 1,
        memory: int = 0,
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps (adversary updates per step) must be an integer >= 1, got {steps!r}.")
        self.steps = steps
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise ValueError(
                f"memory (past batches the adversary also trains on) must be an integer >= 0, got {memory!r}."
            )
        self._memory: deque | None = deque(maxlen=memory) if memory > 0 else None
        if objective not in ("ce", "confusion"):
            raise ValueError(f"objective must be 'ce' or 'confusion', got {objective!r}.")
        self.objective = objective
        if lambda_g < 0:
            raise ValueError(f"lambda_g must be >= 0 (the minus sign is applied internally), got {lambda_g}.")
        self.adversary = adversary
        self.optimizer = optimizer
        self._params = list(adversary.parameters())
        self.lambda_g = lambda_g
        self._last: tuple[torch.Tensor, ...] | None = None  # (loss, accuracy) or what the accuracy is computed from

    @property
    def last(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cross-entropy, accuracy)`` of the adversary on the latest batch (before its update on it), as detached
        0-dim tensors (NaN before the first step); read them as numbers only when logging, a GPU synchronises on each
        conversion."""
        if self._last is None:
            nan = torch.tensor(float("nan"))
            return nan, nan
        if len(self._last) > 2:  # the accuracy is computed when first read, not on every step
            loss, logits, target, weight, count = self._last
            correct = (logits.argmax(1) == target).to(weight.dtype)
            self._last = (loss, (correct * weight).sum() / count)
        return self._last[0], self._last[1]

    @property
    def last_loss(self) -> float:
        """Adversary cross-entropy of the latest step as a number (NaN before the first)."""
        return float(self.last[0])

    @property
    def last_accuracy(self) -> float:
        """Adversary accuracy on the latest batch as a number (NaN before the first step)."""
        return float(self.last[1])

    def _sync_grads(self) -> None:
        # the adversary is not wrapped in DDP: average its gradients so every rank keeps the same weights
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for p in self.adversary.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world

    def step(self, features: Sequence[torch.Tensor], sites: torch.Tensor, penalize: bool = True) -> torch.Tensor:
        """Update the adversary ``steps`` times and return the generalisation term for the main loss.

        With ``penalize=False`` the adversary is still updated but the returned term is zero (a warm-up in which the
        adversary learns the features before the main model is pushed against it)."""
        sites = torch.as_tensor(sites).reshape(-1).to(features[0].device).long()
        # unseen-marker rows get weight 0 instead of being masked out: boolean indexing would synchronise with the
        # device every step to learn the number of kept rows
        weight = (sites >= 0).to(features[0].dtype)
        count = weight.sum().clamp_min(1.0)
        target = sites.clamp_min(0)

        if not self.adversary.training:
            self.adversary.train()
        if isinstance(self.adversary, ClusterClassifier):
            # it concatenates its inputs: do that once for the update and the penalty (same values, fewer ops)
            live: list[torch.Tensor] = [torch.cat([f.flatten(1) for f in features], dim=1)]
        else:
            live = list(features)
        concatenated = len(live) == 1 and isinstance(self.adversary, ClusterClassifier)
        batch = ([f.detach() for f in live], target, weight)
        bank = [*self._memory, batch] if self._memory is not None else [batch]
        inputs = [torch.cat([b[0][i] for b in bank]) for i in range(len(live))] if len(bank) > 1 else batch[0]
        all_target, all_weight = (
            (torch.cat([b[k] for b in bank]) for k in (1, 2)) if len(bank) > 1 else (target, weight)
        )
        all_count = all_weight.sum().clamp_min(1.0)
        n = target.shape[0]
        for i in range(self.steps):
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.adversary(inputs[0] if concatenated else inputs)
            per_item = F.cross_entropy(logits, all_target, reduction="none")
            if i == 0:  # read-outs on the current batch before the adversary is updated on it (accuracy: lazily)
                self._last = (
                    (per_item.detach()[-n:] * weight).sum() / count,
                    logits.detach()[-n:],
                    target,
                    weight,
                    count,
                )
            ((per_item * all_weight).sum() / all_count).backward()
            self._sync_grads()
            self.optimizer.step()
        if self._memory is not None:
            self._memory.append(batch)

        if self.lambda_g == 0 or not penalize:
            return features[0].new_zeros(())
        params = self._params
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)  # frozen: the main backward must not move the adversary
        try:
            logits = self.adversary(live[0] if concatenated else live)
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        if self.objective == "confusion":
            per_item = -F.log_softmax(logits, dim=1).mean(1)
        else:
            per_item = -F.cross_entropy(logits, target, reduction="none")
        return self.lambda_g * (per_item * weight).sum() / count
