# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Early/late fusion classes, the make_multimodal_me_cnn factory, and the shipped bundle checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_medl.networks.nets import (
    EarlyFusionMixedEffectsCNN,
    LateFusionMixedEffectsCNN,
    MultimodalMixedEffectsNet,
    make_multimodal_me_cnn,
    multimodal_me_net,
)

K = 3
SMALL = {"_target_": "monai_medl.networks.nets.SmallCNN", "spatial_dims": 2, "channels": [4, 8], "strides": [2, 2]}
BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mri_multimodal_me_cnn_classification"


def test_shipped_bundle_checkpoint_loads_strictly_into_the_network_definition():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, EarlyFusionMixedEffectsCNN)
    shipped = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(shipped, strict=True)
    x, z = torch.randn(2, 2, 32, 32, 32), torch.eye(net.num_clusters)[[0, 1]]
    with torch.no_grad():
        assert torch.isfinite(net.eval()(x, z, torch.tensor([[1, 1], [1, 0]]))).all()


@pytest.mark.parametrize("fusion,cls", [("early", EarlyFusionMixedEffectsCNN), ("concat", LateFusionMixedEffectsCNN)])
def test_factory_builds_the_class_and_the_class_gives_the_same_network(fusion, cls):
    kwargs = {"modalities": ("t1", "flair"), "backbone": SMALL, "num_covariates": 2, "probe_size": 16}
    torch.manual_seed(0)
    via_factory = make_multimodal_me_cnn(K, fusion=fusion, **kwargs)
    torch.manual_seed(0)
    direct = cls(K, **kwargs) if fusion == "early" else cls(K, fusion=fusion, **kwargs)
    assert type(via_factory) is cls and isinstance(via_factory, MultimodalMixedEffectsNet)
    assert list(via_factory.state_dict()) == list(direct.state_dict())
    direct.load_state_dict(via_factory.state_dict(), strict=True)
    x, mask = torch.randn(3, 2, 16, 16), torch.tensor([[1, 1], [1, 0], [0, 1]])
    with torch.no_grad():
        torch.testing.assert_close(direct.eval()(x, torch.eye(K), mask), via_factory.eval()(x, torch.eye(K), mask))


def test_late_fusion_options_and_errors():
    with pytest.raises(ValueError, match="fusion mode must be one of"):
        LateFusionMixedEffectsCNN(K, backbone=SMALL, fusion="early")
    with pytest.raises(TypeError, match="shared_weights"):
        EarlyFusionMixedEffectsCNN(K, backbone=SMALL, shared_weights=True)  # a late-fusion option only
    shared = LateFusionMixedEffectsCNN(K, backbone=SMALL, shared_weights=True, fusion="attention", probe_size=16)
    assert shared.branches[0].encoder is shared.branches[1].encoder
    assert shared.branches[0].slopes is not shared.branches[1].slopes


@pytest.mark.parametrize("fusion", ["early", "attention", "concat"])
def test_forward_pass_has_no_data_dependent_python_branch(fusion, monkeypatch):
    """The computation has one path: with the input validation (which must read values to raise) switched off,
    ``torch.compile(fullgraph=True)`` traces forward_all without a graph break and gives the eager result."""
    import monai_medl.networks.nets.mixed_effects_net as mixed_effects_net

    for module in (mixed_effects_net, multimodal_me_net):
        if hasattr(module, "check_all_finite"):
            monkeypatch.setattr(module, "check_all_finite", lambda *args, **kwargs: None)
    monkeypatch.setattr(MultimodalMixedEffectsNet, "_check_inputs", lambda self, *args: None)
    monkeypatch.setattr(MultimodalMixedEffectsNet, "_check_required", lambda self, *args: None)
    net = make_multimodal_me_cnn(K, ("t1", "flair"), SMALL, fusion=fusion, num_covariates=2, probe_size=16).eval()
    x, cov = torch.randn(4, 2, 16, 16), torch.randn(4, 2)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0]])
    torch._dynamo.reset()
    compiled = torch.compile(net.forward_all, backend="eager", fullgraph=True)  # raises on a graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, None, mask, cov).fixed, net.forward_all(x, None, mask, cov).fixed)


@pytest.mark.parametrize("fusion", ["early", "attention"])
def test_eval_matches_training_path_per_sample(fusion):
    """Eval runs every branch on the whole batch (masked); training on the present rows: same per-sample values
    when the normalisation does not depend on the batch (BatchNorm in eval statistics here)."""
    net = make_multimodal_me_cnn(K, ("t1", "flair"), SMALL, fusion=fusion, num_covariates=2, probe_size=16)
    x, cov = torch.randn(4, 2, 16, 16), torch.randn(4, 2)
    x[1, 1] = float("nan")  # absent: never read
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0]])
    net.eval()
    with torch.no_grad():
        ref = net.forward_all(x, None, mask, cov)
        net.train()
        for m in net.modules():  # batch-independent normalisation, deterministic output
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        out = net.forward_all(x, None, mask, cov)
    torch.testing.assert_close(out.fixed, ref.fixed)
    for a, b in zip(out.features, ref.features):
        torch.testing.assert_close(a, b)
    assert torch.isfinite(ref.fixed).all()


def test_multimodal_networks_take_one_random_effects_settings_object():
    from monai_medl.networks.layers import RandomEffectsSettings
    from monai_medl.networks.nets import EarlyFusionMixedEffectsCNN, MultimodalMixedEffectsNet

    settings = RandomEffectsSettings(slope_prior_scale=0.3, intercept_prior_scale=0.2, random_slopes=False)
    by_object = EarlyFusionMixedEffectsCNN(3, spatial_dims=2, probe_size=16, random_effects=settings)
    by_keywords = EarlyFusionMixedEffectsCNN(
        3, spatial_dims=2, probe_size=16, slope_prior_scale=0.3, intercept_prior_scale=0.2
    )
    assert by_object.random_effects_settings == by_keywords.random_effects_settings == settings
    # the one object reaches the branch slopes and the head's intercept
    assert all(b.slopes.prior_scale == pytest.approx(0.3) for b in by_object.branches)
    assert by_object.head.intercept.prior_scale == pytest.approx(0.2) and by_object.head.slopes is None
    assert MultimodalMixedEffectsNet.DEFAULT_RANDOM_EFFECTS.random_slopes is False
    with pytest.raises(ValueError, match="correlated"):
        EarlyFusionMixedEffectsCNN(3, spatial_dims=2, probe_size=16, random_effects={"correlated": True})
