# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MixedEffectsUNet: z = 0 is the bare network, scripting, sliding window, loss/adversary, unseen-site modes."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import BasicUNet, SegResNet, UNet

from monai_medl.engines import MixedEffectsPrepareBatch, fit_new_cluster
from monai_medl.handlers import AdversaryHandler, LossTermsHandler
from monai_medl.inferers import SiteSlidingWindowInferer
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.nets import MixedEffectsUNet
from tests.networks.me_unet_checks import check_zero_design_and_training_output

K = 3


def _backbones():
    return [
        (lambda: UNet(3, 1, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1), (2, 1, 16, 16, 16)),
        (lambda: UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=0), (2, 1, 24, 24)),
        (lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 8, 4)), (2, 1, 33, 32)),
        (
            lambda: SegResNet(3, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,)),
            (2, 1, 16, 16, 16),
        ),
    ]


@pytest.mark.parametrize("cluster_scale_bias", [True, False], ids=["every_norm", "default"])
@pytest.mark.parametrize("make, shape", _backbones(), ids=["unet3d", "unet2d", "basicunet2d", "segresnet3d"])
def test_zero_design_reproduces_the_bare_network(make, shape, cluster_scale_bias):
    torch.manual_seed(0)
    bare = make()
    kwargs = {"cluster_scale_bias": True} if cluster_scale_bias else {}
    net = MixedEffectsUNet(K, backbone=copy.deepcopy(bare), spatial_dims=len(shape) - 2, **kwargs)
    assert net.has_cluster_layers == cluster_scale_bias  # the default: per-class intercepts only
    x = torch.randn(*shape)
    z = torch.eye(K)[torch.arange(shape[0]) % K]
    check_zero_design_and_training_output(net, bare, x, z)


def test_scripted_network_matches_eager_with_and_without_z():
    torch.manual_seed(1)
    net = MixedEffectsUNet(K, out_channels=4, channels=(8, 16, 32), strides=(2, 2)).eval()
    scripted = torch.jit.script(net)
    x, z = torch.randn(2, 1, 16, 16, 16), torch.eye(K)[[0, 2]]
    torch.testing.assert_close(scripted(x), net(x))
    torch.testing.assert_close(scripted(x, z), net(x, z))
    assert not torch.allclose(scripted(x, z), scripted(x))


def test_sliding_window_inference_population_and_per_site():
    torch.manual_seed(2)
    net = MixedEffectsUNet(K, out_channels=3, channels=(8, 16, 32), strides=(2, 2)).eval()
    x, z = torch.randn(2, 1, 24, 24, 24), torch.eye(K)[[0, 2]]
    sw = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=3, overlap=0.5)
    site_sw = SiteSlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=3, overlap=0.5)
    with torch.no_grad():
        population = sw(x, net)
        torch.testing.assert_close(population, sw(x, net.backbone.eval()))  # z = None: the bare network
        torch.testing.assert_close(site_sw(x, net), population)
        per_site = site_sw(x, net, z)
        assert per_site.shape == (2, 3, 24, 24, 24)
        for i in range(2):  # each image with its own z, one z row broadcast over the window batch
            torch.testing.assert_close(per_site[i : i + 1], sw(x[i : i + 1], net, z[i : i + 1]))
        assert not torch.allclose(per_site[:1], sw(x[:1], net, z[1:2]), atol=1e-4)  # another site, another result
        with pytest.raises(ValueError, match="one row per image"):
            site_sw(x, net, z[:1].repeat(3, 1))


def _items(n: int = 6, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        image = torch.randn(1, 16, 16, 16, generator=g)
        out.append({"image": image, "label": (image > 0.3).long() + (image > 1.0).long(), "site": i % K})
    return out


@pytest.mark.parametrize("cluster_scale_bias", [True, False])
def test_trains_with_the_package_loss_and_adversary_handler(cluster_scale_bias):
    torch.manual_seed(3)
    net = MixedEffectsUNet(
        K, out_channels=3, channels=(8, 16, 32), strides=(2, 2), cluster_scale_bias=cluster_scale_bias
    )
    adversary = net.make_adversary()
    loss = MixedEffectsLoss(task="dice_ce", kl_weight=1e-3)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(_items(), batch_size=3),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=loss,
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=K),
        decollate=False,
        train_handlers=[
            AdversaryHandler(adversary, torch.optim.Adam(adversary.parameters(), 1e-2), lambda_g=0.1),
            LossTermsHandler(),
        ],
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer.run()
    out = trainer.state.output
    assert torch.isfinite(out["loss"]) and 0 <= float(out["adv_acc"]) <= 1
    assert 0 < float(out["loss_mixed"]) < 2 and 0 < float(out["loss_fixed"]) < 2
    moved = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("intercept") for k in moved)
    assert any("cluster.gamma" in k for k in moved) == cluster_scale_bias


def test_inferred_design_mixes_the_seen_sites_effects():
    torch.manual_seed(4)
    net = MixedEffectsUNet(K, out_channels=3, channels=(8, 16), strides=(2,), cluster_scale_bias=False).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    soft = torch.softmax(torch.randn(2, K), 1)
    prepare = MixedEffectsPrepareBatch(K, mode="inferred", z_predictor=lambda image: soft)
    _, _, (z,), _ = prepare({"image": x, "site": torch.tensor([-1, -1])})
    torch.testing.assert_close(z, soft)
    with torch.no_grad():
        fixed = net(x)
        mixed = net(x, z)
    # intercept-only model: the inferred prediction is the bare logits plus the probability-weighted intercepts
    expected = fixed + (soft @ net.intercept.loc)[:, :, None, None, None]
    torch.testing.assert_close(mixed, expected)


def test_few_shot_fits_a_new_sites_effects_only():
    torch.manual_seed(5)
    net = MixedEffectsUNet(K, out_channels=3, channels=(8, 16), strides=(2,))
    items = _items(4, seed=7)
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["label"] for it in items])
    fixed_before = {k: v.clone() for k, v in net.path.state_dict().items() if ".cluster." not in k}
    column = fit_new_cluster(net, x, y, task="dice_ce", steps=15, lr=0.05)
    assert column == K and net.num_clusters == K + 1 and net.intercept.loc.shape == (K + 1, 3)
    assert float(net.intercept.loc[K].detach().abs().sum()) > 0
    for k, v in net.path.state_dict().items():
        if k in fixed_before:
            assert torch.equal(v, fixed_before[k]), k
    z_new = torch.zeros(4, K + 1)
    z_new[:, K] = 1
    with torch.no_grad():
        from monai_medl.losses import task_loss

        adapted = task_loss("dice_ce", net(x, z_new), y)
        population = task_loss("dice_ce", net(x), y)
    assert adapted < population


def test_bad_inputs_are_named():
    net = MixedEffectsUNet(K, out_channels=2, channels=(8, 16), strides=(2,)).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="z must have shape"):
        net(x, torch.ones(1, K + 1))
    with pytest.raises(ValueError, match="input must have shape"):
        net(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        net(torch.full((1, 1, 16, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="out_channels=3 does not match"):
        MixedEffectsUNet(K, backbone=UNet(3, 1, 2, (8, 16), (2,)), out_channels=3)
    with pytest.raises(TypeError, match="no encoder-decoder walk"):
        MixedEffectsUNet(K, backbone=torch.nn.Conv3d(1, 2, 3))
    with pytest.raises(ValueError, match="out_channels"):
        MixedEffectsUNet(K)
