# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``prepare_batch`` for MONAI engines: image, label and the cluster design matrix ``z`` from the batch's site."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

from monai_medl.transforms.site import site_index_to_design

__all__ = ["MixedEffectsPrepareBatch"]


class MixedEffectsPrepareBatch(PrepareBatch):
    """Turn a batch dictionary into ``(image, label, (z,), {})`` so engines call ``network(image, z)``.

    ``z`` is one-hot for sites seen in training and, for the unseen marker (``-1``), either all zeros (population
    prediction, the default) or the soft design inferred by ``z_predictor`` from the image. ``mode`` can force every
    item to ``"population"`` (``z = 0``) or ``"inferred"``; ``"randomized"`` replaces every ``z`` by a random one-hot
    row (the randomized-z ablation).

    Args:
        num_clusters: number of training clusters (width of ``z``).
        image_key: input key, or a sequence of keys whose tensors are concatenated on the channel axis.
            Defaults to ``"image"``.
        label_key: target key (None for no target). Defaults to ``"label"``.
        site_key: key holding the site index (after :class:`~monai_medl.transforms.SiteToIndexd`). Defaults to
            ``"site"``.
        mode: ``"mixed"`` (one-hot for seen sites, population or inferred for unseen), ``"population"``,
            ``"inferred"`` or ``"randomized"``. Defaults to ``"mixed"``.
        z_predictor: callable mapping the input to ``(batch, num_clusters)`` probabilities (e.g.
            ``ClusterPredictor.predict_design``); required for ``mode="inferred"``, optional for ``"mixed"``.
        seed: seed of the randomized-z generator. Defaults to 0.
        design_key: when given, the batch dictionary also receives the ``z`` each item got (``batch[design_key]``,
            ``(batch, num_clusters)``) and the mode (``batch[design_key + "_mode"]``, one string per item), so that
            handlers read them from ``engine.state.batch`` (e.g. the per-scan rows of
            :class:`~monai_medl.bundle.SitePredictionCollector`). Defaults to None (the batch is left unchanged).

    Example::

        >>> trainer = SupervisedTrainer(..., prepare_batch=MixedEffectsPrepareBatch(num_clusters=6))
    """

    MODES = ("mixed", "population", "inferred", "randomized")

    def __init__(
        self,
        num_clusters: int,
        image_key: str | Sequence[str] = CommonKeys.IMAGE,
        label_key: str | None = CommonKeys.LABEL,
        site_key: str = "site",
        mode: str = "mixed",
        z_predictor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        design_key: str | None = None,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}.")
        if mode == "inferred" and z_predictor is None:
            raise ValueError("mode='inferred' needs a z_predictor (a cluster classifier trained on training data).")
        self.num_clusters = num_clusters
        self.image_key = image_key
        self.label_key = label_key
        self.site_key = site_key
        self.mode = mode
        self.z_predictor = z_predictor
        self.generator = torch.Generator().manual_seed(seed)
        self.design_key = design_key

    def _image(self, batchdata: dict, device, non_blocking: bool, **kwargs) -> torch.Tensor:
        keys = [self.image_key] if isinstance(self.image_key, str) else list(self.image_key)
        missing = [k for k in keys if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing} key(s); available keys: {sorted(batchdata)}.")
        parts = [torch.as_tensor(batchdata[k]).to(device=device, non_blocking=non_blocking, **kwargs) for k in keys]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def design(self, sites: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Design matrix for ``sites`` (indices, ``-1`` = unseen) according to :attr:`mode`."""
        batch = image.shape[0]
        if self.mode == "population":
            return image.new_zeros(batch, self.num_clusters)
        if self.mode == "randomized":
            idx = torch.randint(0, self.num_clusters, (batch,), generator=self.generator)
            return site_index_to_design(idx, self.num_clusters).to(image)
        z = site_index_to_design(sites, self.num_clusters).to(image)
        infer = torch.ones(batch, dtype=torch.bool) if self.mode == "inferred" else sites.reshape(-1).cpu() < 0
        if self.z_predictor is not None and bool(infer.any()):
            with torch.no_grad():
                soft = self.z_predictor(image[infer.to(image.device)]).to(z)
            z[infer.to(z.device)] = soft
        return z

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        if not isinstance(batchdata, dict):
            raise TypeError(f"MixedEffectsPrepareBatch expects a batch dictionary, got {type(batchdata).__name__}.")
        if self.site_key not in batchdata:
            raise KeyError(
                f"batch has no {self.site_key!r} key; every sample must carry its site "
                f"(apply monai_medl.transforms.SiteToIndexd). Available keys: {sorted(batchdata)}."
            )
        image = self._image(batchdata, device, non_blocking, **kwargs)
        sites = batchdata[self.site_key]
        if not isinstance(sites, torch.Tensor) or sites.is_floating_point():
            raise TypeError(
                f"batch[{self.site_key!r}] must hold integer site indices (apply SiteToIndexd first), "
                f"got {type(sites).__name__}."
            )
        z = self.design(sites, image)
        if self.design_key is not None:
            batchdata[self.design_key] = z.detach()
            batchdata[self.design_key + "_mode"] = [self.mode] * z.shape[0]
        label = None
        if self.label_key is not None and isinstance(batchdata.get(self.label_key), torch.Tensor):
            label = batchdata[self.label_key].to(device=device, non_blocking=non_blocking, **kwargs)
        return image, label, (z,), {}
