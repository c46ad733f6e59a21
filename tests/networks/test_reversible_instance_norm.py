# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks import eval_mode

from monai_medl.networks.layers import ReversibleInstanceNorm
from monai_medl.networks.nets import MixedEffectsAutoEncoder

K = 3


def test_normalize_denormalize_roundtrip_and_statistics():
    torch.manual_seed(0)
    norm = ReversibleInstanceNorm(channels=2, num_clusters=K)
    x = torch.rand(4, 2, 8, 6) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) + 0.5
    xn, stats = norm.normalize(x)
    assert stats.shape == (4, 2, 2)
    flat = xn.flatten(2)
    assert torch.allclose(flat.mean(2), torch.zeros(4, 2), atol=1e-5)
    assert torch.allclose(flat.std(2, unbiased=False), torch.ones(4, 2), atol=1e-3)
    np.testing.assert_allclose(stats[..., 0].numpy(), x.flatten(2).mean(2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.exp(stats[..., 1].numpy()), x.flatten(2).std(2, unbiased=False).numpy(), rtol=1e-3)
    assert torch.allclose(norm.denormalize(xn, stats), x, atol=1e-5)


def test_cluster_offsets_and_shift_follow_the_cluster_averages():
    norm = ReversibleInstanceNorm(channels=1, num_clusters=K)
    torch.manual_seed(0)
    base = torch.rand(6, 1, 8, 8)
    # cluster 0 as is, cluster 1 brighter by 0.4 and twice the contrast, cluster 2 never seen
    x = torch.cat([base, 2 * base + 0.4])
    z = torch.eye(K)[[0] * 6 + [1] * 6]
    stats = norm.statistics(x)
    norm.update(stats[:5], z[:5])  # two updates add up exactly
    norm.update(stats[5:], z[5:])
    assert norm.cluster_count.tolist() == [6.0, 6.0, 0.0]
    means = torch.stack([stats[:6].mean(0), stats[6:].mean(0)])
    offsets = norm.cluster_offsets()
    assert torch.allclose(offsets[:2], means - means.mean(0), atol=1e-6)
    assert torch.equal(offsets[2], torch.zeros(1, 2))
    # moving cluster 0 items to cluster 1: the log sd grows by log 2, the mean by the average mean difference
    moved = norm.shift(stats[:6], z[:6], torch.eye(K)[[1] * 6])
    assert torch.allclose(moved[..., 1] - stats[:6, :, 1], torch.full((6, 1), float(np.log(2))), atol=1e-3)
    assert torch.allclose(moved[..., 0] - stats[:6, :, 0], (means[1, :, 0] - means[0, :, 0]).expand(6, 1), atol=1e-6)
    # population items (z None) move by the target's offset only; an unseen target does not move them
    assert torch.allclose(norm.shift(stats[:2], None, torch.eye(K)[[1, 1]]), stats[:2] + offsets[1], atol=1e-6)
    assert torch.allclose(norm.shift(stats[:2], None, torch.eye(K)[[2, 2]]), stats[:2])
    with pytest.raises(ValueError, match="channels must be >= 1"):
        ReversibleInstanceNorm(channels=0, num_clusters=K)


def _net(**kwargs) -> MixedEffectsAutoEncoder:
    torch.manual_seed(0)
    return MixedEffectsAutoEncoder(2, (1, 16, 16), K, channels=(4, 8), strides=(2, 2), reversible_norm=True, **kwargs)


def test_reversible_norm_makes_latents_invariant_and_reconstruction_equivariant_to_gain_offset():
    net = _net()
    x, z = torch.rand(3, 1, 16, 16), torch.eye(K)
    with eval_mode(net):
        a = net.forward_all(x, z)
        b = net.forward_all(1.7 * x + 0.2, z)
        plain = MixedEffectsAutoEncoder(
            2, (1, 16, 16), K, channels=(4, 8), strides=(2, 2), reversible_norm=False
        ).eval()
        p, q = plain.forward_all(x, z), plain.forward_all(1.7 * x + 0.2, z)
    assert torch.allclose(a.latent_fixed, b.latent_fixed, atol=1e-4)
    assert torch.allclose(a.latent_random, b.latent_random, atol=1e-4)
    assert torch.allclose(1.7 * a.reconstruction + 0.2, b.reconstruction, atol=1e-4)
    assert torch.allclose(1.7 * a.reconstruction_fixed + 0.2, b.reconstruction_fixed, atol=1e-4)
    # without it the reconstruction is not equivariant (sigmoid output, first-stage bias), nor has any buffers
    assert not torch.allclose(1.7 * p.reconstruction + 0.2, q.reconstruction, atol=1e-2)
    assert plain.revin is None and not any(k.startswith("revin.") for k in plain.state_dict())
    with pytest.raises(ValueError, match="undefined for vectors"):
        MixedEffectsAutoEncoder(
            0, (10,), K, channels=(4,), strides=(1,), kernel_size=1, norm="batch", reversible_norm=True
        )


def test_reversible_norm_counterfactual_takes_the_target_batch_statistics():
    # the cluster scale/bias effects start near 0, so the counterfactual's change is the batches' intensity offsets
    net = _net(post_loc_init_scale=1e-4)
    torch.manual_seed(1)
    base = torch.rand(8, 1, 16, 16) * 0.3
    x = torch.cat([base, base + 0.4])  # batch 1 is 0.4 brighter than batch 0
    z = torch.eye(K)[[0] * 8 + [1] * 8]
    net.train()
    with torch.no_grad():
        net(x, z)  # training pass: accumulates each batch's statistics
    with eval_mode(net):
        recon = net.reconstruct(x[:8], z[:8])
        cf = net.counterfactual(x[:8], z[:8], z[8:])
        assert torch.allclose(net.counterfactual(x[:8], z[:8], z[:8]), recon, atol=1e-6)
    shift = (cf - recon).flatten(1).mean(1)
    assert torch.allclose(shift, torch.full((8,), 0.4), atol=0.02)
    # eval-mode passes do not change the accumulated statistics
    assert net.revin.cluster_count.tolist() == [8.0, 8.0, 0.0]
