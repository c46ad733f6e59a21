# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""dice_ce_pair gives the values and gradients of two dice_ce calls, keeps no probability maps for its backward pass,
and MixedEffectsLoss uses it for segmentation logits without changing its terms."""

import pytest
import torch
from monai.data import MetaTensor

from monai_medl.losses import MixedEffectsLoss
from monai_medl.losses.dice_ce import dice_ce
from monai_medl.losses.dice_ce_pair import dice_ce_pair, dice_ce_pair_applies
from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput


def _heads(shape, dtype=torch.float64, seed=0, offset_only=True):
    """Fixed logits, an offset (per item and class, or a full map) and labels with one class absent in item 0."""
    gen = torch.Generator().manual_seed(seed)
    fixed = 3 * torch.randn(*shape, generator=gen, dtype=dtype)
    extra = shape[:2] + (1,) * (len(shape) - 2) if offset_only else shape
    offset = torch.randn(*extra, generator=gen, dtype=dtype)
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=gen)
    labels[0][labels[0] == 1] = 0
    return fixed, offset, labels


def _grads(loss_fn, fixed, offset, labels, w_mixed=0.7, w_fixed=1.9):
    f, b = fixed.clone().requires_grad_(True), offset.clone().requires_grad_(True)
    loss_mixed, loss_fixed = loss_fn(f + b, f, labels)
    grads = torch.autograd.grad(w_mixed * loss_mixed + w_fixed * loss_fixed, (f, b))
    return loss_mixed.detach(), loss_fixed.detach(), *grads


def _two_calls(mixed, fixed, labels):
    return dice_ce(mixed, labels), dice_ce(fixed, labels)


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (3, 4, 5, 4, 3)])
@pytest.mark.parametrize("offset_only", [True, False])
def test_values_and_gradients_equal_two_dice_ce_calls(shape, offset_only):
    fixed, offset, labels = _heads(shape, offset_only=offset_only)
    for got, expected in zip(_grads(dice_ce_pair, fixed, offset, labels), _grads(_two_calls, fixed, offset, labels)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


def test_float32_and_bfloat16_stay_close_and_keep_the_dtype():
    fixed, offset, labels = _heads((2, 4, 6, 6, 6), dtype=torch.float32, seed=1)
    got, expected = _grads(dice_ce_pair, fixed, offset, labels), _grads(_two_calls, fixed, offset, labels)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    low = _grads(dice_ce_pair, fixed.bfloat16(), offset.bfloat16(), labels)
    assert all(t.dtype == torch.bfloat16 for t in low)
    for g, e in zip(low[:2], expected[:2]):
        torch.testing.assert_close(g.float(), e, rtol=2e-2, atol=2e-2)


def test_gradcheck_and_the_same_tensor_as_both_heads():
    fixed, offset, labels = _heads((2, 3, 4, 5), seed=2)
    f, b = fixed.requires_grad_(True), offset.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, b: dice_ce_pair(f + b, f, labels), (f, b))
    assert torch.autograd.gradcheck(lambda f: dice_ce_pair(f, f, labels), (f,))
    loss_mixed, loss_fixed = dice_ce_pair(f, f, labels)
    assert torch.equal(loss_mixed, loss_fixed)
    torch.testing.assert_close(loss_mixed, dice_ce(f, labels), rtol=1e-12, atol=1e-12)


def test_only_the_heads_that_need_a_gradient_get_one():
    fixed, offset, labels = _heads((2, 3, 4, 5), seed=3)
    f = fixed.clone().requires_grad_(True)
    loss_mixed, loss_fixed = dice_ce_pair(f + offset, f.detach(), labels)  # the fixed head detached
    (grad,) = torch.autograd.grad(loss_mixed + loss_fixed, f)
    (expected,) = torch.autograd.grad(dice_ce(f + offset, labels), f)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def test_backward_keeps_no_map_beyond_the_logits_and_labels():
    fixed, offset, labels = _heads((2, 4, 6, 6, 6), dtype=torch.float32, seed=4)
    f = fixed.requires_grad_(True)
    mixed = f + offset
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        dice_ce_pair(mixed, f, labels)
    big = [t for t in saved if t.numel() >= labels.numel()]
    # the two logit maps (the network's own outputs, not copies) and the label map: no probability map is saved
    assert sorted(t.data_ptr() for t in big) == sorted([mixed.data_ptr(), f.data_ptr(), labels.data_ptr()])
    two = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: two.append(t) or t, lambda t: t):
        _two_calls(f + offset, f, labels)
    assert sum(t.numel() for t in two if t.numel() >= labels.numel()) > 2 * f.numel()  # each call saves its p


def test_metatensor_labels_and_bad_inputs():
    fixed, offset, labels = _heads((2, 3, 4, 5), seed=5)
    got = dice_ce_pair(fixed + offset, fixed, MetaTensor(labels.float()))
    for g, e in zip(got, _two_calls(fixed + offset, fixed, labels)):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    assert not dice_ce_pair_applies(fixed[:, :2], fixed, labels)
    with pytest.raises(ValueError, match=r"dice_ce_pair needs .* got mixed \(2, 2, 4, 5\)"):
        dice_ce_pair(fixed[:, :2], fixed, labels)
    with pytest.raises(ValueError, match="dice_ce_pair needs"):
        dice_ce_pair(fixed.float(), fixed, labels)  # two dtypes
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2)
    assert not dice_ce_pair_applies(fixed, fixed, one_hot)


def test_mixed_effects_loss_uses_the_pair_and_keeps_its_terms():
    fixed, offset, labels = _heads((2, 3, 5, 4, 3), seed=6)
    f = fixed.requires_grad_(True)
    kl = torch.tensor(2.5, dtype=torch.float64)
    out = MixedEffectsOutput(f + offset, f, [], None, kl)
    fused = MixedEffectsLoss("dice_ce", lambda_mixed=0.7, lambda_fixed=1.9, kl_weight=1e-2)
    # a callable task scores each head on its own: the reference path
    separate = MixedEffectsLoss(dice_ce, lambda_mixed=0.7, lambda_fixed=1.9, kl_weight=1e-2)
    assert type(fused.terms(out, labels)["loss_mixed"].grad_fn).__name__ == "_DiceCEPairBackward"
    assert type(separate.terms(out, labels)["loss_mixed"].grad_fn).__name__ == "_DiceCEBackward"
    loss, reference = fused(out, labels), separate(out, labels)
    for key in ("loss_mixed", "loss_fixed", "kl"):
        torch.testing.assert_close(loss.terms[key], reference.terms[key], rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(loss, f)
    (g_ref,) = torch.autograd.grad(reference, f)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-14)


def test_channels_last_logits_give_the_same_gradients():
    fixed, offset, labels = _heads((2, 3, 4, 5, 6), seed=7)
    expected = _grads(_two_calls, fixed, offset, labels)
    got = _grads(dice_ce_pair, fixed.contiguous(memory_format=torch.channels_last_3d), offset, labels)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)
