# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""monai_medl.fl without the simulator: the state split, the moments, the statistics, the aggregator, the rounds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from monai_medl.fl import (
    FederatedAlignmentLoss,
    LocalTrainingSettings,
    SiteDataError,
    additive_layers,
    check_site_datalists,
    class_statistics,
    federate_in_process,
    join_federation,
    load_shared,
    load_site_datalist,
    local_keys,
    pool_statistics,
    posterior_moments,
    prior_scale_keys,
    prior_scales,
    recentre,
    shared_state,
    site_network,
)
from tests.fl.site_cohort import SPEC, TRAINING, exact_ml_intercept_variance, write_site_datalists

nvflare = pytest.importorskip("nvflare", reason="monai_medl.fl's aggregator needs nvflare (pip install monai-medl[fl])")
from nvflare.app_common.abstract.fl_model import FLModel  # noqa: E402

from monai_medl.fl.aggregator import NUM_SAMPLES, MixedEffectsAggregator  # noqa: E402

HIDDEN_SPEC = {"in_features": 2, "out_channels": 1, "hidden": [4]}


def test_shared_state_keeps_the_rows_home_and_load_shared_never_takes_them():
    torch.manual_seed(0)
    net, other = site_network(HIDDEN_SPEC), site_network(HIDDEN_SPEC)
    own = local_keys(net)
    assert sorted(own) == sorted(
        f"{n}.{p}" for n in ("head.slopes", "head.intercept", "linear_slopes") for p in ("loc", "rho")
    )
    sent = shared_state(other)
    assert not set(own) & set(sent) and not set(prior_scale_keys(net).values()) & set(sent)
    before = {k: net.state_dict()[k].clone() for k in own}
    full = {**other.state_dict()}  # a server checkpoint that carries placeholder rows
    load_shared(net, full)
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in own)
    assert torch.equal(net.head.linear.weight, other.head.linear.weight)
    with pytest.raises(KeyError, match="lacks the shared entries .*head.linear.weight"):
        load_shared(net, {k: v for k, v in full.items() if k != "head.linear.weight"}, origin="round 3")
    with pytest.raises(ValueError, match="num_clusters"):
        site_network({**HIDDEN_SPEC, "num_clusters": 3})


def test_prior_scales_pool_the_moments_of_every_site():
    torch.manual_seed(1)
    nets = [site_network(SPEC) for _ in range(3)]
    with torch.no_grad():
        for k, net in enumerate(nets):
            net.head.intercept.loc.fill_(0.4 + k)  # a common offset of 1.4 over the rows 0.4, 1.4, 2.4
    moments = [posterior_moments(n) for n in nets]
    firsts = [m["__moments__.head.intercept.first"].tolist() for m in moments]
    assert firsts == [pytest.approx([0.4 + k], rel=1e-6) for k in range(3)]
    scales = prior_scales(moments)
    loc = torch.stack([n.head.intercept.loc.detach().double() for n in nets])
    var = torch.stack([n.head.intercept.scale.detach().double().square() for n in nets])
    # the M-step about the centred rows (the offset goes to the shared bias), not about zero
    centred = float(((loc - loc.mean()).square() + var).mean())
    assert scales["head.intercept"] == pytest.approx(math.sqrt(centred), rel=1e-12)
    assert math.sqrt(centred) < 0.9 < math.sqrt(float((loc.square() + var).mean()))
    with pytest.raises(ValueError, match="different random-effects layers"):
        prior_scales([posterior_moments(nets[0]), posterior_moments(site_network(HIDDEN_SPEC))])
    zero = {k: (v * 0 if k.endswith("count") else v) for k, v in posterior_moments(nets[0]).items()}
    with pytest.raises(ValueError, match="zero count"):
        prior_scales([zero])
    with pytest.raises(ValueError, match="unknown moment entry 'third'"):
        prior_scales([{"__moments__.head.intercept.third": np.ones(1)}])


def test_additive_layers_and_recentring_leave_the_prediction_unchanged():
    torch.manual_seed(5)
    linear = site_network({**SPEC, "linear_slopes": True})
    assert additive_layers(linear) == {"head.intercept": "head.linear.bias", "linear_slopes": "head.linear.weight"}
    assert additive_layers(site_network(HIDDEN_SPEC)) == {"head.intercept": "head.linear.bias"}  # slopes on h: none
    x, z = torch.randn(6, 2), torch.ones(6, 1)
    before = linear.eval()(x, z)
    shifts = {"head.intercept": [0.7], "linear_slopes": [0.3, -0.2]}
    with torch.no_grad():  # what the server does to the shared parameters, then the site to its rows
        linear.head.linear.bias.add_(0.7)
        linear.head.linear.weight.add_(torch.tensor([[0.3, -0.2]]))
    recentre(linear, shifts)
    torch.testing.assert_close(linear(x, z), before)
    with pytest.raises(KeyError, match="'head.slopes', which the network lacks"):
        recentre(linear, {"head.slopes": [0.1]})


