# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MixedEffectsUNet around MONAI's SwinUNETR (2D and 3D): z = 0 is the bare network, the random effects act in the
decoder, training with the package loss, sliding-window inference, input checks; SwinUNETR does not script."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SwinUNETR

from monai_medl.inferers import SiteSlidingWindowInferer
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.blocks.encoder_decoder_path import SwinUNETRPath, UnetResBlockWalk
from monai_medl.networks.nets import MixedEffectsUNet
from tests.networks.me_unet_checks import check_zero_design_and_training_output

pytest.importorskip("einops")  # MONAI's SwinUNETR needs it (the package's "swin" extra)

K = 3


def _swin(spatial_dims: int) -> SwinUNETR:
    return SwinUNETR(
        in_channels=1,
        out_channels=3,
        feature_size=12,
        spatial_dims=spatial_dims,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        window_size=2,
    )


@pytest.mark.parametrize("spatial_dims", [2, 3], ids=["swin2d", "swin3d"])
def test_zero_design_reproduces_the_bare_swin_unetr(spatial_dims):
    torch.manual_seed(0)
    bare = _swin(spatial_dims)
    net = MixedEffectsUNet(K, backbone=copy.deepcopy(bare), spatial_dims=spatial_dims, cluster_scale_bias=True)
    # every decoder block's two main-path norms get cluster scale/bias; the encoders are SwinUNETR's own
    assert net.path.num_cluster_layers == 10 and isinstance(net.path, SwinUNETRPath)
    assert net.feature_sizes == [12, 12, 24, 48, 96, 192]
    batch = 2 if spatial_dims == 2 else 1
    x = torch.randn(batch, 1, *([64] * spatial_dims))
    z = torch.eye(K)[torch.arange(batch) % K + 1]
    # training mode in 2D only: 3D SwinUNETR is slow
    check_zero_design_and_training_output(net, bare, x, z, training=spatial_dims == 2)


def test_swin_decoder_effects_train_with_the_package_loss():
    torch.manual_seed(1)
    net = MixedEffectsUNet(K, backbone=_swin(2), spatial_dims=2, cluster_scale_bias=True)
    x = torch.randn(3, 1, 64, 64)
    y = (x > 0.5).long() + (x > 1.2).long()
    z = torch.eye(K)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    loss_fn = MixedEffectsLoss(task="dice_ce", kl_weight=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        loss = loss_fn(net(x, z), y)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    moved = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("intercept") for k in moved)
    assert any(k.startswith("path.ups.0.norm1.gamma") for k in moved)  # decoder random slopes learn
    assert any(k.startswith("path.swin.") for k in moved)  # the shared backbone learns too


def test_swin_sliding_window_population_and_per_site():
    torch.manual_seed(2)
    bare = _swin(2).eval()
    net = MixedEffectsUNet(K, backbone=bare, spatial_dims=2).eval()
    x, z = torch.randn(2, 1, 96, 80), torch.eye(K)[[0, 2]]
    sw = SlidingWindowInferer(roi_size=(64, 64), sw_batch_size=2, overlap=0.5)
    site_sw = SiteSlidingWindowInferer(roi_size=(64, 64), sw_batch_size=2, overlap=0.5)
    with torch.no_grad():
        population = sw(x, net)
        torch.testing.assert_close(population, sw(x, bare), rtol=0, atol=0)  # z = None: the bare network
        per_site = site_sw(x, net, z)
        assert per_site.shape == (2, 3, 96, 80)
        torch.testing.assert_close(per_site[1:], sw(x[1:], net, z[1:]))
        assert not torch.allclose(per_site, population, atol=1e-4)


def test_swin_input_checks_and_scripting():
    net = MixedEffectsUNet(K, backbone=_swin(2), spatial_dims=2).eval()
    with pytest.raises(ValueError, match="divisible by"):
        net(torch.randn(1, 1, 64, 48))
    with pytest.raises(ValueError, match="spatial_dims=3 does not match"):
        MixedEffectsUNet(K, backbone=_swin(2), spatial_dims=3)
    with pytest.raises(TypeError, match="UnetResBlock"):
        UnetResBlockWalk(torch.nn.Conv2d(1, 1, 3), 2, K, True, 0.25, False)
    # MONAI's SwinUNETR is not TorchScript-compatible, so neither is its wrapper (the UNet wrappers script)
    with pytest.raises(Exception):  # noqa: B017 (torch raises several error types here)
        torch.jit.script(_swin(2))
    with pytest.raises(Exception):  # noqa: B017
        torch.jit.script(net)
