# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Base class of every mixed-effects network: a structured output in training, one tensor in eval and TorchScript."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.layers.correlated_random_effects import CorrelatedRandomEffects
from monai_medl.networks.layers.factor_designs import factor_designs
from monai_medl.networks.layers.random_effects import RandomEffects
from monai_medl.networks.layers.random_effects_settings import (
    RandomEffectsLike,
    RandomEffectsSettings,
    resolve_random_effects,
)
from monai_medl.networks.utils import kl_divergence, kl_layers, warn_deprecated

__all__ = ["MixedEffectsNet", "check_finite", "check_all_finite"]


def _tracing() -> bool:
    # TorchScript, or torch.compile tracing: reading a value on the host would split the compiled graph in two
    return torch.jit.is_scripting() or torch.compiler.is_compiling()


def check_finite(x: torch.Tensor, name: str = "input") -> None:
    """Raise a ValueError naming ``name`` when ``x`` holds NaN or Inf values (eager mode only: skipped under
    TorchScript and inside ``torch.compile``)."""
    # a finite sum proves every value finite and costs ~20x less than isfinite(x).all() on a 3D batch
    if not _tracing() and x.is_floating_point() and not _finite_number(x.sum()):
        bad = int((~torch.isfinite(x)).sum())
        if bad:  # else the sum merely overflowed
            raise ValueError(
                f"{name} contains {bad} NaN/Inf value(s) (shape {tuple(x.shape)}); clean or mask them first."
            )


def _finite_number(total: torch.Tensor) -> bool:
    # one read of the 0-dim tensor instead of torch.isfinite's four small operations before it
    return math.isfinite(total.item())


