# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Inferer that returns chosen fields of a mixed-effects network's structured output (e.g. reconstructions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from monai_medl.networks.utils import unwrap_network

__all__ = ["MixedEffectsInferer"]


class MixedEffectsInferer(Inferer):
    """Call ``network.forward_all`` and return the requested fields as a dictionary of tensors.

    In eval mode a mixed-effects network returns its prediction tensor only. An evaluator that also needs, say, an
    autoencoder's reconstruction or the fixed-effects head uses this inferer instead of ``SimpleInferer``; the
    engine then holds ``{"mixed": ..., "reconstruction": ...}`` under ``"pred"`` and MONAI's ``FlattenSubKeysd``
    (first post-transform) moves the fields to top-level keys (``pred_mixed``, ``pred_reconstruction`` with
    ``prefix="pred"``) for metrics and image handlers. The network is called once per batch; nothing is stored.

    Args:
        fields: names of :class:`~monai_medl.networks.blocks.MixedEffectsOutput` (or
            :class:`~monai_medl.networks.nets.MixedEffectsAutoEncoderOutput`) fields to return. Defaults to
            ``("mixed", "fixed")``.

    Example (bundle config)::

        "inferer": {"_target_": "monai_medl.inferers.MixedEffectsInferer", "fields": ["mixed", "reconstruction"]},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "FlattenSubKeysd", "keys": "pred", "prefix": "pred"},
            {"_target_": "Activationsd", "keys": "pred_mixed", "sigmoid": true}]}
    """

    def __init__(self, fields: Sequence[str] = ("mixed", "fixed")) -> None:
        super().__init__()
        if isinstance(fields, str) or not fields:
            raise ValueError(f"fields must be a non-empty sequence of output field names, got {fields!r}.")
        self.fields = tuple(fields)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        net = unwrap_network(network)
        forward_all = getattr(net, "forward_all", None)
        if forward_all is None:
            raise TypeError(
                f"MixedEffectsInferer needs a mixed-effects network (forward_all), got {type(net).__name__}."
            )
        out = forward_all(inputs, *args, **kwargs)
        missing = [f for f in self.fields if not hasattr(out, f)]
        if missing:
            raise KeyError(f"{type(out).__name__} has no field(s) {missing}; available: {list(out._fields)}.")
        return {f: getattr(out, f) for f in self.fields}
