# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Copy extra outputs of a mixed-effects network (reconstructions, latents, FE head) into the engine output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from monai.engines.utils import IterationEvents
from torch import nn

from monai_medl.networks.utils import unwrap_network

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["LatestOutputHandler"]


class LatestOutputHandler:
    """Write fields of the network's ``latest_output`` into ``engine.state.output`` after every forward pass.

    MONAI engines keep only the tensor the network returns (``"pred"``). Attached to a ``SupervisedTrainer`` or
    ``SupervisedEvaluator`` this handler runs at ``IterationEvents.FORWARD_COMPLETED`` (before decollation) and
    copies the requested fields, e.g. an autoencoder's ``reconstruction`` or the fixed-effects logits ``fixed``,
    so that MONAI metric handlers, ``TensorBoardImageHandler`` and post-transforms can use them by key. Fields are
    detached.

    Args:
        fields: ``{output_key: field_name}`` of :class:`~monai_medl.networks.nets.MixedEffectsAutoEncoderOutput`
            (or any ``latest_output``), e.g. ``{"recon": "reconstruction"}``.
        network: the network; defaults to ``engine.network``.

    Example::

        >>> LatestOutputHandler({"recon": "reconstruction", "pred_fixed": "fixed"}).attach(evaluator)
        >>> # then e.g. monai.handlers.MeanSquaredError(output_transform=from_engine(["recon", "image"]))
    """

    def __init__(self, fields: Mapping[str, str], network: nn.Module | None = None) -> None:
        if not fields:
            raise ValueError("LatestOutputHandler needs at least one {output_key: field_name} entry.")
        self.fields = dict(fields)
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        net = unwrap_network(self.network if self.network is not None else engine.network)
        out = net.__dict__.get("latest_output")
        if out is None:
            raise RuntimeError(f"{type(net).__name__} kept no latest_output (needs a MixedEffectsNet in eager mode).")
        for key, name in self.fields.items():
            if not hasattr(out, name):
                raise KeyError(f"latest_output of {type(net).__name__} has no field {name!r} (for output key {key!r}).")
            value = getattr(out, name)
            engine.state.output[key] = value.detach() if value is not None else None