def check_all_finite(named: Sequence[tuple[torch.Tensor | None, str]]) -> None:
    """:func:`check_finite` for several ``(tensor, name)`` pairs with one host synchronisation.

    The sums of the floating-point tensors are added and tested once; only when that total is not finite is every
    tensor checked on its own, in order, so the error names the first one holding NaN/Inf. None entries are skipped.
    Skipped inside ``torch.compile`` (see :func:`check_finite`).
    """
    if _tracing():
        return
    total: torch.Tensor | None = None
    for t, _ in named:
        if t is not None and t.is_floating_point():
            total = t.sum() if total is None else total + t.sum()
    if total is not None and not _finite_number(total):
        for t, name in named:
            if t is not None:
                check_finite(t, name)


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
    the eager per-call input checks (for training loops that validated the whole data set once). Under
    ``torch.compile`` (e.g. MONAI's ``SupervisedTrainer(compile=True)``) the shape checks still run while the graph is
    traced, but the NaN/Inf value checks are left out: reading a value on the host would split the compiled graph,
    which costs more than the rest of the mixed-effects wrapper (``benchmarks.overhead --compile``).

    Random-effects hyper-parameters arrive as ``random_effects=`` (a
    :class:`~monai_medl.networks.layers.RandomEffectsSettings` or its dictionary) and/or as individual keywords
    collected with ``**random_effects_kwargs``; every network merges them with :meth:`resolve_random_effects`,
    declaring only the class attributes ``RANDOM_EFFECTS_KEYWORDS`` (the keywords it takes),
    ``RANDOM_EFFECTS_ALIASES``, ``UNSUPPORTED_RANDOM_EFFECTS`` and ``DEFAULT_RANDOM_EFFECTS``.
    """

    validate_inputs = True
    # random-effects keywords (see :meth:`resolve_random_effects`): the names this network takes (None: every
    # field of RandomEffectsSettings), its own names for fields, the fields it cannot turn on (with the reason) and
    # its defaults
    RANDOM_EFFECTS_KEYWORDS: Sequence[str] | None = None
    RANDOM_EFFECTS_ALIASES: dict = {}
    UNSUPPORTED_RANDOM_EFFECTS: dict = {}
    DEFAULT_RANDOM_EFFECTS = RandomEffectsSettings()
    # True: the individual keywords still work for one release, with a DeprecationWarning naming ``random_effects=``
    RANDOM_EFFECTS_KEYWORDS_DEPRECATED = False

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
        # ignore: the eager training-mode output (see above), outside the Tensor signature TorchScript exports
        return self.with_kl(self.forward_all(x, z))  # type: ignore[return-value]

    @torch.jit.unused
    def resolve_random_effects(
        self, random_effects: RandomEffectsLike, keywords: Mapping[str, Any]
    ) -> RandomEffectsSettings:
        """The network's random-effects settings from its ``random_effects`` argument and ``**random_effects_kwargs``
        (one helper for every network: :func:`~monai_medl.networks.layers.resolve_random_effects` with this class's
        keywords, aliases, unsupported fields and defaults); also kept as ``self.random_effects_settings``.

        With ``RANDOM_EFFECTS_KEYWORDS_DEPRECATED`` any individual keyword raises a ``DeprecationWarning`` that names
        the ``random_effects=RandomEffectsSettings(...)`` replacement (the settings are the same either way)."""
        settings = resolve_random_effects(
            random_effects,
            self.DEFAULT_RANDOM_EFFECTS,
            network=type(self).__name__,
            accepts=self.RANDOM_EFFECTS_KEYWORDS,
            aliases=self.RANDOM_EFFECTS_ALIASES,
            unsupported=self.UNSUPPORTED_RANDOM_EFFECTS,
            **keywords,
        )
        if self.RANDOM_EFFECTS_KEYWORDS_DEPRECATED and keywords:  # valid keywords: they still work, for one release
            names = ", ".join(f"{k}=..." for k in keywords)
            old = f"{type(self).__name__}({names}) (individual random-effects keywords)"
            warn_deprecated(old, f"random_effects=RandomEffectsSettings({names})", stacklevel=4)
        self.random_effects_settings = settings
        return settings

    @torch.jit.unused
    def with_kl(self, out: MixedEffectsOutput) -> MixedEffectsOutput:
        """``out`` with its ``kl`` field set to the summed KL of this network's random-effects layers."""
        return out._replace(kl=kl_divergence(self, self._kl_layers()))

    @torch.jit.unused
    def _kl_layers(self) -> tuple[list[RandomEffects], list[CorrelatedRandomEffects]]:
        """:func:`~monai_medl.networks.utils.kl_layers` of this network, found once (the architecture is fixed after
        construction); a copy or a ``DataParallel`` replica (another object sharing this ``__dict__``'s entries)
        finds its own."""
        cached = self.__dict__.get("_kl_layers_cached")
        if cached is None or cached[0] != id(self):
            cached = (id(self), kl_layers(self))
            self.__dict__["_kl_layers_cached"] = cached
        return cached[1]

    @torch.jit.unused
    def check_inputs(self, x: torch.Tensor, z: torch.Tensor | None, values: bool = True) -> None:
        """Eager-mode validation with messages that name the problem (NaN input, wrong ``z`` width or batch).

        With ``values=False`` only the shapes are checked here and the NaN/Inf check is left to
        :meth:`check_prediction`, which runs it through the (small) prediction after the forward pass.
        """
        if not self.validate_inputs:
            return
        num_levels = getattr(self, "num_levels", None)
        if isinstance(z, Mapping) or num_levels is not None and len(num_levels) > 1:
            check_finite(x, "input x")
            if num_levels is None:
                raise ValueError(
                    f"{type(self).__name__} has a single grouping factor: z must be a (batch, {self.num_clusters}) "
                    f"tensor, got a dictionary with keys {sorted(map(str, cast(Mapping, z)))}."
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
        if values:
            check_all_finite([(x, "input x"), (z, "z")])

    @torch.jit.unused
    def check_prediction(self, pred: torch.Tensor, x: torch.Tensor, z: torch.Tensor | None) -> None:
        """After :meth:`check_inputs` with ``values=False``: the NaN/Inf check of ``x`` and ``z``, done through
        ``pred``.

        A NaN/Inf input value that the prediction depends on makes it non-finite, so a finite prediction (and
        ``z``) clears the input without another pass over the image; otherwise the inputs are checked one by one and
        the error names the bad one (values the network never reads, e.g. voxels skipped by a stride larger than its
        kernel, are not reported). Only for passes that change no state (eval mode): a training pass would first
        write the NaN into batch-norm statistics, so training checks the inputs before the pass.
        """
        if not self.validate_inputs or isinstance(z, Mapping) or _tracing():
            return
        quick = pred.sum()
        if z is not None and z.is_floating_point() and not self._reads_z():
            quick = quick + z.sum()  # else a NaN/Inf in z reaches pred through the random effects' matmul
        if not _finite_number(quick):
            check_all_finite([(x, "input x"), (z, "z")])

    @torch.jit.unused
    def _reads_z(self) -> bool:
        """Whether the network has a random-effects layer (so every value of ``z`` reaches the prediction): the
        mean-field layers :meth:`_kl_layers` found (they depend on the architecture only)."""
        return bool(self._kl_layers()[0])
