# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MixedEffectsCNN: wrapping MONAI backbones in 2D/3D, heads and taps, scripting, bundle checks, input errors."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import verify_net_in_out
from monai.networks.nets import (
    Classifier,
    DenseNet121,
    DenseNet169,
    Regressor,
    SEResNet50,
    resnet10,
    resnet18,
)
from monai.networks.utils import convert_to_torchscript
from torch import nn

from monai_medl.networks.nets import MixedEffectsCNN, SmallCNN, register_backbone_layout

K = 3


def _backbone(name: str, dims: int) -> tuple[nn.Module, tuple[int, ...], int]:
    """(backbone, input spatial shape, number of outputs) at the smallest sizes each network accepts."""
    size = {2: (64, 64), 3: (32, 32, 32)}[dims]
    small = {2: (16, 16), 3: (16, 16, 16)}[dims]
    if name == "densenet121":
        return DenseNet121(spatial_dims=dims, in_channels=1, out_channels=2), size, 2
    if name == "densenet169":
        return DenseNet169(spatial_dims=dims, in_channels=2, out_channels=1), size, 1
    if name == "resnet10":
        return resnet10(spatial_dims=dims, n_input_channels=1, num_classes=3), size, 3
    if name == "resnet18_no_max_pool":
        return resnet18(spatial_dims=dims, n_input_channels=1, num_classes=1, no_max_pool=True), small, 1
    if name == "seresnet50":
        return SEResNet50(spatial_dims=dims, in_channels=1, num_classes=2), size, 2
    if name == "classifier":
        return Classifier(in_shape=(1, *small), classes=2, channels=(4, 8, 8), strides=(2, 2, 1)), small, 2
    if name == "regressor":
        net = Regressor(in_shape=(1, *small), out_shape=(1,), channels=(4, 8), strides=(2, 2), num_res_units=0)
        return net, small, 1
    if name == "small_cnn":
        return SmallCNN(spatial_dims=dims, in_channels=1, out_channels=1), small, 1
    raise KeyError(name)


BACKBONES = [
    "densenet121",
    "densenet169",
    "resnet10",
    "resnet18_no_max_pool",
    "seresnet50",
    "classifier",
    "regressor",
    "small_cnn",
]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_wraps_with_correct_shapes_in_train_and_eval(name, dims):
    backbone, spatial, outputs = _backbone(name, dims)
    in_channels = 2 if name == "densenet169" else 1
    net = MixedEffectsCNN(num_clusters=K, backbone=backbone)
    assert (net.spatial_dims, net.in_channels, net.out_channels) == (dims, in_channels, outputs)
    x = torch.randn(2, in_channels, *spatial)
    z = torch.eye(K)[[0, 2]]
    net.train()
    out = net.forward_all(x, z)
    assert out.mixed.shape == out.fixed.shape == (2, outputs)
    assert [f.shape for f in out.features] == [(2, n) for n in net.feature_sizes]
    assert len(out.features) == len(net.tap_names) + 1 and net.feature_sizes[-1] == net.feature_dim
    train_out = net(x, z)  # training mode: the structured output, nothing kept on the module
    assert train_out.mixed.shape == (2, outputs) and train_out.kl.dim() == 0 and "latest_output" not in net.__dict__
    net.eval()
    with torch.no_grad():
        mixed, fixed = net(x, z), net(x)
        assert mixed.shape == fixed.shape == (2, outputs)
        torch.testing.assert_close(mixed, net.forward_all(x, z).mixed)  # the one-pass eval path = the full one
        assert not torch.allclose(mixed, fixed)  # random slopes/intercepts act for seen clusters
        torch.testing.assert_close(net(x, torch.zeros(2, K)), fixed)  # z = 0 is the population prediction


def test_default_taps_per_backbone():
    dense = MixedEffectsCNN(K, DenseNet121(spatial_dims=2, in_channels=1, out_channels=1))
    assert dense.tap_names == ["features.pool0", "features.transition1", "features.transition2", "features.transition3"]
    assert dense.feature_sizes == [64, 128, 256, 512, 1024] and dense.adversary_in_features == 1984
    res = MixedEffectsCNN(K, resnet18(spatial_dims=2, n_input_channels=1, num_classes=1))
    assert res.tap_names == ["maxpool", "layer1", "layer2", "layer3"] and res.feature_sizes == [64, 64, 128, 256, 512]
    small = MixedEffectsCNN(K, spatial_dims=3)
    assert small.tap_names == ["features.block0", "features.block1", "features.block2"]
    assert small.feature_sizes == [8, 16, 32, 64]
    custom = MixedEffectsCNN(K, spatial_dims=3, tap_layers=["features.block1.conv", "features.block0"])
    assert custom.tap_names == ["features.block0", "features.block1.conv"] and custom.feature_sizes == [8, 16, 64]
    assert MixedEffectsCNN(K, spatial_dims=3, tap_layers=[]).feature_sizes == [64]


