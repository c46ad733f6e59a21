# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Ignite handler that adds a site-alignment (CORAL / MMD) term to a MONAI ``SupervisedTrainer``'s loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from monai.utils import CommonKeys

from monai_medl.handlers.site_term import SiteTermHandler
from monai_medl.losses.site_alignment import SiteAlignmentLoss

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SiteAlignmentHandler"]


class SiteAlignmentHandler(SiteTermHandler):
    """Non-adversarial invariance of a mixed-effects network's fixed-effects features, as a trainer handler.

    Runs at ``IterationEvents.LOSS_COMPLETED`` (where :class:`~monai_medl.handlers.AdversaryHandler` runs): reads the
    features tap ``feature_index`` of the network's training output (``engine.state.output["pred"].features``; the
    last one is ``h``, what the heads read), the site (and, for a label-conditional alignment, the label) from
    ``engine.state.batch``, adds the :class:`~monai_medl.losses.SiteAlignmentLoss` term to
    ``engine.state.output["loss"]`` before the backward and writes it as ``align_loss`` (detached) into the output.
    It has no state to checkpoint.

    Args:
        alignment: the :class:`~monai_medl.losses.SiteAlignmentLoss` (its ``lambda_align`` weights the term).
        site_key: batch key with the site index (``-1`` = unseen, ignored). Defaults to ``"site"``.
        label_key: batch key with the class label (label-conditional alignment only). Defaults to ``"label"``.
        feature_index: which of the output's feature taps to align. Defaults to -1 (``h``).

    Example::

        >>> import torch
        >>> from monai.data import DataLoader
        >>> from monai.engines import SupervisedTrainer
        >>> from monai_medl.engines import MixedEffectsPrepareBatch
        >>> from monai_medl.losses import MixedEffectsLoss, SiteAlignmentLoss
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> items = [{"image": torch.randn(4), "label": torch.tensor([float(i % 2)]), "site": i % 3} for i in range(12)]
        >>> net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,))
        >>> handler = SiteAlignmentHandler(SiteAlignmentLoss(3, "coral", lambda_align=0.3, label_classes=2))
        >>> trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1,
        ...                             train_data_loader=DataLoader(items, batch_size=6), network=net,
        ...                             optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        ...                             loss_function=MixedEffectsLoss(task="bce"),
        ...                             prepare_batch=MixedEffectsPrepareBatch(num_clusters=3),
        ...                             train_handlers=[handler])
        >>> trainer.run()
        >>> "align_loss" in trainer.state.output[0]
        True
    """

    def __init__(
        self,
        alignment: SiteAlignmentLoss,
        site_key: str = "site",
        label_key: str = CommonKeys.LABEL,
        feature_index: int = -1,
    ) -> None:
        if not isinstance(alignment, SiteAlignmentLoss):
            raise TypeError(
                f"SiteAlignmentHandler: alignment must be a SiteAlignmentLoss, got {type(alignment).__name__}."
            )
        super().__init__(site_key, label_key)
        self.alignment = alignment
        self.feature_index = int(feature_index)

    @property
    def conditional(self) -> bool:
        return self.alignment.label_classes > 0

    def term(self, engine: Engine, features: Any, sites: Any, labels: Any) -> tuple[torch.Tensor, dict]:
        term = self.alignment(features[self.feature_index], sites, labels)
        return term, {"align_loss": term.detach()}
