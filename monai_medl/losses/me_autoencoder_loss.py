# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Loss of the mixed-effects autoencoder-classifier: reconstructions, both classifiers and the KL."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss
from monai_medl.networks.nets.me_autoencoder import MixedEffectsAutoEncoderOutput

__all__ = ["MixedEffectsAutoEncoderLoss"]


class MixedEffectsAutoEncoderLoss(MixedEffectsLoss):
    """``recon_weight * MSE(recon, x) + recon_fixed_weight * MSE(recon_F, x) + lambda_mixed * task(y, y_M)
    + lambda_fixed * task(y, y_F) + kl_weight * sum(KL)`` for a
    :class:`~monai_medl.networks.nets.MixedEffectsAutoEncoder`.

    Called as ``loss(pred, label)`` inside a plain MONAI ``SupervisedTrainer``: ``pred`` is the
    :class:`~monai_medl.networks.nets.MixedEffectsAutoEncoderOutput` the network returns in training mode (both
    classifiers, both reconstructions, the input and the KL). When the network has one branch only, its single
    reconstruction is counted once with ``recon_weight``. The
    adversarial term is added separately by :class:`~monai_medl.handlers.AdversaryHandler` (or
    :class:`~monai_medl.losses.AdversarialRegularizer`). Defaults follow ARMED's autoencoders (reconstruction 1,
    classification 0.01, KL 1e-5). :meth:`terms` gives the unweighted terms as tensors for logging.

    Args:
        task: classification loss of the phenotype (``"bce"``, ``"ce"``, ... or a callable). Defaults to ``"bce"``.
        recon_weight: weight of the model's reconstruction (RE branch when present). Defaults to 1.0.
        recon_fixed_weight: weight of the FE reconstruction. Defaults to 1.0.
        lambda_mixed: weight of the ``y_M`` classifier. Defaults to 0.01.
        lambda_fixed: weight of the ``y_F`` classifier. Defaults to 0.01.
        kl_weight: weight of the random effects' KL, a float or ``"elbo"``. Defaults to 1e-5.
        num_train_samples: number of training samples, for ``kl_weight="elbo"``.

    Example::

        >>> import torch
        >>> from monai_medl.networks.nets import MixedEffectsAutoEncoder
        >>> net = MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 16, 16), num_clusters=4, channels=(4, 8),
        ...                               strides=(2, 2))
        >>> x, z, y = torch.rand(2, 1, 16, 16), torch.eye(4)[[0, 3]], torch.tensor([[0.0], [1.0]])
        >>> loss_fn = MixedEffectsAutoEncoderLoss()
        >>> out = net.train()(x, z)
        >>> loss = loss_fn(out, y)
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
        >>> sorted(loss_fn.terms(out, y))
        ['kl', 'loss_fixed', 'loss_mixed', 'recon', 'recon_fixed']
    """

    def __init__(
        self,
        task: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "bce",
        recon_weight: float = 1.0,
        recon_fixed_weight: float = 1.0,
        lambda_mixed: float = 0.01,
        lambda_fixed: float = 0.01,
        kl_weight: float | str = 1e-5,
        num_train_samples: int | None = None,
    ) -> None:
        super().__init__(task, lambda_mixed, lambda_fixed, kl_weight, num_train_samples)
        if recon_weight < 0 or recon_fixed_weight < 0:
            raise ValueError(f"reconstruction weights must be >= 0, got {recon_weight} and {recon_fixed_weight}.")
        self.recon_weight = recon_weight
        self.recon_fixed_weight = recon_fixed_weight

    # the ignores: the auto-encoder's output has MixedEffectsOutput's fields and more (a NamedTuple cannot extend one)
    def terms(self, pred: MixedEffectsAutoEncoderOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Unweighted terms: those of :class:`MixedEffectsLoss` plus ``recon`` and ``recon_fixed``."""
        terms = super().terms(pred, target)  # type: ignore[arg-type]
        if not hasattr(pred, "reconstruction"):
            raise TypeError(
                "MixedEffectsAutoEncoderLoss needs a MixedEffectsAutoEncoder's output (it has no 'reconstruction')."
            )
        recon = F.mse_loss(pred.reconstruction, pred.inputs)
        single = pred.reconstruction_fixed is pred.reconstruction  # one branch: its reconstruction counts once
        terms["recon"] = recon
        terms["recon_fixed"] = recon if single else F.mse_loss(pred.reconstruction_fixed, pred.inputs)
        return terms

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        total = super().combine(terms) + self.recon_weight * terms["recon"]
        if terms["recon_fixed"] is not terms["recon"]:
            total = total + self.recon_fixed_weight * terms["recon_fixed"]
        return total
