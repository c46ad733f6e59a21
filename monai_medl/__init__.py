# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""monai_medl: mixed-effects deep learning for MONAI (fixed effects kept site-invariant by an adversary,
cluster-specific random effects as Bayesian layers, predictions for clusters never seen in training)."""

from __future__ import annotations

__version__ = "0.1.0"
