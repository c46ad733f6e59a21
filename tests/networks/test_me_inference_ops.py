# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The ME wrapper's eager inference adds a fixed, small number of tensor operations to the bare backbone's."""

from __future__ import annotations

import copy

import torch
from torch.profiler import profile

from monai_medl.networks.nets import MixedEffectsCNN, SmallCNN


def _top_level_ops(fn) -> int:
    with torch.no_grad():
        fn()  # warm-up
        with profile() as prof:
            fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def test_me_inference_adds_at_most_five_operations_to_the_backbone():
    torch.manual_seed(0)
    bare = SmallCNN(spatial_dims=3, in_channels=1, out_channels=1).eval()
    me = MixedEffectsCNN(4, backbone=copy.deepcopy(bare)).eval()
    x, z = torch.randn(2, 1, 16, 16, 16), torch.eye(4)[:2]
    base = _top_level_ops(lambda: bare(x))
    # z: slopes matmul, addcmul, intercept addmm, and the NaN check's sum + item (measured 15 -> 20 ops)
    assert _top_level_ops(lambda: me(x, z)) <= base + 5
    assert _top_level_ops(lambda: me(x)) <= base + 2  # population prediction: the NaN check only
    torch.testing.assert_close(me(x), bare(x))
