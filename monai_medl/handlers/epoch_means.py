# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Epoch means of scalars in the iteration output, written into ``engine.state.metrics`` for every logger."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["OutputMeans", "EpochMeansHandler", "TRAIN_SCALARS"]

TRAIN_SCALARS: tuple[str, ...] = (
    "loss",
    "loss_mixed",
    "loss_fixed",
    "kl",
    "adv_loss",
    "adv_acc",
    "site_loss",
    "site_acc",
)
"""Iteration-output scalars of the mixed-effects trainers: ``SupervisedTrainer`` (``loss``),
:class:`~monai_medl.handlers.LossTermsHandler`, :class:`~monai_medl.handlers.AdversaryHandler` and
:class:`~monai_medl.handlers.ClusterPredictorHandler`."""


class OutputMeans:
    """Running sums of named scalars of iteration outputs, to average once per epoch.

    Values are summed as detached tensors and turned into numbers once, in :meth:`means`, not once per iteration.

    Args:
        keys: output keys to average; keys absent from an output, non-scalar tensors and non-numbers are skipped.

    Example::

        >>> import torch
        >>> means = OutputMeans(["loss", "adv_acc"])
        >>> means.add([{"loss": torch.tensor(1.0)}]); means.add({"loss": 3.0, "adv_acc": 0.5})
        >>> means.means()
        {'loss': 2.0, 'adv_acc': 0.5}
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def add(self, output: Any) -> None:
        """Add one iteration output (a dict, or a decollated list of dicts with the scalars replicated)."""
        if isinstance(output, (list, tuple)):
            output = output[0] if output else {}
        if not isinstance(output, Mapping):
            return
        for key in self.keys:
            value = output.get(key)
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    continue
                value = value.detach().reshape(())
            elif not isinstance(value, (int, float)):
                continue
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        """The finite means so far, by key."""
        out = {key: float(total) / self._counts[key] for key, total in self._sums.items()}
        return {key: value for key, value in out.items() if np.isfinite(value)}


class EpochMeansHandler:
    """Write the epoch mean of iteration-output scalars into ``engine.state.metrics`` as ``prefix + key``.

    MONAI's ``TensorBoardStatsHandler``, ``StatsHandler`` and ``MLFlowHandler`` log ``engine.state.metrics`` at
    every epoch end, so one handler gives all of them the same names: the bundles log the per-iteration values as
    ``train/iteration/<key>`` (``ScalarsFromOutput(prefix="train/iteration/")``) and these means as
    ``train/epoch/<key>``. Attach it before the logging handlers (handlers run in the order they were attached).

    Args:
        keys: output keys to average. Defaults to :data:`TRAIN_SCALARS`.
        prefix: prepended to every key. Defaults to ``"train/epoch/"``.

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> from monai_medl.utils.examples import site_trainer
        >>> from monai_medl.handlers import LossTermsHandler
        >>> trainer = site_trainer(MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,)),
        ...                        [LossTermsHandler(), EpochMeansHandler()])
        >>> trainer.run(); sorted(trainer.state.metrics)
        ['train/epoch/kl', 'train/epoch/loss', 'train/epoch/loss_fixed', 'train/epoch/loss_mixed']

    In a bundle config: ``{"_target_": "monai_medl.handlers.EpochMeansHandler"}``.
    """

    def __init__(self, keys: Sequence[str] = TRAIN_SCALARS, prefix: str = "train/epoch/") -> None:
        self.means = OutputMeans(keys)
        self.prefix = prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.means.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.means.add(e.state.output))
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.metrics.update({self.prefix + key: value for key, value in self.means.means().items()})
