# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Ignite handler that trains the cluster adversary inside a MONAI ``SupervisedTrainer`` iteration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys
from torch import nn

from monai_medl.handlers.site_term import SiteTermHandler
from monai_medl.losses.adversarial_regularizer import AdversarialRegularizer

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["AdversaryHandler"]


class AdversaryHandler(SiteTermHandler):
    """Adversarial regularisation of a mixed-effects network's fixed effects, as a trainer handler.

    Attached to a ``SupervisedTrainer`` it runs at ``IterationEvents.LOSS_COMPLETED``: it reads the network's
    training output (:class:`~monai_medl.networks.blocks.MixedEffectsOutput`) from ``engine.state.output["pred"]``
    and the site indices from ``engine.state.batch``, updates the adversary on the detached fixed-effects activations
    (its own optimizer), then adds the adversarial term (``-lambda_g * CE(site, adversary(activations))`` or its
    confusion form) to ``engine.state.output["loss"]`` before the trainer's backward, so the main update sees the
    term with the adversary frozen. ``adv_loss`` and ``adv_acc`` are written into the iteration output as detached
    tensors (no host synchronisation; logging handlers convert them at their own interval). Save and restore the
    adversary and its optimizer with MONAI's ``CheckpointSaver``/``CheckpointLoader`` by listing them in
    ``save_dict``/``load_dict``; list the handler itself too (:meth:`state_dict`: the adversary's memory of past
    batches and label-conditional counts) so that a resumed run with ``memory`` or ``label_classes`` continues
    exactly.

    ``objective``, ``steps``, ``memory``, ``label_classes``, ``feature_scaling`` and ``update`` are keywords passed on
    to :class:`~monai_medl.losses.AdversarialRegularizer` (which checks them).

    Args:
        adversary: cluster adversary (e.g. :class:`~monai_medl.networks.nets.ClusterClassifier`).
        optimizer: optimizer over the adversary's parameters.
        lambda_g: weight of the adversarial term. Defaults to None, the default of
            :class:`~monai_medl.losses.AdversarialRegularizer` (0.1).
        site_key: batch key with the site index (``-1`` = unseen, ignored). Defaults to ``"site"``.
        objective: ``"confusion"`` (push the adversary to uniform predictions) or ``"ce"`` (ARMED: maximise its
            cross-entropy); see :class:`~monai_medl.losses.AdversarialRegularizer`. Defaults to ``"confusion"``.
        steps: adversary updates per trainer iteration (on the same detached activations). Defaults to 1.
        memory: past iterations' detached activations the adversary also trains on (see
            :class:`~monai_medl.losses.AdversarialRegularizer`). Defaults to 0.
        warmup_epochs: epochs at the start during which the adversary is trained but its term is not added to the
            loss (the main model first learns the task and the adversary learns its features, then the unlearning
            starts, as in iterative unlearning). Defaults to 0 (the term from the first iteration).
        label_classes: 0 (default), or the number of classes ``C`` for a label-conditional adversary that also reads
            the class label from ``batch[label_key]`` (see :class:`~monai_medl.losses.AdversarialRegularizer`; build
            the adversary with ``make_adversary(label_classes=C)``).
        label_key: batch key with the class label, read only when ``label_classes`` is set. Defaults to ``"label"``.
        feature_scaling: ``"none"`` (default) or the scale-invariant view the adversary reads (``"layer"``,
            ``"batch_rms"``, ``"batch_std"``; see :func:`~monai_medl.losses.scale_invariant`), so that shrinking the
            features cannot fool it.
        update: ``"two_step"`` (default: the adversary's own update inside ``LOSS_COMPLETED``, then the penalty of the
            updated adversary) or ``"one_pass"`` (the trainer's backward computes the adversary's gradient too; the
            adversary's optimizer steps at ``IterationEvents.MODEL_COMPLETED``, after the main optimizer; see
            :class:`~monai_medl.losses.AdversarialRegularizer` for the update order). The trainer's gradient
            accumulation (``iteration_update`` with several iterations per step) is not supported with
            ``"one_pass"``: the adversary steps every iteration.

    Example::

        >>> import torch
        >>> from monai.data import DataLoader
        >>> from monai.engines import SupervisedTrainer
        >>> from monai_medl.engines import MixedEffectsPrepareBatch
        >>> from monai_medl.losses import MixedEffectsLoss
        >>> from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP
        >>> items = [{"image": torch.randn(4), "label": torch.tensor([float(i % 2)]), "site": i % 3} for i in range(12)]
        >>> net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,))
        >>> adversary = ClusterClassifier(8, num_clusters=3, hidden=(8,))  # reads the 8 hidden units
        >>> handler = AdversaryHandler(adversary, torch.optim.Adam(adversary.parameters(), 1e-4), lambda_g=0.1)
        >>> trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1,
        ...                             train_data_loader=DataLoader(items, batch_size=4), network=net,
        ...                             optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        ...                             loss_function=MixedEffectsLoss(task="bce"),
        ...                             prepare_batch=MixedEffectsPrepareBatch(num_clusters=3),
        ...                             train_handlers=[handler])
        >>> trainer.run()
        >>> sorted(k for k in trainer.state.output[0] if k.startswith("adv_"))  # for StatsHandler / TensorBoard
        ['adv_acc', 'adv_loss']
    """

    def __init__(
        self,
        adversary: nn.Module,
        optimizer: torch.optim.Optimizer,
        lambda_g: float | None = None,
        site_key: str = "site",
        label_key: str = CommonKeys.LABEL,
        warmup_epochs: int = 0,
        **regularizer: Any,
    ) -> None:
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}.")
        # lambda_g, objective, steps, memory, label_classes, feature_scaling, update: AdversarialRegularizer's (one
        # definition of each, defaults included)
        if lambda_g is not None:
            regularizer["lambda_g"] = lambda_g
        self.regularizer = AdversarialRegularizer(adversary, optimizer, **regularizer)
        super().__init__(site_key, label_key)
        self.warmup_epochs = warmup_epochs

    def state_dict(self) -> dict:
        """The regulariser's state beyond the adversary and its optimizer (see
        :meth:`~monai_medl.losses.AdversarialRegularizer.state_dict`)."""
        return self.regularizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.regularizer.load_state_dict(state)

    @property
    def conditional(self) -> bool:
        return bool(self.regularizer.label_classes)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self.regularizer.update == "one_pass":
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda _: self.regularizer.finish_step())

    def term(self, engine: Engine, features: Any, sites: Any, labels: Any) -> tuple[torch.Tensor, dict]:
        penalize = engine.state.epoch > self.warmup_epochs  # Ignite counts epochs from 1
        term = self.regularizer.step(features, sites, penalize=penalize, labels=labels)
        adv_loss, adv_acc = self.regularizer.last
        return term, {"adv_loss": adv_loss, "adv_acc": adv_acc}