def test_pooled_statistics_and_alignment_penalty():
    g = torch.Generator().manual_seed(2)
    h, y = torch.randn(30, 3, generator=g), torch.randint(0, 2, (30,), generator=g)
    parts = [class_statistics(h[a:b], y[a:b], 2) for a, b in ((0, 7), (7, 19), (19, 30))]
    pooled, direct = pool_statistics(parts), class_statistics(h, y, 2)
    for key in direct:
        torch.testing.assert_close(pooled[key], direct[key])
    loss = FederatedAlignmentLoss(direct, label_classes=2, lambda_align=1.0)
    assert float(loss(h, y)) < 1e-10  # the batch is the federation: nothing to align
    shifted = float(loss(h + torch.tensor([3.0, 0.0, 0.0]), y))
    assert shifted > 0.1
    with pytest.raises(ValueError, match="label_classes=0"):
        FederatedAlignmentLoss(direct, label_classes=0)
    with pytest.raises(ValueError, match="features have 2 columns"):
        loss(h[:, :2], y)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        ("{not json", "not readable JSON"),
        (json.dumps({"validation": []}), "non-empty list under 'training'"),
        (json.dumps({"training": [{"features": [1.0, 2.0], "label": 1.0}]}), "item 0 of 'training' needs the keys"),
        (
            json.dumps({"training": [{"features": [1.0], "label": 1.0, "site": "a"}]}),
            "has 1 values, the network expects 2",
        ),
        (json.dumps({"training": [{"features": [1.0, 2.0], "label": "x", "site": "a"}]}), "'label' must be a number"),
        (
            json.dumps({"training": [{"features": [1, 2], "label": 1, "site": s} for s in "ab"]}),
            r"several sites \['a', 'b'\]",
        ),
    ],
)
def test_bad_datalists_name_the_site_and_the_file(tmp_path, content, match):
    path = tmp_path / "site_b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SiteDataError, match=match) as error:
        load_site_datalist(path, site="site-2", in_features=2)
    assert "site 'site-2'" in str(error.value) and str(path) in str(error.value)


def test_two_datalists_with_one_site_name_are_refused(tmp_path):
    a, b, _ = write_site_datalists(tmp_path)
    b.write_text(a.read_text())
    with pytest.raises(SiteDataError, match="holds site name 'hosp0', which site 'site-1'"):
        check_site_datalists({"site-1": a, "site-2": b}, in_features=2)


def _federate(paths, rounds, settings, spec):
    sites = [load_site_datalist(p, f"site-{k + 1}", spec["in_features"]) for k, p in enumerate(paths)]
    return federate_in_process(sites, spec, settings, rounds)


def test_rounds_in_process_recover_the_pooled_variance_component(tmp_path):
    torch.set_num_threads(1)
    paths = write_site_datalists(tmp_path)
    fed = _federate(paths, 4, LocalTrainingSettings(**TRAINING), SPEC)
    variance, sigma = exact_ml_intercept_variance(paths)
    federated = fed.meta["variance_components"]["head.intercept"]["variance"]
    # tolerance 6 %: 4 rounds of EM with one-sample ELBO gradients; 8 cohort seeds gave 0.966-1.014 of exact ML
    assert federated == pytest.approx(variance, rel=0.06)  # exact ML on the pooled items: 0.854
    assert math.exp(float(fed.global_params["head.log_noise_scale"])) == pytest.approx(sigma, rel=0.06)
    assert float(fed.global_params["head.intercept.log_prior_scale"]) == pytest.approx(
        0.5 * math.log(federated), abs=1e-6
    )
    rows = [float(n.head.intercept.loc.detach()) for n in fed.networks]
    assert rows == sorted(rows) and rows[2] - rows[0] > 1.5  # each site's own offset (true -1.0, 0.3, 1.2)
    # the common part sits in the shared bias (true 0.2 + mean offset 0.167), not in the rows
    assert float(fed.global_params["head.linear.bias"][0]) == pytest.approx(0.367, abs=0.15)
    shift = fed.meta["random_effects_shift"]["head.intercept"][0]
    assert abs(float(np.mean(rows)) - shift) < 0.05  # the last round's mean row, the one moved into the bias


