# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""ME-UNet with cluster scale/bias on the last decoder stage: placement, one shared decoder walk, exactness."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, SegResNet, SwinUNETR, UNet

from monai_medl.networks.layers import ClusterScaleBias
from monai_medl.networks.nets import MixedEffectsUNet

K = 3


def _backbones():
    return {
        "unet_res0": lambda: UNet(3, 1, 4, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=0),
        "unet_res1": lambda: UNet(3, 1, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
        "basic_unet": lambda: BasicUNet(3, 1, 3, features=(4, 4, 8, 8, 16, 4)),
        "segresnet": lambda: SegResNet(
            3, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,)
        ),
    }


def _cluster_blocks(module) -> int:
    return sum(isinstance(m, ClusterScaleBias) for m in module.modules())


def test_last_stage_placement():
    # UNet without residual units: the top up-convolution has no norm, so the last stage with one is the next
    net = MixedEffectsUNet(K, backbone=_backbones()["unet_res0"](), cluster_scale_bias="last")
    assert [_cluster_blocks(b) for b in net.path.ups] == [0, 1, 0]
    every = MixedEffectsUNet(K, backbone=_backbones()["unet_res0"](), cluster_scale_bias=True)
    assert [_cluster_blocks(b) for b in every.path.ups] == [1, 1, 0]
    basic = MixedEffectsUNet(K, backbone=_backbones()["basic_unet"](), cluster_scale_bias="last")
    assert [_cluster_blocks(b) for b in basic.path.ups] == [0, 0, 0, 2]
    assert MixedEffectsUNet(K, backbone=_backbones()["basic_unet"](), cluster_scale_bias="none").path.ups[0].stages


@pytest.mark.parametrize("name", list(_backbones()))
@pytest.mark.parametrize("mode", [True, "last"])
def test_shared_walk_equals_two_decodes_and_bare(name, mode):
    torch.manual_seed(0)
    bare = _backbones()[name]()
    net = MixedEffectsUNet(K, backbone=bare, cluster_scale_bias=mode)
    x, z = torch.randn(2, 1, 32, 32, 32), torch.eye(K)[[0, 2]]
    net.train(), bare.train()
    torch.manual_seed(1)
    out = net(x, z)
    torch.manual_seed(1)  # the same posterior sample: the cluster layers draw in the same order
    skips = net.path.encode(x)
    mixed = net._add_intercept(net.path.decode(skips, z), z)
    torch.testing.assert_close(out.fixed, bare(x), rtol=0, atol=0)  # the fixed prediction is the bare network
    torch.testing.assert_close(out.mixed, mixed, rtol=0, atol=0)
    assert not torch.allclose(out.mixed, out.fixed, atol=1e-4)
    out.mixed.sum().backward()  # in-place activations after the split do not break autograd
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x, z), net(x, z))


def test_swin_falls_back_to_two_decodes():
    torch.manual_seed(0)
    bare = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1),
                     num_heads=(1, 1, 1, 1))  # fmt: skip
    net = MixedEffectsUNet(K, backbone=bare, spatial_dims=2, cluster_scale_bias="last")
    assert [_cluster_blocks(b) for b in net.path.ups] == [0, 0, 0, 0, 2]
    x, z = torch.randn(1, 1, 64, 64), torch.eye(K)[[1]]
    net.eval(), bare.eval()
    with torch.no_grad():
        fixed, mixed = net.path.decode_pair(net.path.encode(x), z)
        torch.testing.assert_close(fixed, bare(x), rtol=0, atol=0)
        torch.testing.assert_close(mixed, net.path(x, z), rtol=0, atol=0)


def test_bad_mode_names_the_choices():
    with pytest.raises(ValueError, match=r"cluster_scale_bias must be True, False or one of \('all', 'last', 'none'\)"):
        MixedEffectsUNet(K, out_channels=2, channels=(8, 16), strides=(2,), cluster_scale_bias="first")
