# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Mixed-effects task loss: both heads plus the random effects' KL, as one MONAI-style loss module."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.losses.dice_ce import dice_ce
from monai_medl.losses.dice_ce_pair import dice_ce_pair, dice_ce_pair_applies
from monai_medl.losses.loss_output import LossOutput
from monai_medl.networks.blocks.mixed_effects_output import MixedEffectsOutput
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet

__all__ = ["MixedEffectsLoss", "task_loss"]

TASKS = ("bce", "ce", "mse", "gaussian_nll", "dice_ce")


def task_loss(
    task: str, pred: torch.Tensor, target: torch.Tensor, log_noise_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-batch mean task loss for ``task`` in ``("bce", "ce", "mse", "gaussian_nll", "dice_ce")``.

    ``dice_ce`` is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` for segmentation logits
    ``(batch, classes, *spatial)`` and an integer label map ``(batch, 1, *spatial)``, computed by
    :func:`~monai_medl.losses.dice_ce.dice_ce` (the same value and gradient with a closed-form backward pass).
    ``bce`` takes one logit per item (target 0/1), ``ce`` one logit per class (integer target), ``mse`` and
    ``gaussian_nll`` real targets; ``gaussian_nll`` is the full negative log-likelihood with the learned noise s.d.
    ``exp(log_noise_scale)``, the likelihood that makes an evidence-lower-bound KL weight meaningful.
    """
    if task == "dice_ce":
        return dice_ce(pred, target)
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


def _scaled(weight: float, term: torch.Tensor) -> torch.Tensor:
    # a weight of 1 leaves the term as it is (the same value and gradient, one operation and autograd node fewer)
    return term if weight == 1.0 else weight * term


class MixedEffectsLoss(nn.Module):
    """``lambda_mixed * task(y, mixed) + lambda_fixed * task(y, fixed) + kl_weight * KL``.

    Called as ``loss(pred, target)`` like any MONAI loss, where ``pred`` is the
    :class:`~monai_medl.networks.blocks.MixedEffectsOutput` a mixed-effects network returns in training mode (both
    heads and the summed KL of its random-effects layers), so it drops into a plain ``SupervisedTrainer`` with no
    reference to the network. The loss it returns is a :class:`~monai_medl.losses.LossOutput`: the weighted total (a
    0-dim tensor, usable wherever a scalar loss is) whose ``terms`` hold the unweighted terms, detached, for logging
    (:class:`~monai_medl.handlers.LossTermsHandler`); :meth:`terms` computes them alone.

    Args:
        task: ``"bce"``, ``"ce"``, ``"mse"``, ``"gaussian_nll"``, ``"dice_ce"`` (segmentation) or a callable
            ``(pred, target) -> loss``.
        lambda_mixed: weight of the mixed-effects head. Defaults to 1.0.
        lambda_fixed: weight of the fixed-effects head. Defaults to 1.0.
        kl_weight: weight of the KL sum; a float (ARMED-style regulariser, default 1e-3) or ``"elbo"`` for
            ``1 / num_train_samples``, the evidence-lower-bound weight needed for learned variance components.
        num_train_samples: number of training samples, required with ``kl_weight="elbo"``.

    Example::

        >>> import torch
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(4, 1, num_clusters=3)
        >>> x, z, y = torch.randn(6, 4), torch.eye(3)[[0, 1, 2, 0, 1, 2]], torch.randint(0, 2, (6, 1)).float()
        >>> loss_fn = MixedEffectsLoss(task="bce", kl_weight="elbo", num_train_samples=800)
        >>> loss = loss_fn(net.train()(x, z), y)
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
        >>> sorted(loss.terms)  # unweighted, for LossTermsHandler
        ['kl', 'loss_fixed', 'loss_mixed']
        >>> bool(loss == loss_fn.combine(loss.terms))
        True
    """

    def __init__(
        self,
        task: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "bce",
        lambda_mixed: float = 1.0,
        lambda_fixed: float = 1.0,
        kl_weight: float | str = 1e-3,
        num_train_samples: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(task, nn.Module) and any(isinstance(m, MixedEffectsNet) for m in task.modules()):
            raise TypeError("MixedEffectsLoss no longer takes the network: it reads both heads and the KL from pred.")
        if isinstance(task, str) and task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} or a callable, got {task!r}.")
        if kl_weight == "elbo":
            if not num_train_samples or num_train_samples < 1:
                raise ValueError("kl_weight='elbo' needs num_train_samples (the number of training samples).")
            kl_weight = 1.0 / num_train_samples
        elif isinstance(kl_weight, str):
            raise ValueError(f"kl_weight must be a float or 'elbo', got {kl_weight!r}.")
        self.task = task
        self.lambda_mixed = lambda_mixed
        self.lambda_fixed = lambda_fixed
        self.kl_weight = float(kl_weight)

    def _task(self, pred: torch.Tensor, target: torch.Tensor, out: MixedEffectsOutput) -> torch.Tensor:
        if callable(self.task):
            return self.task(pred, target)
        return task_loss(self.task, pred, target, out.log_noise_scale)

    @staticmethod
    def check_output(pred: object) -> MixedEffectsOutput:
        """``pred`` if it is a mixed-effects network's training output, else a TypeError that says what to do."""
        if not (isinstance(pred, tuple) and hasattr(pred, "fixed") and hasattr(pred, "kl")):
            raise TypeError(
                "MixedEffectsLoss needs the structured output of a mixed-effects network in training mode "
                f"(MixedEffectsOutput: mixed, fixed, features, ..., kl), got {type(pred).__name__}; call the network "
                "in train() mode (in eval mode it returns the prediction tensor only)."
            )
        return pred  # type: ignore[return-value]

    def terms(self, pred: MixedEffectsOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms ``{"loss_mixed", "loss_fixed", "kl"}`` (tensors; no host synchronisation)."""
        out = self.check_output(pred)
        if out.kl is None:
            raise ValueError("pred.kl is None: pass the network's training-mode output net(x, z), not forward_all.")
        if self.task == "dice_ce" and dice_ce_pair_applies(out.mixed, out.fixed, target):
            # both heads in one node that keeps no probability maps (same values and gradients)
            loss_mixed, loss_fixed = dice_ce_pair(out.mixed, out.fixed, target)
        else:
            loss_mixed, loss_fixed = self._task(out.mixed, target, out), self._task(out.fixed, target, out)
        return {"loss_mixed": loss_mixed, "loss_fixed": loss_fixed, "kl": out.kl}

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of :meth:`terms`."""
        return (
            _scaled(self.lambda_mixed, terms["loss_mixed"])
            + _scaled(self.lambda_fixed, terms["loss_fixed"])
            + _scaled(self.kl_weight, terms["kl"])
        )

    def forward(self, pred: MixedEffectsOutput, target: torch.Tensor) -> torch.Tensor:
        """The weighted total as a :class:`~monai_medl.losses.LossOutput` (a 0-dim tensor) carrying :meth:`terms`."""
        terms = self.terms(pred, target)
        total = self.combine(terms)
        return LossOutput(total, terms) if total.dim() == 0 else total  # a task callable without reduction: as is
