# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Loss of the mixed-effects autoencoder-classifier: reconstructions, both classifiers and the KL."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss
from monai_medl.networks.utils import unwrap_network

__all__ = ["MixedEffectsAutoEncoderLoss"]


class MixedEffectsAutoEncoderLoss(MixedEffectsLoss):
    """``recon_weight * MSE(recon, x) + recon_fixed_weight * MSE(recon_F, x) + lambda_mixed * task(y, y_M)
    + lambda_fixed * task(y, y_F) + kl_weight * sum(KL)`` for a
    :class:`~monai_medl.networks.nets.MixedEffectsAutoEncoder`.

    Called as ``loss(pred, label)`` inside a plain MONAI ``SupervisedTrainer``: ``pred`` is the ``y_M`` tensor the
    network just returned, the reconstructions and the input are read from the network's ``latest_output``. When
    the network has one branch only, its single reconstruction is counted once with ``recon_weight``. The
    adversarial term is added separately by :class:`~monai_medl.handlers.AdversaryHandler` (or
    :class:`~monai_medl.losses.AdversarialRegularizer`). Defaults follow ARMED's autoencoders (reconstruction 1,
    classification 0.01, KL 1e-5). Term values of the latest call are kept in :attr:`terms`.

    Args:
        network: the autoencoder being trained (may be wrapped in DistributedDataParallel).
        task: classification loss of the phenotype (``"bce"``, ``"ce"``, ... or a callable). Defaults to ``"bce"``.
        recon_weight: weight of the model's reconstruction (RE branch when present). Defaults to 1.0.
        recon_fixed_weight: weight of the FE reconstruction. Defaults to 1.0.
        lambda_mixed: weight of the ``y_M`` classifier. Defaults to 0.01.
        lambda_fixed: weight of the ``y_F`` classifier. Defaults to 0.01.
        kl_weight: weight of the random effects' KL, a float or ``"elbo"``. Defaults to 1e-5.
        num_train_samples: number of training samples, for ``kl_weight="elbo"``.

    Example::

        >>> loss_fn = MixedEffectsAutoEncoderLoss(net)
        >>> loss = loss_fn(net(x, z), y)
        >>> sorted(loss_fn.terms)
        ['kl', 'loss_fixed', 'loss_mixed', 'recon', 'recon_fixed']
    """

    def __init__(
        self,
        network: nn.Module,
        task: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "bce",
        recon_weight: float = 1.0,
        recon_fixed_weight: float = 1.0,
        lambda_mixed: float = 0.01,
        lambda_fixed: float = 0.01,
        kl_weight: float | str = 1e-5,
        num_train_samples: int | None = None,
    ) -> None:
        super().__init__(network, task, lambda_mixed, lambda_fixed, kl_weight, num_train_samples)
        if recon_weight < 0 or recon_fixed_weight < 0:
            raise ValueError(f"reconstruction weights must be >= 0, got {recon_weight} and {recon_fixed_weight}.")
        self.recon_weight = recon_weight
        self.recon_fixed_weight = recon_fixed_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = super().forward(pred, target)
        out = unwrap_network(self.network[0]).__dict__["latest_output"]
        if not hasattr(out, "reconstruction"):
            raise RuntimeError(
                "MixedEffectsAutoEncoderLoss needs a MixedEffectsAutoEncoder (its output has no 'reconstruction')."
            )
        recon = F.mse_loss(out.reconstruction, out.inputs)
        if out.reconstruction_fixed is out.reconstruction:
            recon_fixed = recon
            total = total + self.recon_weight * recon
        else:
            recon_fixed = F.mse_loss(out.reconstruction_fixed, out.inputs)
            total = total + self.recon_weight * recon + self.recon_fixed_weight * recon_fixed
        self.terms.update({"recon": recon.item(), "recon_fixed": recon_fixed.item()})
        return total
