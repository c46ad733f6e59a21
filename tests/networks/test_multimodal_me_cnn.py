# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""make_multimodal_me_cnn: shapes, fusion, missing modalities, required inputs, modality dropout, scripting."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import verify_net_in_out
from monai.networks.nets import Classifier
from monai.networks.utils import convert_to_torchscript

from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.blocks.modality_fusion import ModalityFusion
from monai_medl.networks.nets import MixedEffectsCNN, SmallCNN
from monai_medl.networks.nets.multimodal_me_cnn import make_multimodal_me_cnn

K = 3
SMALL = {"_target_": "monai_medl.networks.nets.SmallCNN", "channels": [4, 8], "strides": [2, 2]}


def _net(dims: int = 2, modalities=("t1", "flair"), **kwargs) -> make_multimodal_me_cnn:
    """Late (concatenation) fusion unless ``fusion`` says otherwise: most tests check per-modality branches."""
    backbone = kwargs.pop("backbone", {**SMALL, "spatial_dims": dims})
    kwargs.setdefault("fusion", "concat")
    return make_multimodal_me_cnn(K, modalities=modalities, backbone=backbone, **kwargs)


def _perturb(net: torch.nn.Module, scale: float = 0.1) -> None:
    """Make every random effect (and everything else) visibly non-zero."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("fusion", ["concat", "attention"])
@pytest.mark.parametrize(
    "dims,modalities,num_cov,shape",
    [(2, ("t1", "flair"), 3, (16, 16)), (3, ("t1", "t2", "flair"), 2, (8, 8, 8)), (3, ("t1", "flair"), 0, (8, 8, 8))],
)
def test_shapes_features_and_adversary(fusion, dims, modalities, num_cov, shape):
    net = _net(dims, modalities, num_covariates=num_cov, fusion=fusion, out_channels=2, cluster_scale_bias=True)
    m = len(modalities)
    x, z = torch.randn(4, m, *shape), torch.eye(K)[[0, 1, 2, 0]]
    cov = torch.randn(4, num_cov) if num_cov else None
    mask = torch.ones(4, m)
    mask[1, -1] = 0
    for mode in (True, False):
        net.train(mode)
        out = net.forward_all(x, z, mask, cov)
        assert out.mixed.shape == out.fixed.shape == (4, 2)
        assert [f.shape[1] for f in out.features] == net.feature_sizes
        assert all(f.shape[0] == 4 for f in out.features)
    assert net.in_channels == m and net.spatial_dims == dims
    # per branch: 1 tap (block0) + embedding (8); covariates: embedding (16); attention: the fused embedding (64)
    expected = [4, 8] * m + ([16] if num_cov else []) + ([64] if fusion == "attention" else [])
    assert net.feature_sizes == expected
    assert net.make_adversary(hidden=(8,))(out.features).shape == (4, K)
    assert net(x).shape == (4, 2)  # no z, mask or covariates: population prediction from every modality


def test_population_path_and_random_effects():
    net = _net(3, num_covariates=2, cluster_scale_bias=True)
    _perturb(net)
    net.eval()
    x, cov = torch.randn(3, 2, 8, 8, 8), torch.randn(3, 2)
    with torch.no_grad():
        out_none = net.forward_all(x, None, None, cov)
        out_zero = net.forward_all(x, torch.zeros(3, K), None, cov)
        out_z = net.forward_all(x, torch.eye(K), None, cov)
    torch.testing.assert_close(out_none.mixed, out_none.fixed)
    torch.testing.assert_close(out_zero.mixed, out_none.fixed)  # z = 0 is exactly the fixed-effects model
    torch.testing.assert_close(out_z.fixed, out_none.fixed)  # the fixed head never sees z
    assert (out_z.mixed - out_z.fixed).abs().min() > 1e-4
    # random slopes per branch: the FLAIR slopes act only on samples that have FLAIR
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    with torch.no_grad():
        before = net(x, torch.eye(K), mask, cov)
        net.branches[1].slopes.loc.add_(1.0)
        after = net(x, torch.eye(K), mask, cov)
    changed = (after - before).abs().flatten() > 1e-6
    assert changed.tolist() == [True, False, True]


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_missing_modality_contributes_nothing(fusion):
    net = _net(2, num_covariates=2, fusion=fusion, cluster_scale_bias=True)
    _perturb(net)
    net.eval()
    x, z, cov = torch.randn(4, 2, 16, 16), torch.eye(K)[[0, 1, 2, 1]], torch.randn(4, 2)
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 0]])
    with torch.no_grad():
        full = net.forward_all(x, z, None, cov)
        ref = net.forward_all(x, z, mask, cov)
        for fill in (torch.zeros, torch.randn, lambda *s: torch.full(s, float("nan"))):
            x2 = x.clone()
            x2[1, 1], x2[3, 1], x2[2, 0] = fill(16, 16), fill(16, 16), fill(16, 16)
            out = net.forward_all(x2, z, mask, cov)
            torch.testing.assert_close(out.mixed, ref.mixed)  # absent channels are never read
            torch.testing.assert_close(out.fixed, ref.fixed)
    if fusion == "attention":  # absent inputs get zero attention, the present ones' weights sum to 1
        weights = net.fusion.latest_weights
        assert weights[1, 1] == 0 and weights[3, 1] == 0 and weights[2, 0] == 0
        torch.testing.assert_close(weights.sum(1), torch.ones(4))
    # the present branches' outputs are exactly those of the full-data pass; absent ones are zero
    widths = net.branches[0].feature_sizes
    t1 = slice(0, len(widths))
    flair = slice(len(widths), 2 * len(widths))
    for f_ref, f_full in zip(ref.features[t1], full.features[t1]):
        torch.testing.assert_close(f_ref[[0, 1, 3]], f_full[[0, 1, 3]])
        assert f_ref[2].abs().sum() == 0
    for f_ref, f_full in zip(ref.features[flair], full.features[flair]):
        torch.testing.assert_close(f_ref[[0, 2]], f_full[[0, 2]])
        assert f_ref[[1, 3]].abs().sum() == 0
    # samples with every modality are unaffected by the others' missing data
    torch.testing.assert_close(ref.mixed[0], full.mixed[0])
    # the prediction without FLAIR is the T1 (+ covariates) model alone
    with torch.no_grad():
        emb = [ref.features[len(widths) - 1], torch.zeros_like(ref.features[2 * len(widths) - 1]), full.features[-1]]
        if fusion == "attention":
            emb[-1] = full.features[-2]
        present = torch.tensor([[True, False, True]] * 4)
        expected = net.head.linear(net.fusion(emb, present))
    torch.testing.assert_close(ref.fixed[[1, 3]], expected[[1, 3]])


def test_training_batch_statistics_ignore_absent_samples():
    """In training, a branch runs on its present samples only, so NaN placeholders cannot leak via BatchNorm."""
    net = _net(2)
    net.train()
    x = torch.randn(4, 2, 16, 16)
    x[2:, 1] = float("nan")
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0]])
    out = net(x, torch.eye(K)[[0, 1, 2, 0]], mask).mixed
    assert torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in net.branches[1].encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # a modality absent from the whole batch gets an exactly zero gradient, and every trainable parameter is in
    # the graph (DistributedDataParallel without find_unused_parameters); no data passes through the branch
    net.zero_grad(set_to_none=True)
    stats = net.branches[1].encoder.stages[0].body.features_block0_adn_N.running_mean.clone()
    net(x, torch.eye(K)[[0, 1, 2, 0]], torch.tensor([[1, 0]] * 4)).mixed.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert all(p.grad.abs().sum() == 0 for p in net.branches[1].parameters() if p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for p in net.branches[0].encoder.stages.parameters())
    assert torch.equal(net.branches[1].encoder.stages[0].body.features_block0_adn_N.running_mean, stats)
    # the encoders' own read-outs are unused and frozen
    assert not any(p.requires_grad for b in net.branches for p in b.encoder.head.parameters())


def test_required_modality_and_input_errors():
    net = _net(2, required=("t1",), num_covariates=2).eval()
    x = torch.randn(2, 2, 16, 16)
    with pytest.raises(ValueError, match=r"modality 't1' is required but absent .* sample\(s\) \[1\]"):
        net(x, None, torch.tensor([[1, 1], [0, 1]]))
    net(x, None, torch.tensor([[1, 1], [1, 0]]))  # FLAIR is optional
    scripted = torch.jit.script(net)
    with pytest.raises(Exception, match="modality 't1' is required"):
        scripted(x, None, torch.tensor([[1, 1], [0, 1]]))
    with pytest.raises(ValueError, match="no input present"):
        net(x, None, torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="mask must have shape"):
        net(x, None, torch.ones(2, 4))
    with pytest.raises(ValueError, match="mask must hold 0"):
        net(x, None, torch.tensor([[1.0, 0.5], [1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"2 channels = 1 t1 \+ 1 flair"):
        net(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="covariates must have shape"):
        net(x, None, None, torch.randn(2, 5))
    with pytest.raises(ValueError, match="covariates contains"):
        net(x, None, None, torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 3\)"):
        net(x, torch.eye(2))
    with pytest.raises(ValueError, match="built with num_covariates=0"):
        _net(2)(x, None, None, torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"required modalities \['t2'\]"):
        _net(2, required=("t2",))
    with pytest.raises(ValueError, match="2 entries but there are 3 modalities"):
        _net(2, modalities=("a", "b", "c"), backbone=[SmallCNN(2), SmallCNN(2)])
    with pytest.raises(ValueError, match="distinct"):
        _net(2, modalities=("t1", "t1"))
    with pytest.raises(ValueError, match="fusion mode"):
        _net(2, fusion="sum")


def test_modality_dropout_keeps_required_and_one_input():
    net = _net(2, modalities=("t1", "t2", "flair"), required=("t1",), modality_dropout=0.6, num_covariates=1)
    torch.manual_seed(0)
    present = torch.ones(2000, 4, dtype=torch.bool)
    present[:1000, 2] = False
    kept = net._drop_inputs(present)
    assert kept[:, 0].all()  # required, never dropped
    assert not (kept & ~present).any()  # never adds an input
    assert kept.any(1).all()
    rate = 1 - kept[:, 1].float().mean().item()
    assert 0.55 < rate < 0.65
    net2 = _net(2, modality_dropout=0.9)
    kept = net2._drop_inputs(torch.ones(2000, 2, dtype=torch.bool))
    assert kept.any(1).all() and (~kept).any()  # with nothing required, one input is always left
    # eval mode never drops
    net2.eval()
    x = torch.randn(3, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net2(x), net2(x))
    with pytest.raises(ValueError, match="modality_dropout"):
        _net(2, modality_dropout=1.0)


def test_backbones_per_modality_and_shared_weights():
    cls = Classifier(in_shape=(1, 16, 16), classes=1, channels=(4, 8), strides=(2, 2))
    net = _net(2, backbone=[{**SMALL, "spatial_dims": 2}, cls])
    assert [len(b.feature_sizes) for b in net.branches] == [2, 2]
    assert net.eval()(torch.randn(2, 2, 16, 16)).shape == (2, 1)
    shared = _net(2, modalities=("t1", "t2", "flair"), shared_weights=True)
    enc = [b.encoder for b in shared.branches]
    assert enc[0] is enc[1] is enc[2]
    assert shared.branches[0].slopes is not shared.branches[1].slopes  # random slopes stay per modality
    separate = _net(2, modalities=("t1", "t2", "flair"))
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    n_enc = sum(p.numel() for p in separate.branches[0].encoder.parameters())
    assert n_separate - n_shared == 2 * n_enc
    # a module backbone is copied for each modality (independent weights)
    mod = _net(2, backbone=SmallCNN(2, channels=(4, 8)))
    assert mod.branches[0].encoder.stages[0].body[0] is not mod.branches[1].encoder.stages[0].body[0]
    state = shared.state_dict()
    make_multimodal_me_cnn(
        K, ("t1", "t2", "flair"), {**SMALL, "spatial_dims": 2}, shared_weights=True, fusion="concat"
    ).load_state_dict(state)


@pytest.mark.parametrize("fusion,shared", [("concat", False), ("attention", True)])
def test_scripted_inference_path(fusion, shared, tmp_path):
    net = _net(3, num_covariates=2, fusion=fusion, shared_weights=shared, cluster_scale_bias=True)
    _perturb(net, 0.05)
    net.eval()
    x, z, cov = torch.randn(3, 2, 8, 8, 8), torch.eye(K), torch.randn(3, 2)
    mask = torch.tensor([[1, 1], [1, 0], [0, 1]])
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, z, mask, cov), net(x, z, mask, cov))
        torch.testing.assert_close(scripted(x, None, mask), net(x, None, mask))
        torch.testing.assert_close(scripted(x), net(x))
    path = tmp_path / "net.ts"
    convert_to_torchscript(net, path, verify=True, inputs=[x], device="cpu", rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(x, z, mask, cov), net(x, z, mask, cov))


def test_verify_net_in_out(tmp_path):
    tensor = {"type": "image", "format": "magnitude", "dtype": "float32", "value_range": [0, 1]}
    meta = {
        "network_data_format": {
            "inputs": {"image": {**tensor, "num_channels": 2, "spatial_shape": ["8*n", "8*n", "8*n"]}},
            "outputs": {"pred": {**tensor, "type": "probabilities", "num_channels": 2, "spatial_shape": [2]}},
        }
    }
    config = {
        "network_def": {
            "_target_": "monai_medl.networks.nets.make_multimodal_me_cnn",
            "num_clusters": 4,
            "modalities": ["t1", "flair"],
            "backbone": {**SMALL, "spatial_dims": 3},
            "out_channels": 2,
            "num_covariates": 2,
            "fusion": "attention",
        }
    }
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    (tmp_path / "inference.json").write_text(json.dumps(config))
    verify_net_in_out(
        net_id="network_def", meta_file=str(tmp_path / "metadata.json"), config_file=str(tmp_path / "inference.json")
    )


def test_loss_reads_the_structured_output_and_reaches_every_branch():
    net = _net(2, num_covariates=2, cluster_scale_bias=True)
    loss_fn = MixedEffectsLoss(task="bce", kl_weight=1e-3)
    x, z, y = torch.randn(4, 2, 16, 16), torch.eye(K)[[0, 1, 2, 0]], torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    out = net(x, z, torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]]), torch.randn(4, 2))
    loss = loss_fn(out, y)
    loss.backward()
    for i, branch in enumerate(net.branches):
        assert branch.slopes.loc.grad is not None and branch.slopes.loc.grad.abs().sum() > 0, i
    assert set(loss_fn.terms(out, y)) == {"loss_mixed", "loss_fixed", "kl"}


def test_me_cnn_encode_matches_forward_all():
    net = MixedEffectsCNN(K, SmallCNN(2, channels=(4, 8)), cluster_scale_bias=True)
    _perturb(net)
    net.eval()
    x, z = torch.randn(2, 1, 16, 16), torch.eye(K)[:2]
    with torch.no_grad():
        feats, hm = net.encode(x, z)
        out = net.forward_all(x, z)
        assert all(torch.equal(a, b) for a, b in zip(feats, out.features))
        torch.testing.assert_close(net.head(hm, z)[0], out.mixed)
        feats0, h0 = net.encode(x)
        assert h0 is feats0[-1]


def test_fusion_block_concat_is_sum_of_present_contributions():
    fusion = ModalityFusion([3, 2])
    e = [torch.randn(2, 3), torch.randn(2, 2)]
    out = fusion(e, torch.tensor([[True, False], [True, True]]))
    assert torch.equal(out[0, 3:], torch.zeros(2)) and torch.equal(out[1], torch.cat([e[0][1], e[1][1]]))
    assert fusion.out_features == 5 and ModalityFusion([3, 2], "attention", fusion_dim=7).out_features == 7


@pytest.mark.parametrize("dims,modalities,num_cov", [(2, ("t1", "flair"), 2), (3, ("t1", "t2", "flair"), 0)])
def test_early_fusion_shapes_scripting_and_adversary(dims, modalities, num_cov):
    net = _net(dims, modalities, num_covariates=num_cov, fusion="early", cluster_scale_bias=True)
    _perturb(net, 0.05)
    m, shape = len(modalities), (16,) * dims
    x, z = torch.randn(3, m, *shape), torch.eye(K)
    cov = torch.randn(3, num_cov) if num_cov else None
    mask = torch.ones(3, m)
    mask[1, -1] = mask[2, 0] = 0
    # one shared encoder after the per-modality first convolutions: its tap (4) and embedding (8), then covariates
    assert net.feature_sizes == [4, 8] + ([16] if num_cov else [])
    assert len(net.stem.convs) == m and net.in_channels == m and net.spatial_dims == dims
    for mode in (True, False):
        net.train(mode)
        out = net.forward_all(x, z, mask, cov)
        assert out.mixed.shape == out.fixed.shape == (3, 1)
        assert [f.shape[1] for f in out.features] == net.feature_sizes
    assert net.make_adversary(hidden=(8,))(out.features).shape == (3, K)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, z, mask, cov), net(x, z, mask, cov))
        torch.testing.assert_close(scripted(x), net(x))


def test_early_fusion_is_a_stacked_channel_convolution_and_ignores_absent_modalities():
    """All present: the stem is one convolution over the stacked channels (weights side by side, / M); absent: the
    mean over the present modalities, never reading the absent channels; the shared encoder only sees the stem."""
    net = _net(2, fusion="early", num_covariates=2).eval()
    _perturb(net)
    stem = net.stem
    x = torch.randn(4, 2, 16, 16)
    w = torch.cat([c.weight for c in stem.convs], dim=1) / 2
    b = sum(c.bias for c in stem.convs) / 2
    conv = stem.convs[0]
    stacked = torch.nn.functional.conv2d(x, w, b, stride=conv.stride, padding=conv.padding)
    present = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    with torch.no_grad():
        y = stem(x, present)
        torch.testing.assert_close(y[[0, 3]], stacked[[0, 3]])
        torch.testing.assert_close(y[1], stem.convs[0](x[1:2, :1])[0])  # T1 only: its own response
        torch.testing.assert_close(y[2], stem.convs[1](x[2:3, 1:])[0])  # FLAIR only
    z, cov = torch.eye(K)[[0, 1, 2, 1]], torch.randn(4, 2)
    mask = present.long()
    with torch.no_grad():
        ref = net(x, z, mask, cov)
        x2 = x.clone()
        x2[1, 1], x2[2, 0] = float("nan"), float("nan")
        torch.testing.assert_close(net(x2, z, mask, cov), ref)  # absent channels are never read
        torch.testing.assert_close(net(x[1:2], z[1:2], mask[1:2], cov[1:2]), ref[1:2])  # per-sample in eval
        assert (net(x, z, None, cov) - ref)[[1, 2]].abs().min() > 1e-4  # the mask matters
    user = SmallCNN(2, channels=(4, 8))
    net2 = _net(2, fusion="early", backbone=user)
    assert isinstance(user.features.block0.conv, torch.nn.Conv2d)  # the user's backbone is not modified
    assert net2.stem.convs[0] is not user.features.block0.conv and net2.eval()(x).shape == (4, 1)
    # a backbone that flattens (no global pooling): the shared encoder is measured at the stem's output size
    flat = Classifier(in_shape=(1, 16, 16), classes=1, channels=(4, 8), strides=(2, 2), num_res_units=0)
    net3 = _net(2, fusion="early", backbone=flat)
    assert net3.feature_sizes == [4, 8 * 4 * 4] and net3.eval()(x, z, mask).shape == (4, 1)
    with pytest.raises(ValueError, match="inside a block"):  # first convolution inside a residual unit
        _net(2, fusion="early", backbone=Classifier(in_shape=(1, 16, 16), classes=1, channels=(4, 8), strides=(2, 2)))
    with pytest.raises(ValueError, match="shared_weights applies to late fusion"):
        _net(2, fusion="early", shared_weights=True)
    with pytest.raises(ValueError, match="takes one backbone"):
        _net(2, fusion="early", backbone=[SmallCNN(2), SmallCNN(2)])
    with pytest.raises(ValueError, match="fusion mode must be one of"):
        _net(2, fusion="late")


def test_early_fusion_gradients_and_absent_modality_in_training():
    net = _net(2, fusion="early")
    loss_fn = MixedEffectsLoss(task="bce", kl_weight=1e-3)
    x, z, y = torch.randn(4, 2, 16, 16), torch.eye(K)[[0, 1, 2, 0]], torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    loss_fn(net(x, z, torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]])), y).backward()
    assert all(c.weight.grad.abs().sum() > 0 for c in net.stem.convs)
    assert net.branches[0].slopes.loc.grad.abs().sum() > 0
    # FLAIR absent from the whole batch: its convolution gets an exactly zero gradient but stays in the graph (DDP)
    net.zero_grad(set_to_none=True)
    x[:, 1] = float("nan")
    loss_fn(net(x, z, torch.tensor([[1, 0]] * 4)), y).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert net.stem.convs[1].weight.grad.abs().sum() == 0 and net.stem.convs[0].weight.grad.abs().sum() > 0
