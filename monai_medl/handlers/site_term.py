# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Base of the trainer handlers that add a term of the fixed-effects features and the batch's site to the loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SiteTermHandler"]


class SiteTermHandler:
    """Adds :meth:`term` to a MONAI ``SupervisedTrainer``'s loss at ``IterationEvents.LOSS_COMPLETED``.

    At that event (after the loss, before the backward) it reads the network's training output
    (:class:`~monai_medl.networks.blocks.MixedEffectsOutput`) from ``engine.state.output["pred"]`` and the site (and,
    when :attr:`conditional`, the label) from ``engine.state.batch``, checking both with errors that name the
    handler and the key; it adds the term to ``engine.state.output["loss"]`` and writes the named read-outs
    :meth:`term` returns into the output. Subclasses (:class:`~monai_medl.handlers.AdversaryHandler`,
    :class:`~monai_medl.handlers.SiteAlignmentHandler`) define :attr:`conditional` and :meth:`term`.

    Args:
        site_key: batch key with the site index (``-1`` = unseen).
        label_key: batch key with the class label, read only when :attr:`conditional`.
    """

    def __init__(self, site_key: str, label_key: str) -> None:
        self.site_key = site_key
        self.label_key = label_key

    @property
    def conditional(self) -> bool:
        """Whether :meth:`term` reads the label."""
        raise NotImplementedError

    def term(
        self, engine: Engine, features: Any, sites: Any, labels: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(term added to the loss, read-outs written into the iteration output)`` for the output's ``features``
        and the batch's ``sites`` and ``labels`` (None unless :attr:`conditional`)."""
        raise NotImplementedError

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = type(self).__name__
        output = cast(dict, engine.state.output)  # the trainer's output dictionary (ignite types it loosely)
        pred = output[CommonKeys.PRED]
        if not hasattr(pred, "features"):
            raise TypeError(
                f"{name} needs the trainer's network to return a MixedEffectsOutput (a mixed-effects network in "
                f"training mode) as engine.state.output['pred'], got {type(pred).__name__}."
            )
        batch = cast(dict, engine.state.batch)
        conditional = self.conditional
        for key in [self.site_key] + ([self.label_key] if conditional else []):
            if key not in batch:
                raise KeyError(f"{name}: batch has no {key!r} key; available keys: {sorted(batch)}.")
        labels = batch[self.label_key] if conditional else None
        term, readouts = self.term(engine, pred.features, batch[self.site_key], labels)
        output[CommonKeys.LOSS] = output[CommonKeys.LOSS] + term
        output.update(readouts)
