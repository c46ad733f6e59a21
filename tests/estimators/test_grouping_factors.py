# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""RandomEffectsSettings; several grouping factors (crossed/nested) in the heads, networks, transforms, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.blocks import MixedEffectsHead
from monai_medl.networks.layers import RandomEffectsSettings
from monai_medl.networks.nets import (
    EarlyFusionMixedEffectsCNN,
    MixedEffectsCNN,
    MixedEffectsMLP,
    MixedEffectsUNet,
)
from monai_medl.networks.utils import kl_divergence
from monai_medl.transforms import SiteToIndexd, SiteVocabulary

LEVELS = {"site": 3, "subject": 7}


# ---------------------------------------------------------------- settings object
def test_settings_validate_and_name_the_field():
    with pytest.raises(ValueError, match="slope_prior_scale must be a positive number"):
        RandomEffectsSettings(slope_prior_scale=0)
    with pytest.raises(TypeError, match="learn_prior_scale must be True or False"):
        RandomEffectsSettings(learn_prior_scale="yes")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['slope_prior'\]"):
        RandomEffectsSettings.from_any({"slope_prior": 0.2})
    with pytest.raises(ValueError, match="post_loc_init_scale must be >= 0"):
        RandomEffectsSettings(post_loc_init_scale=-0.1)


def test_settings_object_dict_and_keywords_build_the_same_network():
    torch.manual_seed(0)
    a = MixedEffectsMLP(3, 1, 4, slope_prior_scale=0.3, learn_prior_scale=True)
    torch.manual_seed(0)
    b = MixedEffectsMLP(3, 1, 4, random_effects={"slope_prior_scale": 0.3, "learn_prior_scale": True})
    torch.manual_seed(0)
    c = MixedEffectsMLP(3, 1, 4, random_effects=RandomEffectsSettings(slope_prior_scale=0.3, learn_prior_scale=True))
    for other in (b, c):
        assert a.state_dict().keys() == other.state_dict().keys()
        assert all(torch.equal(a.state_dict()[k], other.state_dict()[k]) for k in a.state_dict())
    assert float(a.linear_slopes.prior_scale.detach()) == pytest.approx(0.3)
    assert a.head.slopes.learn_prior_scale and a.head.intercept.learn_prior_scale


def test_keyword_and_settings_for_the_same_field_is_an_error():
    with pytest.raises(ValueError, match=r"\['slope_prior_scale'\] given both"):
        MixedEffectsMLP(3, 1, 4, slope_prior_scale=0.2, random_effects={"slope_prior_scale": 0.3})
    # a keyword for a field the dictionary leaves out is fine
    net = MixedEffectsMLP(3, 1, 4, slope_prior_scale=0.2, random_effects={"intercept_prior_scale": 0.3})
    assert float(net.head.intercept.prior_scale) == pytest.approx(0.3)
    assert float(net.head.slopes.prior_scale) == pytest.approx(0.2)


def test_each_network_takes_its_own_random_effects_keywords():
    # every network resolves its keywords in one place: an unknown one is a TypeError naming it and the accepted ones
    with pytest.raises(TypeError, match=r"MixedEffectsCNN got unexpected keyword argument\(s\) \['linear_slopes'\]"):
        MixedEffectsCNN(4, linear_slopes=False)
    with pytest.raises(TypeError, match=r"MixedEffectsHead got unexpected .*\['cluster_prior_scale'\]"):
        MixedEffectsHead(5, 1, 4, cluster_prior_scale=0.3)
    with pytest.raises(TypeError, match=r"MixedEffectsMLP got unexpected .*'nonlinear_slopes'"):
        MixedEffectsMLP(3, 1, 4, random_slopes=False)  # the MLP calls them nonlinear_slopes
    with pytest.raises(TypeError, match=r"MixedEffectsUNet got unexpected .*\['random_slopes'\]"):
        MixedEffectsUNet(2, spatial_dims=2, out_channels=2, random_slopes=False)
    mlp = MixedEffectsMLP(3, 1, 4, nonlinear_slopes=False, linear_slopes=False)
    assert mlp.head.slopes is None and mlp.linear_slopes is None
    assert not mlp.random_effects_settings.random_slopes
    settings = RandomEffectsSettings(cluster_prior_scale=0.5, random_intercept=False)
    cnn = MixedEffectsCNN(4, spatial_dims=2, cluster_scale_bias=True, random_effects=settings)
    assert cnn.head.intercept is None and cnn.random_effects_settings.cluster_prior_scale == 0.5
    assert all(float(m.prior_scale) == pytest.approx(0.5) for n, m in cnn.named_modules() if n.endswith(".gamma"))
    with pytest.raises(ValueError, match="correlated=True is not available in EarlyFusionMixedEffectsCNN"):
        EarlyFusionMixedEffectsCNN(4, spatial_dims=2, probe_size=16, random_effects={"correlated": True})


