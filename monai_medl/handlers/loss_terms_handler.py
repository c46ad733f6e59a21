# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Write the terms of a mixed-effects loss into the iteration output, at a logging interval."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

    from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss

__all__ = ["LossTermsHandler"]


class LossTermsHandler:
    """Put the unweighted terms of :class:`~monai_medl.losses.MixedEffectsLoss` into ``engine.state.output``.

    MONAI's ``SupervisedTrainer`` keeps the total loss only. At ``IterationEvents.LOSS_COMPLETED`` of every
    ``interval``-th iteration this handler recomputes the terms from what the engine already holds (the network's
    structured output ``pred`` and the ``label``; a few element-wise operations) and writes them, detached, under
    their names (``loss_mixed``, ``loss_fixed``, ``kl``; ``recon``, ``recon_fixed`` for the autoencoder loss), so
    ``StatsHandler``/TensorBoard handlers can log them. The loss keeps no state between calls and nothing is
    converted to a Python number here.

    Args:
        loss_function: the mixed-effects loss; defaults to ``engine.loss_function``.
        interval: write the terms every ``interval`` iterations (match the logging handlers' interval). Defaults to 1.

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> from monai_medl.utils.examples import site_trainer
        >>> net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,))
        >>> trainer = site_trainer(net, [LossTermsHandler()])
        >>> trainer.run()
        >>> out = trainer.state.output[0]
        >>> [k for k in ("loss_mixed", "loss_fixed", "kl") if k in out]
        ['loss_mixed', 'loss_fixed', 'kl']
    """

    def __init__(self, loss_function: MixedEffectsLoss | None = None, interval: int = 1) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.loss_function = loss_function
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration % self.interval:
            return
        loss = self.loss_function if self.loss_function is not None else engine.loss_function
        if not hasattr(loss, "terms"):
            raise TypeError(f"LossTermsHandler needs a loss with a terms() method, got {type(loss).__name__}.")
        output = engine.state.output
        with torch.no_grad():
            terms = loss.terms(output[CommonKeys.PRED], output[CommonKeys.LABEL])
        output.update({k: v.detach() for k, v in terms.items()})
