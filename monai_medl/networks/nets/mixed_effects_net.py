# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Base class of every mixed-effects network: a structured output in training, one tensor in eval and TorchScript."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.layers.factor_designs import factor_designs
from monai_medl.networks.utils import kl_divergence

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
    """Mixed-effects network contract: a structured output in training, one prediction tensor otherwise.

    Subclasses implement :meth:`forward_all`, returning a :class:`MixedEffectsOutput` with the mixed prediction,
    the fixed-effects prediction and the fixed-effects activations for the adversary. :meth:`forward` follows the
    MONAI precedent of ``DynUNet`` (deep-supervision heads in training mode only):

    * in training mode (eager) it returns :meth:`forward_all`'s output with ``kl`` filled in, the summed KL of the
      random-effects layers, so :class:`~monai_medl.losses.MixedEffectsLoss` gets everything it needs as ``pred``
      and :class:`~monai_medl.handlers.AdversaryHandler` finds the features in ``engine.state.output``;
    * in eval mode and under TorchScript it returns :meth:`predict`, the mixed prediction alone (the fixed one when
      ``z`` is None or all zeros), so MONAI inferers, metrics, post-transforms and ``ckpt_export`` see an ordinary
      tensor.

    Nothing is kept on the module between calls. Subclasses set ``self.num_clusters`` (the width of ``z``) in
    ``__init__``; a network with several grouping factors also sets ``self.num_levels`` (factor -> levels) and
    takes ``z`` as a dictionary of per-factor designs or level indices. Setting ``validate_inputs = False`` skips
    the eager per-call input checks (for training loops that validated the whole data set once).
    """

    validate_inputs = True

    def forward_all(self, x: torch.Tensor, z: torch.Tensor | None = None) -> MixedEffectsOutput:
        raise NotImplementedError

    def predict(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The mixed prediction alone (subclasses may compute it in a cheaper single pass)."""
        return self.forward_all(x, z).mixed

    # TorchScript compiles only the first branch (``torch.jit.is_scripting()`` is a compile-time constant), so the
    # exported signature is ``Tensor``; in eager training mode the return value is a MixedEffectsOutput.
    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.predict(x, z)
        if not self.training:
            return self.predict(x, z)
        return self.with_kl(self.forward_all(x, z))

    @torch.jit.unused
    def with_kl(self, out: MixedEffectsOutput) -> MixedEffectsOutput:
        """``out`` with its ``kl`` field set to the summed KL of this network's random-effects layers."""
        return out._replace(kl=kl_divergence(self))

    @torch.jit.unused
    def check_inputs(self, x: torch.Tensor, z: torch.Tensor | None) -> None:
        """Eager-mode validation with messages that name the problem (NaN input, wrong ``z`` width or batch)."""
        if not self.validate_inputs:
            return
        check_finite(x, "input x")
        num_levels = getattr(self, "num_levels", None)
        if isinstance(z, Mapping) or num_levels is not None and len(num_levels) > 1:
            if num_levels is None:
                raise ValueError(
                    f"{type(self).__name__} has a single grouping factor: z must be a (batch, {self.num_clusters}) "
                    f"tensor, got a dictionary with keys {sorted(map(str, z))}."
                )
            if z is not None:
                for name, d in factor_designs(z, num_levels, x.shape[0], torch.float32).items():
                    check_finite(d, f"z[{name!r}]")
            return
        if z is not None:
            if z.dim() != 2 or z.shape[1] != self.num_clusters:
                raise ValueError(
                    f"z must have shape (batch, {self.num_clusters}) (one column per training cluster), "
                    f"got {tuple(z.shape)}."
                )
            if z.shape[0] != x.shape[0]:
                raise ValueError(f"z has {z.shape[0]} rows but the input batch has {x.shape[0]} items.")
            check_finite(z, "z")
