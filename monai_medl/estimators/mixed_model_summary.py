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
        family: ``"gaussian"`` or ``"binomial"``.
        var_corr: ``pandas.DataFrame`` in the layout of lme4's ``as.data.frame(VarCorr(fit))``.
        fixed_effects: ``pandas.Series`` of fixed-effects coefficients (linear fixed effects), else None.
        num_obs: number of training observations.
        num_levels: lme4-style factor name -> number of training levels.
        fit_info: optimiser report (iterations, final loss, converged, seconds).
    """

    model: str
    family: str
    var_corr: Any
    fixed_effects: Any = None
    num_obs: int = 0
    num_levels: dict[str, int] = field(default_factory=dict)
    fit_info: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{self.model} ({self.family} mixed model, fitted by maximising the ELBO)", "Random effects:"]
        table = [("Groups", "Name", "Std.Dev.", "Corr")]
        vc = self.var_corr
        for grp in dict.fromkeys(vc["grp"]):
            rows = vc[vc["grp"] == grp]
            variances = rows[rows["var2"].isna()]
            names = [n for n in variances["var1"]]
            for i, (_, row) in enumerate(variances.iterrows()):
                corr = [
                    f"{float(rows[(rows['var1'] == names[j]) & (rows['var2'] == row['var1'])]['sdcor'].iloc[0]):.2f}"
                    for j in range(i)
                ]
                label = "" if grp == "Residual" else str(row["var1"])
                table.append((grp if i == 0 else "", label, f"{row['sdcor']:.4g}", " ".join(corr)))
        widths = [max(len(r[c]) for r in table) for c in range(4)]
        lines += [" " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
        counts = "; ".join(f"{k}, {v}" for k, v in self.num_levels.items())
        lines.append(f"Number of obs: {self.num_obs}, groups: {counts}")
        if self.fixed_effects is not None:
            lines.append("Fixed effects:")
            width = max(len(str(k)) for k in self.fixed_effects.index)
            lines += [f" {str(k).ljust(width)}  {v:.4g}" for k, v in self.fixed_effects.items()]
        else:
            lines.append("Fixed effects: a neural network (no coefficients)")
        return "\n".join(lines)
