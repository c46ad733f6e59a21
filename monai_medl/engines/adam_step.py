# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The update of a fused ``torch.optim.Adam`` without its per-step Python bookkeeping.

``torch.optim.Adam(fused=True).step()`` spends about 50 microseconds in Python per call (grouping the tensors by
device and dtype, checking every parameter's state, the profiler hooks) around a kernel of about 10: on a tabular
model of a hundred weights stepped thousands of times that is a large share of training. :class:`AdamStep` keeps
the optimizer (its parameters, state and hyper-parameters stay the truth: a learning-rate scheduler or a loaded
``state_dict`` take effect) and calls the same fused kernel with the same arguments, so the update is bit for bit
the optimizer's own (tested); the parameters' step counts become views of one tensor, so that one operation
increments them all. Parameters held in one flat tensor
(:class:`~monai_medl.engines.flat_parameters.FlatParameters`, registered with :meth:`AdamStep.use_flat`) are
updated as that one tensor: the fused kernel's cost is mostly per tensor, and its arithmetic is elementwise, the
same per entry. Whatever it does not cover (another optimizer, a group that is not fused, a parameter without a
gradient or state yet, a tensor learning rate, capturable or differentiable options) falls back to
``optimizer.step()``.
"""

from __future__ import annotations

from itertools import repeat
from operator import is_, is_not
from typing import cast

import torch

from monai_medl.engines.flat_parameters import FlatParameters

__all__ = ["AdamStep"]

_OFF = ("capturable", "differentiable", "decoupled_weight_decay", "foreach")


class AdamStep:
    """``optimizer.step()`` of a fused CPU/CUDA ``torch.optim.Adam``, calling its kernel directly.

    Args:
        optimizer: any optimizer; only a ``torch.optim.Adam`` whose groups are all ``fused=True`` takes the direct
            path (``fast`` tells), every other optimizer is stepped with its own ``step()``.

    Example::

        >>> import torch
        >>> w, twin = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        >>> step, reference = AdamStep(torch.optim.Adam([w], lr=0.1, fused=True)), torch.optim.Adam([twin], lr=0.1)
        >>> for grad in torch.randn(4, 3):
        ...     w.grad, twin.grad = grad.clone(), grad.clone()
        ...     step()
        ...     reference.step()
        >>> step.fast, torch.allclose(w, twin)  # the fused kernel, called directly
        (True, True)
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        groups = optimizer.param_groups
        self.fast = isinstance(optimizer, torch.optim.Adam) and all(_covered(g) for g in groups)
        self._lists: list[tuple] | None = None  # per group: params, averages, squares, maxima, steps, counter
        self._source: tuple = ()  # what the cached lists were read from (load_state_dict replaces it)
        self._flat: list[FlatParameters] = []

    def use_flat(self, flat: FlatParameters | None) -> None:
        """Update the group whose parameters ``flat`` holds as its one flat tensor (None: forget the registered
        ones); the optimizer's moment estimates of the group are re-backed in the same layout at the next step."""
        self._flat = [] if flat is None else [f for f in self._flat if f is not flat] + [flat]
        self._lists = None

    def __call__(self) -> None:
        """One update of every parameter that has a gradient (the optimizer's own ``step()`` where not covered)."""
        if not self.fast:
            self.optimizer.step()
            return
        groups = self.optimizer.param_groups
        grads = [[p.grad for p in g["params"]] for g in groups]
        source = (self.optimizer.state, groups, len(groups))
        # a new state or group list (load_state_dict) or an added group: read the lists again
        stale = self._lists is None or any(a is not b for a, b in zip(source[:2], self._source))
        stale = stale or source[2] != self._source[2]
        complete = all(all(map(is_not, group, repeat(None))) for group in grads)  # map: C-level, per step
        if stale or not complete:
            # the first step creates the state; a missing gradient is the optimizer's to skip
            self.optimizer.step()
            self._lists = self._cache() if complete else None
            self._source = source
            return
        lists = cast(list, self._lists)
        for group, group_grads, (params, avgs, sqs, maxes, steps, counter, flat) in zip(groups, grads, lists):
            counter.add_(1)  # every step of the group at once (the steps are views of it)
            if flat is not None and all(map(is_, group_grads, flat[0])):
                # the group as its one flat tensor (gradients still the flat views: checked by identity)
                params, group_grads, avgs, sqs, maxes, steps = flat[1:]
            torch._fused_adam_(
                params,
                group_grads,
                avgs,
                sqs,
                maxes,
                steps,
                amsgrad=group["amsgrad"],
                lr=group["lr"],
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                grad_scale=None,
                found_inf=None,
            )

    def _cache(self) -> list[tuple] | None:
        lists = []
        for group in self.optimizer.param_groups:
            params = list(group["params"])
            states = [self.optimizer.state.get(p, {}) for p in params]
            if not all("exp_avg" in s for s in states) or len({(p.device, p.dtype) for p in params}) > 1:
                self.fast = False  # one kernel call per group needs one device and dtype
                return None
            # the per-parameter step counts become views of one tensor: one increment per call instead of one per
            # parameter (the values are unchanged; optimizer.step() increments each view as before)
            counter = torch.stack([s["step"] for s in states])
            for i, state in enumerate(states):
                state["step"] = counter[i]
            flat = self._flat_lists(params, counter)  # may re-back the moment estimates: read them after
            maxes = [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else []
            avgs, sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            lists.append((params, avgs, sqs, maxes, [s["step"] for s in states], counter, flat))
        return lists

    def _flat_lists(self, params: list, counter: torch.Tensor) -> tuple | None:
        """The kernel's arguments for a group held by a registered :class:`FlatParameters`: the moment estimates
        re-backed in its layout (the same values) and one step count (the group's, all equal); None otherwise."""
        flat = next((f for f in self._flat if {id(p) for p in f.params} == {id(p) for p in params}), None)
        if flat is None or not flat.intact([p.grad for p in flat.params]) or bool((counter != counter[0]).any()):
            return None
        state = self.optimizer.state
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if "max_exp_avg_sq" in state[params[0]] else [])
        buffers = []
        for key in keys:
            buffer = torch.cat([state[p][key].reshape(-1) for p in flat.params])
            for p, view in zip(flat.params, buffer.split(flat.sizes)):
                state[p][key] = view.view_as(p)
            buffers.append([buffer])
        position = {id(p): i for i, p in enumerate(flat.params)}
        expected = [flat.grad_views[position[id(p)]] for p in params]  # in the group's order
        maxes = buffers[2] if len(buffers) > 2 else []
        return expected, [flat.flat], [flat.grad], buffers[0], buffers[1], maxes, [counter[0]]


def _covered(group: dict) -> bool:
    scalars = not any(isinstance(v, torch.Tensor) for v in (group["lr"], *group["betas"]))
    return bool(group.get("fused")) and scalars and not any(group.get(k) for k in _OFF)
