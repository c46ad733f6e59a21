# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Caterpillar plot: intervals from the conditional variances (Gaussian and Laplace), the PNG, no matplotlib."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from monai_medl.estimators import MixedEffectsPoissonRegressor, MixedEffectsRegressor
from monai_medl.visualize import caterpillar_table, plot_caterpillar

PNG = b"\x89PNG\r\n\x1a\n"


def _intercept_fit():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), np.arange(2, 10))  # unbalanced: the conditional s.d. shrinks with the level's size
    y = 3 + rng.normal(0, 1.0, 8)[g] + rng.normal(0, 0.7, len(g))
    return MixedEffectsRegressor(method="ml").fit(None, y, groups=g), g


def test_intervals_are_the_conditional_variances_of_a_random_intercept():
    fit, g = _intercept_fit()
    table = caterpillar_table(fit, "group", level=0.9)
    # one random intercept, fixed effect held at its estimate: Var(b_j | y) = 1 / (1 / tau^2 + n_j / sigma^2)
    tau2, sigma2 = fit.covariance("group")[0, 0], fit.residual_sd_**2
    expected = np.sqrt(1 / (1 / tau2 + np.bincount(g) / sigma2))
    by_level = table.set_index("level")
    np.testing.assert_allclose(by_level.loc[[str(i) for i in range(8)], "sd"], expected, rtol=1e-8)
    np.testing.assert_allclose(table["upper"] - table["mode"], 1.6448536269514722 * table["sd"], rtol=1e-10)
    assert table["mode"].is_monotonic_increasing  # the plot's order
    np.testing.assert_allclose(by_level.loc["3", "mode"], fit.random_effects("group").loc[3, "(Intercept)"])


def test_laplace_intervals_and_the_png(tmp_path):
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(12), 8)
    y = rng.poisson(np.exp(0.5 + rng.normal(0, 0.6, 12)[g])).astype(float)
    fit = MixedEffectsPoissonRegressor(method="laplace").fit(None, y, groups=g)
    mu = np.exp(fit.decision_function(None, groups=g))
    expected = np.sqrt(1 / (1 / fit.covariance("group")[0, 0] + np.bincount(g, mu)))  # Laplace: W = mu
    table = caterpillar_table(fit, "group").set_index("level")
    np.testing.assert_allclose(table.loc[[str(i) for i in range(12)], "sd"], expected, rtol=1e-6)
    fig = plot_caterpillar(fit, path=tmp_path / "cat.png")
    assert (tmp_path / "cat.png").read_bytes()[:8] == PNG and len(fig.axes) == 1
    points = np.asarray(fig.axes[0].lines[0].get_xdata(), float)  # the drawn modes, in the table's order
    np.testing.assert_allclose(points, caterpillar_table(fit, "group")["mode"])


def test_plot_one_panel_per_term_and_bad_inputs(tmp_path):
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(10), 6)
    x = rng.normal(size=(60, 1))
    y = x[:, 0] * (1 + rng.normal(0, 0.5, 10)[g]) + rng.normal(0, 1, 10)[g] + rng.normal(0, 0.5, 60)
    fit = MixedEffectsRegressor(method="reml", random_slopes=[0]).fit(x, y, groups=g)
    fig = plot_caterpillar(fit, path=tmp_path / "slopes.png")
    assert [ax.get_title() for ax in fig.axes] == ["group: (Intercept)", "group: x0"]
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 95"):
        caterpillar_table(fit, "group", level=95)
    with pytest.raises(ValueError, match="unknown grouping factor 'site'"):
        caterpillar_table(fit, "site")
    elbo = MixedEffectsRegressor(method="elbo", max_iter=5).fit(x, y, groups=g)
    with pytest.raises(AttributeError, match="conditional_variances needs a likelihood fit"):
        caterpillar_table(elbo, "group")


def test_importable_without_matplotlib_until_drawn():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import numpy as np\n"
        "from monai_medl.estimators import MixedEffectsRegressor\n"
        "from monai_medl.visualize.caterpillar import caterpillar_table, plot_caterpillar\n"
        "g = np.repeat(np.arange(4), 3); fit = MixedEffectsRegressor(method='ml').fit(None, np.arange(12.0), g)\n"
        "assert len(caterpillar_table(fit, 'group')) == 4\n"
        "try:\n    plot_caterpillar(fit)\nexcept ImportError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "plot_caterpillar needs matplotlib: pip install monai-medl[plot]" in out
