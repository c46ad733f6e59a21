# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The equivalence checks every ``MixedEffectsUNet`` backbone must pass (shared by the backbone test modules)."""

from __future__ import annotations

import torch

from monai_medl.networks.blocks import MixedEffectsOutput


def check_zero_design_and_training_output(net, bare, x: torch.Tensor, z: torch.Tensor, training: bool = True) -> None:
    """Eval mode: no ``z`` and ``z = 0`` give the bare network exactly, a one-hot ``z`` changes the output. Training
    mode (if ``training``): the structured output, whose fixed prediction is the bare network's and whose pooled
    features fit the adversary."""
    k = z.shape[1]
    with torch.no_grad():
        net.eval(), bare.eval()
        expected = bare(x)
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(net(x, torch.zeros_like(z)), expected, rtol=0, atol=0)
        assert not torch.allclose(net(x, z), expected, atol=1e-4)  # the random effects act
        if not training:
            return
        net.train(), bare.train()
        out = net(x, z)
        assert isinstance(out, MixedEffectsOutput) and out.kl is not None and out.kl > 0
        torch.testing.assert_close(out.fixed, bare(x), rtol=0, atol=0)  # fixed effects = the bare network
        assert [f.shape for f in out.features] == [(x.shape[0], n) for n in net.feature_sizes]
        assert net.make_adversary()(out.features).shape == (x.shape[0], k)
