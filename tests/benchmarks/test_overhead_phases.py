# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""benchmarks.overhead's Pair: the one-pass phase trains both the model and the adversary, like the two-step one."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from benchmarks.overhead import ADVERSARY_PHASES, PHASES, TARGETS, Pair
from monai_medl.networks.nets import MixedEffectsUNet, SmallCNN


def _moved(module, before):
    return [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]


def test_one_pass_step_updates_model_and_adversary():
    case = {"backbone": lambda: SmallCNN(spatial_dims=3, in_channels=1, out_channels=1), "me_kwargs": {}}
    pair = Pair(case, batch=4, size=16, seed=0)
    adv_before = {k: v.clone() for k, v in pair.adversary.state_dict().items()}
    head_before = pair.me.head.linear.weight.detach().clone()
    pair.train_me_one_pass()
    assert not pair.one_pass._pending  # finish_step applied the adversary's update after the main one
    assert sorted(_moved(pair.adversary, adv_before)) == sorted(adv_before)
    assert not torch.equal(pair.me.head.linear.weight, head_before)
    assert set(ADVERSARY_PHASES) <= set(PHASES) and all(p in TARGETS for p in PHASES)
    assert pair.resident_bytes("me", "train_one_pass") == pair.resident_bytes("me", "train")


def test_unet_case_runs_the_closed_form_dice_ce_in_every_phase():
    case = {
        "backbone": lambda: UNet(3, 1, 3, channels=(4, 8), strides=(2,), num_res_units=1),
        "wrapper": MixedEffectsUNet,
        "task": "dice_ce",
        "me_kwargs": {"cluster_scale_bias": False},
    }
    pair = Pair(case, batch=2, size=8, seed=0)
    for step in (pair.train_me, pair.train_me_one_pass, pair.train_me_no_adversary, pair.train_bare):
        step()
    pair.infer_me()
    assert all(torch.isfinite(p).all() for p in pair.me.parameters())
