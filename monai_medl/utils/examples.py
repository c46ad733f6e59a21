# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Toy site-labelled items and one-epoch CPU engines: the setup that the handlers' docstring examples share, written
once so that each example shows only what its own class adds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.transforms import Transform
from torch import nn

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.losses import MixedEffectsLoss

__all__ = ["site_items", "site_trainer", "site_evaluator"]


def site_items(num_items: int = 12, num_sites: int = 3, shape: Sequence[int] = (4,)) -> list[dict[str, Any]]:
    """Items ``{"image": randn(shape), "label": [i % 2], "site": i % num_sites}`` for ``i`` in ``range(num_items)``.

    Example:
        >>> items = site_items(6, num_sites=2, shape=(1, 8, 8))
        >>> items[3]["image"].shape, items[3]["label"], items[3]["site"]
        (torch.Size([1, 8, 8]), tensor([1.]), 1)
    """
    return [
        {"image": torch.randn(*shape), "label": torch.tensor([float(i % 2)]), "site": i % num_sites}
        for i in range(num_items)
    ]


def site_trainer(
    network: nn.Module,
    train_handlers: Sequence[Any] = (),
    items: Sequence[dict[str, Any]] | None = None,
    num_clusters: int = 3,
    batch_size: int = 4,
) -> SupervisedTrainer:
    """One CPU epoch of a mixed-effects binary classifier over ``items`` (default :func:`site_items`) in batches of
    ``batch_size``, Adam at 1e-3 and ``MixedEffectsLoss(task="bce")``.

    Example:
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> trainer = site_trainer(MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,)))
        >>> trainer.run(); trainer.state.iteration
        3
    """
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(site_items() if items is None else list(items)), batch_size=batch_size),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-3),
        loss_function=MixedEffectsLoss(task="bce"),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=num_clusters),
        train_handlers=list(train_handlers),
    )


def site_evaluator(
    network: nn.Module,
    items: Sequence[dict[str, Any]],
    val_handlers: Sequence[Any],
    postprocessing: Transform,
    batch_size: int,
    num_clusters: int = 2,
    design_key: str | None = None,
) -> SupervisedEvaluator:
    """A CPU evaluator of ``network`` over ``items`` with :class:`~monai_medl.engines.MixedEffectsPrepareBatch`.

    Example:
        >>> from monai.transforms import Activationsd
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(4, 1, num_clusters=2)
        >>> evaluator = site_evaluator(net, site_items(4, 2), [], Activationsd("pred", sigmoid=True), batch_size=2)
        >>> evaluator.run(); evaluator.state.iteration
        2
    """
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(list(items)), batch_size=batch_size),
        network=network,
        prepare_batch=MixedEffectsPrepareBatch(num_clusters, design_key=design_key),
        postprocessing=postprocessing,
        val_handlers=list(val_handlers),
    )
