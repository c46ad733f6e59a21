# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""lme4-style read-outs of a mixed-effects network: variance components, cluster effects, fixed effects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from monai.utils import optional_import
from torch import nn

from monai_medl.networks.layers.random_effects import RandomEffects
from monai_medl.networks.nets.me_mlp import MixedEffectsMLP
from monai_medl.networks.utils import (
    checked_random_effects_layers,
    random_effects_layers,
    require_mean_field,
    unwrap_network,
)

pd, has_pandas = optional_import("pandas")

__all__ = ["VarianceComponent", "MixedEffectsSummary", "summary", "variance_components", "random_intercepts"]

_TABLES = ("random_effects", "intercepts", "fixed_effects")


@dataclass
class VarianceComponent:
    """One random-effects layer seen as a variance component.

    Attributes:
        layer: qualified module name of the :class:`~monai_medl.networks.layers.RandomEffects` layer.
        term: readable term name (``"(Intercept)"``, ``"x (linear slopes)"``, ... or the layer name).
        group: name of the grouping factor (the clusters indexed by ``z``).
        num_clusters: number of clusters (rows of the layer).
        units: number of random-effect values per cluster.
        prior_sd: prior standard deviation ``s``; the variance-component estimate when ``prior_learned``.
        prior_learned: whether ``s`` was learned (empirical Bayes) or fixed by the user.
        spread_sd: per unit, the standard deviation (``ddof=0``) of the posterior means across clusters.
        posterior_sd: mean posterior standard deviation over all clusters and units.
        unit_names: one name per unit (input feature names for the linear slopes of an ME-MLP, else indices).
    """

    layer: str
    term: str
    group: str
    num_clusters: int
    units: int
    prior_sd: float
    prior_learned: bool
    spread_sd: list[float]
    posterior_sd: float
    unit_names: list[str] = field(default_factory=list)

    @property
    def variance(self) -> float:
        """Prior variance ``s^2``."""
        return self.prior_sd**2

    @property
    def mean_spread_sd(self) -> float:
        """Spread of the posterior means across clusters, averaged over units."""
        return sum(self.spread_sd) / len(self.spread_sd)


