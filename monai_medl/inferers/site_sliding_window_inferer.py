# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Sliding-window inference of a mixed-effects network with each image's own cluster design ``z``."""

from __future__ import annotations

from typing import Any, cast

import torch
from monai.inferers import SlidingWindowInferer

__all__ = ["SiteSlidingWindowInferer"]


class SiteSlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` that keeps every image's ``z`` with its windows.

    MONAI's sliding window passes extra arguments to the network unchanged, while the windows of a batch are
    regrouped into window batches, so a ``(batch, K)`` design no longer lines up with them. This inferer runs the
    sliding window image by image with that image's single ``z`` row, which a mixed-effects network such as
    :class:`~monai_medl.networks.nets.MixedEffectsUNet` broadcasts over the window batch. Without ``z`` (population
    prediction) it is the plain ``SlidingWindowInferer``. Takes the same arguments as ``SlidingWindowInferer``.

    Example (bundle config, with :class:`~monai_medl.engines.MixedEffectsPrepareBatch` supplying ``z``)::

        "inferer": {"_target_": "monai_medl.inferers.SiteSlidingWindowInferer", "roi_size": [32, 32, 32],
                    "sw_batch_size": 4, "overlap": 0.25}
    """

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        z = args[0] if args else kwargs.pop("z", None)
        rest = args[1:] if args else ()
        if z is None:  # a segmentation network returns one tensor, so the windows stitch into one
            return cast(torch.Tensor, super().__call__(inputs, network, *rest, **kwargs))
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != inputs.shape[0]:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a (batch, num_clusters) tensor with one row per image, got {shape}.")
        window = super().__call__  # zero-argument super() does not work inside a comprehension
        parts = [window(inputs[i : i + 1], network, z[i : i + 1], *rest, **kwargs) for i in range(len(z))]
        return torch.cat(cast(list[torch.Tensor], parts))
