# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The mixed-effects networks trace into one torch.compile graph (no graph break) in training and eval mode, and the
compiled network computes what the eager one does; the eager NaN/Inf checks still work."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from monai.networks.nets import UNet

from monai_medl.networks.nets import (
    MixedEffectsAutoEncoder,
    MixedEffectsCNN,
    MixedEffectsMLP,
    MixedEffectsUNet,
    SmallCNN,
)


def _cnn(**kw):
    return MixedEffectsCNN(3, backbone=SmallCNN(spatial_dims=2, in_channels=1, out_channels=1), **kw), (1, 16, 16)


def _unet(**kw):
    backbone = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=1)
    return MixedEffectsUNet(3, backbone=backbone, spatial_dims=2, **kw), (1, 8, 8)


NETWORKS = {
    "cnn": lambda: _cnn(),
    "cnn_cluster_scale_bias": lambda: _cnn(cluster_scale_bias=True),
    "cnn_cluster_scale_bias_last": lambda: _cnn(cluster_scale_bias="last"),
    "unet": lambda: _unet(),
    "unet_intercept_only": lambda: _unet(cluster_scale_bias=False),
    "mlp": lambda: (MixedEffectsMLP(5, 1, num_clusters=3, hidden=(6,)), (5,)),
    "autoencoder": lambda: (MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 16, 16), num_clusters=3), (1, 16, 16)),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_one_graph_and_eager_values_under_torch_compile(name):
    torch.manual_seed(0)
    net, shape = NETWORKS[name]()
    x, z = torch.randn(4, *shape), torch.eye(3)[[0, 1, 2, 0]]
    for training in (True, False):
        net.train(training)
        explained = dynamo.explain(net)(x, z)
        assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    net.eval()
    compiled = torch.compile(net, backend="eager")  # the traced graph run eagerly: values without the C++ build
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, z), net(x, z))
    dynamo.reset()


def test_eager_still_rejects_nan_inputs_with_a_named_error():
    net, shape = _cnn()
    x = torch.randn(2, *shape)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="input x contains 1 NaN/Inf"):
        net.train()(x, torch.eye(3)[[0, 1]])