@dataclass
class MixedEffectsSummary:
    """Read-outs of a mixed-effects network in the spirit of lme4's ``summary(lmer(...))``.

    Attributes:
        model: class name of the summarised network.
        group: name of the grouping factor.
        cluster_names: one name per cluster (column of ``z``).
        random_effects: one :class:`VarianceComponent` per random-effects layer.
        residual_sd: learned Gaussian noise s.d. (regression with a likelihood loss), else None.
        intercepts: per random-intercept layer, the per-cluster conditional modes (posterior means),
            ``num_clusters x out_channels``.
        fixed_effects: coefficient name -> estimate when the model is linear (an ME-MLP with ``hidden=()``),
            else None.
        num_obs: number of training observations, when given.
    """

    model: str
    group: str
    cluster_names: list[str]
    random_effects: list[VarianceComponent]
    residual_sd: float | None = None
    intercepts: dict[str, list[list[float]]] = field(default_factory=dict)
    fixed_effects: dict[str, float] | None = None
    num_obs: int | None = None

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-serialisable), with ``variance`` added to every random-effects entry."""
        out = asdict(self)
        for entry, component in zip(out["random_effects"], self.random_effects):
            entry["variance"] = component.variance
        return out

    def to_dataframe(self, table: str = "random_effects"):
        """One table as a ``pandas.DataFrame``: ``"random_effects"``, ``"intercepts"`` or ``"fixed_effects"``."""
        if not has_pandas:
            raise ImportError("to_dataframe needs pandas (pip install pandas).")
        if table == "random_effects":
            rows = [
                {
                    "group": c.group,
                    "term": c.term,
                    "layer": c.layer,
                    "units": c.units,
                    "variance": c.variance,
                    "std_dev": c.prior_sd,
                    "prior_learned": c.prior_learned,
                    "spread_sd": c.mean_spread_sd,
                    "posterior_sd": c.posterior_sd,
                    "num_clusters": c.num_clusters,
                }
                for c in self.random_effects
            ]
            if self.residual_sd is not None:
                rows.append({"group": "Residual", "variance": self.residual_sd**2, "std_dev": self.residual_sd})
            return pd.DataFrame(rows)
        if table == "intercepts":
            columns = {
                _intercept_column(layer, c, len(values[0]), len(self.intercepts)): [row[c] for row in values]
                for layer, values in self.intercepts.items()
                for c in range(len(values[0]))
            }
            return pd.DataFrame(columns, index=pd.Index(self.cluster_names, name=self.group))
        if table == "fixed_effects":
            if self.fixed_effects is None:
                raise ValueError(f"{self.model} is not linear (hidden layers present): no fixed-effects coefficients.")
            return pd.DataFrame({"estimate": self.fixed_effects})
        raise ValueError(f"table must be one of {_TABLES}, got {table!r}.")

    def __str__(self) -> str:
        return _format(self)


def _intercept_column(layer: str, channel: int, channels: int, layers: int) -> str:
    name = "(Intercept)" if layers == 1 else layer
    return name if channels == 1 else f"{name}[{channel}]"


def _term(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "intercept":
        return "(Intercept)"
    if leaf == "linear_slopes":
        return "x (linear slopes)"
    if leaf == "slopes":
        return "h (non-linear slopes)"
    return name


def _noise_scale(net: nn.Module) -> float | None:
    for module in net.modules():
        value = getattr(module, "log_noise_scale", None)
        if isinstance(value, torch.Tensor):
            return float(value.detach().exp())
    return None


def _component(name: str, layer: RandomEffects, group: str, features: list[str] | None) -> VarianceComponent:
    loc = layer.loc.detach()
    unit_names = [str(i) for i in range(layer.units)]
    if features is not None and name == "linear_slopes":  # ME-MLP: unit c * in_features + j is (output c, input j)
        channels = layer.units // len(features)
        unit_names = [f if channels == 1 else f"out{c}:{f}" for c in range(channels) for f in features]
    return VarianceComponent(
        layer=name,
        term=_term(name),
        group=group,
        num_clusters=layer.num_clusters,
        units=layer.units,
        prior_sd=float(layer.prior_scale.detach()),
        prior_learned=bool(layer.learn_prior_scale),
        spread_sd=loc.std(dim=0, unbiased=False).tolist(),
        posterior_sd=float(layer.scale.detach().mean()),
        unit_names=unit_names,
    )


def _linear_fixed_effects(net: nn.Module, names: list[str] | None) -> dict[str, float] | None:
    if names is None or not isinstance(net, MixedEffectsMLP) or len(net.hidden) > 0:  # names come with an MLP only
        return None
    weight, bias = net.head.linear.weight.detach(), net.head.linear.bias
    out_channels = weight.shape[0]
    coefs: dict[str, float] = {}
    for c in range(out_channels):
        prefix = "" if out_channels == 1 else f"out{c}:"
        coefs[f"{prefix}(Intercept)"] = 0.0 if bias is None else float(bias.detach()[c])
        for j, feature in enumerate(names):
            coefs[f"{prefix}{feature}"] = float(weight[c, j])
    return coefs


def _names(names: Sequence[str] | None, count: int, stem: str, arg: str, what: str) -> list[str]:
    if names is None:
        return [f"{stem}{i}" for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{arg} must have {count} entries (one per {what}), got {len(names)}.")
    return names


def random_intercepts(model: nn.Module, layer: str | None = None) -> torch.Tensor:
    """Per-cluster random intercepts (posterior means, i.e. conditional modes), shape ``(num_clusters, out)``.

    Args:
        model: a mixed-effects network.
        layer: qualified name of the intercept layer; needed only when the model has several. Defaults to the
            single :class:`~monai_medl.networks.layers.RandomEffects` layer whose name ends in ``intercept``.

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=5)
        >>> u0 = random_intercepts(net)  # (K, 1) for a binary ME-MLP
        >>> u0.shape
        torch.Size([5, 1])
    """
    require_mean_field(model, "random_intercepts")
    layers = random_effects_layers(model)
    if layer is not None:
        if layer not in layers:
            raise ValueError(f"layer {layer!r} is not a random-effects layer of the model; choose from {list(layers)}.")
        return layers[layer].loc.detach().clone()
    found = [name for name in layers if name.rsplit(".", 1)[-1] == "intercept"]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one random-intercept layer (name ending in 'intercept'), found {found}; "
            f"pass layer= one of {list(layers)}."
        )
    return layers[found[0]].loc.detach().clone()


def variance_components(model: nn.Module, sd: bool = False) -> dict[str, float]:
    """Prior variance (or s.d. with ``sd=True``) of every random-effects layer, plus ``"Residual"`` if learned.

    With ``learn_prior_scale=True`` and the evidence-lower-bound KL weight these are empirical-Bayes estimates of
    the variance components (as lme4's ``VarCorr``); with a fixed prior they are the values the user set.

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(2, 1, num_clusters=30, hidden=(), nonlinear_slopes=False, learn_prior_scale=True,
        ...                       learn_noise_scale=True)
        >>> {name: round(v, 4) for name, v in variance_components(net).items()}  # untrained: the initial values
        {'head.intercept': 0.01, 'linear_slopes': 0.01, 'Residual': 1.0}

    After training with ``MixedEffectsLoss(task="gaussian_nll", kl_weight="elbo", ...)`` they are the estimates.
    """
    net = unwrap_network(model)
    require_mean_field(net, "variance_components")
    power = 1 if sd else 2
    out = {name: float(layer.prior_scale.detach()) ** power for name, layer in random_effects_layers(net).items()}
    noise = _noise_scale(net)
    if noise is not None:
        out["Residual"] = noise**power
    return out


def summary(
    model: nn.Module,
    cluster_names: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
    group: str = "cluster",
    num_obs: int | None = None,
) -> MixedEffectsSummary:
    """Summarise a mixed-effects network like lme4's ``summary(lmer(...))``.

    Reports, per random-effects layer, the prior s.d. (``Std.Dev.`` of the variance component, ``Variance = s^2``;
    an estimate when the prior scale was learned), the spread of the posterior means across clusters (per unit
    and averaged), the mean posterior s.d. and the number of clusters; the learned residual s.d. for regression;
    the per-cluster random intercepts (posterior means); and, when the model is linear (an ME-MLP with
    ``hidden=()``), the fixed-effects coefficients. Values are in the units the model was trained in.

    Args:
        model: a mixed-effects network (may be wrapped in DistributedDataParallel).
        cluster_names: one name per cluster (column of ``z``). Defaults to ``"0" .. "K-1"``.
        feature_names: names of the input features of an ME-MLP (fixed effects of a linear one, linear random
            slopes). Defaults to ``x0, x1, ...``.
        group: name of the grouping factor. Defaults to ``"cluster"``.
        num_obs: number of training observations, printed when given.

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(2, 1, num_clusters=3, hidden=(), nonlinear_slopes=False, learn_prior_scale=True)
        >>> s = summary(net, cluster_names=["a", "b", "c"], group="site")
        >>> print(s)  # doctest: +ELLIPSIS
        Variational mixed-effects network: MixedEffectsMLP (prior s.d.s learned, empirical Bayes)
        <BLANKLINE>
        Random effects:
         Groups  Name               Variance  Std.Dev.   Spread  Post.SD  Units  Learned
         site    (Intercept)            0.01       0.1 ...
         site    x (linear slopes)      0.01       0.1 ...
        Number of groups: site, 3
        ...
        Fixed effects:
                      Estimate
         (Intercept)         0
         x0 ...
         x1 ...
        <BLANKLINE>
        Random intercepts (head.intercept, conditional modes):
         site  (Intercept)
         a ...
        >>> s.to_dataframe("intercepts").index.tolist()  # a pandas DataFrame, one row per site
        ['a', 'b', 'c']
    """
    net = unwrap_network(model)
    require_mean_field(net, "summary")
    layers, num_clusters = checked_random_effects_layers(net, "nothing to summarise")
    names = _names(cluster_names, num_clusters, "", "cluster_names", "column of z")
    features = (
        _names(feature_names, net.in_features, "x", "feature_names", "input feature")
        if isinstance(net, MixedEffectsMLP)
        else None
    )
    intercepts = {
        name: layer.loc.detach().tolist() for name, layer in layers.items() if name.rsplit(".", 1)[-1] == "intercept"
    }
    return MixedEffectsSummary(
        model=type(net).__name__,
        group=group,
        cluster_names=names,
        random_effects=[_component(name, layer, group, features) for name, layer in layers.items()],
        residual_sd=_noise_scale(net),
        intercepts=intercepts,
        fixed_effects=_linear_fixed_effects(net, features),
        num_obs=num_obs,
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], names: int = 2) -> list[str]:
    """Fixed-width text table: the first ``names`` columns left-aligned, the others (numbers) right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = (str(v).ljust(w) if i < names else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
        return " " + "  ".join(cells).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _format(s: MixedEffectsSummary, max_clusters: int = 10) -> str:
    learned = {c.prior_learned for c in s.random_effects}
    how = (
        "prior s.d.s learned, empirical Bayes"
        if learned == {True}
        else ("prior s.d.s fixed, not estimated" if learned == {False} else "some prior s.d.s learned")
    )
    lines = [f"Variational mixed-effects network: {s.model} ({how})", "", "Random effects:"]
    rows = [
        [
            c.group,
            c.term,
            f"{c.variance:.4g}",
            f"{c.prior_sd:.4g}",
            f"{c.mean_spread_sd:.4g}",
            f"{c.posterior_sd:.4g}",
            str(c.units),
            "yes" if c.prior_learned else "fixed",
        ]
        for c in s.random_effects
    ]
    if s.residual_sd is not None:
        rows.append(["Residual", "", f"{s.residual_sd**2:.4g}", f"{s.residual_sd:.4g}", "", "", "", "yes"])
    lines += _table(["Groups", "Name", "Variance", "Std.Dev.", "Spread", "Post.SD", "Units", "Learned"], rows)
    obs = f"Number of obs: {s.num_obs}, groups: " if s.num_obs is not None else "Number of groups: "
    lines.append(f"{obs}{s.group}, {len(s.cluster_names)}")
    lines.append("(Spread: s.d. of posterior means across clusters, mean over units; Post.SD: mean posterior s.d.)")
    for c in s.random_effects:
        if 1 < c.units <= 8:
            spread = ", ".join(f"{n}: {v:.3g}" for n, v in zip(c.unit_names, c.spread_sd))
            lines.append(f"  {c.term} spread per unit: [{spread}]")
    if s.fixed_effects is not None:
        lines += ["", "Fixed effects:"]
        lines += _table(["", "Estimate"], [[name, f"{v:.4g}"] for name, v in s.fixed_effects.items()], names=1)
    for layer, values in s.intercepts.items():
        lines += ["", f"Random intercepts ({layer}, conditional modes):"]
        channels = len(values[0])
        header = [s.group] + [_intercept_column("(Intercept)", c, channels, 1) for c in range(channels)]
        shown = list(zip(s.cluster_names, values))[:max_clusters]
        lines += _table(header, [[name, *(f"{v:.4g}" for v in row)] for name, row in shown], names=1)
        if len(values) > max_clusters:
            lines.append(f" ... {len(values) - max_clusters} more clusters (see to_dataframe('intercepts'))")
    return "\n".join(lines)