@pytest.mark.parametrize(
    "backbone",
    [
        lambda: DenseNet121(spatial_dims=3, in_channels=1, out_channels=2),
        lambda: resnet10(spatial_dims=3, n_input_channels=1, num_classes=2),
        lambda: Classifier(in_shape=(1, 16, 16, 16), classes=2, channels=(4, 8), strides=(2, 2), num_res_units=0),
    ],
)
def test_population_path_is_the_unmodified_backbone(backbone):
    """z=None gives exactly the backbone's own output: its modules and classifier weights are reused, not edited."""
    torch.manual_seed(1)
    bb = backbone().eval()
    spatial = (16, 16, 16) if isinstance(bb, Classifier) else (32, 32, 32)
    x = torch.randn(2, 1, *spatial)
    with torch.no_grad():
        expected = bb(x)
        net = MixedEffectsCNN(K, bb, cluster_scale_bias=True).eval()
        torch.testing.assert_close(net(x), expected)
        assert net.backbone is bb and "backbone" not in dict(net.named_children())
    keys = net.state_dict().keys()
    assert len(keys) == len(set(keys)) and all(k.startswith(("stages.", "head.")) for k in keys)


def test_backbone_from_config_dict():
    cfg = {"_target_": "monai_medl.networks.nets.SmallCNN", "spatial_dims": 2, "in_channels": 2, "out_channels": 3}
    net = MixedEffectsCNN(num_clusters=4, backbone=cfg)
    assert (net.spatial_dims, net.in_channels, net.out_channels) == (2, 2, 3)
    dense = MixedEffectsCNN(4, {"_target_": "DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 1})
    assert dense.feature_dim == 1024


def test_cluster_scale_bias_blocks_on_norm_layers():
    torch.manual_seed(0)
    net = MixedEffectsCNN(K, spatial_dims=3, cluster_scale_bias=True)
    assert net.cluster_layer_names == [f"features.block{i}.adn.N" for i in range(4)]
    only = MixedEffectsCNN(K, spatial_dims=3, cluster_scale_bias=["features.block1.adn.N"])
    assert sum(s.has_cluster for s in only.stages) == 1
    x, z = torch.randn(4, 1, 16, 16, 16), torch.eye(K)[[0, 1, 2, 0]]
    out = net.forward_all(x, z)
    # the adversary sees z-free activations: identical whatever z is
    out0 = net.forward_all(x, torch.eye(K)[[1, 2, 0, 1]])
    for a, b in zip(out.features, out0.features):
        torch.testing.assert_close(a, b)
    net.eval()
    with torch.no_grad():
        for stage in net.stages:
            if stage.has_cluster:
                stage.cluster.gamma.loc.normal_(0, 0.5)
        with_z, without = net(x, z), net(x)
        assert (with_z - without).abs().max() > 1e-3
        torch.testing.assert_close(net(x, torch.zeros(4, K)), without)
        torch.testing.assert_close(net.forward_all(x, z).fixed, without)


def test_cluster_scale_bias_last_runs_the_shared_stages_once():
    torch.manual_seed(0)
    net = MixedEffectsCNN(K, spatial_dims=3, cluster_scale_bias="last")
    assert net.cluster_layer_names == ["features.block3.adn.N"]
    calls = {i: 0 for i in range(len(net.stages))}
    for i, stage in enumerate(net.stages):
        stage.body.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x, z = torch.randn(4, 1, 16, 16, 16), torch.eye(K)[[0, 1, 2, 0]]
    out = net.forward_all(x, z)
    # every stage up to and including the cluster block runs one body; none after it runs twice
    split = next(i for i, s in enumerate(net.stages) if s.has_cluster)
    assert all(calls[i] == 1 for i in range(split + 1)), calls
    assert all(calls[i] == 2 for i in range(split + 1, len(net.stages))), calls
    assert len(net.stages) - split - 1 <= 1  # SmallCNN: at most the pooling/flatten stage after the last norm
    net.eval()
    with torch.no_grad():
        net.stages[split].cluster.gamma.loc.normal_(0, 0.5)
        assert (net(x, z) - net(x)).abs().max() > 1e-3
        torch.testing.assert_close(net.forward_all(x, z).mixed, net(x, z))
    del out


@pytest.mark.parametrize("inplace", [False, True])
def test_the_first_cluster_blocks_norm_runs_once_and_updates_batch_statistics_once(inplace):
    import copy

    torch.manual_seed(0)
    backbone = SmallCNN(spatial_dims=3, channels=(4, 8), act=("relu", {"inplace": inplace}))
    bare = copy.deepcopy(backbone).train()
    net = MixedEffectsCNN(K, backbone=backbone, cluster_scale_bias="last").train()
    cluster = next(s.cluster for s in net.stages if s.has_cluster)
    with torch.no_grad():
        cluster.gamma.loc.normal_(0, 0.5)
    x, z = torch.randn(4, 1, 16, 16, 16), torch.eye(K)[[0, 1, 2, 0]]
    out = net(x, z)
    expected = bare(x)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    # the backbone's own forward updates every batch norm once; so does the ME step (the split norm too)
    assert [int(n.num_batches_tracked) for n in norms] == [1] * len(norms)
    for mine, theirs in zip(norms, (m for m in bare.modules() if isinstance(m, nn.BatchNorm3d))):
        assert torch.equal(mine.running_mean, theirs.running_mean) and torch.equal(mine.running_var, theirs.running_var)
    torch.testing.assert_close(out.fixed, expected, rtol=0, atol=0)  # the z-free path is the backbone, exactly
    (out.mixed.sum() + out.fixed.sum()).backward()  # an in-place activation after the shared norm is safe
    assert cluster.gamma.loc.grad.abs().sum() > 0


def test_cluster_scale_bias_last_needs_a_norm_layer():
    backbone = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="cluster_scale_bias='last' needs a normalisation layer in Sequential"):
        MixedEffectsCNN(K, backbone, cluster_scale_bias="last")


SCRIPT_BACKBONES = {  # same classes, fewer repeated blocks: scripting cost grows with depth, not with coverage
    "densenet121": lambda: DenseNet121(spatial_dims=3, in_channels=1, out_channels=2, block_config=(1, 2, 2, 1)),
    "resnet10": lambda: resnet10(spatial_dims=3, n_input_channels=1, num_classes=2),
    "seresnet50": lambda: SEResNet50(spatial_dims=3, in_channels=1, num_classes=2, layers=(1, 1, 1, 1)),
    "classifier": lambda: Classifier(in_shape=(1, 32, 32, 32), classes=2, channels=(4, 8), strides=(2, 2)),
    "small_cnn": lambda: SmallCNN(spatial_dims=3, in_channels=1, out_channels=2),
}


@pytest.mark.parametrize("csb", [False, True])
@pytest.mark.parametrize("name", list(SCRIPT_BACKBONES))
def test_scripted_inference_path_reproduces_eager(name, csb, tmp_path):
    torch.manual_seed(0)
    net = MixedEffectsCNN(K, SCRIPT_BACKBONES[name](), cluster_scale_bias=csb).eval()
    with torch.no_grad():  # make the random effects visibly non-zero
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, z = torch.randn(2, 1, 32, 32, 32), torch.eye(K)[[1, 2]]
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert not torch.allclose(net(x, z), net(x))
        torch.testing.assert_close(scripted(x, z), net(x, z))
        torch.testing.assert_close(scripted(x), net(x))
        torch.testing.assert_close(scripted.forward_all(x, z).fixed, net.forward_all(x, z).fixed)
    if name in ("densenet121", "small_cnn"):  # MONAI's own export: script, save, reload, compare with eager
        path = tmp_path / "net.ts"
        convert_to_torchscript(net, path, verify=True, inputs=[x], device="cpu", rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.load(str(path))(x, z), net(x, z))


def test_verify_net_in_out_with_z_optional(tmp_path):
    meta = {
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": ["16*n", "16*n", "16*n"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": 2,
                    "spatial_shape": [2],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
        }
    }
    config = {
        "network_def": {
            "_target_": "monai_medl.networks.nets.MixedEffectsCNN",
            "num_clusters": 5,
            "backbone": {"_target_": "monai_medl.networks.nets.SmallCNN", "spatial_dims": 3, "out_channels": 2},
            "cluster_scale_bias": True,
        }
    }
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    (tmp_path / "inference.json").write_text(json.dumps(config))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(tmp_path / "metadata.json"),
        config_file=str(tmp_path / "inference.json"),
        n=2,
    )


