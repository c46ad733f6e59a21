# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``output_transform`` callables for MONAI logging handlers in bundle configs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["ScalarsFromOutput"]


class ScalarsFromOutput:
    """Pick several scalars from a decollated iteration output as a ``{key: float}`` dict.

    ``StatsHandler`` and ``TensorBoardStatsHandler`` log every scalar of a dictionary, but MONAI's
    ``from_engine(keys, first=True)`` returns a tuple, which they ignore. Keys missing from the output (e.g.
    ``adv_loss`` before the adversary handler ran) are skipped.

    Args:
        keys: output keys to log, e.g. ``("loss", "adv_loss", "adv_acc")``.
        prefix: prepended to every name (the bundles log ``"train/iteration/"``). Defaults to ``""``.

    Example (bundle config)::

        "output_transform": {"_target_": "monai_medl.bundle.ScalarsFromOutput", "keys": ["loss", "adv_loss"]}

    Example::

        >>> import torch
        >>> ScalarsFromOutput(["loss", "kl"], prefix="train/iteration/")([{"loss": torch.tensor(0.5), "pred": 1}])
        {'train/iteration/loss': 0.5}
    """

    def __init__(self, keys: Sequence[str], prefix: str = "") -> None:
        self.keys = tuple(keys)
        self.prefix = prefix

    def __call__(self, output: Any) -> dict[str, float]:
        first = output[0] if isinstance(output, list | tuple) else output
        return {self.prefix + k: float(torch.as_tensor(first[k]).reshape(-1)[0]) for k in self.keys if k in first}
