# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""lme4-style printed summary of a fitted mixed-effects estimator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MixedModelSummary"]


@dataclass
class MixedModelSummary:
    """What ``summary(lmer(...))`` prints, in the data's units.

    Attributes:
        model: estimator class name.
        family: ``"gaussian"``, ``"binomial"`` or ``"multinomial"``.
        var_corr: ``pandas.DataFrame`` in the layout of lme4's ``as.data.frame(VarCorr(fit))`` (plus a ``class``
            column for a C-class model, whose random effects are per class).
        fixed_effects: ``pandas.Series`` of fixed-effects coefficients (linear fixed effects; a DataFrame terms x
            classes for a C-class model), else None.
        num_obs: number of training observations.
        num_levels: lme4-style factor name -> number of training levels.
        fit_info: optimiser report (iterations, final loss, converged, seconds; for an exact fit the ``backend``:
            numpy/scipy or torch float64 on a device).
        method: the fit used (``exact_fit.METHOD_LABELS``): ``"exact REML"``, ``"exact ML"``, ``"Laplace
            approximation"``, ``"exact marginal likelihood given the network"`` or ``"variational ELBO"``.
        criteria: log-likelihood, AIC, BIC and the REML criterion or deviance (exact fits; the log-likelihood given
            the network for a marginal fit; empty otherwise).
        intervals: confidence intervals of ``confint()`` (a DataFrame) when asked for, else None;
            ``intervals_method``: ``"profile"`` or ``"bootstrap"``.
    """

    model: str
    family: str
    var_corr: Any
    fixed_effects: Any = None
    num_obs: int = 0
    num_levels: dict[str, int] = field(default_factory=dict)
    fit_info: dict[str, Any] = field(default_factory=dict)
    method: str = "variational ELBO"
    criteria: dict[str, float] = field(default_factory=dict)
    intervals: Any = None
    intervals_method: str | None = None

    def __str__(self) -> str:
        how = "maximising the ELBO" if self.method == "variational ELBO" else self.method
        backend = f"; {self.fit_info['backend']}" if "backend" in self.fit_info else ""
        lines = [f"{self.model} ({self.family} mixed model, fitted by {how}{backend})"]
        if self.criteria:
            lines.append(" " + "  ".join(f"{k} {v:.4f}" for k, v in self.criteria.items()))
        lines.append("Random effects:")
        vc = self.var_corr
        per_class = "class" in vc.columns  # a C-class model: independent effects per class (on that class's logit)
        header: tuple[str, ...] = ("Groups", "Class", "Name", "Std.Dev.", "Corr")
        header = header if per_class else ("Groups", "Name", "Std.Dev.", "Corr")
        table: list[tuple[str, ...]] = [header]
        keys = ["grp", "class"] if per_class else ["grp"]
        for _, rows in vc.groupby(keys, sort=False, dropna=False):
            grp = rows["grp"].iloc[0]
            variances = rows[rows["var2"].isna()]
            names = list(variances["var1"])
            for i, (_, row) in enumerate(variances.iterrows()):
                corr = [
                    f"{float(rows[(rows['var1'] == names[j]) & (rows['var2'] == row['var1'])]['sdcor'].iloc[0]):.2f}"
                    for j in range(i)
                    if ((rows["var1"] == names[j]) & (rows["var2"] == row["var1"])).any()
                ]
                label = "" if grp == "Residual" else str(row["var1"])
                cells = [grp if i == 0 else "", label, f"{row['sdcor']:.4g}", " ".join(corr)]
                if per_class:
                    cells.insert(1, "" if grp == "Residual" or i > 0 else str(row["class"]))
                table.append(tuple(cells))
        widths = [max(len(r[c]) for r in table) for c in range(len(header))]
        lines += [" " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
        counts = "; ".join(f"{k}, {v}" for k, v in self.num_levels.items())
        lines.append(f"Number of obs: {self.num_obs}, groups: {counts}")
        if self.fixed_effects is None:
            lines.append("Fixed effects: a neural network (no coefficients)")
        elif hasattr(self.fixed_effects, "columns") and "std_error" in self.fixed_effects.columns:
            lines.append("Fixed effects (Wald 95% intervals):")
            text = self.fixed_effects.to_string(float_format=lambda v: f"{v:.4g}")
            lines += [" " + line for line in text.split("\n")]
        elif getattr(self.fixed_effects, "ndim", 1) == 2:
            lines.append("Fixed effects (per class, centred over the classes):")
            text = self.fixed_effects.to_string(float_format=lambda v: f"{v:.4g}")
            lines += [" " + line for line in text.split("\n")]
        else:
            lines.append("Fixed effects:")
            width = max(len(str(k)) for k in self.fixed_effects.index)
            lines += [f" {str(k).ljust(width)}  {v:.4g}" for k, v in self.fixed_effects.items()]
        if self.intervals is not None:
            how = {"profile": "profile likelihood", "bootstrap": "parametric bootstrap"}[str(self.intervals_method)]
            lines.append(f"Confidence intervals ({how}):")
            text = self.intervals.to_string(float_format=lambda v: f"{v:.4g}")
            lines += [" " + line for line in text.split("\n")]
        return "\n".join(lines)
