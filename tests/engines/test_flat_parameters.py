# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""FlatParameters re-backs parameters by one flat tensor; AdamStep updates such a group as that one tensor."""

import pytest
import torch

from monai_medl.engines.adam_step import AdamStep
from monai_medl.engines.flat_parameters import FlatParameters


def _params(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((3, 4), (4,), (2, 3), ())
    return [torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype)) for shape in shapes]


def test_the_parameters_become_views_of_one_tensor_with_the_same_values_and_get_them_back():
    params = _params()
    values = [p.detach().clone() for p in params]
    flat = FlatParameters(params[::-1])  # any layout order
    assert flat.flat.shape == (12 + 4 + 6 + 1,)
    for p, value in zip(params, values):
        assert torch.equal(p, value) and torch.count_nonzero(p.grad) == 0
        assert p.untyped_storage().data_ptr() == flat.flat.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr()
    values_, grads_ = flat.slice(params[1], 2)  # the layout's 2nd and 3rd: params[1], then params[0]
    assert torch.equal(values_, torch.cat([values[1], values[0].reshape(-1)]))
    grads_.fill_(2.0)
    assert bool((params[0].grad == 2).all()) and bool((params[1].grad == 2).all()) and params[2].grad.sum() == 0
    assert flat.intact([p.grad for p in flat.params])
    flat.restore()
    for p, value in zip(params, values):
        assert torch.equal(p, value)
        assert p.untyped_storage().data_ptr() != flat.flat.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() != flat.grad.untyped_storage().data_ptr()
    assert not flat.intact([p.grad for p in flat.params])


def test_bad_parameter_lists_are_refused():
    params = _params()
    with pytest.raises(ValueError, match="non-empty list of distinct"):
        FlatParameters([])
    with pytest.raises(ValueError, match="non-empty list of distinct"):
        FlatParameters([params[0], params[0]])
    with pytest.raises(ValueError, match="same dtype and device"):
        FlatParameters([params[0], torch.nn.Parameter(torch.ones(2, dtype=torch.float32))])


def _train(flat_layout: bool, replace_at=None, steps=6):
    params = _params()
    opt = torch.optim.Adam(params, lr=0.1, fused=True)
    step = AdamStep(opt)
    flat = None
    if flat_layout:
        flat = FlatParameters(params[::-1])
        step.use_flat(flat)
    gen = torch.Generator().manual_seed(1)
    for k in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        for p, g in zip(params, grads):
            if flat is not None and k != replace_at:
                p.grad.copy_(g)  # the flat gradient's views, written in place
            else:
                p.grad = g  # a new gradient tensor: no longer the flat layout's
        step()
    used_flat = step._lists is not None and step._lists[0][-1] is not None
    return [p.detach().clone() for p in params], opt, used_flat


@pytest.mark.parametrize("replace_at", [None, 4])
def test_the_flat_update_equals_the_per_tensor_update(replace_at):
    reference, ref_opt, ref_flat = _train(False)
    got, opt, used_flat = _train(True, replace_at)
    assert not ref_flat and used_flat  # the flat kernel call was taken (and the moments re-backed)
    for p, q in zip(got, reference):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)  # elementwise: the same arithmetic per entry
    for state, ref_state in zip(opt.state.values(), ref_opt.state.values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state[key], ref_state[key], rtol=1e-13, atol=1e-15)
