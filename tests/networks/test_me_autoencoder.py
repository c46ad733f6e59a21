# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from monai.networks import eval_mode
from monai.networks.utils import convert_to_torchscript

from monai_medl.losses import MixedEffectsAutoEncoderLoss
from monai_medl.networks.layers import ClusterScaleBias
from monai_medl.networks.nets import (
    AutoEncoderBranch,
    MixedEffectsAutoEncoder,
    MixedEffectsNet,
    MixedEffectsVectorAutoEncoder,
)
from monai_medl.networks.utils import random_effects_layers

K = 3
CASES = [  # constructor kwargs, input shape, number of adversary feature tensors
    ({"spatial_dims": 2, "in_shape": (1, 32, 32)}, (4, 1, 32, 32), 4),
    ({"spatial_dims": 2, "in_shape": (2, 16, 24), "channels": (4, 8), "strides": (2, 2)}, (4, 2, 16, 24), 3),
    ({"spatial_dims": 3, "in_shape": (1, 16, 16, 8), "channels": (4, 8), "strides": (2, 2)}, (2, 1, 16, 16, 8), 3),
    ({"spatial_dims": 1, "in_shape": (3, 32), "channels": (4, 8), "strides": (2, 1)}, (2, 3, 32), 3),
]


def _design(n: int) -> torch.Tensor:
    return torch.eye(K)[torch.arange(n) % K]


@pytest.mark.parametrize("kwargs,shape,n_features", CASES)
@pytest.mark.parametrize("branches", [(True, True), (True, False), (False, True)])
def test_shapes_all_dims_and_branches(kwargs, shape, n_features, branches):
    fe, re = branches
    net = MixedEffectsAutoEncoder(num_clusters=K, out_channels=2, fixed_effects=fe, random_effects=re, **kwargs)
    x = torch.rand(shape)
    out = net.forward_all(x, _design(shape[0]))
    assert out.mixed.shape == out.fixed.shape == (shape[0], 2)
    assert out.reconstruction.shape == out.reconstruction_fixed.shape == x.shape
    # without the reversible norm (default on, see test_reversible_instance_norm.py) the sigmoid output is in [0, 1]
    plain = MixedEffectsAutoEncoder(num_clusters=K, reversible_norm=False, **kwargs).forward_all(x, _design(shape[0]))
    assert 0 <= plain.reconstruction.min().item() and plain.reconstruction.max().item() <= 1
    assert out.inputs is x
    if fe:
        assert out.latent_fixed.shape == (shape[0], 16)
        assert len(out.features) == n_features and all(f.shape[0] == shape[0] and f.dim() == 2 for f in out.features)
        assert sum(f.shape[1] for f in out.features) == net.adversary_in_features
    else:
        assert out.latent_fixed is None and out.features == [] and net.adversary_in_features == 0
    assert (out.latent_random is not None) == re
    # training mode: the structured output with the KL; eval mode: the y_M tensor alone, nothing kept on the module
    train_out = net.train()(x, _design(shape[0]))
    assert train_out.mixed.shape == (shape[0], 2) and train_out.kl.dim() == 0
    y = net.eval()(x, _design(shape[0]))
    assert isinstance(y, torch.Tensor) and y.shape == (shape[0], 2) and "latest_output" not in net.__dict__


def test_vector_autoencoder_shapes_and_cluster_blocks():
    net = MixedEffectsVectorAutoEncoder(in_features=40, num_clusters=K, latent_size=6, channels=(16, 8))
    x = torch.randn(5, 40)
    out = net.forward_all(x, _design(5))
    assert out.reconstruction.shape == (5, 40) and out.latent_random.shape == (5, 6)
    assert float(out.reconstruction.detach().min()) < 0  # no output activation by default: real-valued features
    assert [f.shape[1] for f in out.features] == [16, 8, 6]
    # RE branch: one cluster scale/bias block per stage (2 encoder + 2 decoder), FE branch none
    assert sum(isinstance(m, ClusterScaleBias) for m in net.re.modules()) == 4
    assert not any(isinstance(m, ClusterScaleBias) for m in net.fe.modules())
    assert all(name.startswith("re.") for name in random_effects_layers(net))
    assert isinstance(net, MixedEffectsNet)


