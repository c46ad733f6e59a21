# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Base class of every mixed-effects network: one scriptable tensor out, all heads available for training."""

from __future__ import annotations

import torch
from torch import nn

from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput

__all__ = ["MixedEffectsNet", "check_finite"]


def check_finite(x: torch.Tensor, name: str = "input") -> None:
    """Raise a ValueError naming ``name`` when ``x`` holds NaN or Inf values (eager mode only)."""
    # a finite sum proves every value finite and costs ~20x less than isfinite(x).all() on a 3D batch
    if not torch.jit.is_scripting() and x.is_floating_point() and not bool(torch.isfinite(x.sum())):
        bad = int((~torch.isfinite(x)).sum())
        if bad:  # else the sum merely overflowed
            raise ValueError(
                f"{name} contains {bad} NaN/Inf value(s) (shape {tuple(x.shape)}); clean or mask them first."
            )


class MixedEffectsNet(nn.Module):
    """Mixed-effects network contract.

    Subclasses implement :meth:`forward_all`, returning a :class:`MixedEffectsOutput` with the mixed prediction,
    the fixed-effects prediction and the fixed-effects activations for the adversary. :meth:`forward` returns only
    the mixed prediction (the fixed one when ``z`` is None or all zeros), so MONAI inferers, metrics, post-transforms
    and ``torch.jit.script`` see an ordinary tensor. In eager mode the full output of the latest call is kept in
    :attr:`latest_output`, which :class:`~monai_medl.losses.MixedEffectsLoss` and the adversary handler read inside a
    standard MONAI ``SupervisedTrainer`` iteration.

    Subclasses set ``self.num_clusters`` (the width of ``z``) in ``__init__``. Setting ``validate_inputs = False``
    skips the eager per-call input checks (for training loops that validated the whole data set once).
    """

    validate_inputs = True

    def forward_all(self, x: torch.Tensor, z: torch.Tensor | None = None) -> MixedEffectsOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        out = self.forward_all(x, z)
        if not torch.jit.is_scripting():
            self._remember(out)
        return out.mixed

    @torch.jit.unused
    def _remember(self, out: MixedEffectsOutput) -> None:
        # kept outside the module's registered state so it never reaches state_dict or TorchScript
        self.__dict__["latest_output"] = out

    @torch.jit.unused
    def check_inputs(self, x: torch.Tensor, z: torch.Tensor | None) -> None:
        """Eager-mode validation with messages that name the problem (NaN input, wrong ``z`` width or batch)."""
        if not self.validate_inputs:
            return
        check_finite(x, "input x")
        if z is not None:
            if z.dim() != 2 or z.shape[1] != self.num_clusters:
                raise ValueError(
                    f"z must have shape (batch, {self.num_clusters}) (one column per training cluster), "
                    f"got {tuple(z.shape)}."
                )
            if z.shape[0] != x.shape[0]:
                raise ValueError(f"z has {z.shape[0]} rows but the input batch has {x.shape[0]} items.")
            check_finite(z, "z")
