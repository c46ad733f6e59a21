# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects head: fixed logits plus cluster-specific random slopes and intercepts on any feature vector."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from monai_medl.networks.layers.factor_designs import check_num_levels, factor_designs
from monai_medl.networks.layers.random_effects import RandomEffects
from monai_medl.networks.layers.random_effects_settings import (
    HEAD_KEYWORDS,
    RandomEffectsLike,
    resolve_random_effects,
)

__all__ = ["MixedEffectsHead"]


class MixedEffectsHead(nn.Module):
    """Fixed and mixed linear read-outs of penultimate features ``h``.

    ``fixed = W h + b`` and ``mixed = W [h * (1 + u_s(z))] + b + u_0(z)``, where ``u_s`` (random slopes, one per
    feature) and ``u_0`` (random intercept, one per output channel) are :class:`RandomEffects` layers. The fixed
    read-out needs no cluster information; with ``z`` None or all zeros the mixed read-out equals it exactly.

    **Several grouping factors.** With ``num_clusters`` a mapping ``factor -> number of levels`` (e.g.
    ``{"site": 6, "subject": 120}``; crossed factors such as site and scanner, or a nested factor whose levels are
    the ``(site, subject)`` pairs), every factor gets its own slopes and intercept layers (own variance
    components) and the effects add up: ``mixed = W [h * (1 + sum_f u_s^f(z_f))] + b + sum_f u_0^f(z_f)``. ``z`` is
    then a dictionary ``factor -> design`` holding ``(batch, K_f)`` one-hot/soft/zero rows or ``(batch,)`` level
    indices. A level unseen in training (index ``-1`` or a zero row) contributes that factor's population value 0,
    so a known site with a new subject gets the site's effect and no subject effect. The multi-factor head runs in
    eager mode (and under ``torch.compile``); ``torch.jit.script`` supports the single-factor head only and raises
    for the multi-factor one.

    Args:
        in_features: length of the feature vector ``h``.
        out_channels: number of outputs (classes, or 1 for binary / regression).
        num_clusters: number of training clusters (width of ``z``), or a mapping grouping factor -> its number of
            training levels.
        random_slopes: multiply ``h`` by ``1 + u_s(z)``. None: from ``random_effects``.
        random_intercept: add ``u_0(z)``. None: from ``random_effects``.
        slope_prior_scale: prior s.d. of the random slopes. None: from ``random_effects``.
        intercept_prior_scale: prior s.d. of the random intercept. None: from ``random_effects``.
        learn_prior_scale: learn the prior s.d.s (variance components). None: from ``random_effects``.
        post_loc_init_scale: s.d. of the initial posterior means. None: from ``random_effects``.
        learn_noise_scale: hold a learned Gaussian noise s.d. for regression trained with a likelihood loss
            (``MixedEffectsLoss(task="gaussian_nll")``). Defaults to False.
        random_effects: a :class:`~monai_medl.networks.layers.RandomEffectsSettings` (or its dictionary) holding
            the settings above; its defaults apply to every keyword left at None. Defaults to None.

    Example::

        >>> head = MixedEffectsHead(in_features=16, out_channels=2, num_clusters=3).eval()
        >>> mixed, fixed = head(torch.randn(4, 16), torch.zeros(4, 3))
        >>> torch.equal(mixed, fixed)
        True
        >>> grouped = MixedEffectsHead(16, 1, num_clusters={"site": 3, "subject": 10}).eval()
        >>> z = {"site": torch.tensor([0, 2, 1, 1]), "subject": torch.tensor([4, 9, -1, 3])}  # -1: a new subject
        >>> grouped(torch.randn(4, 16), z)[0].shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        num_clusters: int | Mapping[str, int],
        learn_noise_scale: bool = False,
        random_effects: RandomEffectsLike = None,
        **random_effects_kwargs: bool | float | None,
    ) -> None:
        super().__init__()
        keywords: dict[str, Any] = random_effects_kwargs  # Any: mypy cannot tell them from its typed options
        settings = resolve_random_effects(random_effects, network="MixedEffectsHead", accepts=HEAD_KEYWORDS, **keywords)
        self.random_effects_settings = settings
        self.linear = nn.Linear(in_features, out_channels)
        self.grouped = isinstance(num_clusters, Mapping)
        self.num_levels = check_num_levels(num_clusters) if isinstance(num_clusters, Mapping) else None

        def layers(units: int, prior_scale: float) -> dict[str, RandomEffects]:
            levels = self.num_levels if self.num_levels is not None else {"": int(cast(int, num_clusters))}
            return {name: settings.effects(k, units, prior_scale) for name, k in levels.items()}

        slopes = layers(in_features, settings.slope_prior_scale) if settings.random_slopes else {}
        intercepts = layers(out_channels, settings.intercept_prior_scale) if settings.random_intercept else {}
        if self.grouped:
            # one layer per factor; the single-factor attributes stay None (state-dict keys factor_*.<factor>.*)
            self.factor_slopes = nn.ModuleDict(slopes)
            self.factor_intercepts = nn.ModuleDict(intercepts)
            self.slopes: RandomEffects | None = None
            self.intercept: RandomEffects | None = None
        else:
            self.slopes = slopes.get("")
            self.intercept = intercepts.get("")
        self.log_noise_scale: nn.Parameter | None = (
            nn.Parameter(torch.tensor(math.log(1.0))) if learn_noise_scale else None
        )

    def __prepare_scriptable__(self):
        if self.grouped:
            raise NotImplementedError(
                f"torch.jit.script supports the single-factor MixedEffectsHead only; this one has the grouping "
                f"factors {list(self.num_levels)} (z is a dictionary). Use it in eager mode or with torch.compile."
            )
        return self

    def forward(self, h: torch.Tensor, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mixed, fixed)`` logits, each ``(batch, out_channels)``."""
        fixed = self.linear(h)
        if z is None:
            return fixed, fixed
        return self._mixed(h, z, fixed), fixed

    def predict(self, h: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The mixed logits alone (inference: the fixed head is not evaluated when the slopes replace it)."""
        if z is None or (self.slopes is None and not self.grouped):
            return self.forward(h, z)[0]
        return self._mixed(h, z, None)

    def _mixed(self, h: torch.Tensor, z: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript compiles the single-factor path only
            if self.grouped:
                return self._grouped_mixed(h, z)
        slopes = self.slopes
        if slopes is not None:
            mixed = self.linear(torch.addcmul(h, h, slopes(z)))  # h * (1 + u_s): one operation
        else:
            assert fixed is not None
            mixed = fixed
        intercept = self.intercept
        if intercept is not None:
            mixed = intercept.add_to(mixed, z)
        return mixed

    @torch.jit.unused
    def designs(self, z, batch: int) -> dict[str, torch.Tensor]:  # z: Tensor or Mapping[str, Tensor]
        """The per-factor design matrices of a multi-factor ``z`` (validated; level indices made one-hot)."""
        return factor_designs(z, cast(dict[str, int], self.num_levels), batch, self.linear.weight.dtype)  # grouped

    @torch.jit.unused
    def _grouped_mixed(self, h: torch.Tensor, z) -> torch.Tensor:  # z: Mapping[str, Tensor]
        designs = self.designs(z, h.shape[0])
        if len(self.factor_slopes):
            h = h * (1 + sum(layer(designs[f]) for f, layer in self.factor_slopes.items()))
        mixed = self.linear(h)
        for f, layer in self.factor_intercepts.items():
            mixed = mixed + layer(designs[f])
        return mixed
