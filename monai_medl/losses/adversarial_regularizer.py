# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""One adversarial iteration: update the cluster adversary, then return the term that penalises the main model."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from monai_medl.losses.feature_scaling import FEATURE_SCALINGS, scale_invariant
from monai_medl.networks.nets.cluster_classifier import ClusterClassifier

__all__ = ["AdversarialRegularizer", "UPDATES", "label_indices"]

UPDATES = ("two_step", "one_pass")
"""The :class:`AdversarialRegularizer` update schemes."""


def label_indices(labels: torch.Tensor | None, num_items: int, classes: int, device: torch.device) -> torch.Tensor:
    """Validated class indices ``(batch,)`` from ``(batch,)`` or ``(batch, 1)`` labels (integer or 0/1 float)."""
    if labels is None:
        raise ValueError(
            f"this regulariser is label-conditional (label_classes={classes}): pass labels= to step() or forward()."
        )
    labels = torch.as_tensor(labels)
    if labels.dim() > 1:
        labels = labels.reshape(labels.shape[0], -1)
        if labels.shape[1] != 1:
            raise ValueError(f"labels must have one class index per item, got shape {tuple(labels.shape)}.")
        labels = labels[:, 0]
    if labels.shape[0] != num_items:
        raise ValueError(f"labels has {labels.shape[0]} items but the batch has {num_items} site indices.")
    index = labels.round().long() if labels.is_floating_point() else labels.long()
    # checked where it costs no device synchronisation (labels usually arrive on the CPU with the batch)
    if index.device.type == "cpu" and bool(((index < 0) | (index >= classes)).any()):
        raise ValueError(
            f"labels must be class indices in [0, {classes - 1}], got values {sorted(set(labels.tolist()))[:10]}."
        )
    return index.to(device)


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
            batch (the stored activations are up to ``memory`` iterations old; :meth:`state_dict` holds them, so a
            resumed run continues with the same memory).
            Defaults to 0 (the current batch only).
        label_classes: 0 (default) for the adversary above; ``C >= 2`` makes it **label-conditional**: it also reads
            the one-hot class label (``step(..., labels=...)``; build it with ``C`` extra inputs, e.g.
            ``make_adversary(label_classes=C)``) and the confusion target of item ``i`` is the training data's site
            distribution among items of its class, ``P(site | y_i)`` (running counts of the batches seen, kept in
            :meth:`state_dict` like the memory), instead of uniform. When disease prevalence
            differs between sites, any disease-predictive feature also predicts the site; the unconditional
            adversary then fights the disease signal itself, while the conditional one only removes site
            information beyond the label (equalised odds, as in Zhang, Lemoine & Mitchell 2018).
            Needs ``objective="confusion"``.
        feature_scaling: ``"none"`` (default: the raw activations) or a scale-invariant view of each activation tensor
            (:func:`~monai_medl.losses.scale_invariant`: ``"layer"``, ``"batch_rms"``, ``"batch_std"``), computed per
            batch with gradient, before the adversary and before the memory stores them. On such a view shrinking
            the features leaves the adversary's inputs, its loss and the penalty unchanged, so the encoder can only
            lower the penalty by removing the site information (measured on the MRI cohorts: with inputs
            standardised inside the adversary the encoder shrank ``h`` from s.d. 0.23 to 0.03).
        update: ``"two_step"`` (default) or ``"one_pass"``. Two-step (alternating): :meth:`step` updates the adversary
            ``steps`` times with its own backward passes, then returns the penalty of the *updated*, frozen adversary;
            the main backward moves the main model only. One-pass (simultaneous, one backward for both): the first
            ``steps - 1`` updates are as above; the last one is not applied in :meth:`step`, whose returned term then
            carries, besides the penalty (the adversary frozen, evaluated at its weights *before* that update), a
            zero-valued gradient path ``own - own.detach()`` of the adversary's own cross-entropy on the detached
            features. The main ``loss.backward()`` thus gives the adversary its own gradient and the encoder the
            penalty's (the reversed one, for ``objective="ce"`` exactly a gradient-reversal layer); the value of the
            loss is unchanged. Call :meth:`finish_step` after the backward to apply the adversary's update (the
            handler does at ``MODEL_COMPLETED``). Order per iteration: forward; ``step`` (adversary's loss and the
            penalty at weights ``theta_t``); backward (both gradients); main optimizer step; ``finish_step``
            (``theta_t -> theta_t+1``). It saves the adversary's separate backward pass and the last extra forward.

    Example::

        >>> from monai_medl.losses import MixedEffectsLoss
        >>> from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP
        >>> net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,))
        >>> adv = ClusterClassifier(8, num_clusters=3, hidden=(8,))  # reads the 8 hidden fixed-effects units
        >>> x, y = torch.randn(6, 4), torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0], [1.0]])
        >>> site_index = torch.tensor([0, 1, 2, 0, 1, -1])  # -1: unseen, weight zero
        >>> out = net.train()(x, torch.eye(3)[site_index.clamp_min(0)] * (site_index >= 0).unsqueeze(1))
        >>> task_loss = MixedEffectsLoss(task="bce")(out, y)
        >>> reg = AdversarialRegularizer(adv, torch.optim.Adam(adv.parameters(), 1e-3), lambda_g=0.5)
        >>> loss = task_loss + reg.step(out.features, site_index)  # the adversary has made one step already
        >>> loss.backward()  # the main model's step sees the adversarial term with the adversary frozen
        >>> adv_loss, adv_acc = reg.last  # the adversary's loss and accuracy on the seen items
        >>> 0.0 <= float(adv_acc) <= 1.0
        True
    """

    def __init__(
        self,
        adversary: nn.Module,
        optimizer: torch.optim.Optimizer,
        lambda_g: float = 0.1,
        objective: str = "confusion",
        steps: int = 1,
        memory: int = 0,
        label_classes: int = 0,
        feature_scaling: str = "none",
        update: str = "two_step",
    ) -> None:
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}.")
        self.update = update
        self._pending = False  # one_pass: an adversary update waits for the main backward
        if feature_scaling not in FEATURE_SCALINGS:
            raise ValueError(f"feature_scaling must be one of {FEATURE_SCALINGS}, got {feature_scaling!r}.")
        self.feature_scaling = feature_scaling
        if type(label_classes) is not int or label_classes < 0 or label_classes == 1:  # bool is not accepted
            raise ValueError(f"label_classes must be 0 (unconditional) or an integer >= 2, got {label_classes!r}.")
        if label_classes and objective != "confusion":
            raise ValueError(f"a label-conditional adversary needs objective='confusion', got {objective!r}.")
        self.label_classes = label_classes
        self._site_counts: torch.Tensor | None = None  # (label_classes, clusters) running counts, conditional only
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps (adversary updates per step) must be an integer >= 1, got {steps!r}.")
        self.steps = steps
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise ValueError(
                f"memory (past batches the adversary also trains on) must be an integer >= 0, got {memory!r}."
            )
        # (detached features, targets, weights) of the latest batches
        self._memory: deque[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] | None = (
            deque(maxlen=memory) if memory > 0 else None
        )
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

    def step(
        self,
        features: Sequence[torch.Tensor],
        sites: torch.Tensor,
        penalize: bool = True,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update the adversary ``steps`` times and return the generalisation term for the main loss.

        With ``penalize=False`` the adversary is still updated but the returned term is zero (a warm-up in which the
        adversary learns the features before the main model is pushed against it). ``labels``: the class index of
        every item (``(batch,)`` or ``(batch, 1)``, integer or 0/1 float), required by a label-conditional
        adversary and ignored otherwise. With ``update="one_pass"`` the last of the ``steps`` updates is left to the
        main backward and :meth:`finish_step` (see the class docstring)."""
        live, target, weight, count, label_index = self._inputs(features, sites, labels)
        concatenated = len(live) == 1 and isinstance(self.adversary, ClusterClassifier)
        batch = ([f.detach() for f in live], target, weight)
        bank = [*self._memory, batch] if self._memory is not None else [batch]
        inputs = [torch.cat([b[0][i] for b in bank]) for i in range(len(live))] if len(bank) > 1 else batch[0]
        all_target, all_weight = (
            (torch.cat([b[1] for b in bank]), torch.cat([b[2] for b in bank])) if len(bank) > 1 else (target, weight)
        )
        fit = (inputs[0] if concatenated else inputs, all_target, all_weight, all_weight.sum().clamp_min(1.0))
        current = (target, weight, count)
        one_pass = self.update == "one_pass"
        for i in range(self.steps - int(one_pass)):
            self.optimizer.zero_grad(set_to_none=True)
            own, clusters = self._adversary_loss(fit, current, record=i == 0)
            own.backward()
            self._sync_grads()
            self.optimizer.step()
        if one_pass:  # the last update: its loss joins the main graph, the optimizer steps in finish_step()
            self.optimizer.zero_grad(set_to_none=True)
            own, clusters = self._adversary_loss(fit, current, record=self.steps == 1)
            self._pending = True
        if self._memory is not None:
            self._memory.append(batch)
        if label_index is not None:  # counted in warm-up too
            self._count_sites(label_index, target, weight, clusters)

        if self.lambda_g == 0 or not penalize:
            term = live[0].new_zeros(())
        else:
            term = self._penalty(live[0] if concatenated else live, target, weight, count, label_index)
        # zero-valued, so the reported loss is the main loss, but its gradient is the adversary's own one
        return term + (own - own.detach()) if one_pass else term

    def state_dict(self) -> dict:
        """What a resumed run needs besides the adversary's and its optimizer's state: the memory's past batches
        (``memory``: a list of ``{"features", "target", "weight"}``) and the label-conditional running counts
        (``site_counts``, None when unconditional or before the first step). Checkpoint it through
        :class:`~monai_medl.handlers.AdversaryHandler` in ``CheckpointSaver``'s ``save_dict``."""

        def plain(t: torch.Tensor) -> torch.Tensor:  # a MONAI MetaTensor would not load with weights_only=True
            return t.as_subclass(torch.Tensor)

        batches = self._memory or ()
        memory = [{"features": [plain(x) for x in f], "target": plain(t), "weight": plain(w)} for f, t, w in batches]
        counts = None if self._site_counts is None else plain(self._site_counts)
        return {"memory": memory, "site_counts": counts}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the memory length must not exceed this regulariser's ``memory``)."""
        missing = sorted({"memory", "site_counts"} - set(state))
        if missing:
            raise KeyError(
                f"AdversarialRegularizer.load_state_dict: state has no {missing} key(s); got {sorted(state)}."
            )
        memory = state["memory"]
        capacity = 0 if self._memory is None else self._memory.maxlen
        if len(memory) > (capacity or 0):
            raise ValueError(
                f"AdversarialRegularizer.load_state_dict: the state holds {len(memory)} past batches, this regulariser "
                f"keeps memory={capacity}."
            )
        if self._memory is not None:
            self._memory.clear()
            self._memory.extend((list(b["features"]), b["target"], b["weight"]) for b in memory)
        self._site_counts = state["site_counts"]

    def finish_step(self) -> None:
        """``update="one_pass"``: apply the adversary's update whose gradient the main backward has just computed (call
        it after ``loss.backward()``; the :class:`~monai_medl.handlers.AdversaryHandler` does at
        ``IterationEvents.MODEL_COMPLETED``). A no-op for ``"two_step"`` or when no step is pending."""
        if not self._pending:
            return
        self._pending = False
        self._sync_grads()
        self.optimizer.step()

    def _inputs(self, features: Sequence[torch.Tensor], sites: torch.Tensor, labels: torch.Tensor | None):
        """``(adversary inputs, site targets, weights, seen count, label index)`` of a batch."""
        sites = torch.as_tensor(sites).reshape(-1).to(features[0].device).long()
        # unseen-marker rows get weight 0 instead of being masked out: boolean indexing would synchronise with the
        # device every step to learn the number of kept rows
        weight = (sites >= 0).to(features[0].dtype)
        count = weight.sum().clamp_min(1.0)
        target = sites.clamp_min(0)
        if self.feature_scaling != "none":
            features = [scale_invariant(f.flatten(1), self.feature_scaling) for f in features]
        label_index: torch.Tensor | None = None
        if self.label_classes:
            label_index = self._label_index(labels, target)
            features = [*features, F.one_hot(label_index, self.label_classes).to(weight.dtype)]
        if not self.adversary.training:
            self.adversary.train()
        if isinstance(self.adversary, ClusterClassifier):
            # it concatenates its inputs: do that once for the update and the penalty (same values, fewer ops)
            return [torch.cat([f.flatten(1) for f in features], dim=1)], target, weight, count, label_index
        return list(features), target, weight, count, label_index

    def _adversary_loss(self, fit: tuple, current: tuple, record: bool) -> tuple[torch.Tensor, int]:
        """The adversary's weighted cross-entropy on the (memory and current) detached inputs, and its output width;
        ``record``: keep the current batch's read-outs (before the adversary is updated on it; accuracy lazily)."""
        inputs, all_target, all_weight, all_count = fit
        target, weight, count = current
        logits = self.adversary(inputs)
        per_item = F.cross_entropy(logits, all_target, reduction="none")
        if record:
            n = target.shape[0]
            self._last = ((per_item.detach()[-n:] * weight).sum() / count, logits.detach()[-n:], target, weight, count)
        return (per_item * all_weight).sum() / all_count, int(logits.shape[1])

    def _penalty(self, live, target, weight, count, label_index) -> torch.Tensor:
        """The generalisation term of the live activations, the adversary frozen."""
        params = self._params
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)  # frozen: the main backward must not move the adversary through this term
        try:
            logits = self.adversary(live)
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        if label_index is not None:
            # P(site | label) of the training items seen, this batch included (counted for a conditional adversary)
            rows = cast(torch.Tensor, self._site_counts)[label_index]
            site_given_label = rows / rows.sum(1, keepdim=True).clamp_min(1.0)
            per_item = -(site_given_label * F.log_softmax(logits, dim=1)).sum(1)
        elif self.objective == "confusion":
            per_item = -F.log_softmax(logits, dim=1).mean(1)
        else:
            per_item = -F.cross_entropy(logits, target, reduction="none")
        return self.lambda_g * (per_item * weight).sum() / count

    def _label_index(self, labels: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        """Validated class indices ``(batch,)`` of a label-conditional adversary's items."""
        return label_indices(labels, target.shape[0], self.label_classes, target.device)

    def _count_sites(self, index: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, clusters: int) -> None:
        """Add the batch's training items to the running (label, site) counts."""
        counts = self._site_counts
        if counts is None or counts.shape[1] != clusters or counts.device != target.device:
            counts = self._site_counts = torch.zeros(self.label_classes, clusters, device=target.device)
        counts.index_put_((index, target), weight, accumulate=True)
