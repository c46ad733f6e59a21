# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from monai_medl.networks import ClusterScaleBias, GradientReversal, MixedEffectsHead, RandomEffects
from monai_medl.networks import kl_divergence as network_kl


def test_kl_matches_closed_form_of_torch_distributions():
    layer = RandomEffects(num_clusters=5, units=3, prior_scale=0.2)
    with torch.no_grad():
        layer.loc.normal_(0, 0.3)
    q = Normal(layer.loc.detach(), layer.scale.detach())
    p = Normal(torch.zeros(5, 3), torch.full((5, 3), 0.2))
    expected = kl_divergence(q, p).sum()
    torch.testing.assert_close(layer.kl().detach(), expected)
    torch.testing.assert_close(network_kl(torch.nn.Sequential(layer, layer)).detach(), expected)  # shared once


def _reference_kl(layer):
    q = Normal(layer.loc, F.softplus(layer.rho) + 1e-5)
    return kl_divergence(q, Normal(0.0, layer.log_prior_scale.exp())).sum()


@pytest.mark.parametrize("learn_prior_scale", [True, False])
def test_kl_gradient_closed_form_matches_autograd(learn_prior_scale):
    torch.manual_seed(0)
    layer = RandomEffects(num_clusters=4, units=3, prior_scale=0.3, learn_prior_scale=learn_prior_scale).double()
    with torch.no_grad():  # away from the initial values: large means, some large and some tiny sigmas
        layer.loc.normal_(0, 2.0)
        layer.rho.normal_(-2.0, 2.0)
    params = [p for p in (layer.loc, layer.rho, layer.log_prior_scale) if p.requires_grad]
    expected = torch.autograd.grad(_reference_kl(layer), params)
    actual = torch.autograd.grad(layer.kl(), params)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
    # the same gradient added straight into .grad, scaled by the KL weight, on top of an existing gradient
    for p in params:
        p.grad = torch.ones_like(p)
    value = layer.accumulate_kl_grad_(0.25)
    torch.testing.assert_close(value, _reference_kl(layer).detach())
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, 1 + 0.25 * e)
    assert layer.log_prior_scale.grad is None or learn_prior_scale


def test_learned_prior_scale_gets_gradient_and_moves_towards_effect_spread():
    layer = RandomEffects(num_clusters=200, units=1, prior_scale=0.1, learn_prior_scale=True)
    with torch.no_grad():
        layer.loc.normal_(0, 0.5)  # effects with s.d. 0.5; the KL-optimal prior s.d. is their RMS
    opt = torch.optim.Adam([layer.log_prior_scale], lr=0.01)
    for _ in range(1000):
        opt.zero_grad()
        layer.kl().backward()
        opt.step()
    rms = (layer.loc.square() + layer.scale.square()).mean().sqrt()
    assert layer.prior_scale.item() == pytest.approx(rms.item(), rel=0.02)


def test_eval_is_deterministic_and_uses_posterior_means():
    layer = RandomEffects(num_clusters=4, units=2)
    z = torch.eye(4)
    layer.eval()
    torch.testing.assert_close(layer(z), layer.loc.detach())
    assert torch.equal(layer(z), layer(z))
    layer.train()
    assert not torch.equal(layer(z), layer(z))  # a fresh weight sample per call


def test_per_item_sampling_differs_between_items_of_the_same_cluster():
    layer = RandomEffects(num_clusters=2, units=1, sample_per_item=True, post_scale_init=(0.5, 0.5)).train()
    out = layer(torch.tensor([[1.0, 0.0]] * 64))
    assert out.std() > 0.1


def test_zero_z_gives_exactly_zero_and_soft_z_gives_the_weighted_mix():
    layer = RandomEffects(num_clusters=3, units=2).eval()
    assert torch.equal(layer(torch.zeros(2, 3)), torch.zeros(2, 2))
    w = torch.tensor([[0.2, 0.5, 0.3]])
    torch.testing.assert_close(layer(w)[0], (w[0, :, None] * layer.loc.detach()).sum(0))
    layer.train()  # z = 0 gives exactly 0 even while sampling
    assert torch.equal(layer(torch.zeros(2, 3)), torch.zeros(2, 2))


def test_head_zero_z_equals_fixed_output_exactly_in_train_and_eval():
    head = MixedEffectsHead(in_features=6, out_channels=2, num_clusters=4)
    h = torch.randn(5, 6)
    for mode in (True, False):
        head.train(mode)
        mixed, fixed = head(h, torch.zeros(5, 4))
        assert torch.equal(mixed, fixed)
        mixed, fixed = head(h, None)
        assert torch.equal(mixed, fixed)


def test_head_soft_z_intercept_is_probability_weighted_mix():
    head = MixedEffectsHead(in_features=3, out_channels=1, num_clusters=2, random_slopes=False).eval()
    h = torch.randn(4, 3)
    soft = torch.tensor([[0.25, 0.75]]).repeat(4, 1)
    mixed, fixed = head(h, soft)
    mu = head.intercept.loc.detach()
    torch.testing.assert_close(mixed - fixed, (0.25 * mu[0] + 0.75 * mu[1]).expand(4, 1))


