# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` on a label map, with a closed-form gradient.

A mixed-effects segmentation model computes the segmentation loss twice per step (mixed and fixed logits). MONAI's
``DiceCELoss`` builds the one-hot target, the softmax, the log-softmax and several products over the whole
``(batch, classes, *spatial)`` map and autograd keeps most of them for the backward pass. The value is
``mean_bc[1 - (2 I + s) / (P + G + s)] + mean_bs[-log p_target]`` (``I`` the summed probability of the true class,
``P`` the summed probability, ``G`` the voxel count of class ``c`` in item ``b``, ``s = 1e-5``), so the gradient with
respect to the logits is closed-form: :func:`dice_ce` computes the value from one log-softmax and keeps only the
probabilities and the label map for its backward pass (fewer full-size operations, less memory). Same value and
gradient as MONAI's loss up to floating-point rounding (tested).
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

__all__ = ["dice_ce", "fused_dice_ce_applies", "dice_ce_terms", "class_counts", "working_logits"]

_SMOOTH = 1e-5  # DiceLoss's smooth_nr and smooth_dr defaults
_MONAI_DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True)  # stateless, shared; the reference and the fallback


def fused_dice_ce_applies(pred: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether :func:`dice_ce` takes the closed-form path: class logits ``(B, C >= 2, *spatial)`` against a label map
    ``(B, 1, *spatial)`` of the same spatial shape (else it calls MONAI's loss)."""
    return (
        pred.dim() >= 3
        and pred.shape[1] >= 2
        and target.dim() == pred.dim()
        and target.shape[1] == 1
        and target.shape[0] == pred.shape[0]
        and target.shape[2:] == pred.shape[2:]
        and pred.is_floating_point()
    )


def working_logits(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits evaluated in float32 (the loss and its gradient are computed in that precision)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def class_counts(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``G``: the voxel count of every class in every item, ``(batch, classes)``, from the label map ``index``."""
    batch, classes = logits.shape[:2]
    flat_index = index.reshape(batch, -1)
    ones = torch.ones((), dtype=working_logits(logits).dtype, device=logits.device).expand(flat_index.shape)
    return ones.new_zeros(batch, classes).scatter_add_(1, flat_index, ones)


def dice_ce_terms(
    logits: torch.Tensor, index: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of one head from one log-softmax: ``(loss, 2 I + s, P + G + s, probabilities)`` (the value of
    :func:`dice_ce`; the probabilities are what its backward pass keeps, the pair loss drops them)."""
    work = working_logits(logits)
    batch, classes = work.shape[:2]
    log_p = torch.log_softmax(work, dim=1)
    target_log_p = log_p.gather(1, index)
    p = log_p.exp_()
    flat_index = index.reshape(batch, -1)
    intersection = torch.zeros_like(counts).scatter_add_(1, flat_index, target_log_p.exp().reshape(batch, -1))
    denominator = p.reshape(batch, classes, -1).sum(2).add_(counts).add_(_SMOOTH)  # P + G + s
    numerator = intersection.mul_(2.0).add_(_SMOOTH)  # 2 I + s
    loss = (1.0 - (numerator / denominator).mean()) - target_log_p.mean()
    return loss, numerator, denominator, p


def dice_ce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``DiceCELoss(to_onehot_y=True, softmax=True)(pred, target)`` (MONAI's defaults), closed-form gradient.

    Args:
        pred: segmentation logits ``(batch, classes, *spatial)``.
        target: integer label map ``(batch, 1, *spatial)`` (integer or integral float values in ``[0, classes)``).
            A one-hot target or a single-channel prediction falls back to MONAI's ``DiceCELoss``.

    Half-precision logits are evaluated in float32 (the gradient is returned in their dtype).

    Example::

        >>> from monai.losses import DiceCELoss
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8))
        >>> reference = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
        >>> bool(torch.allclose(dice_ce(logits, labels), reference))
        True
    """
    if not fused_dice_ce_applies(pred, target):
        return _MONAI_DICE_CE(pred, target)
    index = target.as_subclass(torch.Tensor).detach().long()  # a MONAI MetaTensor label is read as plain values
    return _DiceCE.apply(pred, index)


class _DiceCE(torch.autograd.Function):
    """Value from one log-softmax; the backward pass rebuilds the one-hot target from the saved label map."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        loss, numerator, denominator, p = dice_ce_terms(logits, index, class_counts(logits, index))
        ctx.save_for_backward(p, index, numerator, denominator)
        ctx.in_dtype = logits.dtype
        return loss.to(logits.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        p, index, numerator, denominator = ctx.saved_tensors
        batch, classes = p.shape[:2]
        shape = (batch, classes) + (1,) * (p.dim() - 2)
        voxels = p[:, 0].numel()  # cross-entropy mean over batch x spatial
        # d dice / d p = a * onehot + c per (item, class); then the softmax Jacobian, plus (p - onehot) / voxels
        a = (-2.0 / (batch * classes) / denominator).view(shape)
        c = (numerator / (batch * classes) / denominator.square()).view(shape)
        onehot = torch.zeros_like(p).scatter_(1, index, 1.0)
        grad_p = torch.addcmul(c, onehot, a)
        inner = (p * grad_p).sum(1, keepdim=True)
        grad = grad_p.sub_(inner).add_(1.0 / voxels).mul_(p).sub_(onehot, alpha=1.0 / voxels)
        return grad.mul_(grad_output.to(grad.dtype)).to(ctx.in_dtype), None
