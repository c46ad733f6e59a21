# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks import ClusterScaleBias
from monai_medl.networks.nets import MixedEffectsMLP
from monai_medl.networks.utils import random_effects_layers
from monai_medl.utils import (
    random_intercept_vs_prevalence,
    random_intercepts,
    summary,
    variance_components,
)


def _linear(num_clusters: int = 4, learn: bool = True, noise: bool = True) -> MixedEffectsMLP:
    net = MixedEffectsMLP(
        2, 1, num_clusters, hidden=(), nonlinear_slopes=False, learn_prior_scale=learn, learn_noise_scale=noise
    )
    with torch.no_grad():
        net.head.intercept.loc.copy_(torch.tensor([[1.0], [-1.0], [2.0], [0.0]]))
        net.head.intercept.log_prior_scale.fill_(math.log(1.5))
        net.linear_slopes.log_prior_scale.fill_(math.log(0.3))
        net.head.log_noise_scale.fill_(math.log(2.0))
        net.head.linear.weight.copy_(torch.tensor([[0.5, -0.25]]))
        net.head.linear.bias.fill_(3.0)
    return net


def test_summary_reports_variance_components_spreads_and_fixed_effects():
    net = _linear()
    s = summary(net, cluster_names=["a", "b", "c", "d"], feature_names=["age", "dose"], group="site", num_obs=40)
    intercept, slopes = {c.layer: c for c in s.random_effects}["head.intercept"], s.random_effects[1]
    assert intercept.term == "(Intercept)" and slopes.term == "x (linear slopes)"
    assert intercept.prior_sd == pytest.approx(1.5) and intercept.variance == pytest.approx(2.25)
    assert intercept.prior_learned and intercept.num_clusters == 4 and intercept.group == "site"
    assert intercept.spread_sd[0] == pytest.approx(float(np.std([1.0, -1.0, 2.0, 0.0])))
    assert intercept.posterior_sd == pytest.approx(float(net.head.intercept.scale.detach().mean()))
    assert slopes.units == 2 and slopes.unit_names == ["age", "dose"]
    assert slopes.spread_sd == pytest.approx(net.linear_slopes.loc.detach().std(0, unbiased=False).tolist())
    assert slopes.mean_spread_sd == pytest.approx(sum(slopes.spread_sd) / 2)
    assert s.residual_sd == pytest.approx(2.0)
    assert s.fixed_effects == pytest.approx({"(Intercept)": 3.0, "age": 0.5, "dose": -0.25})
    assert s.intercepts["head.intercept"] == [[1.0], [-1.0], [2.0], [0.0]]
    text = str(s)
    for expected in (
        "Random effects:",
        "Groups",
        "Variance",
        "Std.Dev.",
        "Residual",
        "Fixed effects:",
        "Number of obs: 40, groups: site, 4",
        "empirical Bayes",
        "age: ",
    ):
        assert expected in text, expected
    assert json.loads(json.dumps(s.to_dict()))["random_effects"][0]["variance"] == pytest.approx(2.25)


def test_summary_tables_as_dataframes():
    pytest.importorskip("pandas")
    s = summary(_linear(), cluster_names=["a", "b", "c", "d"])
    re = s.to_dataframe()
    assert list(re["term"][:2]) == ["(Intercept)", "x (linear slopes)"]
    assert re["variance"].iloc[-1] == pytest.approx(4.0)  # residual row
    assert s.to_dataframe("intercepts").loc["c", "(Intercept)"] == pytest.approx(2.0)
    assert s.to_dataframe("fixed_effects").loc["x1", "estimate"] == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="table must be one of"):
        s.to_dataframe("ranef")


def test_non_linear_model_has_no_fixed_effects_table_and_fixed_priors_are_flagged():
    net = MixedEffectsMLP(3, 2, 5, hidden=(4,))
    s = summary(net)
    assert s.fixed_effects is None and s.residual_sd is None
    assert {c.term for c in s.random_effects} == {"(Intercept)", "x (linear slopes)", "h (non-linear slopes)"}
    assert not any(c.prior_learned for c in s.random_effects)
    assert "fixed, not estimated" in str(s) and "Fixed effects:" not in str(s)
    assert s.cluster_names == ["0", "1", "2", "3", "4"]
    assert len(s.intercepts["head.intercept"][0]) == 2
    with pytest.raises(ValueError, match="not linear"):
        s.to_dataframe("fixed_effects")


