# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A scalar loss that carries its named terms, so engines treat it as the loss and handlers read the parts."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["LossOutput", "loss_terms"]


class LossOutput(torch.Tensor):
    """The total loss (a 0-dim tensor, in the autograd graph) with its named terms, detached, in :attr:`terms`.

    It is the loss for everything that takes one: MONAI's ``SupervisedTrainer`` (which calls ``.mean()`` on it, stores
    it as ``engine.state.output["loss"]`` and calls ``.backward()``), ``float(loss)``, AMP scalers. Scalar results of
    operations on it (``loss.mean()``, ``loss + adversarial_term``, ``loss.detach()``) keep the terms, so a handler
    that adds a penalty before the backward does not lose them; any other result is a plain tensor. As in
    scvi-tools' ``LossOutput``, the parts travel with the total instead of being recomputed for logging.

    Args:
        total: the 0-dim loss.
        terms: the named parts (tensors), e.g. ``{"loss_mixed", "loss_fixed", "kl"}``.

    Example::

        >>> import torch
        >>> w = torch.tensor(2.0, requires_grad=True)
        >>> loss = LossOutput(3 * w, {"task": 3 * w})
        >>> isinstance(loss.mean(), LossOutput), sorted(loss.mean().terms), sorted((loss + 1).terms)
        (True, ['task'], ['task'])
        >>> loss.backward()
        >>> float(w.grad)
        3.0
    """

    terms: dict[str, torch.Tensor]

    @staticmethod
    def __new__(cls, total: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> LossOutput:
        if not isinstance(total, torch.Tensor) or total.dim() != 0:
            shape = tuple(total.shape) if isinstance(total, torch.Tensor) else type(total).__name__
            raise ValueError(f"LossOutput needs a 0-dim total loss tensor, got {shape}.")
        out = total.as_subclass(cls)
        out.terms = {k: v.detach() for k, v in terms.items()}  # for logging: no graph kept alive
        return out

    def __init__(self, total: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> None:
        pass  # set up in __new__ (torch.Tensor's __init__ takes no arguments)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dim() == 0:
            source = next((a for a in (*args, *(kwargs or {}).values()) if isinstance(a, LossOutput)), None)
            if source is not None:
                result = out.as_subclass(cls)
                result.terms = source.terms
                return result
        return out

    def __deepcopy__(self, memo: dict) -> LossOutput:
        plain = self.as_subclass(torch.Tensor)
        return LossOutput(copy.deepcopy(plain, memo), copy.deepcopy(self.terms, memo))


def loss_terms(loss: object) -> dict[str, torch.Tensor] | None:
    """The terms a loss carries (:class:`LossOutput`), or None for a plain tensor."""
    terms = getattr(loss, "terms", None)
    return terms if isinstance(terms, dict) else None
