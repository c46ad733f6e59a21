# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The closed-form Dice-CE equals MONAI's DiceCELoss(to_onehot_y=True, softmax=True) in value and gradient."""

import pytest
import torch
from monai.losses import DiceCELoss

from monai_medl.losses.dice_ce import dice_ce, fused_dice_ce_applies
from monai_medl.losses.mixed_effects_loss import task_loss

REFERENCE = DiceCELoss(to_onehot_y=True, softmax=True)


def _value_and_grad(fn, logits, labels):
    x = logits.clone().requires_grad_(True)
    value = fn(x, labels)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (3, 4, 6, 5, 4)])
@pytest.mark.parametrize("integer_labels", [True, False])
def test_value_and_gradient_match_monai(shape, integer_labels):
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(*shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=gen)
    labels[0] = 0  # a class absent from an item: its Dice term is the smoothed 1 - s / (P + s)
    if not integer_labels:
        labels = labels.double()
    v_ref, g_ref = _value_and_grad(REFERENCE, logits, labels)
    v, g = _value_and_grad(dice_ce, logits, labels)
    torch.testing.assert_close(v, v_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-14)
    assert fused_dice_ce_applies(logits, labels)


def test_float32_and_bfloat16_stay_close_and_keep_the_dtype():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 6, 6, generator=gen)
    labels = torch.randint(0, 4, (2, 1, 6, 6, 6), generator=gen)
    v_ref, g_ref = _value_and_grad(REFERENCE, logits, labels)
    v, g = _value_and_grad(dice_ce, logits, labels)
    torch.testing.assert_close(v, v_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)
    v16, g16 = _value_and_grad(dice_ce, logits.bfloat16(), labels)
    assert v16.dtype == g16.dtype == torch.bfloat16
    torch.testing.assert_close(v16.float(), v_ref, rtol=2e-2, atol=2e-2)


def test_other_shapes_fall_back_to_monai_with_its_behaviour():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, 5, generator=gen)
    labels = torch.randint(0, 3, (2, 1, 5, 5), generator=gen)
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float()
    assert not fused_dice_ce_applies(logits, one_hot)
    with pytest.raises(AssertionError, match="channel"):  # MONAI's to_onehot_y refuses a one-hot target
        dice_ce(logits, one_hot)
    single, binary = torch.randn(2, 1, 5, 5, generator=gen), (labels[:, :1] > 0).float()
    assert not fused_dice_ce_applies(single, binary)
    with pytest.warns(UserWarning, match="single channel"):
        torch.testing.assert_close(dice_ce(single, binary), REFERENCE(single, binary))


def test_task_loss_dice_ce_is_the_closed_form_loss():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=gen)
    torch.testing.assert_close(task_loss("dice_ce", logits, labels), REFERENCE(logits, labels))


def test_a_label_outside_the_classes_is_an_error():
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.full((1, 1, 4, 4), 3)
    with pytest.raises(RuntimeError):
        dice_ce(logits, labels)


def test_a_retained_graph_gives_the_same_gradient_twice_and_saves_no_one_hot_map():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 5, 4, 3), generator=gen)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = dice_ce(logits, labels)
    # the probabilities, the label map and the label's probability: no one-hot or other class-sized map but p
    assert sorted(t.numel() for t in saved if t.numel() >= labels.numel()) == [
        labels.numel(),
        labels.numel(),
        logits.numel(),
    ]
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)  # the backward pass must not have changed its saved tensors
    assert torch.equal(first, second)
    (reference,) = torch.autograd.grad(DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels), logits)
    torch.testing.assert_close(first, reference, rtol=1e-10, atol=1e-14)
    # an upstream weight enters the closed form (not a final multiplication): channels-last logits too
    last = logits.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    (weighted,) = torch.autograd.grad(2.5 * dice_ce(last, labels), last)
    torch.testing.assert_close(weighted, 2.5 * reference, rtol=1e-10, atol=1e-14)