def test_fixed_effects_branch_ignores_z_and_population_equals_no_z():
    torch.manual_seed(0)
    net = MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 16, 16), num_clusters=K, channels=(4, 8), strides=(2, 2))
    x = torch.rand(3, 1, 16, 16)
    with eval_mode(net):
        a, b = net.forward_all(x, _design(3)), net.forward_all(x, torch.roll(_design(3), 1, dims=1))
        none, zero = net.forward_all(x, None), net.forward_all(x, torch.zeros(3, K))
    # the FE outputs do not depend on z; the RE outputs do
    assert torch.equal(a.fixed, b.fixed) and torch.equal(a.reconstruction_fixed, b.reconstruction_fixed)
    assert not torch.allclose(a.reconstruction, b.reconstruction)
    assert not torch.allclose(a.mixed, b.mixed)
    # z = 0 is exactly the population path (z = None); its reconstruction is the FE one, row by row
    assert torch.allclose(none.reconstruction, zero.reconstruction, atol=1e-6)
    assert torch.allclose(none.mixed, zero.mixed, atol=1e-6)
    assert torch.equal(zero.reconstruction, zero.reconstruction_fixed)
    part = _design(3)
    part[1] = 0
    with eval_mode(net):
        rows = net.forward_all(x, part)
    assert torch.equal(rows.reconstruction[1], rows.reconstruction_fixed[1])
    assert torch.equal(rows.reconstruction[[0, 2]], a.reconstruction[[0, 2]])


def test_counterfactual_with_own_batch_is_the_reconstruction():
    net = MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 16, 16), num_clusters=K, channels=(4, 8), strides=(2, 2))
    x, z = torch.rand(3, 1, 16, 16), _design(3)
    with eval_mode(net):
        assert torch.allclose(net.counterfactual(x, z, z), net.reconstruct(x, z))
        other = net.counterfactual(x, z, torch.roll(z, 1, dims=1))
    assert other.shape == x.shape and not torch.allclose(other, net.reconstruct(x, z))


def test_torchscript_roundtrip(tmp_path):
    for net, x in [
        (
            MixedEffectsAutoEncoder(
                spatial_dims=3, in_shape=(1, 8, 8, 8), num_clusters=K, channels=(4, 8), strides=(2, 2)
            ),
            torch.rand(2, 1, 8, 8, 8),
        ),
        (
            MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 8, 8), num_clusters=K, channels=(4,), strides=(2,)),
            torch.rand(2, 1, 8, 8),
        ),
        (MixedEffectsVectorAutoEncoder(in_features=12, num_clusters=K, random_effects=False), torch.randn(2, 12)),
    ]:
        with eval_mode(net):
            ts = convert_to_torchscript(net, tmp_path / "m.ts", verify=True, inputs=[x], device="cpu")
            assert torch.allclose(ts(x, _design(2)), net(x, _design(2)), atol=1e-6)
            assert torch.allclose(ts(x, torch.zeros(2, K)), net(x), atol=1e-6)


