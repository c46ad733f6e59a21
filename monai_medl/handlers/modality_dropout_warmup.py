# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Modality dropout switched on only after a warm-up: the network first learns from every input it has."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from ignite.engine import Events
from torch import nn

from monai_medl.networks.utils import unwrap_network

if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer

__all__ = ["ModalityDropoutWarmup"]


class ModalityDropoutWarmup:
    """Keep a multimodal network's ``modality_dropout`` at 0 for the first epochs, then set it to ``rate``.

    Attached to a ``SupervisedTrainer`` the handler sets the dropout at the start of every epoch: 0 for epochs
    ``1 .. start_epoch - 1``, ``rate`` from ``start_epoch`` on (ignite counts epochs from 1; resuming from a
    checkpoint gives the same schedule). On the two-contrast benchmark cohort, dropout from the first epoch made the
    network fit the labels of FLAIR-less training samples from T1 alone (a weak, site-confounded contrast), which
    cost AUROC with both contrasts present; with a warm-up the cross-contrast features are formed first and the
    dropout phase only adapts the network to the missing input (see ``benchmarks/multimodal``).

    Args:
        rate: modality dropout probability from ``start_epoch`` on (the network's ``modality_dropout``).
        start_epoch: first epoch (1-based) with dropout.
        network: the network (a :class:`~monai_medl.networks.nets.make_multimodal_me_cnn`, possibly wrapped in
            DataParallel/DDP); defaults to ``engine.network``.

    Example::

        >>> from ignite.engine import Engine, Events
        >>> from monai_medl.networks.nets import make_multimodal_me_cnn
        >>> net = make_multimodal_me_cnn(6, modalities=("t1", "flair"), required=["t1"])
        >>> trainer = Engine(lambda engine, batch: None)  # stands in for a SupervisedTrainer of ``net``
        >>> ModalityDropoutWarmup(rate=0.25, start_epoch=13, network=net).attach(trainer)  # dropout in epochs 13..20
        >>> rates = []
        >>> _ = trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: rates.append(net.modality_dropout))
        >>> _ = trainer.run([0], max_epochs=20)
        >>> rates.count(0.0), rates.count(0.25)
        (12, 8)
    """

    def __init__(self, rate: float, start_epoch: int, network: nn.Module | None = None) -> None:
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {rate}.")
        if int(start_epoch) < 1:
            raise ValueError(f"start_epoch must be >= 1 (ignite counts epochs from 1), got {start_epoch}.")
        self.rate = float(rate)
        self.start_epoch = int(start_epoch)
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def rate_at(self, epoch: int) -> float:
        """Dropout probability in ``epoch`` (1-based)."""
        return self.rate if epoch >= self.start_epoch else 0.0

    def __call__(self, engine: Engine) -> None:
        net = unwrap_network(self.network if self.network is not None else cast("SupervisedTrainer", engine).network)
        if not hasattr(net, "modality_dropout"):
            raise TypeError(f"{type(net).__name__} has no modality_dropout attribute (needs a multimodal network).")
        # ignore: torch types Module attributes as Tensor | Module; a float attribute is fine at run time
        net.modality_dropout = self.rate_at(engine.state.epoch)  # type: ignore[assignment]
