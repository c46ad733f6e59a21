# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects task loss: both heads plus the random effects' KL, as one MONAI-style loss module."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.utils import kl_divergence, unwrap_network

__all__ = ["MixedEffectsLoss", "task_loss"]

TASKS = ("bce", "ce", "mse", "gaussian_nll")


def task_loss(
    task: str, pred: torch.Tensor, target: torch.Tensor, log_noise_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-batch mean task loss for ``task`` in ``("bce", "ce", "mse", "gaussian_nll")``.

    ``bce`` takes one logit per item (target 0/1), ``ce`` one logit per class (integer target), ``mse`` and
    ``gaussian_nll`` real targets; ``gaussian_nll`` is the full negative log-likelihood with the learned noise s.d.
    ``exp(log_noise_scale)``, the likelihood that makes an evidence-lower-bound KL weight meaningful.
    """
    if task == "ce":
        return F.cross_entropy(pred, target.reshape(-1).long())
    target = target.reshape(pred.shape).to(pred.dtype)
    if task == "bce":
        return F.binary_cross_entropy_with_logits(pred, target)
    if task == "mse":
        return F.mse_loss(pred, target)
    if task == "gaussian_nll":
        if log_noise_scale is None:
            raise ValueError("task='gaussian_nll' needs a network built with learn_noise_scale=True.")
        nll = 0.5 * ((target - pred) / log_noise_scale.exp()).square() + log_noise_scale + 0.5 * math.log(2 * math.pi)
        return nll.mean()
    raise ValueError(f"task must be one of {TASKS}, got {task!r}.")


class MixedEffectsLoss(nn.Module):
    """``lambda_mixed * task(y, mixed) + lambda_fixed * task(y, fixed) + kl_weight * sum(KL)``.

    Called as ``loss(pred, target)`` like any MONAI loss, where ``pred`` is the tensor the network just returned;
    the fixed-effects prediction and the KL terms are read from the network itself (its ``latest_output`` and its
    :class:`~monai_medl.networks.layers.RandomEffects` layers), so it drops into a plain ``SupervisedTrainer``.
    The value of every term of the latest call is kept in :attr:`terms` for logging.

    Args:
        network: the mixed-effects network being trained (may be wrapped in DistributedDataParallel).
        task: ``"bce"``, ``"ce"``, ``"mse"``, ``"gaussian_nll"`` or a callable ``(pred, target) -> loss``.
        lambda_mixed: weight of the mixed-effects head. Defaults to 1.0.
        lambda_fixed: weight of the fixed-effects head. Defaults to 1.0.
        kl_weight: weight of the KL sum; a float (ARMED-style regulariser, default 1e-3) or ``"elbo"`` for
            ``1 / num_train_samples``, the evidence-lower-bound weight needed for learned variance components.
        num_train_samples: number of training samples, required with ``kl_weight="elbo"``.

    Example::

        >>> loss_fn = MixedEffectsLoss(net, task="bce", kl_weight="elbo", num_train_samples=800)
        >>> loss = loss_fn(net(x, z), y)
    """

    def __init__(
        self,
        network: nn.Module,
        task: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "bce",
        lambda_mixed: float = 1.0,
        lambda_fixed: float = 1.0,
        kl_weight: float | str = 1e-3,
        num_train_samples: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(task, str) and task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} or a callable, got {task!r}.")
        if kl_weight == "elbo":
            if not num_train_samples or num_train_samples < 1:
                raise ValueError("kl_weight='elbo' needs num_train_samples (the number of training samples).")
            kl_weight = 1.0 / num_train_samples
        elif isinstance(kl_weight, str):
            raise ValueError(f"kl_weight must be a float or 'elbo', got {kl_weight!r}.")
        self.network = [network]  # a list, so the network is not registered (and not saved) as a submodule
        self.task = task
        self.lambda_mixed = lambda_mixed
        self.lambda_fixed = lambda_fixed
        self.kl_weight = float(kl_weight)
        self.terms: dict[str, float] = {}

    def _task(self, pred: torch.Tensor, target: torch.Tensor, out: MixedEffectsOutput) -> torch.Tensor:
        if callable(self.task):
            return self.task(pred, target)
        return task_loss(self.task, pred, target, out.log_noise_scale)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        net = unwrap_network(self.network[0])
        out: MixedEffectsOutput | None = net.__dict__.get("latest_output")
        # DistributedDataParallel(find_unused_parameters=True) returns a copy of the output (through its autograd
        # "sink"): accept it when it equals the latest mixed output, and take the mixed term on it
        same = out is not None and (
            out.mixed is pred or (out.mixed.shape == pred.shape and torch.equal(out.mixed.detach(), pred.detach()))
        )
        if not same:
            raise RuntimeError(
                "MixedEffectsLoss must be called on the tensor the network returned in its latest forward call "
                "(it reads the fixed-effects head from the same call); got a different tensor."
            )
        mixed = self._task(pred, target, out)
        fixed = self._task(out.fixed, target, out)
        kl = kl_divergence(net).to(pred.device)
        total = self.lambda_mixed * mixed + self.lambda_fixed * fixed + self.kl_weight * kl
        self.terms = {"loss_mixed": mixed.item(), "loss_fixed": fixed.item(), "kl": kl.item()}
        return total
