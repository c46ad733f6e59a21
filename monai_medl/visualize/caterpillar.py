# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Caterpillar plot of a mixed model's conditional modes with intervals, lme4's ``dotplot(ranef(fit, condVar = TRUE))``.

One row of panels per grouping factor, one panel per term (intercept, slopes): every level's conditional mode with
the interval ``mode +- z sqrt(conditional variance)`` (``z`` the normal quantile of ``level``; lme4 draws 95%),
levels sorted by the factor's first term. The conditional variances are the estimator's
:meth:`~monai_medl.estimators.MixedEffectsEstimatorBase.conditional_variances` (exact REML/ML and Laplace fits).
matplotlib (the ``plot`` extra) is imported only when a figure is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from monai_medl.estimators.grouping import pd
from monai_medl.visualize.pyplot import file_pyplot

__all__ = ["caterpillar_table", "plot_caterpillar"]


def caterpillar_table(estimator, factor: str, level: float = 0.95):
    """Conditional modes and their ``level`` intervals of one factor: a long DataFrame with columns ``level``
    (the factor's level; a nested one innermost first, ``cask:batch``), ``term``, ``mode``, ``sd`` (conditional
    s.d.), ``lower``, ``upper``, in the plot's order (sorted by the first term's mode).

    Example::

        >>> import numpy as np
        >>> from monai_medl.estimators import MixedEffectsRegressor
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(6), 5)
        >>> fit = MixedEffectsRegressor(method="reml").fit(None, rng.normal(size=6)[g] + rng.normal(size=30), g)
        >>> table = caterpillar_table(fit, "group")
        >>> table.columns.tolist(), len(table)
        (['level', 'term', 'mode', 'sd', 'lower', 'upper'], 6)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    modes = estimator.random_effects(factor)
    sd = np.sqrt(np.clip(np.diagonal(estimator.conditional_variances(factor), axis1=1, axis2=2), 0.0, None))
    z = stats.norm.ppf(0.5 + level / 2)
    # a nested level as lme4 names it: innermost first (``cask:batch``), as the factor's label
    names = [":".join(map(str, key[::-1])) if isinstance(key, tuple) else str(key) for key in modes.index]
    order = np.argsort(modes.iloc[:, 0].to_numpy(), kind="stable")
    rows = [
        {
            "level": names[i],
            "term": term,
            "mode": float(modes.iloc[i, j]),
            "sd": float(sd[i, j]),
            "lower": float(modes.iloc[i, j] - z * sd[i, j]),
            "upper": float(modes.iloc[i, j] + z * sd[i, j]),
        }
        for j, term in enumerate(modes.columns)
        for i in order
    ]
    return pd.DataFrame(rows)


def plot_caterpillar(
    estimator, factors: Sequence[str] | None = None, level: float = 0.95, path: str | os.PathLike | None = None
) -> Any:
    """Draw the caterpillar plot of ``factors`` (default: every grouping factor) and return the matplotlib Figure;
    with ``path``, also write it there (PNG by the file's suffix). Needs matplotlib (``pip install
    monai-medl[plot]``)."""
    plt = file_pyplot("plot_caterpillar")
    factors = list(estimator.encoder_.factors if factors is None else factors)
    tables = {f: caterpillar_table(estimator, f, level) for f in factors}
    cols = max(t["term"].nunique() for t in tables.values())
    height = max(2.0, max(len(t) / t["term"].nunique() for t in tables.values()) * 0.18 + 1.0)
    fig, axes = plt.subplots(len(factors), cols, figsize=(3.2 * cols, height * len(factors)), squeeze=False)
    for row, (factor, table) in enumerate(tables.items()):
        terms = list(dict.fromkeys(table["term"]))
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(terms):
                ax.axis("off")
                continue
            part = table[table["term"] == terms[col]]
            y = np.arange(len(part))
            spread = np.vstack([part["mode"] - part["lower"], part["upper"] - part["mode"]])
            ax.errorbar(part["mode"], y, xerr=spread, fmt="o", ms=3, color="tab:blue", ecolor="0.4", elinewidth=1)
            ax.axvline(0.0, color="0.6", lw=0.8, ls="--")
            ax.set_yticks(y, part["level"] if col == 0 else [""] * len(part), fontsize=6)
            ax.set_title(f"{estimator.encoder_.label(factor)}: {terms[col]}", fontsize=9)
    fig.suptitle(f"conditional modes with {100 * level:g}% intervals", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
