# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The Dice-CE loss of both heads of a mixed-effects segmentation model in one autograd node, saving no maps.

:class:`~monai_medl.losses.MixedEffectsLoss` scores the mixed and the fixed logits of the same batch.
Two :func:`~monai_medl.losses.dice_ce.dice_ce` calls each keep a ``(batch, classes, *spatial)`` probability map for
the backward pass, and each backward pass builds a one-hot map and two more full-size maps. :func:`dice_ce_pair`
keeps only what the network's output already holds (both logit maps, which the training output references until
the step ends) plus the label map and per-class sums; its backward pass recomputes each head's probabilities and
writes that head's gradient into the same buffer, one full-size map per head. The values and gradients are those of
the two :func:`~monai_medl.losses.dice_ce.dice_ce` calls up to floating-point rounding (tested).
"""

from __future__ import annotations

import torch

from monai_medl.losses.dice_ce import (
    class_counts,
    dice_ce_grad,
    dice_ce_terms,
    fused_dice_ce_applies,
    working_logits,
)

__all__ = ["dice_ce_pair", "dice_ce_pair_applies"]


def dice_ce_pair_applies(mixed: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether :func:`dice_ce_pair` takes its fused path: both heads are class logits of one shape and dtype that
    :func:`~monai_medl.losses.dice_ce.fused_dice_ce_applies` accepts with ``target``."""
    return mixed.shape == fixed.shape and mixed.dtype == fixed.dtype and fused_dice_ce_applies(mixed, target)


def dice_ce_pair(mixed: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dice_ce(mixed, target), dice_ce(fixed, target))`` in one autograd node that saves no full-size maps.

    Args:
        mixed: mixed-effects logits ``(batch, classes, *spatial)``.
        fixed: fixed-effects logits of the same shape and dtype (may be the same tensor as ``mixed``).
        target: integer label map ``(batch, 1, *spatial)``.

    Raises:
        ValueError: when :func:`dice_ce_pair_applies` is False (call :func:`~monai_medl.losses.dice_ce.dice_ce`
            on each head instead).

    Example::

        >>> from monai_medl.losses.dice_ce import dice_ce
        >>> fixed = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> mixed = fixed + torch.randn(2, 3, 1, 1)  # e.g. per-class random intercepts
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8))
        >>> loss_mixed, loss_fixed = dice_ce_pair(mixed, fixed, labels)
        >>> torch.allclose(loss_mixed, dice_ce(mixed, labels)), torch.allclose(loss_fixed, dice_ce(fixed, labels))
        (True, True)
    """
    if not dice_ce_pair_applies(mixed, fixed, target):
        raise ValueError(
            "dice_ce_pair needs mixed and fixed logits (batch, classes >= 2, *spatial) of one shape and dtype and a "
            f"label map (batch, 1, *spatial); got mixed {tuple(mixed.shape)} {mixed.dtype}, fixed "
            f"{tuple(fixed.shape)} {fixed.dtype}, target {tuple(target.shape)}."
        )
    index = target.as_subclass(torch.Tensor).detach().long()  # a MONAI MetaTensor label is read as plain values
    mixed_loss, fixed_loss = _DiceCEPair.apply(mixed, fixed, index)
    return mixed_loss, fixed_loss


def _head_backward(
    logits: torch.Tensor, index: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """One head's gradient ``grad * d loss / d logits`` written into its recomputed probabilities (one full-size
    buffer; see :func:`~monai_medl.losses.dice_ce.dice_ce_grad`)."""
    p = torch.softmax(working_logits(logits), dim=1).contiguous()  # the in-place passes work on its flat view
    return dice_ce_grad(p, index, numerator, denominator, grad, inplace=True).to(logits.dtype)


class _DiceCEPair(torch.autograd.Function):
    """Both heads' Dice-CE; the backward pass recomputes each head's probabilities from its saved logits."""

    @staticmethod
    def forward(ctx, mixed: torch.Tensor, fixed: torch.Tensor, index: torch.Tensor):
        counts = class_counts(mixed, index)
        loss_m, num_m, den_m = dice_ce_terms(mixed, index, counts)[:3]  # the probability maps are freed here
        if fixed is mixed:
            loss_f, num_f, den_f = loss_m, num_m, den_m
        else:
            loss_f, num_f, den_f = dice_ce_terms(fixed, index, counts)[:3]
        ctx.save_for_backward(mixed, fixed, index, num_m, den_m, num_f, den_f)
        ctx.same = fixed is mixed
        return loss_m.to(mixed.dtype), loss_f.to(fixed.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_mixed: torch.Tensor, grad_fixed: torch.Tensor):
        mixed, fixed, index, num_m, den_m, num_f, den_f = ctx.saved_tensors
        need_m, need_f = ctx.needs_input_grad[:2]
        if ctx.same:  # one head's gradient, scaled by both weights (autograd adds the two inputs' gradients anyway)
            return _head_backward(mixed, index, num_m, den_m, grad_mixed + grad_fixed) if need_m else None, None, None
        out_m = _head_backward(mixed, index, num_m, den_m, grad_mixed) if need_m else None
        out_f = _head_backward(fixed, index, num_f, den_f, grad_fixed) if need_f else None
        return out_m, out_f, None
