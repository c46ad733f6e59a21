# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` on a label map, with a closed-form gradient.

A mixed-effects segmentation model computes the segmentation loss twice per step (mixed and fixed logits). MONAI's
``DiceCELoss`` builds the one-hot target, the softmax, the log-softmax and several products over the whole
``(batch, classes, *spatial)`` map and autograd keeps most of them for the backward pass. The value is
``mean_bc[1 - (2 I + s) / (P + G + s)] + mean_bs[-log p_target]`` (``I`` the summed probability of the true class,
``P`` the summed probability, ``G`` the voxel count of class ``c`` in item ``b``, ``s = 1e-5``), so the gradient with
respect to the logits is closed-form: :func:`dice_ce` computes the value from one log-softmax and keeps only the
probabilities, the label map and each voxel's probability of its label for its backward pass (fewer full-size
operations, less memory). :func:`dice_ce_grad` is that gradient, written class by class into one buffer with no
one-hot map; :func:`~monai_medl.losses.dice_ce_pair.dice_ce_pair` uses it too. Same value and gradient as MONAI's
loss up to floating-point rounding (tested).
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

__all__ = ["dice_ce", "fused_dice_ce_applies", "dice_ce_terms", "dice_ce_grad", "class_counts", "working_logits"]

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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of one head from one log-softmax: ``(loss, 2 I + s, P + G + s, probabilities, probability of the
    label (batch, voxels))`` (the value of :func:`dice_ce`; the probabilities are what its backward pass keeps, the
    pair loss drops them)."""
    work = working_logits(logits)
    batch, classes = work.shape[:2]
    log_p = torch.log_softmax(work, dim=1)
    target_log_p = log_p.gather(1, index)
    p = log_p.exp_()
    flat_index = index.reshape(batch, -1)
    p_label = target_log_p.exp().reshape(batch, -1)
    intersection = torch.zeros_like(counts).scatter_add_(1, flat_index, p_label)
    denominator = p.reshape(batch, classes, -1).sum(2).add_(counts).add_(_SMOOTH)  # P + G + s
    numerator = intersection.mul_(2.0).add_(_SMOOTH)  # 2 I + s
    loss = (1.0 - (numerator / denominator).mean()) - target_log_p.mean()
    return loss, numerator, denominator, p, p_label


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


def dice_ce_grad(
    p: torch.Tensor,
    index: torch.Tensor,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    scale: torch.Tensor,
    inplace: bool = False,
    p_label: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scale * d loss / d logits`` of one head from its probabilities ``p`` and :func:`dice_ce_terms`' sums.

    With ``a = -2 / (BC (P + G + s))``, ``c = (2 I + s) / (BC (P + G + s)^2)`` per (item, class), ``V`` the voxels
    per item times the batch and ``inner = sum_c p (c + a onehot)``, the gradient is
    ``p (c + 1/V - inner) + onehot (a p - 1/V)``: the first term is written class by class, the second scattered at
    the label of each voxel, so no one-hot map and one full-size buffer. ``inplace``: write it into ``p`` (which must
    then be a contiguous tensor nobody else needs, e.g. probabilities recomputed for this call); otherwise into a new
    buffer, leaving ``p`` as it was (a saved tensor a second backward pass may read again). ``p_label``: ``p`` at the
    label of every voxel, ``(batch, voxels)``, when the caller kept it from the forward pass (else gathered here).
    The result is in ``p``'s dtype (the working precision)."""
    batch, classes = p.shape[:2]
    voxels = p[:, 0].numel()  # cross-entropy mean over batch x spatial
    scale = scale.to(p.dtype)
    a = (-2.0 / (batch * classes)) * scale / denominator
    c = (numerator / (batch * classes)) * scale / denominator.square()
    flat_index = index.reshape(batch, -1)
    flat_p = p.view(batch, classes, -1) if inplace else p.reshape(batch, classes, -1)
    # the result is returned as a tensor of its own, not a view: autograd then adds another gradient into it in place
    result = p if inplace else torch.empty(p.shape, dtype=p.dtype, device=p.device)
    out = result.view(batch, classes, -1)
    # a p at the label, written into a map of its own (a saved p_label stays as it was)
    a_label = a.gather(1, flat_index)
    if p_label is None:
        pa = flat_p.gather(1, flat_index.unsqueeze(1)).squeeze(1).mul_(a_label)
    else:
        pa = a_label.mul_(p_label)
    del a_label  # one label-sized map alive from here on, as before the class loop
    # inner = sum_c p_c c_c + a p at the label, the sum as a batched matrix product (no full-size product map)
    shift = torch.bmm(c.unsqueeze(1), flat_p).squeeze(1).add_(pa).neg_().add_(scale / voxels)  # 1/V - inner
    for k in range(classes):  # out_k = p_k (c_k + 1/V - inner), one class at a time
        if inplace:
            flat_p[:, k].mul_(shift + c[:, k : k + 1])
        else:
            torch.mul(flat_p[:, k], shift + c[:, k : k + 1], out=out[:, k])
    out.scatter_add_(1, flat_index.unsqueeze(1), pa.sub_(scale / voxels).unsqueeze(1))
    return result


class _DiceCE(torch.autograd.Function):
    """Value from one log-softmax; the backward pass reads the saved probabilities (they are not modified, so a
    retained graph can run it again)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        loss, numerator, denominator, p, p_label = dice_ce_terms(logits, index, class_counts(logits, index))
        ctx.save_for_backward(p, p_label, index, numerator, denominator)
        ctx.in_dtype = logits.dtype
        return loss.to(logits.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        p, p_label, index, numerator, denominator = ctx.saved_tensors
        grad = dice_ce_grad(p, index, numerator, denominator, grad_output, p_label=p_label)
        return grad.to(ctx.in_dtype), None
