# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Write the terms of a mixed-effects loss into the iteration output, at a logging interval."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from monai_medl.losses.loss_output import loss_terms

if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer

    from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss

__all__ = ["LossTermsHandler"]


class LossTermsHandler:
    """Put the unweighted terms of :class:`~monai_medl.losses.MixedEffectsLoss` into ``engine.state.output``.

    MONAI's ``SupervisedTrainer`` stores the loss under ``engine.state.output["loss"]``. The mixed-effects losses
    return a :class:`~monai_medl.losses.LossOutput` there, a total that carries its terms; at
    ``IterationEvents.LOSS_COMPLETED`` of every ``interval``-th iteration this handler writes them, detached, under
    their names (``loss_mixed``, ``loss_fixed``, ``kl``; ``recon``, ``recon_fixed`` for the autoencoder loss), so
    ``StatsHandler``/TensorBoard handlers can log them. A loss that returns a plain tensor but has a ``terms(pred,
    label)`` method gets its terms computed from the engine's ``pred`` and ``label``. Nothing is converted to a
    Python number here.

    Args:
        loss_function: the loss whose ``terms`` method serves when the engine's loss carries no terms; defaults to
            ``engine.loss_function``.
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
        output = cast(dict, engine.state.output)  # the trainer's output dictionary (ignite types it loosely)
        terms = loss_terms(output.get(CommonKeys.LOSS))
        if terms is None:  # a loss returning a plain tensor: compute the terms from the engine's pred and label
            loss = (
                self.loss_function
                if self.loss_function is not None
                else cast("SupervisedTrainer", engine).loss_function
            )
            if not hasattr(loss, "terms"):
                raise TypeError(
                    "LossTermsHandler needs engine.state.output['loss'] to carry terms (a LossOutput) or a loss with "
                    f"a terms() method, got {type(loss).__name__}."
                )
            with torch.no_grad():
                terms = loss.terms(output[CommonKeys.PRED], output[CommonKeys.LABEL])
        output.update({k: v.detach() for k, v in terms.items()})
