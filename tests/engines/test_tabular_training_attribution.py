# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_medl.engines.tabular import data_dependent_init_
from monai_medl.networks.nets import MixedEffectsMLP
from monai_medl.utils.attribution import (
    attribution_share,
    fixed_effects_attribution,
    input_gradients,
    integrated_gradients,
)


def test_input_gradients_of_a_linear_map():
    w = torch.tensor([2.0, -3.0, 0.5])
    x = torch.randn(6, 3)
    grads = input_gradients(lambda t: t @ w, x)
    torch.testing.assert_close(grads, w.expand(6, 3))
    assert not x.requires_grad  # the input is not modified


def test_fixed_effects_attribution_of_a_linear_mixed_model_is_its_fixed_weights():
    net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=())
    with torch.no_grad():
        net.head.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.0]]))
        net.linear_slopes.loc.fill_(5.0)  # large random slopes must not leak into the fixed-effects path
    net.train()
    attr = fixed_effects_attribution(net, torch.randn(20, 3))
    torch.testing.assert_close(attr, torch.tensor([1.0, 2.0, 0.0]))
    assert net.training  # mode restored
    assert attribution_share(attr, [1]) == pytest.approx(2 / 3)


def test_integrated_gradients_completeness_and_method_switch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(5, 4)
    fn = lambda t: net(t).squeeze(1)  # noqa: E731
    ig = integrated_gradients(fn, x, steps=64)
    with torch.no_grad():
        gap = fn(x) - fn(torch.zeros_like(x))
    torch.testing.assert_close(ig.sum(1), gap, atol=2e-3, rtol=1e-2)
    attr = fixed_effects_attribution(net, x, method="integrated_gradients", steps=64)
    torch.testing.assert_close(attr, ig.abs().mean(0))


def test_multi_output_needs_a_target():
    net = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="target"):
        fixed_effects_attribution(net, x)
    torch.testing.assert_close(fixed_effects_attribution(net, x, target=1), net.weight[1].abs().detach())
    with pytest.raises(ValueError, match="method"):
        fixed_effects_attribution(net, x, target=0, method="shap")


def test_attribution_share_edge_cases():
    assert attribution_share(torch.zeros(3), [0]) == 0.0
    assert attribution_share(torch.tensor([1.0, 3.0]), []) == 0.0
    with pytest.raises(ValueError, match="out of range"):
        attribution_share(torch.ones(2), [2])


def test_data_dependent_init_revives_dead_units():
    torch.manual_seed(0)
    net = MixedEffectsMLP(2, 1, num_clusters=3, hidden=(4, 4))
    with torch.no_grad():
        net.hidden[1][0].weight.copy_(-net.hidden[1][0].weight.abs())  # every second-layer unit dead on ReLU inputs
    x = torch.randn(256, 2)
    with torch.no_grad():
        assert (net.forward_all(x).features[1] > 0).sum() == 0
    weights = [layer[0].weight.clone() for layer in net.hidden]
    data_dependent_init_(net, x)
    with torch.no_grad():
        feats = net.forward_all(x).features
    for f in feats:  # every unit is now active on about half of the data
        torch.testing.assert_close((f > 0).float().mean(0), torch.full((4,), 0.5), atol=0.02, rtol=0)
    for layer, w in zip(net.hidden, weights):
        torch.testing.assert_close(layer[0].weight, w)  # weights untouched
    # a plain MLP: every Linear but the read-out is centred
    mlp = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    read_out_bias = mlp[2].bias.clone()
    data_dependent_init_(mlp, x)
    torch.testing.assert_close(mlp[2].bias, read_out_bias)
    with torch.no_grad():
        torch.testing.assert_close(mlp[0](x).median(0).values, torch.zeros(3), atol=1e-6, rtol=0)