def test_single_factor_state_dict_keys_are_unchanged():
    mlp = MixedEffectsMLP(2, 1, 4, hidden=(3,), random_effects=RandomEffectsSettings())
    assert sorted(k for k in mlp.state_dict() if "hidden" not in k) == sorted(
        [f"head.{p}" for p in ("linear.weight", "linear.bias")]
        + [
            f"{m}.{p}"
            for m in ("head.slopes", "head.intercept", "linear_slopes")
            for p in ("loc", "rho", "log_prior_scale")
        ]
    )


def test_unet_defaults_and_rejected_settings():
    net = MixedEffectsUNet(2, spatial_dims=2, out_channels=2, channels=(4, 8), strides=(2,), probe_size=16)
    assert float(net.intercept.prior_scale) == pytest.approx(0.5)  # the UNet's own default, from its settings
    with pytest.raises(ValueError, match="random_slopes=True is not available in MixedEffectsUNet"):
        MixedEffectsUNet(2, spatial_dims=2, out_channels=2, channels=(4, 8), strides=(2,), random_effects={})


# ---------------------------------------------------------------- several grouping factors
def _head_z():
    return {"site": torch.tensor([0, 2, 1, 1]), "subject": torch.tensor([4, 6, -1, 3])}


def test_grouped_head_adds_each_factors_effects_and_zero_for_unseen_levels():
    torch.manual_seed(0)
    head = MixedEffectsHead(5, 2, LEVELS, random_slopes=False).eval()
    h = torch.randn(4, 5)
    mixed, fixed = head(h, _head_z())
    site = head.factor_intercepts["site"].loc
    subject = head.factor_intercepts["subject"].loc
    expected = fixed + site[[0, 2, 1, 1]] + torch.stack([subject[4], subject[6], torch.zeros(2), subject[3]])
    torch.testing.assert_close(mixed, expected)
    # one-hot designs give the same as indices; a new subject at a known site gets the site effect only
    onehot = {"site": torch.eye(3)[[0, 2, 1, 1]], "subject": torch.eye(7)[[4, 6, 0, 3]]}
    onehot["subject"][2] = 0
    torch.testing.assert_close(head(h, onehot)[0], mixed)
    torch.testing.assert_close(mixed[2], fixed[2] + site[1])


def test_grouped_head_with_slopes_matches_the_formula():
    torch.manual_seed(1)
    head = MixedEffectsHead(5, 1, LEVELS).eval()
    h, z = torch.randn(4, 5), _head_z()
    us = head.factor_slopes["site"].loc[[0, 2, 1, 1]] + torch.cat(
        [head.factor_slopes["subject"].loc[[4, 6]], torch.zeros(1, 5), head.factor_slopes["subject"].loc[[3]]]
    )
    u0 = head.factor_intercepts["site"].loc[[0, 2, 1, 1]] + torch.cat(
        [head.factor_intercepts["subject"].loc[[4, 6]], torch.zeros(1, 1), head.factor_intercepts["subject"].loc[[3]]]
    )
    torch.testing.assert_close(head.predict(h, z), head.linear(h * (1 + us)) + u0)


