# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Scale-invariant views of a feature batch, for the invariance mechanisms that must not be fooled by shrinking it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["FEATURE_SCALINGS", "scale_invariant"]

FEATURE_SCALINGS = ("none", "layer", "batch_rms", "batch_std")
"""The :func:`scale_invariant` modes."""


def scale_invariant(x: torch.Tensor, mode: str = "batch_std", eps: float = 1e-12) -> torch.Tensor:
    """A view of the ``(batch, n)`` features ``x`` that does not change when the encoder rescales them.

    An adversary (or a distribution-matching loss) on raw features can be defeated by shrinking the features: the
    site is still linearly decodable by a probe that standardises them, but the adversary's logits (or the matched
    moments) shrink with the features. On these views ``f(c * x) == f(x)`` for every ``c > 0``, so the gradient has no
    component along ``x`` and shrinking buys the encoder nothing. The statistics are not detached: they are part of
    the function the encoder is pushed through.

    * ``"layer"``: per item, non-affine layer norm over the features (no batch statistics; it also removes each item's
      mean and overall scale, which can carry information a probe would read).
    * ``"batch_rms"``: centred by the batch mean of each feature, divided by the batch r.m.s. of all centred entries
      (one scalar): relative scales between features are kept, per-feature offsets and a global scale are removed.
    * ``"batch_std"``: each feature standardised by its batch mean and s.d. (what a probe behind a ``StandardScaler``
      sees; also invariant to per-feature rescaling).
    * ``"none"``: ``x`` itself.

    The batch modes need two items; a single item maps to zeros (it carries no information relative to its batch).

    Example::

        >>> x = torch.randn(8, 5)
        >>> torch.allclose(scale_invariant(0.01 * x + 3.0), scale_invariant(x), atol=1e-3)
        True
        >>> scale_invariant(x, "layer").shape
        torch.Size([8, 5])
    """
    if mode not in FEATURE_SCALINGS:
        raise ValueError(f"feature scaling must be one of {FEATURE_SCALINGS}, got {mode!r}.")
    if mode == "none":
        return x
    if x.dim() != 2:
        raise ValueError(f"scale_invariant expects (batch, features), got shape {tuple(x.shape)}.")
    if mode == "layer":
        return F.layer_norm(x, x.shape[1:], eps=eps)
    centred = x - x.mean(0, keepdim=True)
    if mode == "batch_rms":
        return centred * torch.rsqrt(centred.pow(2).mean() + eps)
    return centred * torch.rsqrt(centred.pow(2).mean(0, keepdim=True) + eps)