@pytest.mark.parametrize("bad", [torch.zeros(2, 5), torch.zeros(2), torch.zeros(2, 3, 1)])
def test_wrong_z_width_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 4\)"):
        RandomEffects(num_clusters=4)(bad)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_clusters": 0}, {"num_clusters": 2, "prior_scale": 0.0}, {"num_clusters": 2, "post_scale_init": (0.1, 0.01)}],
)
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        RandomEffects(**kwargs)


@pytest.mark.parametrize("spatial_dims, shape", [(0, (2, 4)), (1, (2, 4, 7)), (2, (2, 4, 5, 6)), (3, (2, 4, 3, 4, 5))])
def test_cluster_scale_bias_shapes_and_population_path(spatial_dims, shape):
    block = ClusterScaleBias(spatial_dims, channels=4, num_clusters=3).eval()
    x = torch.randn(*shape)
    z = torch.eye(3)[[0, 2]]
    out = block(x, z)
    assert out.shape == x.shape
    torch.testing.assert_close(block(x, torch.zeros(2, 3)), block(x, None))
    assert not torch.allclose(out, block(x, None))
    # the cluster effect is a per-channel affine map of the normalised input
    gamma, beta = block.gamma.loc.detach()[0], block.beta.loc.detach()[0]
    normed = block(x, None)[0]
    view = [4] + [1] * spatial_dims
    torch.testing.assert_close(out[0], (1 + gamma.view(view)) * normed + beta.view(view))


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, requires_grad=True)
    (GradientReversal(0.3)(x) * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * torch.arange(4.0))


def test_gaussian_kl_of_many_layers_equals_the_sum_of_their_kl_values_and_gradients():
    from monai_medl.networks.layers.random_effects import gaussian_kl

    torch.manual_seed(0)
    layers = [
        RandomEffects(4, units=3, prior_scale=0.1),
        RandomEffects(4, units=1, prior_scale=0.5, learn_prior_scale=True),
        RandomEffects(4, units=7, prior_scale=0.25, learn_prior_scale=True),
    ]
    with torch.no_grad():
        for layer in layers:
            layer.loc.normal_(0, 0.3)  # away from the initial values so every term matters
    params = [p for layer in layers for p in layer.parameters()]
    expected = sum(layer.kl() for layer in layers)
    grads = torch.autograd.grad(expected, params)
    value = gaussian_kl(layers)
    torch.testing.assert_close(value, expected)
    for g, h in zip(torch.autograd.grad(value, params), grads):
        torch.testing.assert_close(g, h)


@pytest.mark.parametrize("per_item", [False, True])
def test_add_to_equals_base_plus_effects_in_train_and_eval(per_item):
    re = RandomEffects(num_clusters=3, units=2, sample_per_item=per_item)
    base, z = torch.randn(4, 2), torch.eye(3)[[0, 1, 2, 0]]
    for mode in ("train", "eval"):
        getattr(re, mode)()
        torch.manual_seed(5)
        fused = re.add_to(base, z)
        torch.manual_seed(5)
        torch.testing.assert_close(fused, base + re(z))  # the same draw in training
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 3\)"):
        re.add_to(base, torch.eye(2))


def test_nan_z_is_named_in_eval_when_no_layer_reads_z():
    from monai_medl.networks.layers import RandomEffectsSettings
    from monai_medl.networks.nets import MixedEffectsCNN

    settings = RandomEffectsSettings(random_slopes=False, random_intercept=False)
    net = MixedEffectsCNN(3, spatial_dims=2, random_effects=settings).eval()
    bad_z = torch.eye(3)[[0, 1]]
    bad_z[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^z contains 1 NaN/Inf value\(s\)"):
        net(torch.randn(2, 1, 16, 16), bad_z)


def test_the_kl_layers_found_once_are_a_copys_own():
    import copy

    from monai_medl.networks.nets import MixedEffectsMLP
    from monai_medl.networks.utils import kl_divergence

    torch.manual_seed(0)
    net = MixedEffectsMLP(in_features=3, out_channels=1, num_clusters=4).train()
    x, z = torch.randn(5, 3), torch.eye(4)[[0, 1, 2, 3, 0]]
    assert torch.equal(net(x, z).kl, kl_divergence(net))  # the first call finds and keeps the layers
    twin = copy.deepcopy(net)
    # what DataParallel's replicate() does: a shallow copy of __dict__ (the kept layers too), then its own children
    replica = net._replicate_for_data_parallel()
    for name, child in net.named_children():
        replica._modules[name] = copy.deepcopy(child)
    for copied in (twin, replica):
        with torch.no_grad():
            for p in copied.parameters():
                p.mul_(3.0)
        kl = copied(x, z).kl
        assert torch.equal(kl, kl_divergence(copied)) and not torch.equal(kl, net(x, z).kl)
