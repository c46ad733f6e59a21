# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Few-shot mode for sites never seen in training: fit each new site's random effects, then evaluate with them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.utils import CommonKeys
from torch import nn

from monai_medl.engines.few_shot import fit_new_cluster
from monai_medl.engines.prepare_batch import MixedEffectsPrepareBatch
from monai_medl.networks.utils import unwrap_network

__all__ = ["fit_unseen_sites", "FewShotPrepareBatch"]


def fit_unseen_sites(
    network: nn.Module,
    support: Sequence[Mapping[str, Any]],
    group_key: str = "site_name",
    image_key: str = CommonKeys.IMAGE,
    label_key: str = CommonKeys.LABEL,
    task: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "bce",
    steps: int = 200,
    lr: float = 0.05,
) -> dict[str, int]:
    """Fit one new cluster per site in ``support`` (a few labelled items each), everything else frozen.

    Each site's items go to :func:`~monai_medl.engines.fit_new_cluster`, which appends a column to ``z`` and fits
    only that column's random effects (MAP under the learned or fixed prior). Use the returned mapping with
    :class:`FewShotPrepareBatch` to evaluate the remaining items of those sites.

    Args:
        network: trained mixed-effects network (grows by one cluster per site).
        support: dictionaries with ``image_key``, ``label_key`` and ``group_key`` (the site name), already
            transformed like the evaluation data.
        group_key: key of the site name. Defaults to ``"site_name"`` (``SiteToIndexd(raw_key_postfix="name")``, as in
            the bundles).
        image_key: input key. Defaults to ``"image"``.
        label_key: target key. Defaults to ``"label"``.
        task: task loss for the fit (see :func:`~monai_medl.losses.task_loss`). Defaults to ``"bce"``.
        steps: optimisation steps per site. Defaults to 200.
        lr: learning rate. Defaults to 0.05.

    Returns:
        site name -> its column in ``z``.

    Example::

        >>> import torch
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(in_features=4, out_channels=1, num_clusters=3)  # stands in for a trained net
        >>> support_items = [{"image": torch.randn(4), "label": torch.tensor([float(i % 2)]), "site_name": name}
        ...                  for i, name in enumerate(["new_a"] * 4 + ["new_b"] * 4)]
        >>> columns = fit_unseen_sites(net, support_items, group_key="site_name", steps=20)
        >>> columns, net.num_clusters
        ({'new_a': 3, 'new_b': 4}, 5)
        >>> prepare = FewShotPrepareBatch(net.num_clusters, site_columns=columns, group_key="site_name")
    """
    by_site: dict[str, list[Mapping[str, Any]]] = {}
    for i, item in enumerate(support):
        for key in (image_key, label_key, group_key):
            if key not in item:
                raise KeyError(f"support item {i} has no {key!r} key; available keys: {sorted(item)}.")
        by_site.setdefault(str(item[group_key]), []).append(item)
    columns: dict[str, int] = {}
    device = next(unwrap_network(network).parameters()).device
    for site, items in by_site.items():
        images = torch.stack([torch.as_tensor(it[image_key]) for it in items]).to(device)
        labels = torch.stack([torch.as_tensor(it[label_key]) for it in items]).to(device)
        columns[site] = fit_new_cluster(network, images, labels, task=task, steps=steps, lr=lr)
    return columns


class FewShotPrepareBatch(MixedEffectsPrepareBatch):
    """:class:`~monai_medl.engines.MixedEffectsPrepareBatch` that gives few-shot-fitted sites their own ``z`` column.

    Items whose site name (``group_key``) is in ``site_columns`` get a one-hot ``z`` at that column; every other
    item is handled by the parent class (one-hot for training sites, population or inferred ``z`` for the rest).

    Args:
        num_clusters: width of ``z`` after the few-shot fit (``network.num_clusters``).
        site_columns: site name -> column, from :func:`fit_unseen_sites`.
        group_key: batch key with the site names. Defaults to ``"site_name"``.
        kwargs: the other arguments of :class:`~monai_medl.engines.MixedEffectsPrepareBatch`.

    Example::

        >>> import torch
        >>> prepare = FewShotPrepareBatch(5, {"new_a": 3, "new_b": 4})  # SupervisedEvaluator(..., prepare_batch=...)
        >>> batch = {"image": torch.randn(3, 4), "label": torch.ones(3, 1), "site": torch.tensor([1, -1, -1]),
        ...          "site_name": ["b", "new_b", "other"]}
        >>> image, label, (z,), kwargs = prepare(batch)
        >>> z  # a training site, a few-shot-fitted site, an unseen site without support items (population)
        tensor([[0., 1., 0., 0., 0.],
                [0., 0., 0., 0., 1.],
                [0., 0., 0., 0., 0.]])
    """

    def __init__(
        self, num_clusters: int, site_columns: Mapping[str, int], group_key: str = "site_name", **kwargs: Any
    ) -> None:
        super().__init__(num_clusters, **kwargs)
        bad = {s: c for s, c in site_columns.items() if not 0 <= int(c) < num_clusters}
        if bad:
            raise ValueError(f"site_columns must be columns of z (0..{num_clusters - 1}), got {bad}.")
        self.site_columns = {str(s): int(c) for s, c in site_columns.items()}
        self.group_key = group_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image, label, (z,), extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        if self.group_key not in batchdata:
            raise KeyError(f"batch has no {self.group_key!r} key; available keys: {sorted(batchdata)}.")
        names = batchdata[self.group_key]
        names = names.reshape(-1).tolist() if isinstance(names, torch.Tensor) else list(names)
        for i, name in enumerate(names):
            column = self.site_columns.get(str(name))
            if column is not None:
                z[i] = 0
                z[i, column] = 1
        return image, label, (z,), extra