def test_bad_configurations_and_inputs_raise():
    with pytest.raises(ValueError, match="at least one"):
        MixedEffectsAutoEncoder(2, (1, 16, 16), K, fixed_effects=False, random_effects=False)
    with pytest.raises(ValueError, match="divisible"):
        MixedEffectsAutoEncoder(2, (1, 20, 20), K, channels=(4, 8, 8), strides=(2, 2, 2))
    with pytest.raises(ValueError, match="same non-zero length"):
        AutoEncoderBranch(2, (1, 16, 16), 4, channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="in_shape"):
        AutoEncoderBranch(2, (1, 16), 4, channels=(4,), strides=(2,))
    with pytest.raises(ValueError, match="instance norm"):
        MixedEffectsVectorAutoEncoder(10, K, norm="instance")
    net = MixedEffectsAutoEncoder(2, (1, 16, 16), K, channels=(4, 8), strides=(2, 2))
    with pytest.raises(ValueError, match=r"input must have shape \(batch, 1, 16, 16\)"):
        net(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="z must have shape"):
        net(torch.rand(2, 1, 16, 16), torch.zeros(2, K + 1))
    with pytest.raises(ValueError, match="NaN"):
        net(torch.full((2, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="z_target must have shape"):
        net.counterfactual(torch.rand(2, 1, 16, 16), None, torch.zeros(2, K - 1))
    fe_only = MixedEffectsAutoEncoder(2, (1, 16, 16), K, channels=(4, 8), strides=(2, 2), random_effects=False)
    with pytest.raises(ValueError, match="random-effects branch"):
        fe_only.counterfactual(torch.rand(2, 1, 16, 16), None, torch.zeros(2, K))


def test_loss_terms_weights_and_gradients():
    torch.manual_seed(0)
    net = MixedEffectsAutoEncoder(2, (1, 16, 16), K, channels=(4, 8), strides=(2, 2))
    x, z, y = torch.rand(4, 1, 16, 16), _design(4), torch.tensor([0, 1, 1, 0])
    loss_fn = MixedEffectsAutoEncoderLoss(recon_weight=2.0, recon_fixed_weight=0.5, lambda_mixed=0.1)
    out = net.train()(x, z)
    loss = loss_fn(out, y)
    t = {k: float(v.detach()) for k, v in loss_fn.terms(out, y).items()}
    assert t["recon"] == pytest.approx(float(((out.reconstruction - x) ** 2).mean()), rel=1e-5)
    assert t["recon_fixed"] == pytest.approx(float(((out.reconstruction_fixed - x) ** 2).mean()), rel=1e-5)
    expected = (
        2.0 * t["recon"] + 0.5 * t["recon_fixed"] + 0.1 * t["loss_mixed"] + 0.01 * t["loss_fixed"] + 1e-5 * t["kl"]
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert t["kl"] > 0  # the RE branch's cluster scale/bias blocks
    loss.backward()
    assert net.re.encoder[0].cluster_norm.gamma.loc.grad.abs().sum() > 0
    assert net.fe.encoder[0].op.weight.grad.abs().sum() > 0
    # single branch: one reconstruction, counted once
    fe_only = MixedEffectsAutoEncoder(2, (1, 16, 16), K, channels=(4, 8), strides=(2, 2), random_effects=False)
    single = MixedEffectsAutoEncoderLoss(recon_weight=1.0, recon_fixed_weight=5.0, lambda_mixed=0, lambda_fixed=0)
    out = fe_only.train()(x, z)
    value = single(out, y)
    assert float(value) == pytest.approx(float(single.terms(out, y)["recon"]), rel=1e-5)
    with pytest.raises(ValueError, match="reconstruction weights"):
        MixedEffectsAutoEncoderLoss(recon_weight=-1.0)


def test_fixed_effects_branch_is_per_sample_by_default():
    # the adversary trains against the train-mode network: with the default (instance) norm that is the same function
    # per item as in eval mode and does not depend on the other items of the mini-batch; batch norm is neither
    torch.manual_seed(0)
    x, z = torch.rand(6, 1, 16, 16), _design(6)
    for norm, per_sample in (("instance", True), ("batch", False)):
        kwargs = {"norm": norm} if norm == "batch" else {}
        net = MixedEffectsAutoEncoder(2, (1, 16, 16), K, channels=(4, 8), strides=(2, 2), **kwargs)
        net.train()
        with torch.no_grad():
            full = net.forward_all(x, z)
            part = net.forward_all(x[:3], z[:3])
            net.eval()
            evaluated = net.forward_all(x, z)
        same_batch = torch.allclose(full.latent_fixed[:3], part.latent_fixed, atol=1e-5)
        same_mode = torch.allclose(full.reconstruction_fixed, evaluated.reconstruction_fixed, atol=1e-5)
        assert same_batch is per_sample and same_mode is per_sample, norm


def test_classifier_dropout_acts_on_the_latent_in_training_only():
    torch.manual_seed(0)
    kwargs = {"channels": (4, 8), "strides": (2, 2), "classifier_dropout": 0.5}
    net = MixedEffectsAutoEncoder(2, (1, 16, 16), K, **kwargs)
    x, z = torch.rand(4, 1, 16, 16), _design(4)
    with eval_mode(net):
        a, b = net.forward_all(x, z), net.forward_all(x, z)
        latent = torch.cat([a.latent_fixed, a.latent_random], dim=1)
        assert torch.allclose(a.mixed, net.classifier_mixed.net(latent)) and torch.equal(a.mixed, b.mixed)
    net.train()
    with torch.no_grad():
        c, d = net.forward_all(x, z), net.forward_all(x, z)
    # the latents are deterministic given the same input; the two training-mode heads still differ (dropout)
    assert torch.allclose(c.latent_fixed, d.latent_fixed) and not torch.allclose(c.fixed, d.fixed)
    assert not any(isinstance(m, torch.nn.Dropout) for m in MixedEffectsAutoEncoder(2, (1, 16, 16), K).modules())
