# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""CorrelatedRandomEffects and GroupedRandomEffects: closed-form KL, posterior moments, unseen levels, errors."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from monai_medl.networks.layers import CorrelatedRandomEffects, GroupedRandomEffects
from monai_medl.networks.nets import GroupedMixedEffectsNet


def _randomised(num_clusters=5, num_terms=3, **kwargs) -> CorrelatedRandomEffects:
    layer = CorrelatedRandomEffects(num_clusters, num_terms, post_loc_init_scale=0.5, **kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            if p is not layer.loc:
                p.add_(0.3 * torch.randn_like(p))
    return layer


def test_kl_matches_torch_distributions_and_its_gradient_is_finite():
    layer = _randomised()
    prior = MultivariateNormal(torch.zeros(3, dtype=torch.float64), layer.prior_covariance())
    post = layer.posterior_covariance()
    expected = sum(kl_divergence(MultivariateNormal(layer.loc[k], post[k]), prior) for k in range(5))
    kl = layer.kl()
    assert float(kl.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    kl.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_uncorrelated_prior_and_diagonal_posterior_have_no_off_diagonal_terms():
    layer = _randomised(correlated=False, posterior="diagonal")
    assert layer.prior_offdiag is None and layer.post_offdiag is None
    cov, post = layer.prior_covariance(), layer.posterior_covariance()
    assert torch.count_nonzero(cov - torch.diag(cov.diagonal())) == 0
    assert torch.count_nonzero(post - torch.diag_embed(post.diagonal(dim1=-2, dim2=-1))) == 0
    # one prior s.d. per term, as given
    fixed = CorrelatedRandomEffects(4, 3, prior_scale=[1.0, 0.5, 0.25], learn_prior_scale=False)
    assert fixed.prior_covariance().diagonal().sqrt().tolist() == pytest.approx([1.0, 0.5, 0.25])
    assert not any(p is fixed.prior_log_diag for p in fixed.parameters())


def test_moments_are_the_exact_posterior_mean_and_variance_for_indices_and_one_hot_z():
    layer = _randomised()
    design = torch.randn(6, 3, dtype=torch.float64)
    clusters = torch.tensor([0, 4, -1, 2, 2, 1])
    mean, var = layer.moments(clusters, design)
    post = layer.posterior_covariance()
    for i, k in enumerate(clusters.tolist()):
        if k < 0:  # unseen: the population value, exactly
            assert float(mean[i]) == 0.0 and float(var[i]) == 0.0
        else:
            assert float(mean[i]) == pytest.approx(float(design[i] @ layer.loc[k]))
            assert float(var[i]) == pytest.approx(float(design[i] @ post[k] @ design[i]))
    z = torch.zeros(6, 5, dtype=torch.float64)
    z[clusters >= 0, clusters[clusters >= 0]] = 1.0
    mean_z, var_z = layer.moments(z, design)
    assert torch.allclose(mean, mean_z) and torch.allclose(var, var_z)
    assert torch.equal(layer.eval()(clusters, design), mean)
    # training mode samples: the Monte-Carlo moments approach the closed form
    layer.train()
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([layer(clusters, design) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), mean, atol=4 * float(var.max().sqrt()) / 4000**0.5)
    assert torch.allclose(draws.var(0), var, rtol=0.1, atol=1e-12)


def test_bad_arguments_raise_naming_the_problem():
    with pytest.raises(ValueError, match="posterior"):
        CorrelatedRandomEffects(3, 2, posterior="lowrank")
    with pytest.raises(ValueError, match="prior_scale"):
        CorrelatedRandomEffects(3, 2, prior_scale=[1.0])
    layer = CorrelatedRandomEffects(3, 2)
    with pytest.raises(ValueError, match="design"):
        layer(torch.tensor([0]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="z must have shape"):
        layer(torch.zeros(1, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="slope_columns"):
        GroupedRandomEffects({"site": 3}, slope_columns={"scanner": [0]})
    with pytest.raises(ValueError, match="one column per factor"):
        GroupedRandomEffects({"site": 3, "scanner": 2})(torch.zeros(2, 1, dtype=torch.long))


def test_grouped_effects_add_per_factor_and_unseen_levels_drop_only_their_factor():
    re = GroupedRandomEffects({"site": 3, "subject": 6}, slope_columns={"subject": [1]}).double()
    with torch.no_grad():
        for layer in re.factors.values():
            layer.loc.normal_()
    re.eval()
    x = torch.randn(4, 2, dtype=torch.float64)
    site, subject = re.factors["site"], re.factors["subject"]
    out = re(torch.tensor([[1, 4], [1, -1], [-1, -1], [2, 0]]), x)
    subject_effect = subject.loc[4, 0] + subject.loc[4, 1] * x[0, 1]
    assert float(out[0]) == pytest.approx(float(site.loc[1, 0] + subject_effect))
    assert float(out[1]) == pytest.approx(float(site.loc[1, 0]))  # known site, new subject: the site's effect
    assert float(out[2]) == 0.0  # nothing known: the population
    mean, var = re.moments(torch.tensor([[1, 4]]), x[:1])
    assert float(mean) == pytest.approx(float(out[0]))
    assert float(var) == pytest.approx(
        float(site.posterior_covariance()[1, 0, 0])
        + float(torch.tensor([1.0, x[0, 1]]) @ subject.posterior_covariance()[4] @ torch.tensor([1.0, x[0, 1]]))
    )
    assert float(re.kl()) == pytest.approx(float(site.kl() + subject.kl()))
    # any fixed-effects network composes with it; no clusters is the population prediction
    fixed = torch.nn.Linear(2, 1).double()
    net = GroupedMixedEffectsNet(fixed, re).eval()
    assert torch.equal(net(x), fixed(x))
    assert torch.allclose(net(x, torch.tensor([[1, 4]] * 4)) - fixed(x), re(torch.tensor([[1, 4]] * 4), x))
