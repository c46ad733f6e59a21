# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Per-factor design matrices for networks with several grouping factors (crossed or nested)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["factor_designs", "check_num_levels"]


def check_num_levels(num_levels: Mapping[str, int]) -> dict[str, int]:
    """Validate a ``factor name -> number of training levels`` mapping (at least one factor, counts >= 1)."""
    if not isinstance(num_levels, Mapping) or not num_levels:
        raise ValueError(f"num_clusters must map each grouping factor to its number of levels, got {num_levels!r}.")
    out = {}
    for name, levels in num_levels.items():
        if not isinstance(name, str) or isinstance(levels, bool) or int(levels) != levels or int(levels) < 1:
            raise ValueError(
                f"num_clusters[{name!r}] must be a positive integer (the factor's training levels), got {levels!r}."
            )
        out[name] = int(levels)
    return out


def factor_designs(
    z: Mapping[str, torch.Tensor] | torch.Tensor, num_levels: Mapping[str, int], batch: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One ``(batch, K_f)`` design matrix per grouping factor, in the order of ``num_levels``.

    Each entry of ``z`` is either a design matrix (one-hot for a seen level, a probability vector for an inferred
    one, zeros for the population) or integer level indices ``(batch,)`` with ``-1`` for a level not seen in
    training (a zero row: that factor's population value, while the other factors' effects still apply, e.g. a
    known site with a new subject). A plain tensor is accepted when there is a single factor.

    Raises:
        ValueError: naming the factor whose design is missing, unknown or of the wrong shape or range.
    """
    if isinstance(z, torch.Tensor):
        if len(num_levels) != 1:
            raise ValueError(
                f"z must be a dictionary with one design per grouping factor {list(num_levels)}, got a tensor."
            )
        z = {next(iter(num_levels)): z}
    if not isinstance(z, Mapping):
        raise TypeError(f"z must be a dictionary factor -> design (or level indices), got {type(z).__name__}.")
    missing = [f for f in num_levels if f not in z]
    unknown = sorted(set(map(str, z)) - set(num_levels))
    if missing or unknown:
        raise ValueError(
            f"z must hold one entry per grouping factor {list(num_levels)}; missing {missing}, unknown {unknown}."
        )
    out = {}
    for name, levels in num_levels.items():
        d = z[name]
        if not isinstance(d, torch.Tensor):
            raise TypeError(f"z[{name!r}] must be a tensor, got {type(d).__name__}.")
        if not d.is_floating_point():
            d = d.reshape(-1) if d.dim() == 2 and d.shape[1] == 1 else d
            if d.dim() != 1 or d.shape[0] != batch:
                raise ValueError(f"z[{name!r}] level indices must have shape ({batch},), got {list(d.shape)}.")
            if bool(((d < -1) | (d >= levels)).any()):
                raise ValueError(
                    f"z[{name!r}] holds level indices outside [-1, {levels - 1}] (-1: a level unseen in training)."
                )
            seen = (d >= 0).to(dtype).unsqueeze(1)
            d = torch.nn.functional.one_hot(d.clamp_min(0).long(), levels).to(dtype) * seen
        elif d.dim() != 2 or d.shape[0] != batch or d.shape[1] != levels:
            raise ValueError(
                f"z[{name!r}] must have shape ({batch}, {levels}) (one column per training level), got {list(d.shape)}."
            )
        out[name] = d.to(dtype)
    return out
