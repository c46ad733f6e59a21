# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The structured output a mixed-effects network returns in training mode (and from ``forward_all``)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

__all__ = ["MixedEffectsOutput"]


class MixedEffectsOutput(NamedTuple):
    """Everything a mixed-effects network computes in one pass.

    In training mode ``net(x, z)`` returns this tuple; MONAI's ``SupervisedTrainer`` stores it as
    ``engine.state.output["pred"]``, :class:`~monai_medl.losses.MixedEffectsLoss` receives it as ``pred`` and
    :class:`~monai_medl.handlers.AdversaryHandler` reads ``features`` from the engine output. Nothing of it is kept on
    the network, so inferers that call the network several times, ``DistributedDataParallel`` and ``torch.compile``
    see an ordinary function of the inputs.

    Attributes:
        mixed: mixed-effects prediction (fixed effects + random effects of ``z``); equals ``fixed`` when ``z`` is
            None or all zeros.
        fixed: fixed-effects (population-level, cluster-agnostic) prediction.
        features: fixed-effects activations, each pooled to ``(batch, n)``, that the adversary sees.
        log_noise_scale: log of the learned Gaussian noise s.d. for regression with a likelihood loss, else None.
        kl: summed ``KL(q || p)`` of the network's random-effects layers (a 0-dim tensor) in training mode, None from
            ``forward_all`` (the loss needs it; inference does not).
    """

    mixed: torch.Tensor
    fixed: torch.Tensor
    features: list[torch.Tensor]
    log_noise_scale: Optional[torch.Tensor]  # TorchScript needs typing.Optional in NamedTuples
    kl: Optional[torch.Tensor]
