# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""TensorBoard images of reconstructions and counterfactual panels of an ME-autoencoder during training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from monai.utils import optional_import
from torch import nn

from monai_medl.networks.utils import unwrap_network
from monai_medl.transforms.site import site_index_to_design
from monai_medl.visualize.counterfactual import counterfactual_grid, counterfactual_panel

Events, _ = optional_import("ignite.engine", name="Events")
SummaryWriter, _ = optional_import("torch.utils.tensorboard", name="SummaryWriter")

if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer

    from monai_medl.networks.nets.me_autoencoder import MixedEffectsAutoEncoder

__all__ = ["CounterfactualImageHandler"]


class CounterfactualImageHandler:
    """Every ``interval`` epochs, write a counterfactual panel of fixed example images to TensorBoard.

    Rows are the example images; columns are the input, its reconstruction, and its decoding as if acquired in
    each training batch (:func:`~monai_medl.visualize.counterfactual.counterfactual_panel`). The examples are the
    first ``num_images`` items of ``batch`` (a collated batch dictionary with image and site index).

    Args:
        batch: dictionary with ``image_key`` ``(B, C, *spatial)`` and ``site_key`` site indices (``-1`` = unseen).
        network: the ME-autoencoder; defaults to ``engine.network``.
        summary_writer: a ``SummaryWriter``; defaults to a new one in ``log_dir``.
        log_dir: TensorBoard folder when no writer is given. Defaults to ``"./runs"``.
        interval: epochs between panels. Defaults to 1.
        num_images: rows of the panel. Defaults to 4.
        tag: image tag. Defaults to ``"counterfactual"``.
        image_key: image key of ``batch``. Defaults to ``"image"``.
        site_key: site key of ``batch``. Defaults to ``"site"``.

    Example::

        >>> import tempfile
        >>> import torch
        >>> from ignite.engine import Engine
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> from monai.data import DataLoader
        >>> from monai.utils import first
        >>> from monai_medl.networks.nets import MixedEffectsAutoEncoder
        >>> net = MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 16, 16), num_clusters=3, channels=(4, 8),
        ...                               strides=(2, 2))
        >>> val_loader = DataLoader([{"image": torch.rand(1, 16, 16), "site": i % 3} for i in range(4)], batch_size=4)
        >>> trainer = Engine(lambda engine, batch: None)  # stands in for the SupervisedTrainer of ``net``
        >>> handler = CounterfactualImageHandler(first(val_loader), network=net, log_dir=tempfile.mkdtemp())
        >>> handler.attach(trainer)
        >>> _ = trainer.run([0], max_epochs=2)
        >>> handler.writer.close()
        >>> [image.step for image in EventAccumulator(handler.log_dir).Reload().Images("counterfactual")]  # epochs
        [1, 2]
    """

    def __init__(
        self,
        batch: Mapping[str, Any],
        network: nn.Module | None = None,
        summary_writer: Any = None,
        log_dir: str = "./runs",
        interval: int = 1,
        num_images: int = 4,
        tag: str = "counterfactual",
        image_key: str = "image",
        site_key: str = "site",
    ) -> None:
        for key in (image_key, site_key):
            if key not in batch:
                raise KeyError(f"example batch has no {key!r} key; available keys: {sorted(batch)}.")
        self.images = torch.as_tensor(batch[image_key][:num_images]).float()
        self.sites = torch.as_tensor(batch[site_key][:num_images]).reshape(-1).long()
        self.network = network
        self.writer = summary_writer
        self.log_dir = log_dir
        self.interval = interval
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        net = unwrap_network(self.network if self.network is not None else cast("SupervisedTrainer", engine).network)
        net = cast("MixedEffectsAutoEncoder", net)  # the auto-encoder this handler is for
        if self.writer is None:
            self.writer = SummaryWriter(log_dir=self.log_dir)
        device = next(net.parameters()).device
        images = self.images.to(device)
        z = site_index_to_design(self.sites, net.num_clusters).to(images)
        grid = counterfactual_grid(counterfactual_panel(net, images, z))
        self.writer.add_image(self.tag, grid.cpu(), engine.state.epoch)
        self.writer.flush()
