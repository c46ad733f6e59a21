# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Gradient reversal: identity forward, ``-coeff * grad`` backward (domain-adversarial training in one pass)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GradientReversal", "grad_reverse"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``-coeff`` in the backward pass."""
    return _GradReverse.apply(x, coeff)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`.

    Placing it between a feature extractor and an adversary that minimises ``CE(site, A(features))`` makes the
    extractor minimise ``-coeff * CE``, which is the same update as the two-optimizer scheme with
    ``lambda_g = coeff``.

    Args:
        coeff: gradient multiplier ``lambda_g``. Defaults to 1.0.

    Example::

        >>> x = torch.ones(3, requires_grad=True)
        >>> GradientReversal(0.5)(x).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000, -0.5000])
    """

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"