def test_variance_components_variances_and_sds():
    net = _linear()
    variances = {"head.intercept": 2.25, "linear_slopes": 0.09, "Residual": 4.0}
    assert variance_components(net) == pytest.approx(variances)
    assert variance_components(net, sd=True) == pytest.approx({k: math.sqrt(v) for k, v in variances.items()})
    no_noise = MixedEffectsMLP(2, 1, 3, hidden=(), nonlinear_slopes=False)
    assert set(variance_components(no_noise)) == {"head.intercept", "linear_slopes"}


def test_summary_and_intercepts_reject_bad_input():
    net = _linear()
    with pytest.raises(ValueError, match="cluster_names must have 4 entries"):
        summary(net, cluster_names=["a", "b"])
    with pytest.raises(ValueError, match="feature_names must have 2 entries"):
        summary(net, feature_names=["age"])
    with pytest.raises(ValueError, match="no RandomEffects layers"):
        summary(torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="exactly one random-intercept layer"):
        random_intercepts(torch.nn.ModuleDict({"a": _linear(), "b": _linear()}))
    with pytest.raises(ValueError, match="not a random-effects layer"):
        random_intercepts(net, layer="head.linear")
    torch.testing.assert_close(random_intercepts(net), net.head.intercept.loc.detach())


def test_intercept_vs_prevalence_matches_pearson_and_ignores_unseen_and_small_sites():
    net = _linear()
    sites = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, -1, -1])
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1])
    res = random_intercept_vs_prevalence(net, sites, labels)
    prevalence = np.array([0.75, 0.0, 1.0, 0.5])
    np.testing.assert_allclose(res.prevalence, prevalence)
    np.testing.assert_array_equal(res.counts, [4, 2, 3, 2])
    assert res.r == pytest.approx(np.corrcoef([1.0, -1.0, 2.0, 0.0], prevalence)[0, 1])
    fewer = random_intercept_vs_prevalence(net, sites[:-3], labels[:-3])  # site 3 keeps 1 sample
    np.testing.assert_array_equal(fewer.counts, [4, 2, 3, 1])
    with pytest.raises(ValueError, match="need >= 3 clusters with >= 3 samples"):
        random_intercept_vs_prevalence(net, sites, labels, min_count=3)  # only sites 0 and 2 qualify
    with pytest.raises(ValueError, match="one entry per sample"):
        random_intercept_vs_prevalence(net, sites, labels[:-1])
    with pytest.raises(ValueError, match="< num_clusters=4"):
        random_intercept_vs_prevalence(net, np.array([0, 1, 2, 4]), np.array([0, 1, 0, 1]))


def test_trained_classifier_intercepts_track_site_prevalence():
    # prevalence differs by site and the features carry no site information: the random intercept must absorb it
    gen = torch.Generator().manual_seed(0)
    num_sites, per_site = 12, 60
    prevalence = torch.linspace(0.15, 0.85, num_sites)
    sites = torch.arange(num_sites).repeat_interleave(per_site)
    x = torch.randn(len(sites), 2, generator=gen)
    logit = torch.logit(prevalence)[sites] + 1.5 * x[:, 0]
    y = (torch.rand(len(sites), generator=gen) < torch.sigmoid(logit)).float()[:, None]
    z = torch.eye(num_sites)[sites]
    torch.manual_seed(0)
    net = MixedEffectsMLP(2, 1, num_sites, hidden=(), nonlinear_slopes=False, learn_prior_scale=True)
    loss_fn = MixedEffectsLoss(task="bce", lambda_fixed=0.0, kl_weight="elbo", num_train_samples=len(y))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss_fn(net(x, z), y).backward()
        opt.step()
    res = random_intercept_vs_prevalence(net, sites, y)
    assert res.r > 0.8 and res.p_value < 1e-3
    assert len(res.clusters) == num_sites
    assert float(random_effects_layers(net)["head.intercept"].prior_scale.detach()) > 0.3  # learned site-logit spread


def test_summary_of_cluster_scale_bias_layers_uses_layer_names():
    block = torch.nn.ModuleDict({"norm": ClusterScaleBias(spatial_dims=2, channels=3, num_clusters=5)})
    s = summary(block, group="batch")
    assert [c.term for c in s.random_effects] == ["norm.gamma", "norm.beta"]
    assert [c.prior_sd for c in s.random_effects] == pytest.approx([0.25, 0.25])
    assert s.intercepts == {} and s.fixed_effects is None
    assert "Number of groups: batch, 5" in str(s) and "Random intercepts" not in str(s)
