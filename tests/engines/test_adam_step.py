# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""AdamStep calls the fused Adam kernel directly: bit for bit optimizer.step(), and falls back where not covered."""

import copy

import pytest
import torch

from monai_medl.engines.adam_step import AdamStep


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((3, 4), (4,), (2, 3), ())]


def _run(params, optimizer, step, grads):
    for grad_list in grads:
        for p, g in zip(params, grad_list):
            p.grad = None if g is None else g.clone()
        step()
    return [p.detach().clone() for p in params]


def _grads(params, steps=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(steps)]


@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True}, {"weight_decay": 0.1}, {"maximize": True, "betas": (0.8, 0.99), "eps": 1e-6}],
)
def test_the_direct_kernel_call_equals_the_optimizer_step_bit_for_bit(options):
    params, twins = _params(), _params()
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}]
    opt = torch.optim.Adam(groups, lr=0.1, fused=True, **options)
    ref = torch.optim.Adam([{"params": twins[:2]}, {"params": twins[2:], "lr": 0.05}], lr=0.1, fused=True, **options)
    step = AdamStep(opt)
    grads = _grads(params)
    got, want = _run(params, opt, step, grads), _run(twins, ref, ref.step, grads)
    assert step.fast and step._lists is not None  # the direct path ran after the first step
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for p, q in zip(params, twins):
        for key in ref.state[q]:
            assert torch.equal(opt.state[p][key], ref.state[q][key]), key
    # the state dict still loads into a plain optimizer and gives the same next update
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    loaded = torch.optim.Adam([{"params": clone[:2]}, {"params": clone[2:]}], lr=0.1, fused=True, **options)
    loaded.load_state_dict(copy.deepcopy(opt.state_dict()))
    more = _grads(params, steps=2, seed=2)
    for a, b in zip(_run(params, opt, step, more), _run(clone, loaded, loaded.step, more)):
        assert torch.equal(a, b)


def test_what_it_does_not_cover_falls_back_to_the_optimizer():
    for make in (
        lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=True),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=torch.tensor(0.1), fused=True),
    ):
        params, twins = _params(), _params()
        opt, ref = make(params), make(twins)
        step = AdamStep(opt)
        grads = _grads(params)
        for a, b in zip(_run(params, opt, step, grads), _run(twins, ref, ref.step, grads)):
            assert torch.equal(a, b)
        assert not step.fast


def test_missing_gradients_new_state_and_changed_learning_rate_are_followed():
    params, twins = _params(), _params()
    opt, ref = torch.optim.Adam(params, lr=0.1, fused=True), torch.optim.Adam(twins, lr=0.1, fused=True)
    step = AdamStep(opt)
    grads = _grads(params, steps=6)
    for k in (0, 3):
        grads[k][1] = None  # the optimizer skips a parameter without a gradient (its step count stays behind)
    _run(params, opt, step, grads[:4])
    _run(twins, ref, ref.step, grads[:4])
    for group in (*opt.param_groups, *ref.param_groups):
        group["lr"] = 0.01  # a scheduler's change is read on every call
    got, want = _run(params, opt, step, grads[4:]), _run(twins, ref, ref.step, grads[4:])
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert [float(opt.state[p]["step"]) for p in params] == [6.0, 4.0, 6.0, 6.0]
    state = copy.deepcopy(ref.state_dict())
    opt.load_state_dict(state)  # new state tensors: the cached lists are read again
    ref.load_state_dict(copy.deepcopy(state))
    for a, b in zip(_run(params, opt, step, grads[:2]), _run(twins, ref, ref.step, grads[:2])):
        assert torch.equal(a, b)
