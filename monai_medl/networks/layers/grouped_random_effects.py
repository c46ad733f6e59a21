# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Random effects of several grouping factors (crossed or nested), each with its own variance components."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn

from monai_medl.networks.layers.correlated_random_effects import CorrelatedRandomEffects
from monai_medl.networks.layers.factor_designs import factor_designs

__all__ = ["GroupedRandomEffects"]


class GroupedRandomEffects(nn.Module):
    """Sum of the random effects of several grouping factors: ``sum_f d_f^T u_f[cluster_f]``.

    Each factor ``f`` (e.g. ``"site"``, ``"scanner"``, ``"subject"``) is a
    :class:`~monai_medl.networks.layers.CorrelatedRandomEffects` layer with its own prior covariance, over the
    design ``d_f = (1, x[slope_columns[f]])`` (without the leading 1 when ``intercept=False``). Crossed factors
    (site and scanner) are simply two factors; a nested factor (lme4's ``(1 | site/subject)``) is the factor
    ``site`` plus a factor whose levels are the ``(site, subject)`` pairs, so the same subject code in two sites is
    two clusters. The posterior factorises over factors (each factor's clusters are independent Gaussians).

    Clusters come as one integer index per factor, ``(batch, num_factors)`` in the order of ``num_levels``;
    ``-1`` marks a level not seen in training, whose effect is that factor's population value 0 while the other
    factors' effects still apply (a known site with a new subject gets the site's effect). They may also come as a
    dictionary ``factor -> design`` (``(batch, K_f)`` one-hot, soft or zero rows, or ``(batch,)`` indices), which is
    how the networks' batches carry them (see :func:`~monai_medl.networks.layers.factor_designs`).

    **Several outputs** (``out_channels = C > 1``, e.g. the logits of a C-class model): every factor's level has
    one effect vector per channel, ``u_f = (u_{f,1}, ..., u_{f,C})``, with a *joint* Gaussian posterior over all
    ``C q_f`` terms (channels share one level, so their posterior is correlated: a softmax likelihood informs only
    differences between logits) and a block-diagonal prior, one block (its own variance components) per channel
    and no prior covariance between channels. The output is ``(batch, C)``.

    Args:
        num_levels: factor name -> number of training levels, in the column order of the cluster indices.
        slope_columns: factor name -> columns of ``x`` with random slopes for that factor (missing: none).
        intercept: random intercepts (for every factor). Defaults to True.
        correlated: full prior covariance per factor, or a mapping factor -> bool. Defaults to True.
        posterior: ``"full"`` or ``"diagonal"`` (see ``CorrelatedRandomEffects``). Defaults to ``"full"``.
        prior_scale: initial prior s.d. of every term (of the slopes when ``intercept_prior_scale`` is given).
            Defaults to 0.5.
        learn_prior_scale: learn the prior covariances. Defaults to True.
        intercept_prior_scale: initial prior s.d. of the intercepts; None for ``prior_scale``. Defaults to None.
        post_loc_init_scale: s.d. of the initial posterior means. Defaults to 0.0.
        out_channels: number of outputs ``C``. Defaults to 1.

    Example::

        >>> re = GroupedRandomEffects({"site": 3, "scanner": 2}, slope_columns={"site": [0]}).eval()
        >>> clusters = torch.tensor([[0, 1], [2, -1]])  # second sample: a scanner never seen in training
        >>> re(clusters, torch.randn(2, 4)).shape
        torch.Size([2, 1])
        >>> re.factors["site"].num_terms, re.factors["scanner"].num_terms
        (2, 1)
    """

    def __init__(
        self,
        num_levels: Mapping[str, int],
        slope_columns: Mapping[str, Sequence[int]] | None = None,
        intercept: bool = True,
        correlated: bool | Mapping[str, bool] = True,
        posterior: str = "full",
        prior_scale: float = 0.5,
        learn_prior_scale: bool = True,
        intercept_prior_scale: float | None = None,
        post_loc_init_scale: float = 0.0,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}.")
        self.out_channels = out_channels
        if not num_levels:
            raise ValueError("num_levels needs at least one grouping factor.")
        slope_columns = dict(slope_columns or {})
        unknown = set(slope_columns) - set(num_levels)
        if unknown:
            raise ValueError(f"slope_columns names unknown factors {sorted(unknown)}; factors: {list(num_levels)}.")
        if isinstance(correlated, Mapping) and set(correlated) - set(num_levels):
            raise ValueError(f"correlated names unknown factors {sorted(set(correlated) - set(num_levels))}.")
        self.intercept = intercept
        self.factors = nn.ModuleDict()
        self._columns: dict[str, list[int]] = {}
        for name, levels in num_levels.items():
            columns = [int(c) for c in slope_columns.get(name, [])]
            terms = len(columns) + int(intercept)
            if terms == 0:
                raise ValueError(f"factor {name!r} has neither a random intercept nor random slopes.")
            self._columns[name] = columns
            scales = [float(prior_scale)] * terms
            if intercept and intercept_prior_scale is not None:
                scales[0] = float(intercept_prior_scale)
            self.factors[name] = CorrelatedRandomEffects(
                num_clusters=int(levels),
                num_terms=terms * out_channels,
                blocks=out_channels,
                correlated=correlated.get(name, True) if isinstance(correlated, Mapping) else correlated,
                posterior=posterior,
                prior_scale=scales * out_channels,
                learn_prior_scale=learn_prior_scale,
                post_loc_init_scale=post_loc_init_scale,
            )

    @property
    def factor_names(self) -> list[str]:
        """Names of the grouping factors, in the column order of the cluster indices."""
        return list(self.factors.keys())

    def slope_columns(self, factor: str) -> list[int]:
        """Columns of ``x`` with random slopes for ``factor``."""
        return list(self._columns[factor])

    def design(self, factor: str, x: torch.Tensor | None) -> torch.Tensor:
        """Design rows ``d_f`` of ``factor`` for inputs ``x`` (``(batch, q_f)``)."""
        columns = self._columns[factor]
        layer = cast(CorrelatedRandomEffects, self.factors[factor])  # nn.ModuleDict types items as Module
        if not columns:
            batch = 1 if x is None else x.shape[0]
            return torch.ones(batch, 1, dtype=layer.loc.dtype, device=layer.loc.device)
        if x is None:
            raise ValueError(f"factor {factor!r} has random slopes on columns {columns}: x is required.")
        parts = [x[:, columns].to(layer.loc.dtype)]
        if self.intercept:
            parts.insert(0, torch.ones(x.shape[0], 1, dtype=layer.loc.dtype, device=x.device))
        return torch.cat(parts, dim=1)

    @property
    def num_levels(self) -> dict[str, int]:
        """Factor name -> number of training levels."""
        return {name: cast(CorrelatedRandomEffects, layer).num_clusters for name, layer in self.factors.items()}

    def _check(self, clusters: torch.Tensor, x: torch.Tensor | None) -> None:
        if clusters.dim() != 2 or clusters.shape[1] != len(self.factors) or clusters.is_floating_point():
            raise ValueError(
                f"clusters must be integer indices of shape (batch, {len(self.factors)}) (one column per factor "
                f"{self.factor_names}), got {clusters.dtype} {list(clusters.shape)}."
            )
        if x is not None and x.shape[0] != clusters.shape[0]:
            raise ValueError(f"x and clusters disagree on the batch size: {x.shape[0]} vs {clusters.shape[0]}.")

    def _per_factor(self, clusters: torch.Tensor | Mapping[str, torch.Tensor], x: torch.Tensor | None):
        if isinstance(clusters, Mapping):
            batch = next(iter(clusters.values())).shape[0] if clusters else 0
            if x is not None and x.shape[0] != batch:
                raise ValueError(f"x and clusters disagree on the batch size: {x.shape[0]} vs {batch}.")
            dtype = cast(CorrelatedRandomEffects, next(iter(self.factors.values()))).loc.dtype
            columns = list(factor_designs(clusters, self.num_levels, batch, dtype).values())
        else:
            self._check(clusters, x)
            batch = clusters.shape[0]
            columns = [clusters[:, i] for i in range(len(self.factors))]
        for (name, layer), column in zip(self.factors.items(), columns):
            design = self.design(name, x)
            if design.shape[0] != batch:
                design = design.expand(batch, -1)
            yield layer, column, design

    def forward(
        self, clusters: torch.Tensor | Mapping[str, torch.Tensor], x: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Summed random effect per sample, ``(batch, C)``: a posterior sample in training, the mean in eval."""
        if self.out_channels == 1:
            return torch.stack([layer(c, d) for layer, c, d in self._per_factor(clusters, x)]).sum(0)
        parts = []
        for layer, column, design in self._per_factor(clusters, x):
            effects = layer.effects().view(layer.num_clusters, self.out_channels, -1)  # (K, C, q)
            if column.is_floating_point():  # design rows over the levels (one-hot, soft or zero)
                per_sample = torch.einsum("bk,kcq->bcq", column.to(effects.dtype), effects)
            else:
                seen = (column >= 0).to(effects.dtype)[:, None, None]
                per_sample = effects[column.clamp_min(0)] * seen
            parts.append((per_sample * design.to(effects.dtype).unsqueeze(1)).sum(-1))
        return torch.stack(parts).sum(0)

    def moments(
        self,
        clusters: torch.Tensor | Mapping[str, torch.Tensor],
        x: torch.Tensor | None = None,
        full_covariance: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean ``(batch, C)`` and variance ``(batch, C)`` of the summed random effect per sample.

        ``full_covariance=True`` returns the covariance between the channels, ``(batch, C, C)``, instead of the
        variances (cluster indices only when ``C > 1``).
        """
        if self.out_channels == 1 and not full_covariance:
            parts = [layer.moments(c, d) for layer, c, d in self._per_factor(clusters, x)]
            return torch.stack([m for m, _ in parts]).sum(0), torch.stack([v for _, v in parts]).sum(0)
        means, covs = [], []
        for layer, column, design in self._per_factor(clusters, x):
            if column.is_floating_point():
                raise NotImplementedError(
                    "channel covariances need integer level indices (batch,) per factor, not design matrices."
                )
            channels, dtype = self.out_channels, layer.loc.dtype
            seen = (column >= 0).to(dtype)
            index = column.clamp_min(0)
            loc = layer.loc[index].view(-1, channels, layer.num_terms // channels)  # (batch, C, q)
            design = design.to(dtype)
            means.append((loc * design.unsqueeze(1)).sum(-1) * seen[:, None])
            # factor rows of the per-sample channel effects: (I_C kron d^T) C_k, (batch, C, C q)
            chol = layer.posterior_cholesky()[index].view(-1, channels, layer.num_terms // channels, layer.num_terms)
            factor = (chol * design[:, None, :, None]).sum(2)
            covs.append(factor @ factor.transpose(-1, -2) * seen[:, None, None])
        mean, cov = torch.stack(means).sum(0), torch.stack(covs).sum(0)
        return (mean, cov) if full_covariance else (mean, cov.diagonal(dim1=-2, dim2=-1))

    def kl(self) -> torch.Tensor:
        """Sum of every factor's closed-form KL term."""
        return torch.stack([cast(CorrelatedRandomEffects, layer).kl() for layer in self.factors.values()]).sum()
