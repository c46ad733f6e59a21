# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The image benchmarks' shared training recipe: seeded, flipped in-memory batches and a MONAI ``SupervisedTrainer``
run without MetaTensor tracking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import DataLoader, Dataset, get_track_meta, set_track_meta
from monai.engines import SupervisedTrainer
from monai.transforms import RandFlipd

__all__ = ["flipped_loader", "train_supervised"]


def flipped_loader(x: torch.Tensor, target: torch.Tensor, site: torch.Tensor, batch_size: int, seed: int) -> DataLoader:
    """Shuffled batches (seeded) of ``{"image", "label": target, "site"}`` with seeded random left-right flips (RAS x
    axis; the generated anatomy is bilateral) of the image and, when ``target`` is a label map shaped like ``x``, of
    the label too."""
    items = [{"image": x[i], "label": target[i], "site": int(site[i])} for i in range(len(x))]
    keys = ("image", "label") if target.dim() == x.dim() else ("image",)
    flip = RandFlipd(keys, prob=0.5, spatial_axis=0).set_random_state(seed)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(Dataset(items, transform=flip), batch_size=batch_size, shuffle=True, generator=gen)


def train_supervised(
    net: nn.Module,
    loss: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    handlers: Sequence[Any] = (),
    prepare_batch: Any = None,
) -> nn.Module:
    """Train ``net`` for ``epochs`` in MONAI's ``SupervisedTrainer`` on the CPU and return it in eval mode.

    MetaTensor tracking is off while it runs (restored afterwards): the in-memory volumes carry no metadata worth the
    per-item cost."""
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=optimizer,
        loss_function=loss,
        train_handlers=list(handlers),
        **({"prepare_batch": prepare_batch} if prepare_batch is not None else {}),
    )
    track_meta = get_track_meta()
    set_track_meta(False)
    try:
        trainer.run()
    finally:
        set_track_meta(track_meta)
    return net.eval()