def test_make_adversary_matches_features():
    net = MixedEffectsCNN(K, spatial_dims=3)
    adv = net.make_adversary(hidden=(16,))
    out = net.forward_all(torch.randn(3, 1, 16, 16, 16), torch.eye(K))
    assert adv(out.features).shape == (3, K)


def test_adversary_input_norm_makes_it_blind_to_the_activations_scale():
    net = MixedEffectsCNN(K, spatial_dims=3, tap_layers=[])
    plain = net.make_adversary(hidden=(16,))
    assert not any(k.startswith("input_norm") for k in plain.state_dict())  # default: state-dict keys unchanged
    torch.manual_seed(0)
    adv = net.make_adversary(hidden=(16,), input_norm=True).train()
    h = [4.0 * torch.randn(8, net.adversary_in_features) + 1.0]
    # shrinking the activations (what a feature extractor can do to hide the site) does not change its output ...
    torch.testing.assert_close(adv([0.1 * h[0]]), adv(h), atol=2e-3, rtol=2e-3)
    # ... while it does change the plain adversary's
    assert not torch.allclose(plain([0.1 * h[0]]), plain(h), atol=2e-2)
    one = adv([h[0][:1]])  # a single-item training batch uses the running statistics
    assert one.shape == (1, K) and torch.isfinite(one).all()
    adv.eval()
    assert torch.isfinite(adv(h)).all()