def test_aggregator_refuses_rows_and_averages_by_site_size():
    torch.manual_seed(3)
    a, b = site_network(SPEC), site_network(SPEC)
    aggregator = MixedEffectsAggregator(local_keys(a), prior_scale_keys(a))
    with pytest.raises(ValueError, match="site 'site-9' sent its random-effects rows"):
        aggregator.accept_model(
            FLModel(params={k: v.numpy() for k, v in a.state_dict().items()}, meta={"client_name": "site-9"})
        )
    aggregator.reset_stats()
    for net, n in ((a, 10), (b, 30)):
        sent = {k: v.numpy() for k, v in {**shared_state(net), **posterior_moments(net)}.items()}
        aggregator.accept_model(FLModel(params=sent, meta={NUM_SAMPLES: n, "client_name": f"n{n}"}))
    plain = aggregator.aggregate_model()
    out = plain.params
    second = [float(n.head.intercept.posterior_second_moment(torch.float64).detach()) for n in (a, b)]
    loc = [float(n.head.intercept.loc.detach()) for n in (a, b)]
    # without shift_keys: the plain M-step about zero, no shift
    assert plain.meta["variance_components"]["head.intercept"]["variance"] == pytest.approx(np.mean(second))
    assert plain.meta["random_effects_shift"] == {}
    expected = (10 * a.head.linear.weight + 30 * b.head.linear.weight) / 40
    np.testing.assert_allclose(out["head.linear.weight"], expected.detach().numpy(), rtol=1e-6)
    centring = MixedEffectsAggregator(local_keys(a), prior_scale_keys(a), shift_keys=additive_layers(a))
    for net, n in ((a, 10), (b, 30)):
        sent = {k: v.numpy() for k, v in {**shared_state(net), **posterior_moments(net)}.items()}
        centring.accept_model(FLModel(params=sent, meta={NUM_SAMPLES: n, "client_name": f"n{n}"}))
    result = centring.aggregate_model()
    centred = np.mean(second) - np.mean(loc) ** 2
    assert result.meta["variance_components"]["head.intercept"]["variance"] == pytest.approx(centred)
    # the unweighted mean row over the clusters (the ML point's rows sum to 0 whatever the site sizes)
    mean_row = float((a.head.intercept.loc + b.head.intercept.loc).detach()) / 2
    assert result.meta["random_effects_shift"]["head.intercept"] == pytest.approx([mean_row], rel=1e-6)
    bias = (10 * a.head.linear.bias + 30 * b.head.linear.bias).detach().numpy() / 40
    np.testing.assert_allclose(result.params["head.linear.bias"], bias + mean_row, rtol=1e-6)
    centring.reset_stats()
    sent = {k: v.numpy() for k, v in shared_state(a).items()}
    centring.accept_model(FLModel(params=sent, meta={"client_name": "site-4"}))
    with pytest.raises(ValueError, match=r"no posterior moments of the random-effects layers \['head.intercept'\]"):
        centring.aggregate_model()
    centring.reset_stats()
    second_only = {k: v for k, v in posterior_moments(a).items() if k.endswith((".sum", ".count"))}
    centring.accept_model(FLModel(params={**sent, **second_only}, meta={"client_name": "site-4"}))
    with pytest.raises(ValueError, match="no first moments of 'head.intercept'"):
        centring.aggregate_model()


def test_a_new_site_joins_with_the_population_model_and_fits_its_own_row(tmp_path):
    torch.set_num_threads(1)
    paths = write_site_datalists(tmp_path)
    result = _federate(paths, 2, LocalTrainingSettings(**TRAINING), SPEC)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 2, generator=g)
    y = (x @ torch.tensor([0.8, -0.5]) + 0.2 + 2.0)[:, None]  # a new hospital, offset +2
    before = {k: np.array(v, copy=True) for k, v in result.global_params.items()}
    network, column = join_federation(result.global_params, SPEC, x, y, steps=300)
    assert all(np.array_equal(result.global_params[k], v) for k, v in before.items())  # the federation is untouched
    for key in ("head.linear.weight", "head.linear.bias", "head.log_noise_scale"):  # shared parts frozen at the site
        np.testing.assert_array_equal(network.state_dict()[key].numpy(), before[key])
    z = torch.zeros(8, network.num_clusters)
    population = network(x, z)
    z[:, column] = 1
    shift = float((network(x, z) - population).mean().detach())
    assert column == 1 and 1.0 < shift < 2.3  # shrunk towards the population, most of the offset recovered
