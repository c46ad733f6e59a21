# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The estimators follow scikit-learn: NotFittedError, get/set_params and clone, score with groups, estimator checks.

scikit-learn's full ``check_estimator`` calls ``fit(X, y)`` without groups, which a grouped model cannot take; the
checks run here are those that apply to an estimator whose ``fit`` needs ``groups``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("pandas") is None:
    pytest.skip("pandas is needed (pip install monai-medl[stats])", allow_module_level=True)

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.utils import estimator_checks as checks  # noqa: E402

from monai_medl.estimators import MixedEffectsClassifier, MixedEffectsRegressor  # noqa: E402

ESTIMATORS = [MixedEffectsRegressor, MixedEffectsClassifier]
CHECKS = [
    checks.check_parameters_default_constructible,
    checks.check_no_attributes_set_in_init,
    checks.check_get_params_invariance,
    checks.check_set_params,
    checks.check_estimators_unfitted,
    checks.check_estimator_cloneable,
    checks.check_estimator_repr,
]


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(10), 6)
    x = rng.normal(size=(60, 2))
    y = x @ [1.0, -0.5] + rng.normal(0, 1.0, 10)[g] + rng.normal(0, 0.5, 60)
    return x, y, g


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.__name__)
def test_sklearn_checks_that_apply_to_grouped_models(estimator, check):
    check(estimator.__name__, estimator())


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.__name__)
def test_unfitted_estimator_raises_not_fitted_error(estimator):
    x, _, g = _data()
    for call in (lambda e: e.predict(x), lambda e: e.decision_function(x, g), lambda e: e.summary()):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(estimator())


def test_score_scores_the_conditional_prediction_when_groups_are_given():
    x, y, g = _data()
    reg = MixedEffectsRegressor().fit(x, y, groups=g)
    conditional, population = reg.score(x, y, groups=g), reg.score(x, y)
    assert conditional > population  # the conditional modes explain the group effects
    residual = y - reg.predict(x, groups=g)
    assert conditional == pytest.approx(1 - residual.var() / y.var())
    clf = MixedEffectsClassifier(max_iter=50).fit(x, y > 0, groups=g)
    assert clf.score(x, y > 0, groups=g) == pytest.approx(np.mean(clf.predict(x, groups=g) == (y > 0)))
    assert clf.score(x, y > 0) == pytest.approx(np.mean(clf.predict(x) == (y > 0)))


def test_clone_and_refit_give_the_same_fit():
    x, y, g = _data()
    fit = MixedEffectsRegressor(method="ml").fit(x, y, groups=g)
    refit = clone(fit).fit(x, y, groups=g)
    assert refit.get_params() == fit.get_params()
    np.testing.assert_array_equal(refit.predict(x, groups=g), fit.predict(x, groups=g))
    assert refit.n_features_in_ == 2 and not hasattr(clone(fit), "fit_method_")