def test_errors_name_the_problem():
    net = MixedEffectsCNN(K, spatial_dims=3)
    with pytest.raises(ValueError, match=r"input must have shape \(batch, 1, 3 spatial axes\)"):
        net(torch.randn(2, 2, 16, 16, 16))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 3\)"):
        net(torch.randn(2, 1, 16, 16, 16), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="tap layer 'features.block9' is not a layer"):
        MixedEffectsCNN(K, spatial_dims=3, tap_layers=["features.block9"])
    with pytest.raises(ValueError, match="is a Conv3d, expected a batch, instance or group normalisation"):
        MixedEffectsCNN(K, spatial_dims=3, cluster_scale_bias=["features.block0.conv"])
    with pytest.raises(ValueError, match="spatial_dims=2 does not match the backbone"):
        MixedEffectsCNN(K, SmallCNN(spatial_dims=3), spatial_dims=2)
    with pytest.raises(ValueError, match="feature_dim=10 but"):
        MixedEffectsCNN(K, spatial_dims=3, feature_dim=10)
    with pytest.raises(ValueError, match="num_clusters must be >= 1"):
        MixedEffectsCNN(0)
    with pytest.raises(ValueError, match="'_target_'"):
        MixedEffectsCNN(K, {"spatial_dims": 3})

    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="unsupported backbone Custom"):
        MixedEffectsCNN(K, Custom())

    class Changed(SmallCNN):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(TypeError, match="Changed overrides SmallCNN.forward"):
        MixedEffectsCNN(K, Changed())


@pytest.mark.parametrize("csb", [False, True])
def test_nan_or_inf_inputs_are_named_in_train_and_eval(csb):
    net = MixedEffectsCNN(K, spatial_dims=3, cluster_scale_bias=csb)
    x, z = torch.randn(2, 1, 16, 16, 16), torch.eye(K)[[0, 2]]
    bad_x = x.clone()
    bad_x[1, 0, 3, 4, 5] = float("nan")
    bad_z = z.clone()
    bad_z[0, 1] = float("inf")
    for mode in ("train", "eval"):
        getattr(net, mode)()
        stats = [b.clone() for b in net.buffers()]
        with pytest.raises(ValueError, match=r"input x contains 1 NaN/Inf value\(s\)"):
            net(bad_x, z)
        with pytest.raises(ValueError, match=r"^z contains 1 NaN/Inf value\(s\)"):
            net(x, bad_z)
        with pytest.raises(ValueError, match="input x contains"):
            net.forward_all(bad_x, None)
        # the error comes before a training pass could write NaN into the batch-norm statistics
        assert all(torch.equal(a, b) for a, b in zip(stats, net.buffers()))
    # eval mode checks the values through the prediction: a finite pass is unchanged and raises nothing
    torch.testing.assert_close(net.eval()(x, z), net.forward_all(x, z).mixed)
    net.validate_inputs = False
    assert not bool(torch.isfinite(net(bad_x, z)).all())


def test_register_layout_for_a_new_backbone():
    class TwoConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU())
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

    from monai_medl.networks.blocks import iter_layers
    from monai_medl.networks.nets.backbone_layouts import _LAYOUTS, BackboneLayout

    @register_backbone_layout(TwoConv)
    def _layout(net):
        return BackboneLayout(list(iter_layers(net.body, "body")), ["body.1"], net.fc)

    try:
        net = MixedEffectsCNN(K, TwoConv(), probe_size=12)
        assert net.feature_sizes == [4, 6] and net.out_channels == 2
        assert net.eval()(torch.randn(2, 1, 12, 12), torch.eye(K)[:2]).shape == (2, 2)
    finally:
        _LAYOUTS.pop(TwoConv)
