# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The walks' first argument has one name (``net`` for the network walks, ``module`` for the block walks); the former
names still work with a DeprecationWarning and build the same walk."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from monai.networks.nets import UNet

from monai_medl.networks.blocks.encoder_decoder_path import BlockWalk, EncoderDecoderPath, UNetPath, UnetResBlockWalk


def test_unet_keyword_is_deprecated_and_builds_the_same_walk():
    torch.manual_seed(0)
    unet = UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2))
    torch.manual_seed(1)
    new = UNetPath(net=unet, num_clusters=2, prior_scale=0.5).eval()
    torch.manual_seed(1)
    with pytest.warns(DeprecationWarning, match="unet"):
        old = UNetPath(unet=unet, num_clusters=2, prior_scale=0.5).eval()
    assert isinstance(old, EncoderDecoderPath) and old.num_cluster_layers == new.num_cluster_layers == 1
    for (name, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items()):
        assert torch.equal(a, b), name
    x, z = torch.randn(2, 1, 16, 16), torch.eye(2)
    assert torch.equal(old(x, z), new(x, z))
    assert torch.equal(new(x), unet.eval()(x))  # z None: the network's own forward


def test_block_keyword_is_deprecated():
    block = UnetResBlock(2, 4, 4, kernel_size=3, stride=1, norm_name="instance")
    torch.manual_seed(2)
    new = UnetResBlockWalk(block, 2, 3, True, 0.25, False)
    torch.manual_seed(2)
    with pytest.warns(DeprecationWarning, match="block"):
        old = UnetResBlockWalk(
            block=block,
            spatial_dims=2,
            num_clusters=3,
            cluster_scale_bias=True,
            prior_scale=0.25,
            learn_prior_scale=False,
        )
    assert isinstance(old, BlockWalk)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(old.eval()(x), new.eval()(x)) and torch.equal(new(x), block.eval()(x))
    with pytest.raises(TypeError, match="expected a MONAI UnetResBlock or UnetBasicBlock"):
        UnetResBlockWalk(torch.nn.Conv2d(1, 1, 3), 2, 3, True, 0.25, False)


def test_decode_leaves_the_callers_encoder_outputs_and_forward_equals_it():
    torch.manual_seed(3)
    unet = UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2))
    path = UNetPath(unet, num_clusters=2).eval()
    x, z = torch.randn(2, 1, 16, 16), torch.eye(2)
    skips = path.encode(x)
    kept = [s.data_ptr() for s in skips]
    logits = path.decode(skips, z)
    assert [s.data_ptr() for s in skips] == kept  # the training output still needs them for the adversary
    assert torch.equal(path(x, z), logits)  # forward frees each encoder output once used: same values
    assert torch.equal(torch.jit.script(path)(x, z), logits)
