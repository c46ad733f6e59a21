# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``prepare_batch`` for multimodal mixed-effects networks: image, label, ``z``, modality mask and covariates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from monai.utils import CommonKeys

from monai_medl.engines.prepare_batch import MixedEffectsPrepareBatch

__all__ = ["MultimodalPrepareBatch"]


class MultimodalPrepareBatch(MixedEffectsPrepareBatch):
    """Turn a batch into ``(image, label, (z,), {"mask": ..., "covariates": ...})``.

    Engines then call ``network(image, z, mask=mask, covariates=covariates)``, the signature of
    :class:`~monai_medl.networks.nets.make_multimodal_me_cnn`. ``z`` follows
    :class:`~monai_medl.engines.MixedEffectsPrepareBatch` (one-hot for seen sites, population or inferred for
    unseen ones; a ``z_predictor`` receives the stacked image only). The mask (from
    :class:`~monai_medl.transforms.ModalityMaskd`) is passed when the batch has ``mask_key``; without it every
    modality counts as present. Covariates are read from ``covariates_key`` (a ``(batch, n)`` tensor, or a list of
    keys holding one scalar each, stacked in that order).

    Args:
        num_clusters: number of training clusters (width of ``z``).
        image_key: the stacked image key, or the modality keys to concatenate. Defaults to ``"image"``.
        label_key: target key. Defaults to ``"label"``.
        site_key: site index key. Defaults to ``"site"``.
        mask_key: modality mask key (None to never pass a mask). Defaults to ``"modality_mask"``.
        covariates_key: covariate key(s), or None for a network without covariates. Defaults to None.
        allow_missing_covariates: pass no covariates (the network's covariate branch is then absent) when a batch
            lacks a covariate key, e.g. scans from a folder without a table, instead of raising a KeyError.
            Defaults to False.
        mode: ``"mixed"``, ``"population"``, ``"inferred"`` or ``"randomized"`` (see the parent). Defaults to
            ``"mixed"``.
        z_predictor: soft-``z`` predictor for unseen sites. Defaults to None.
        seed: seed of the randomized-z generator. Defaults to 0.
        design_key: batch key receiving the ``z`` each item got (and ``design_key + "_mode"`` the mode); see the
            parent. Defaults to None.

    Example::

        >>> import torch
        >>> prepare = MultimodalPrepareBatch(num_clusters=4, image_key=["t1", "flair"], covariates_key=["age", "sex"])
        >>> batch = {"t1": torch.randn(2, 1, 8, 8), "flair": torch.randn(2, 1, 8, 8),
        ...          "label": torch.tensor([[0.0], [1.0]]), "site": torch.tensor([1, -1]),
        ...          "modality_mask": torch.tensor([[1, 1], [1, 0]]),
        ...          "age": torch.tensor([61.0, 70.0]), "sex": torch.tensor([0.0, 1.0])}
        >>> image, label, (z,), kwargs = prepare(batch)  # what SupervisedTrainer(..., prepare_batch=prepare) does
        >>> image.shape, z
        (torch.Size([2, 2, 8, 8]), tensor([[0., 1., 0., 0.],
                [0., 0., 0., 0.]]))
        >>> kwargs["mask"].tolist(), kwargs["covariates"].tolist()
        ([[1, 1], [1, 0]], [[61.0, 0.0], [70.0, 1.0]])
    """

    def __init__(
        self,
        num_clusters: int,
        image_key: str | Sequence[str] = CommonKeys.IMAGE,
        label_key: str | None = CommonKeys.LABEL,
        site_key: str = "site",
        mask_key: str | None = "modality_mask",
        covariates_key: str | Sequence[str] | None = None,
        allow_missing_covariates: bool = False,
        mode: str = "mixed",
        z_predictor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        design_key: str | None = None,
    ) -> None:
        super().__init__(num_clusters, image_key, label_key, site_key, mode, z_predictor, seed, design_key)
        self.mask_key = mask_key
        self.covariates_key = covariates_key
        self.allow_missing_covariates = allow_missing_covariates

    def _covariates(self, batchdata: dict, device, non_blocking: bool) -> torch.Tensor | None:
        key = cast("str | Sequence[str]", self.covariates_key)  # set: __call__ reads covariates only then
        keys = [key] if isinstance(key, str) else list(key)
        missing = [k for k in keys if k not in batchdata]
        if missing and self.allow_missing_covariates:
            return None
        if missing:
            raise KeyError(f"batch has no covariate key(s) {missing}; available keys: {sorted(batchdata)}.")
        parts = [torch.as_tensor(batchdata[k], dtype=torch.float32) for k in keys]
        cov = parts[0] if len(parts) == 1 else torch.stack([p.reshape(-1) for p in parts], dim=1)
        if cov.dim() == 1:
            cov = cov.unsqueeze(1)
        return cov.to(device=device, non_blocking=non_blocking)

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image, label, args, _ = super().__call__(batchdata, device, non_blocking, **kwargs)
        extra: dict[str, torch.Tensor] = {}
        if self.mask_key is not None and self.mask_key in batchdata:
            extra["mask"] = torch.as_tensor(batchdata[self.mask_key]).to(device=device, non_blocking=non_blocking)
        if self.covariates_key is not None:
            covariates = self._covariates(batchdata, device, non_blocking)
            if covariates is not None:
                extra["covariates"] = covariates
        return image, label, args, extra
