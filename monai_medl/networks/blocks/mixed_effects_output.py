# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The structured output every mixed-effects network produces from ``forward_all``."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

__all__ = ["MixedEffectsOutput"]


class MixedEffectsOutput(NamedTuple):
    """Everything a mixed-effects network computes in one pass.

    Attributes:
        mixed: mixed-effects prediction (fixed effects + random effects of ``z``); equals ``fixed`` when ``z`` is
            None or all zeros.
        fixed: fixed-effects (population-level, cluster-agnostic) prediction.
        features: fixed-effects activations, each pooled to ``(batch, n)``, that the adversary sees.
        log_noise_scale: log of the learned Gaussian noise s.d. for regression with a likelihood loss, else None.
    """

    mixed: torch.Tensor
    fixed: torch.Tensor
    features: list[torch.Tensor]
    log_noise_scale: Optional[torch.Tensor]  # noqa: UP045 (TorchScript needs typing.Optional in NamedTuples)
