# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``prepare_batch`` for MONAI engines: image, label and the cluster design matrix ``z`` from the batch's site."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

from monai_medl.networks.layers.factor_designs import check_num_levels
from monai_medl.transforms.key_errors import errors_name_key
from monai_medl.transforms.site import site_index_to_design

__all__ = ["MixedEffectsPrepareBatch"]


class MixedEffectsPrepareBatch(PrepareBatch):
    """Turn a batch dictionary into ``(image, label, (z,), {})`` so engines call ``network(image, z)``.

    ``z`` is one-hot for sites seen in training and, for the unseen marker (``-1``), either all zeros (population
    prediction, the default) or the soft design inferred by ``z_predictor`` from the image. ``mode`` can force every
    item to ``"population"`` (``z = 0``) or ``"inferred"``; ``"randomized"`` replaces every ``z`` by a random one-hot
    row (the randomized-z ablation).

    **Several grouping factors.** With ``num_clusters`` a mapping ``factor -> number of training levels`` (e.g.
    ``{"site": 6, "subject": 120}``) the batch carries one index per factor (by default under the factor's name;
    map factors to other keys with ``site_key``), and ``z`` is a dictionary ``factor -> (batch, K_f)`` design, as
    the multi-factor :class:`~monai_medl.networks.nets.MixedEffectsMLP` and ``MixedEffectsCNN`` take it. An index
    ``-1`` (a level unseen in training) gives that factor's zero row only: a known site with a new subject keeps its
    site design. ``"population"`` zeroes every factor and ``"randomized"`` draws every factor at random;
    ``"inferred"`` and ``z_predictor`` are single-factor only.

    Args:
        num_clusters: number of training clusters (width of ``z``), or a mapping grouping factor -> its number of
            training levels.
        image_key: input key, or a sequence of keys whose tensors are concatenated on the channel axis.
            Defaults to ``"image"``.
        label_key: target key (None for no target). Defaults to ``"label"``.
        site_key: key holding the site index (after :class:`~monai_medl.transforms.SiteToIndexd`); with several
            factors a mapping factor -> key (factors not in it use their own name). Defaults to ``"site"``.
        mode: ``"mixed"`` (one-hot for seen sites, population or inferred for unseen), ``"population"``,
            ``"inferred"`` or ``"randomized"``. Defaults to ``"mixed"``.
        z_predictor: callable mapping the input to ``(batch, num_clusters)`` probabilities (e.g.
            ``ClusterClassifier.predict_design``); required for ``mode="inferred"``, optional for ``"mixed"``.
        seed: seed of the randomized-z generator. Defaults to 0.
        design_key: when given, the batch dictionary also receives the ``z`` each item got (``batch[design_key]``,
            ``(batch, num_clusters)``) and the mode (``batch[design_key + "_mode"]``, one string per item), so that
            handlers read them from ``engine.state.batch`` (e.g. the per-scan rows of
            :class:`~monai_medl.bundle.SitePredictionCollector`). Defaults to None (the batch is left unchanged).
        keep_meta: False returns the image and label as plain tensors (MONAI ``MetaTensor`` metadata dropped), which
            a training run with ``SupervisedTrainer(compile=True)`` needs: that trainer wraps the prediction in a
            ``MetaTensor`` again when the input was one, and a mixed-effects network's training output is a
            structured tuple. Keep the default True wherever the predictions are saved or inverted (evaluation and
            inference read the image's metadata through the prediction). Defaults to True.

    Example::

        >>> import torch
        >>> prepare = MixedEffectsPrepareBatch(num_clusters=3)  # SupervisedTrainer(..., prepare_batch=prepare)
        >>> batch = {"image": torch.randn(3, 4), "label": torch.ones(3, 1), "site": torch.tensor([0, 2, -1])}
        >>> image, label, (z,), kwargs = prepare(batch)  # the engine then calls network(image, z)
        >>> z  # one-hot for seen sites, zeros (population level) for the unseen site -1
        tensor([[1., 0., 0.],
                [0., 0., 1.],
                [0., 0., 0.]])
        >>> nested = MixedEffectsPrepareBatch(num_clusters={"site": 3, "subject": 5})  # batch["site"], ["subject"]
        >>> batch["subject"] = torch.tensor([4, -1, 0])  # -1: a new subject; its site keeps its design
        >>> image, label, (z,), kwargs = nested(batch)
        >>> {factor: tuple(design.shape) for factor, design in z.items()}, z["subject"].sum(1).tolist()
        ({'site': (3, 3), 'subject': (3, 5)}, [1.0, 0.0, 1.0])
    """

    MODES = ("mixed", "population", "inferred", "randomized")

    def __init__(
        self,
        num_clusters: int | Mapping[str, int],
        image_key: str | Sequence[str] = CommonKeys.IMAGE,
        label_key: str | None = CommonKeys.LABEL,
        site_key: str | Mapping[str, str] = "site",
        mode: str = "mixed",
        z_predictor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        design_key: str | None = None,
        keep_meta: bool = True,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}.")
        if mode == "inferred" and z_predictor is None:
            raise ValueError("mode='inferred' needs a z_predictor (a cluster classifier trained on training data).")
        self.num_levels = check_num_levels(num_clusters) if isinstance(num_clusters, Mapping) else None
        if self.num_levels is not None:
            if mode == "inferred" or z_predictor is not None or design_key is not None:
                raise ValueError(
                    f"mode='inferred', z_predictor and design_key need a single grouping factor, got "
                    f"{list(self.num_levels)}; expected mode 'mixed', 'population' or 'randomized' without "
                    "z_predictor and design_key."
                )
            keys = dict(site_key) if isinstance(site_key, Mapping) else {}
            unknown = sorted(set(keys) - set(self.num_levels))
            if unknown:
                raise ValueError(f"site_key names unknown factors {unknown}; factors: {list(self.num_levels)}.")
            self.factor_keys = {f: keys.get(f, f) for f in self.num_levels}
        elif not isinstance(site_key, str):
            raise TypeError(f"site_key must be a string for a single grouping factor, got {site_key!r}.")
        self.num_clusters = num_clusters
        self.image_key = image_key
        self.label_key = label_key
        self.site_key = site_key
        self.mode = mode
        self.z_predictor = z_predictor
        self.generator = torch.Generator().manual_seed(seed)
        self.design_key = design_key
        self.keep_meta = bool(keep_meta)

    def _image(self, batchdata: dict, device, non_blocking: bool, **kwargs) -> torch.Tensor:
        keys = [self.image_key] if isinstance(self.image_key, str) else list(self.image_key)
        missing = [k for k in keys if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing} key(s); available keys: {sorted(batchdata)}.")
        parts = [self._tensor(batchdata[k]).to(device=device, non_blocking=non_blocking, **kwargs) for k in keys]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _tensor(self, value) -> torch.Tensor:
        value = torch.as_tensor(value)
        return value if self.keep_meta or type(value) is torch.Tensor else value.as_subclass(torch.Tensor)

    def design(self, sites: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Design matrix for ``sites`` (indices, ``-1`` = unseen) according to :attr:`mode`."""
        batch, num_clusters = image.shape[0], cast(int, self.num_clusters)  # one grouping factor here
        if self.mode == "population":
            return image.new_zeros(batch, num_clusters)
        if self.mode == "randomized":
            idx = torch.randint(0, num_clusters, (batch,), generator=self.generator)
            return site_index_to_design(idx, num_clusters).to(image)
        z = site_index_to_design(sites, num_clusters).to(image)
        infer = torch.ones(batch, dtype=torch.bool) if self.mode == "inferred" else sites.reshape(-1).cpu() < 0
        if self.z_predictor is not None and bool(infer.any()):
            with torch.no_grad():
                soft = self.z_predictor(image[infer.to(image.device)]).to(z)
            z[infer.to(z.device)] = soft
        return z

    def _indices(self, batchdata: dict, key: str) -> torch.Tensor:
        if key not in batchdata:
            raise KeyError(
                f"batch has no {key!r} key; every sample must carry its level of each grouping factor "
                f"(apply monai_medl.transforms.SiteToIndexd). Available keys: {sorted(batchdata)}."
            )
        sites = batchdata[key]
        if not isinstance(sites, torch.Tensor) or sites.is_floating_point():
            raise TypeError(
                f"batch[{key!r}] must hold integer level indices (apply SiteToIndexd first), "
                f"got {type(sites).__name__}."
            )
        return sites

    def factor_designs(self, batchdata: dict, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``factor -> (batch, K_f)`` designs of a multi-factor batch according to :attr:`mode`."""
        batch = image.shape[0]
        z = {}
        for factor, levels in cast(dict[str, int], self.num_levels).items():  # several grouping factors here
            if self.mode == "population":
                z[factor] = image.new_zeros(batch, levels)
                continue
            if self.mode == "randomized":
                idx = torch.randint(0, levels, (batch,), generator=self.generator)
            else:
                idx = self._indices(batchdata, self.factor_keys[factor])
            with errors_name_key(self.factor_keys[factor]):  # an index out of range names the batch key
                z[factor] = site_index_to_design(idx, levels).to(image)
        return z

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        if not isinstance(batchdata, dict):
            raise TypeError(f"MixedEffectsPrepareBatch expects a batch dictionary, got {type(batchdata).__name__}.")
        z: torch.Tensor | dict[str, torch.Tensor]
        if self.num_levels is None:
            sites = self._indices(batchdata, cast(str, self.site_key))  # a string for one factor (checked)
            image = self._image(batchdata, device, non_blocking, **kwargs)
            z = self.design(sites, image)
            if self.design_key is not None:
                batchdata[self.design_key] = z.detach()
                batchdata[self.design_key + "_mode"] = [self.mode] * z.shape[0]
        else:
            image = self._image(batchdata, device, non_blocking, **kwargs)
            z = self.factor_designs(batchdata, image)
        label = None
        if self.label_key is not None and isinstance(batchdata.get(self.label_key), torch.Tensor):
            label = self._tensor(batchdata[self.label_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        return image, label, (z,), {}
