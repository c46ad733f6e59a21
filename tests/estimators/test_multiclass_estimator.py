# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""C-class MixedEffectsClassifier: per-class random effects, softmax ELBO, labels, unseen levels, read-outs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("pandas") is None:
    pytest.skip("pandas is needed (pip install monai-medl[stats])", allow_module_level=True)

from sklearn.linear_model import LogisticRegression  # noqa: E402

from monai_medl.estimators import MixedEffectsClassifier  # noqa: E402
from monai_medl.networks.layers import CorrelatedRandomEffects, GroupedRandomEffects  # noqa: E402

BETA = np.array([[0.0, 0.0], [1.0, -0.5], [-0.5, 1.0]])  # class x feature


def simulate(seed: int, groups: int, rows: int, test_rows: int, intercept_sd: float = 1.0):
    """3-class softmax data, an independent N(0, intercept_sd^2) intercept per group and class; train/test rows."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, intercept_sd, (groups, 3))

    def draw(per_group: int):
        group = np.repeat(np.arange(groups), per_group)
        x = rng.normal(size=(len(group), 2))
        eta = x @ BETA.T + u[group]
        p = np.exp(eta - eta.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        y = (rng.random((len(group), 1)) > np.cumsum(p, 1)).sum(1)
        return x, y, group

    return draw(rows), draw(test_rows)


@pytest.fixture(scope="module")
def brief_design():
    # the design of issue 14's multi-class request: 30 groups x 40 training rows, intercept s.d. 1.0 per class
    (x, y, g), test = simulate(seed=0, groups=30, rows=40, test_rows=20)
    return (x, y, g), test, MixedEffectsClassifier().fit(x, y, groups=g)


def test_mixed_model_beats_fixed_effects_logistic_regression_on_seen_groups(brief_design):
    (x, y, _), (xt, yt, gt), clf = brief_design
    fixed = LogisticRegression(max_iter=1000).fit(x, y)  # multinomial on X alone
    mixed_acc = float((clf.predict(xt, groups=gt) == yt).mean())
    fixed_acc = float((fixed.predict(xt) == yt).mean())
    # measured on this design (seeds 0-4, 600 held-out rows each): +0.072 to +0.162; the paired s.e. of an
    # accuracy difference on 600 rows is about 0.02, so 0.04 is two s.e. above "no gain" and well below the minimum
    assert mixed_acc - fixed_acc > 0.04
    proba = clf.predict_proba(xt, groups=gt)
    assert proba.shape == (len(xt), 3) and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    assert clf.summary().family == "multinomial"


def test_per_class_intercept_sds_recover_the_truth():
    # 100 groups: each class's s.d. is identified from the logit differences; at 30 groups the per-class
    # estimates spread 0.58-1.41 over seeds 0-4 (the realised effects' s.d.s spread 0.66-1.30), at 100 groups
    # 0.88-1.17 over seeds 0-3
    (x, y, g), _ = simulate(seed=0, groups=100, rows=40, test_rows=0)
    clf = MixedEffectsClassifier().fit(x, y, groups=g)
    vc = clf.var_corr()
    assert list(vc.columns) == ["grp", "class", "var1", "var2", "vcov", "sdcor"]
    assert vc["class"].tolist() == [0, 1, 2] and (vc["var1"] == "(Intercept)").all()
    for sd in vc["sdcor"]:
        assert sd == pytest.approx(1.0, rel=0.3)
    assert clf.covariance("group", cls=2)[0, 0] == pytest.approx(vc["sdcor"].iloc[2] ** 2)
    with pytest.raises(ValueError, match=r"cls must be one of the classes \[0, 1, 2\]"):
        clf.covariance("group")
    fe = clf.fixed_effects_
    assert fe.shape == (3, 3) and np.allclose(fe.sum(1), 0.0)  # centred over the classes
    # the slopes, centred like BETA's columns
    np.testing.assert_allclose(fe.loc[["x0", "x1"]].to_numpy(), (BETA - BETA.mean(0)).T, atol=0.2)


def test_string_labels_round_trip_and_unseen_groups_get_the_population(brief_design):
    (x, y, g), (xt, _, gt), coded = brief_design
    names = np.array(["zebra", "apple", "mango"])  # not in sorted order
    clf = MixedEffectsClassifier().fit(x, names[y], groups=g)
    assert clf.classes_.tolist() == ["apple", "mango", "zebra"]  # LabelEncoder's order
    pred = clf.predict(xt, groups=gt)
    assert pred.dtype.kind == "U" and set(pred) <= set(names)
    # the same model as on integer labels, columns permuted to the sorted names; not bit-identical since the
    # Monte-Carlo draws follow the channel order (measured max difference 0.0017)
    order = [np.flatnonzero(names == c)[0] for c in clf.classes_]
    reference = coded.predict_proba(xt, groups=gt)[:, order]
    np.testing.assert_allclose(clf.predict_proba(xt, groups=gt), reference, atol=0.005)
    assert (pred == names[coded.predict(xt, groups=gt)]).mean() > 0.98
    # unseen groups (and groups=None): the population prediction, still a distribution over the classes
    unseen = clf.predict_proba(xt[:5], groups=np.array([101, 102, 103, 104, 105]))
    np.testing.assert_allclose(unseen, clf.predict_proba(xt[:5]), atol=1e-12)
    np.testing.assert_allclose(unseen.sum(1), 1.0, atol=1e-12)
    mixed = clf.predict_proba(xt[:1], groups=gt[:1])
    assert not np.allclose(mixed, unseen[:1])  # a seen group does get its effects
    text = str(clf.summary())
    assert "Class" in text and all(c in text for c in ("apple", "mango", "zebra"))
    effects = clf.random_effects("group")
    assert effects.shape == (30, 3) and effects.columns.names == ["class", "term"]
    assert effects.columns.get_level_values("class").tolist() == ["apple", "mango", "zebra"]


def test_per_class_random_slopes_and_correlations():
    rng = np.random.default_rng(3)
    group = np.repeat(np.arange(12), 25)
    x = rng.normal(size=(300, 1))
    y = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    clf = MixedEffectsClassifier(random_slopes=["x0"], max_iter=50).fit(x, y, groups=group)
    vc = clf.var_corr()
    # per class: two s.d.s and their correlation; no prior covariance between classes
    assert len(vc) == 9 and (vc.groupby("class").size() == 3).all()
    assert vc[vc["var2"].notna()]["var1"].tolist() == ["(Intercept)"] * 3
    prior = clf.network_.random_effects.factors["group"].prior_covariance().detach()
    assert prior.shape == (6, 6)
    assert torch.count_nonzero(prior[:2, 2:]) == 0 and torch.count_nonzero(prior[2:4, 4:]) == 0
    assert clf.random_effects("group").shape == (12, 6)
    assert clf.predict_proba(x[:4], groups=group[:4]).shape == (4, 3)


def test_bad_inputs_name_the_argument_and_expected_value():
    x, g = np.zeros((6, 2)), np.array([0, 0, 1, 1, 2, 2])
    y = np.array(["a", "b", "c", "a", "b", "c"])
    clf = MixedEffectsClassifier()
    with pytest.raises(ValueError, match=r"y has a single class \['a'\]"):
        clf.fit(x, np.array(["a"] * 6), groups=g)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="X has missing or infinite values .*row 4, column 'x1'"):
        clf.fit(bad, y, groups=g)
    with pytest.raises(ValueError, match=r"X has 5 rows but y has 6: X must have one row per entry of y \(6\)"):
        clf.fit(x[:5], y, groups=g)
    with pytest.raises(ValueError, match="groups has 5 rows but X has 6"):
        clf.fit(x, y, groups=g[:5])
    with pytest.raises(ValueError, match="y has missing .*first at row 2"):
        clf.fit(x, np.array(["a", "b", None, "a", "b", "c"], dtype=object), groups=g)
    with pytest.raises(ValueError, match="y mixes label types"):
        clf.fit(x, np.array(["a", 1, "c", "a", 1, "c"], dtype=object), groups=g)
    fitted = MixedEffectsClassifier(max_iter=5).fit(x + np.arange(6)[:, None], y, groups=g)
    with pytest.raises(ValueError, match="X has 3 features, the model was fitted with 2"):
        fitted.predict(np.zeros((2, 3)))


def test_block_prior_keeps_channels_independent_and_one_block_is_unchanged():
    one = CorrelatedRandomEffects(num_clusters=4, num_terms=2)
    assert sorted(one.state_dict()) == ["loc", "post_offdiag", "post_rho", "prior_log_diag", "prior_offdiag"]
    blocked = CorrelatedRandomEffects(num_clusters=4, num_terms=6, blocks=3)
    assert blocked.prior_offdiag.shape == (3,)  # one correlation per (intercept, slope) block
    with torch.no_grad():
        blocked.prior_offdiag.fill_(0.7)
    cov = blocked.prior_covariance()
    mask = torch.block_diag(*[torch.ones(2, 2)] * 3).bool()
    assert torch.count_nonzero(cov[~mask]) == 0 and torch.count_nonzero(cov[mask]) == 12
    with pytest.raises(ValueError, match="blocks must be a positive divisor of num_terms=6"):
        CorrelatedRandomEffects(num_clusters=4, num_terms=6, blocks=4)
    # the multi-channel grouped layer: channel covariances agree with the variances and with the eval output
    re = GroupedRandomEffects({"site": 3, "scanner": 2}, slope_columns={"site": [0]}, out_channels=3).double()
    with torch.no_grad():
        for p in re.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, clusters = torch.randn(5, 2, dtype=torch.float64), torch.tensor([[0, 1], [2, -1], [-1, -1], [1, 0], [0, 0]])
    mean, cov = re.moments(clusters, x, full_covariance=True)
    _, var = re.moments(clusters, x)
    assert cov.shape == (5, 3, 3) and torch.allclose(cov.diagonal(dim1=-2, dim2=-1), var)
    assert torch.allclose(re.eval()(clusters, x), mean) and torch.count_nonzero(cov[2]) == 0  # nothing known
    # Monte Carlo over training-mode samples reproduces the moments (joint over channels)
    re.train()
    torch.manual_seed(0)
    samples = torch.stack([re(clusters[:1], x[:1])[0] for _ in range(20000)])
    assert torch.allclose(samples.mean(0), mean[0], atol=0.05)
    assert torch.allclose(torch.cov(samples.T), cov[0], atol=0.05)
