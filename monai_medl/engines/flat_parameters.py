# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Parameters held as consecutive views of one flat tensor, with their gradients views of one flat gradient.

A fused Adam kernel costs about a microsecond per tensor on top of its arithmetic, and on a tabular model of a
hundred weights in fourteen tensors that is most of the update; elementwise work over several parameters (a
random-effects layer's draw and KL) needs a concatenation per step. :class:`FlatParameters` re-backs the parameters
(``p.data``) by views of one tensor in a chosen order, so that :class:`~monai_medl.engines.adam_step.AdamStep`
updates them as one tensor and consecutive parameters are one slice; :meth:`FlatParameters.restore` gives every
parameter its own storage again. The values never change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["FlatParameters"]


class FlatParameters:
    """Re-back ``params`` by consecutive views of one flat tensor (``flat``) and give each a zero gradient that is a
    view of one flat gradient (``grad``).

    Args:
        params: distinct tensors of one dtype and device, in the order of the flat layout.

    Example::

        >>> import torch
        >>> layer = torch.nn.Linear(3, 2)
        >>> flat = FlatParameters([layer.weight, layer.bias])
        >>> flat.flat.shape, layer.weight.data_ptr() == flat.flat.data_ptr()
        (torch.Size([8]), True)
        >>> flat.restore()  # every parameter in its own storage again, the same values
        >>> layer.weight.data_ptr() == flat.flat.data_ptr()
        False
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        if not self.params or len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("FlatParameters: params must be a non-empty list of distinct tensors.")
        if len({(p.dtype, p.device) for p in self.params}) > 1:
            raise ValueError("FlatParameters: every parameter must have the same dtype and device.")
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.grad = torch.zeros_like(self.flat)
        self.sizes = [p.numel() for p in self.params]
        self.param_views = [v.view_as(p) for v, p in zip(self.flat.split(self.sizes), self.params)]
        self.grad_views = [g.view_as(p) for g, p in zip(self.grad.split(self.sizes), self.params)]
        for p, view, grad in zip(self.params, self.param_views, self.grad_views):
            p.data, p.grad = view, grad

    def slice(self, first: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, gradients)``: the flat views of ``count`` consecutive parameters starting at ``first``."""
        index = next(i for i, p in enumerate(self.params) if p is first)
        start = sum(self.sizes[:index])
        stop = start + sum(self.sizes[index : index + count])
        return self.flat[start:stop], self.grad[start:stop]

    def intact(self, grads: Sequence[torch.Tensor | None]) -> bool:
        """Whether ``grads`` (the parameters' ``.grad``, in this layout's order) are still the flat gradient's views."""
        return len(grads) == len(self.grad_views) and all(g is v for g, v in zip(grads, self.grad_views))

    def restore(self) -> None:
        """Give every parameter (and gradient) its own storage again, with the same values."""
        with torch.no_grad():
            for p in self.params:
                if p.untyped_storage().data_ptr() == self.flat.untyped_storage().data_ptr():
                    p.data = p.data.clone()
                if p.grad is not None and p.grad.untyped_storage().data_ptr() == self.grad.untyped_storage().data_ptr():
                    p.grad = p.grad.clone()
