# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Ignite handler that trains a z-predictor (cluster classifier) on the batches of a MONAI trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys
from torch import nn

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ClusterPredictorHandler"]


class ClusterPredictorHandler:
    """Train a cluster (site) classifier alongside the main network, one step per trainer iteration.

    The z-predictor gives a soft design vector ``z`` for scans from clusters never seen in training (see
    :class:`~monai_medl.engines.MixedEffectsPrepareBatch`, ``mode="inferred"``). Training it inside the main
    ``SupervisedTrainer`` reuses the same (augmented) training batches, so it needs no extra pass over the data
    and only ever sees training data. At ``IterationEvents.LOSS_COMPLETED`` the handler takes the prepared input
    from ``engine.state.output["image"]`` and the site indices from ``engine.state.batch[site_key]`` and makes one
    cross-entropy step of ``predictor`` with its own optimizer; the main network's loss and gradients are not
    touched. ``site_loss`` and ``site_acc`` are written into the iteration output (detached tensors) for
    StatsHandler/TensorBoard. Items with a negative site index (the unseen marker) get weight zero. Save and restore
    the predictor and its optimizer with MONAI's ``CheckpointSaver``/``CheckpointLoader``. For multi-process
    training wrap the predictor in ``DistributedDataParallel`` so its gradients are averaged across ranks.

    Args:
        predictor: network mapping the trainer's input batch to ``(batch, num_clusters)`` logits, e.g.
            ``SmallCNN(spatial_dims=3, out_channels=num_clusters)``.
        optimizer: optimizer over the predictor's parameters.
        site_key: batch key holding site indices (after :class:`~monai_medl.transforms.SiteToIndexd`).
            Defaults to ``"site"``.

    Example::

        >>> import torch
        >>> from monai_medl.networks.nets import MixedEffectsCNN, SmallCNN
        >>> from monai_medl.utils.examples import site_items, site_trainer
        >>> num_sites = 3
        >>> items = site_items(8, num_sites, shape=(1, 16, 16))
        >>> net = MixedEffectsCNN(num_sites, backbone=SmallCNN(spatial_dims=2, channels=(4, 8)))
        >>> z_predictor = SmallCNN(spatial_dims=2, in_channels=1, out_channels=num_sites, channels=(4, 8))
        >>> handler = ClusterPredictorHandler(z_predictor, torch.optim.Adam(z_predictor.parameters(), 1e-3))
        >>> trainer = site_trainer(net, [handler], items, num_clusters=num_sites)
        >>> trainer.run()
        >>> sorted(k for k in trainer.state.output[0] if k.startswith("site_"))  # the predictor's step, for logging
        ['site_acc', 'site_loss']

    In a bundle config::

        {"_target_": "monai_medl.handlers.ClusterPredictorHandler", "predictor": "@z_predictor",
         "optimizer": "@z_optimizer"}
    """

    def __init__(self, predictor: nn.Module, optimizer: torch.optim.Optimizer, site_key: str = "site") -> None:
        self.predictor = predictor
        self.optimizer = optimizer
        self.site_key = site_key
        # detached tensors of the latest step: converted to numbers only by whoever logs them
        self.last_loss = torch.tensor(float("nan"))
        self.last_accuracy = torch.tensor(float("nan"))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def step(self, image: torch.Tensor, sites: torch.Tensor) -> None:
        """One optimisation step of the predictor on ``image`` (detached) and site indices ``sites``."""
        target = torch.as_tensor(sites).reshape(-1).to(image.device).long()
        if target.shape[0] != image.shape[0]:
            raise ValueError(f"got {target.shape[0]} site indices for a batch of {image.shape[0]} inputs.")
        # unseen-marker rows get weight 0 (boolean indexing would synchronise with the device every step)
        weight = (target >= 0).to(image.dtype)
        count = weight.sum().clamp_min(1.0)
        target = target.clamp_min(0)
        self.predictor.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.predictor(image.detach())
        loss = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / count
        loss.backward()
        self.optimizer.step()
        self.last_loss = loss.detach()
        self.last_accuracy = ((logits.detach().argmax(1) == target).to(weight.dtype) * weight).sum() / count

    def __call__(self, engine: Engine) -> None:
        batch = cast(dict, engine.state.batch)  # the trainer's batch dictionary (ignite types it loosely)
        if self.site_key not in batch:
            raise KeyError(f"batch has no {self.site_key!r} key; available keys: {sorted(batch)}.")
        output = cast(dict, engine.state.output)
        self.step(output[CommonKeys.IMAGE], batch[self.site_key])
        output["site_loss"] = self.last_loss
        output["site_acc"] = self.last_accuracy
