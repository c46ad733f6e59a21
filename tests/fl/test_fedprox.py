# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""FedProx's proximal term (``fedprox_mu``): it holds a site's shared weights near the global model and leaves the
site's random-effects phase alone."""

from __future__ import annotations

import copy

import torch

from monai_medl.fl import LocalTrainingSettings, load_site_datalist, shared_state, site_network, train_locally
from monai_medl.fl.job import job_parser
from monai_medl.networks.utils import random_effects_layers
from tests.fl.site_cohort import SPEC, write_site_datalists


def _train(data, start, mu: float):
    net = copy.deepcopy(start)
    torch.manual_seed(1)  # the posterior samples of the random effects draw from the global generator
    train_locally(net, data, LocalTrainingSettings(epochs=20, batch_size=20, lr=0.05, fedprox_mu=mu), seed=3)
    return net


def _drift(net, start) -> float:
    before = shared_state(start)
    return sum(float(((v - before[k]) ** 2).sum()) for k, v in shared_state(net).items() if v.is_floating_point())


def test_proximal_term_limits_the_drift_of_the_shared_weights_only(tmp_path):
    torch.manual_seed(0)
    data = load_site_datalist(write_site_datalists(tmp_path, effects=(1.0,))[0], "site-1", in_features=2)
    start = site_network(SPEC)
    plain, prox, strong = (_train(data, start, mu) for mu in (0.0, 1.0, 100.0))
    assert _drift(strong, start) < 0.05 * _drift(plain, start)
    assert _drift(strong, start) < _drift(prox, start) < _drift(plain, start)
    # the E-step (random effects alone) runs first and has no proximal term: the same rows whatever mu
    for name in random_effects_layers(start):
        layer = {n: m for n, m in plain.named_modules()}[name]
        assert torch.equal(layer.loc, {n: m for n, m in strong.named_modules()}[name].loc)


def test_job_has_fedprox_mu():
    args = job_parser().parse_args(["--site_datalists", "a.json", "--out", "o", "--fedprox_mu", "0.01"])
    assert args.fedprox_mu == 0.01 and job_parser().parse_args(["--site_datalists", "a", "--out", "o"]).fedprox_mu == 0