def test_grouped_designs_are_checked_by_factor():
    head = MixedEffectsHead(5, 1, LEVELS)
    h = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"missing \['subject'\]"):
        head(h, {"site": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match=r"z\['subject'\] holds level indices outside \[-1, 6\]"):
        head(h, {"site": torch.tensor([0, 1]), "subject": torch.tensor([0, 7])})
    with pytest.raises(ValueError, match=r"z\['site'\] must have shape \(2, 3\)"):
        head(h, {"site": torch.zeros(2, 4), "subject": torch.tensor([0, 1])})


def test_single_factor_scripts_and_grouped_raises_a_clear_error():
    x, z = torch.randn(4, 3), torch.eye(4)
    single = MixedEffectsMLP(3, 1, 4).eval()
    torch.testing.assert_close(torch.jit.script(single)(x, z), single(x, z))
    grouped = MixedEffectsMLP(3, 1, {"site": 2, "subject": 4}).eval()
    with pytest.raises(NotImplementedError, match="grouping factors \\['site', 'subject'\\]"):
        torch.jit.script(grouped)


def test_grouped_mlp_correlated_blocks_and_kl():
    net = MixedEffectsMLP(2, 2, LEVELS, hidden=(4,), random_effects={"correlated": True, "learn_prior_scale": True})
    assert len(net.random_effects) == 2  # one grouped layer per output channel
    site = net.random_effects[0].factors["site"]
    assert site.num_terms == 3 and site.correlated and site.prior_offdiag is not None  # intercept + 2 slopes
    assert net.head.intercept is None and not len(net.head.factor_intercepts)  # the intercept lives in the blocks
    out = net.train()(torch.randn(4, 2), _head_z())
    assert out.mixed.shape == (4, 2)
    expected = sum(layer.kl() for g in net.random_effects for layer in g.factors.values())
    expected = expected + sum(layer.kl() for layer in net.head.factor_slopes.values())
    torch.testing.assert_close(out.kl, expected)
    # one factor, correlated: z stays a (batch, K) tensor
    one = MixedEffectsMLP(2, 1, 3, hidden=(), random_effects={"correlated": True}).eval()
    assert one(torch.randn(2, 2), torch.eye(3)[[0, 2]]).shape == (2, 1)
    assert float(kl_divergence(one).detach()) > 0


def test_grouped_cnn_head():
    torch.manual_seed(0)
    net = MixedEffectsCNN(LEVELS, spatial_dims=2, in_channels=1, out_channels=1, probe_size=16)
    x = torch.randn(4, 1, 16, 16)
    out = net.train()(x, _head_z())
    assert out.mixed.shape == (4, 1) and net.make_adversary() is not None
    net.eval()
    torch.testing.assert_close(net(x, _head_z()), net.forward_all(x, _head_z()).mixed)
    with pytest.raises(ValueError, match="cluster_scale_bias needs an integer num_clusters"):
        MixedEffectsCNN(LEVELS, spatial_dims=2, in_channels=1, out_channels=1, cluster_scale_bias=True)
    with pytest.raises(ValueError, match="correlated=True is not available in MixedEffectsCNN"):
        MixedEffectsCNN(3, spatial_dims=2, in_channels=1, out_channels=1, random_effects={"correlated": True})


# ---------------------------------------------------------------- data path
def test_site_to_indexd_one_vocabulary_per_factor():
    vocabs = {"site": SiteVocabulary(["a", "b"]), "subject": SiteVocabulary(["a/1", "a/2", "b/1"])}
    t = SiteToIndexd(keys=["site", "subject"], vocabulary=vocabs)
    assert t({"site": "b", "subject": "b/1"}) == {"site": 1, "subject": 2}
    assert t({"site": "b", "subject": "b/9"}) == {"site": 1, "subject": -1}
    with pytest.raises(ValueError, match=r"no entry for key\(s\) \['subject'\]"):
        SiteToIndexd(keys=["site", "subject"], vocabulary={"site": vocabs["site"]})


def test_prepare_batch_carries_one_design_per_factor():
    prep = MixedEffectsPrepareBatch(num_clusters=LEVELS)
    batch = {
        "image": torch.randn(3, 2),
        "label": torch.zeros(3, 1),
        "site": torch.tensor([0, 2, 1]),
        "subject": torch.tensor([5, -1, 0]),
    }
    _, _, (z,), _ = prep(batch)
    torch.testing.assert_close(z["site"], torch.eye(3)[[0, 2, 1]])
    expected = torch.eye(7)[[5, 0, 0]]
    expected[1] = 0  # the new subject: zero row, its site row stays one-hot
    torch.testing.assert_close(z["subject"], expected)
    _, _, (zp,), _ = MixedEffectsPrepareBatch(num_clusters=LEVELS, mode="population")(batch)
    assert all(float(v.abs().sum()) == 0 for v in zp.values())
    with pytest.raises(ValueError, match="key 'subject'.*site index out of range"):
        prep({**batch, "subject": torch.tensor([0, 7, 0])})
    with pytest.raises(KeyError, match="batch has no 'subject' key"):
        prep({k: v for k, v in batch.items() if k != "subject"})
    with pytest.raises(ValueError, match="single grouping factor"):
        MixedEffectsPrepareBatch(num_clusters=LEVELS, mode="inferred", z_predictor=lambda x: x)


# ---------------------------------------------------------------- training on known site and subject intercepts
SITES, SUBJECTS_PER_SITE, OBS = 10, 8, 6


def _nested_data(seed: int = 0):
    """y = x @ beta + a_site + b_subject + noise with known intercepts (s.d. 1 each, noise s.d. 0.3).

    The subject intercepts are centred within each site, so the site intercept is identifiable as the site mean and
    both sets of learned intercepts can be compared with the truth.
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1.0, SITES)
    b = rng.normal(0, 1.0, (SITES, SUBJECTS_PER_SITE))
    b -= b.mean(1, keepdims=True)
    rows = []
    for s in range(SITES):
        for j in range(SUBJECTS_PER_SITE):
            for _ in range(OBS):
                x = rng.normal(size=2).astype(np.float32)
                y = x[0] - 0.5 * x[1] + a[s] + b[s, j] + rng.normal(0, 0.3)
                rows.append({"image": x, "label": np.float32([y]), "site": f"s{s}", "subject": f"s{s}/{j}"})
    return rows, a, b.reshape(-1)


def _fit(rows, factors: list[str]) -> MixedEffectsMLP:
    vocabs = {f: SiteVocabulary.from_datalist(rows, site_key=f) for f in factors}
    levels = {f: v.num_sites for f, v in vocabs.items()}
    data = CacheDataset(rows, transform=SiteToIndexd(keys=factors, vocabulary=vocabs), progress=False)
    torch.manual_seed(0)
    net = MixedEffectsMLP(
        2,
        1,
        levels,
        hidden=(),
        learn_noise_scale=True,
        random_effects={
            "random_slopes": False,
            "linear_slopes": False,
            "learn_prior_scale": True,
            "intercept_prior_scale": 0.5,
        },
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=60,
        train_data_loader=DataLoader(data, batch_size=len(rows), shuffle=False),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 0.05),
        loss_function=MixedEffectsLoss(
            task="gaussian_nll", lambda_fixed=0.0, kl_weight="elbo", num_train_samples=len(rows)
        ),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=levels),
    )
    trainer.run()
    return net.eval()


def test_trainer_recovers_site_and_subject_intercepts():
    rows, a, b = _nested_data()
    both = _fit(rows, ["site", "subject"])
    factors = both.random_effects[0].factors
    site_hat = factors["site"].loc[:, 0].detach().numpy()
    subject_hat = factors["subject"].loc[:, 0].detach().numpy()  # vocabulary order "s0/0" ... "s9/7" = row order
    assert np.corrcoef(site_hat, a)[0, 1] > 0.95
    assert np.corrcoef(subject_hat, b)[0, 1] > 0.95
    # per subject, the total random intercept: with equal site and subject variances a site-only model can reach a
    # correlation of about 1/sqrt(2) = 0.71 with it, the two-factor model close to 1; 0.9 separates the two
    truth = np.repeat(a, SUBJECTS_PER_SITE) + b
    total = np.repeat(site_hat, SUBJECTS_PER_SITE) + subject_hat
    assert np.corrcoef(total, truth)[0, 1] > 0.9
    site_only = _fit(rows, ["site"]).random_effects[0].factors["site"].loc[:, 0].detach().numpy()
    assert np.corrcoef(np.repeat(site_only, SUBJECTS_PER_SITE), truth)[0, 1] < 0.9
    # a known site with a new subject: the site's effect, no subject effect
    x = torch.zeros(1, 2)
    pred = both(x, {"site": torch.tensor([3]), "subject": torch.tensor([-1])})
    torch.testing.assert_close(pred, both(x) + factors["site"].loc[3, 0])


@pytest.mark.parametrize(
    "kwargs",
    [{"num_clusters": {"site": 3, "subject": 7}}, {"num_clusters": 3, "random_effects": {"correlated": True}}],
)
def test_mean_field_tools_refuse_grouped_networks_with_a_clear_error(kwargs):
    # these tools read the mean-field RandomEffects layers only; on grouped or correlated networks they used to
    # skip the CorrelatedRandomEffects silently (variance_components, summary) or fail with an unrelated message
    from monai_medl.engines.few_shot import add_clusters, fit_new_cluster
    from monai_medl.utils.summary import random_intercepts, summary, variance_components

    net = MixedEffectsMLP(2, 1, **kwargs)
    calls = {
        "few-shot adaptation": lambda: add_clusters(net),
        "few-shot adaptation ": lambda: fit_new_cluster(net, torch.randn(4, 2), torch.ones(4, 1)),
        "summary": lambda: summary(net),
        "variance_components": lambda: variance_components(net),
        "random_intercepts": lambda: random_intercepts(net),
    }
    for purpose, call in calls.items():
        with pytest.raises(ValueError, match=rf"{purpose.strip()}.* supports networks with one grouping factor and "):
            call()
    with pytest.raises(ValueError, match=r"for the grouping factors \['site', 'subject'\]|'cluster'"):
        summary(net)
    assert net.num_clusters == 3  # the refused calls grew nothing
