# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Engine handler feeding :class:`~monai_medl.metrics.SiteMetric`, writing its values to ``engine.state.metrics``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.handlers import from_engine
from monai.utils import CommonKeys, IgniteInfo, min_version, optional_import

from monai_medl.metrics.site_metrics import SiteMetric, flatten_site_metrics

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SiteMetricHandler", "batch_values"]


def batch_values(batch: Any, key: str) -> list:
    """One value per item of ``batch[key]``, for a collated batch (dict) or a decollated one (list of dicts).

    Raises:
        KeyError: naming ``key`` and the available keys when an item lacks it.
    """
    if isinstance(batch, dict):
        if key not in batch:
            raise KeyError(f"batch has no {key!r} key; available keys: {sorted(batch)}.")
        value = batch[key]
        return value.reshape(-1).tolist() if isinstance(value, torch.Tensor) else list(value)
    values = []
    for item in batch:
        if key not in item:
            raise KeyError(f"batch item has no {key!r} key; available keys: {sorted(item)}.")
        v = item[key]
        values.append(v.reshape(-1)[0].item() if isinstance(v, torch.Tensor) else v)
    return values


class SiteMetricHandler:
    """Feed a :class:`~monai_medl.metrics.SiteMetric` every iteration; write its values at the end of each epoch.

    Predictions and targets come from ``engine.state.output`` (through ``output_transform``), each item's site from
    ``engine.state.batch``: the site index under ``site_key`` (``-1`` = unseen, from
    :class:`~monai_medl.transforms.SiteToIndexd`) and, optionally, the site name under ``site_name_key`` for the
    per-site breakdown (so unseen sites are reported one by one). At ``EPOCH_COMPLETED`` it writes
    :func:`~monai_medl.metrics.flatten_site_metrics` of the result into ``engine.state.metrics``: ``prefix + m``,
    ``prefix + "seen_" + m``, ``prefix + "unseen_" + m`` and ``prefix + "site_<name>_" + m``; undefined values (e.g.
    AUROC of a one-class site) are NaN. The nested result is kept in :attr:`results`. The handler does not look at
    how ``z`` was built: run one evaluator per ``z`` mode (e.g. ``MixedEffectsPrepareBatch(mode="population")``) and
    name the run with ``prefix``.

    Args:
        metric: the metric to feed; defaults to ``SiteMetric(metrics)``.
        metrics: metric names when ``metric`` is None. Defaults to ``("auroc", "balanced_accuracy")``.
        site_key: batch key of the site index. Defaults to ``"site"``.
        site_name_key: optional batch key of the site name (``SiteToIndexd(raw_key_postfix="name")``); the index
            names the sites when None.
        output_transform: maps ``engine.state.output`` to ``(probabilities, targets)``. Defaults to
            ``from_engine(["pred", "label"])``; apply the activation in the evaluator's postprocessing.
        prefix: prepended to every metric name (e.g. ``"val_"``). Defaults to ``""``.
        per_site: also write one value per site and metric. Defaults to True.
        sep: separator of the split, site and metric parts of the names (the bundles use ``prefix="val/"``,
            ``sep="/"``: ``val/auroc``, ``val/seen/auroc``, ``val/site/<name>/auroc``). Defaults to ``"_"``.
        name: logger name; defaults to the engine's logger.

    Example::

        >>> import torch
        >>> from monai.transforms import Activationsd
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> from monai_medl.utils.examples import site_evaluator
        >>> sites = [(0, "a"), (1, "b"), (-1, "new")] * 4  # -1: a site not seen in training
        >>> items = [{"image": torch.randn(4), "label": torch.tensor([float(i % 2)]), "site": s, "site_name": name}
        ...          for i, (s, name) in enumerate(sites)]
        >>> handler = SiteMetricHandler(metrics=("auroc",), site_name_key="site_name", prefix="val_")
        >>> evaluator = site_evaluator(MixedEffectsMLP(4, 1, num_clusters=2), items, [handler],
        ...                            Activationsd("pred", sigmoid=True), batch_size=6)
        >>> evaluator.run(); sorted(evaluator.state.metrics)  # doctest: +NORMALIZE_WHITESPACE
        ['val_auroc', 'val_seen_auroc', 'val_site_a_auroc', 'val_site_b_auroc', 'val_site_new_auroc',
         'val_unseen_auroc']
        >>> 0.0 <= evaluator.state.metrics["val_unseen_auroc"] <= 1.0
        True
    """

    def __init__(
        self,
        metric: SiteMetric | None = None,
        metrics: Sequence[str] = ("auroc", "balanced_accuracy"),
        site_key: str = "site",
        site_name_key: str | None = None,
        output_transform: Callable | None = None,
        prefix: str = "",
        per_site: bool = True,
        name: str | None = None,
        sep: str = "_",
    ) -> None:
        self.metric = SiteMetric(metrics) if metric is None else metric
        self.site_key = site_key
        self.site_name_key = site_name_key
        self.output_transform = (
            from_engine([CommonKeys.PRED, CommonKeys.LABEL]) if output_transform is None else output_transform
        )
        self.prefix = prefix
        self.per_site = per_site
        self.sep = sep
        self.logger = logging.getLogger(name) if name is not None else None
        self.results: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.compute)

    def reset(self, engine: Engine | None = None) -> None:
        self.metric.reset()

    def sites(self, engine: Engine) -> tuple[list[int], list[Any]]:
        """Site indices and site names (the indices without ``site_name_key``) of the current batch's items."""
        index = [int(s) for s in batch_values(engine.state.batch, self.site_key)]
        names = index if self.site_name_key is None else batch_values(engine.state.batch, self.site_name_key)
        return index, names

    def update(self, engine: Engine) -> None:
        """Add the current iteration's probabilities, targets and sites to the metric."""
        preds, targets = self.output_transform(engine.state.output)
        index, names = self.sites(engine)
        self.metric(preds, targets, sites=[str(s) for s in names], seen=index)

    def compute(self, engine: Engine) -> None:
        """Aggregate the epoch and write the values into ``engine.state.metrics``."""
        if len(self.metric) == 0:
            return
        self.results = self.metric.aggregate()
        engine.state.metrics.update(
            flatten_site_metrics(self.results, self.metric.metrics, self.prefix, per_site=self.per_site, sep=self.sep)
        )
        if self.logger is not None:
            summary = ", ".join(
                f"{m} {self.results['overall'][m]:.4f} (seen {self.results['seen'][m]:.4f}, "
                f"unseen {self.results['unseen'][m]:.4f})"
                for m in self.metric.metrics
            )
            self.logger.info(f"{self.prefix}site metrics: {summary}")
