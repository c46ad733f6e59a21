# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""ModalityFallback: routing by the presence mask, covariates, scripting and bad inputs."""

from __future__ import annotations

import pytest
import torch

from monai_medl.networks.nets import ModalityFallback, make_multimodal_me_cnn

K = 3
SMALL = {"_target_": "monai_medl.networks.nets.SmallCNN", "spatial_dims": 2, "channels": [4, 8]}


def _net(modalities, **kwargs) -> make_multimodal_me_cnn:
    return make_multimodal_me_cnn(K, modalities=modalities, backbone=SMALL, probe_size=(16, 16), **kwargs)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    primary = _net(("t1", "flair", "t2"), num_covariates=2).eval()
    fallback = _net(("t1", "t2"), num_covariates=2).eval()
    return primary, fallback


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g)
    z = torch.eye(K)[[0, 1, 2, 0]]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    return x, z, mask, torch.randn(4, 2, generator=g)


def test_complete_samples_use_the_primary_and_incomplete_ones_the_fallback(nets):
    primary, fallback = nets
    net = ModalityFallback(primary, fallback).eval()
    x, z, mask, cov = _inputs()
    with torch.no_grad():
        out = net(x, z, mask, cov)
        want_primary = primary(x, z, mask, cov)
        # the fallback reads channels 0 and 2 (t1, t2) and their mask columns
        want_fallback = fallback(x[:, [0, 2]], z, mask[:, [0, 2]], cov)
    torch.testing.assert_close(out[[0, 2]], want_primary[[0, 2]])
    torch.testing.assert_close(out[[1, 3]], want_fallback[[1, 3]])
    assert not torch.allclose(out[[1, 3]], want_primary[[1, 3]])  # the routing changed those predictions
    with torch.no_grad():  # without a mask, or with every modality present, the primary alone answers
        torch.testing.assert_close(net(x, z), primary(x, z))
        torch.testing.assert_close(net(x, z, torch.ones(4, 3), cov), primary(x, z, torch.ones(4, 3), cov))


def test_scripted_router_matches_eager_and_keeps_the_error(nets):
    net = ModalityFallback(*nets).eval()
    scripted = torch.jit.script(net)
    x, z, mask, cov = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, z, mask, cov), net(x, z, mask, cov))
        torch.testing.assert_close(scripted(x), net(x))
        no_t2 = mask.clone()
        no_t2[1, 2] = 0.0
        with pytest.raises(Exception, match=r"sample\(s\) \[1\] lack a modality of the fallback network"):
            scripted(x, z, no_t2, cov)


def test_bad_network_pairs_are_refused_with_the_reason(nets):
    primary, fallback = nets
    with pytest.raises(TypeError, match="fallback must be a multimodal network"):
        ModalityFallback(primary, torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match=r"fallback modalities \['pd'\] are not among"):
        ModalityFallback(primary, _net(("t1", "pd"), num_covariates=2))
    with pytest.raises(ValueError, match="must use fewer modalities"):
        ModalityFallback(primary, _net(("t1", "flair", "t2"), num_covariates=2))
    with pytest.raises(ValueError, match="fallback.num_covariates = 0 differs"):
        ModalityFallback(primary, _net(("t1",)))
    with pytest.raises(ValueError, match="fallback.num_clusters"):
        other_sites = make_multimodal_me_cnn(K + 1, ("t1",), SMALL, num_covariates=2, probe_size=(16, 16))
        ModalityFallback(primary, other_sites)
    with pytest.raises(ValueError, match="'t1' has a different number of channels"):
        two = make_multimodal_me_cnn(
            K, ("t1",), {**SMALL, "in_channels": 2}, in_channels=2, num_covariates=2, probe_size=(16, 16)
        )
        ModalityFallback(primary, two)
