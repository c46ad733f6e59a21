# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""benchmarks.overhead's Pair: the one-pass phase trains both the model and the adversary, like the two-step one."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from benchmarks.overhead import ADVERSARY_PHASES, COMPILED_PHASES, PHASES, TARGETS, Pair, measure_case
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
    assert set(ADVERSARY_PHASES) <= set(PHASES + COMPILED_PHASES) and all(p in TARGETS for p in PHASES)
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


def test_compiled_phases_train_the_compiled_networks_and_are_timed():
    case = {"backbone": lambda: SmallCNN(spatial_dims=3, in_channels=1, out_channels=1), "me_kwargs": {}}
    pair = Pair(case, batch=2, size=16, seed=0)
    pair.compile(backend="eager")  # the traced graphs run eagerly: no C++ build in the test
    head_before = pair.me.head.linear.weight.detach().clone()
    bare_before = {k: v.clone() for k, v in pair.bare.state_dict().items()}
    pair.train_me(compiled=True)
    pair.train_bare(compiled=True)
    assert not torch.equal(pair.me.head.linear.weight, head_before) and _moved(pair.bare, bare_before)
    assert all(p in TARGETS for p in COMPILED_PHASES) and "train_compiled" in ADVERSARY_PHASES
    assert pair.resident_bytes("me", "train_compiled_no_adversary") == pair.resident_bytes("me", "train_no_adversary")


def test_measure_case_with_compile_reports_every_phase(monkeypatch):
    compile_eagerly = Pair.compile
    monkeypatch.setattr(Pair, "compile", lambda self: compile_eagerly(self, backend="eager"))
    case = {"backbone": lambda: SmallCNN(spatial_dims=3, in_channels=1, out_channels=1), "me_kwargs": {}}
    res = measure_case(case, batch=2, size=16, repeats=1, inference_repeats=1, steps=1, seed=0, compile=True)
    assert set(PHASES + COMPILED_PHASES) <= set(res) and res["warm_up_seconds"] > 0
    assert all(res[p]["me_ms"] > 0 and len(res[p]["ratios"]) == 1 for p in COMPILED_PHASES)


def test_count_ops_counts_the_top_level_tensor_operations():
    from benchmarks.overhead import count_ops

    x, w = torch.randn(3, 4), torch.ones(2, 4)
    assert count_ops(lambda: x.add(1.0)) == 1
    assert count_ops(lambda: torch.nn.functional.linear(x, w).relu().sum()) == 3  # linear's addmm/t inside it
    res = measure_case(
        {"backbone": lambda: SmallCNN(spatial_dims=3, in_channels=1, out_channels=1), "me_kwargs": {}},
        batch=2,
        size=16,
        repeats=1,
        inference_repeats=1,
        steps=1,
        seed=0,
    )
    train, inference = res["train"], res["inference"]
    assert train["me_ops"] > train["bare_ops"] > inference["bare_ops"] > 0  # the wrapper, backward and Adam add ops
