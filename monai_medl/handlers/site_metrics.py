# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Evaluator handler: metrics overall, per site and for seen vs unseen sites, into ``engine.state.metrics``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.handlers import from_engine
from monai.utils import IgniteInfo, min_version, optional_import

from monai_medl.metrics.site_metrics import SITE_METRICS, compute_site_metrics

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SiteMetricsHandler"]

_ACTIVATIONS = ("auto", "sigmoid", "softmax", None)


class SiteMetricsHandler:
    """Collect predictions, targets and sites over an epoch and report metrics overall, per site, seen and unseen.

    Attach to a MONAI ``SupervisedEvaluator`` (or trainer). At the end of every epoch it writes, for each metric
    ``m`` in ``metrics``, ``engine.state.metrics[prefix + m]`` (all items), ``prefix + m + "_seen"`` (items whose
    site index is ``>= 0``), ``prefix + m + "_unseen"`` (index ``-1``) and, with ``per_site=True``,
    ``prefix + m + "_site_" + name`` for every site; undefined values (e.g. AUROC of a one-class site) are NaN.
    ``TensorBoardStatsHandler``/``StatsHandler``/``MetricsSaver`` then log them like any metric. The full nested
    result is kept in :attr:`results` (see :func:`~monai_medl.metrics.compute_site_metrics`). Run the evaluator
    with :class:`~monai_medl.engines.MixedEffectsPrepareBatch` in ``"mixed"`` mode (unseen sites at population
    level or inferred ``z``), ``"population"``, ``"inferred"`` or ``"randomized"`` to compare the unseen-site
    modes; under ``torch.distributed`` predictions are gathered from every rank.

    Args:
        metrics: names from :data:`~monai_medl.metrics.SITE_METRICS`. Defaults to ``("auroc", "balanced_accuracy")``.
        site_key: batch key with site indices (``-1`` = unseen). Defaults to ``"site"``.
        group_key: optional batch key naming each item's site for the per-site breakdown (e.g. ``"site_raw"`` from
            ``SiteToIndexd(raw_key_postfix="raw")``, so unseen sites are reported one by one); defaults to the index.
        output_transform: maps ``engine.state.output`` to ``(predictions, targets)``. Defaults to None for
            ``from_engine(["pred", "label"])``.
        activation: ``"auto"`` (sigmoid for one output channel, softmax for several), ``"sigmoid"``, ``"softmax"``
            or None when predictions are already probabilities (or regression values). Defaults to ``"auto"``.
        threshold: decision threshold on binary probabilities (choose it on training data, e.g. with
            :func:`~monai_medl.metrics.youden_threshold`). Defaults to 0.5.
        prefix: prepended to every metric name (e.g. ``"val_"``). Defaults to ``""``.
        per_site: also write one metric per site. Defaults to True.
        name: logger name; defaults to the engine's logger.

    Example::

        >>> handler = SiteMetricsHandler(metrics=("auroc", "balanced_accuracy"), prefix="val_", group_key="site_raw")
        >>> evaluator = SupervisedEvaluator(..., prepare_batch=MixedEffectsPrepareBatch(K), val_handlers=[handler])
        >>> evaluator.run(); evaluator.state.metrics["val_auroc_unseen"]
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("auroc", "balanced_accuracy"),
        site_key: str = "site",
        group_key: str | None = None,
        output_transform: Callable | None = None,
        activation: str | None = "auto",
        threshold: float = 0.5,
        prefix: str = "",
        per_site: bool = True,
        name: str | None = None,
    ) -> None:
        unknown = [m for m in metrics if m not in SITE_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; available: {sorted(SITE_METRICS)}.")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")
        self.metrics = tuple(metrics)
        self.site_key = site_key
        self.group_key = group_key
        self.output_transform = from_engine(["pred", "label"]) if output_transform is None else output_transform
        self.activation = activation
        self.threshold = threshold
        self.prefix = prefix
        self.per_site = per_site
        self.logger = logging.getLogger(name) if name is not None else None
        self.results: dict[str, Any] = {}
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self._preds: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._sites: list[int] = []
        self._groups: list[str] = []

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.compute)

    def _batch_values(self, batch: Any, key: str) -> list:
        if isinstance(batch, dict):  # engine with decollate=False
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

    def update(self, engine: Engine) -> None:
        """Store the current iteration's predictions, targets, site indices and site names."""
        preds, targets = self.output_transform(engine.state.output)
        preds = torch.stack([torch.as_tensor(p) for p in preds]) if isinstance(preds, (list, tuple)) else preds
        targets = torch.stack([torch.as_tensor(t) for t in targets]) if isinstance(targets, (list, tuple)) else targets
        self._preds.append(preds.detach().float().cpu().reshape(preds.shape[0], -1))
        self._targets.append(targets.detach().cpu().reshape(targets.shape[0], -1)[:, 0])
        sites = [int(s) for s in self._batch_values(engine.state.batch, self.site_key)]
        if len(sites) != preds.shape[0]:
            raise ValueError(f"got {len(sites)} site values for {preds.shape[0]} predictions.")
        self._sites += sites
        groups = sites if self.group_key is None else self._batch_values(engine.state.batch, self.group_key)
        self._groups += [str(g) for g in groups]

    def _probabilities(self, preds: torch.Tensor) -> torch.Tensor:
        act = self.activation
        if act == "auto":
            act = "sigmoid" if preds.shape[1] == 1 else "softmax"
        if act == "sigmoid":
            return torch.sigmoid(preds)
        if act == "softmax":
            return torch.softmax(preds, dim=1)
        return preds

    def _gather(self) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
        preds, targets = torch.cat(self._preds), torch.cat(self._targets)
        sites, groups = list(self._sites), list(self._groups)
        if idist.get_world_size() > 1:
            preds, targets = idist.all_gather(preds), idist.all_gather(targets)
            sites = [int(s) for s in idist.all_gather(torch.tensor(sites)).tolist()]
            groups = [g for part in idist.all_gather(groups) for g in (part if isinstance(part, list) else [part])]
        return preds, targets, sites, groups

    def compute(self, engine: Engine) -> None:
        """Compute the metrics of the epoch and write them into ``engine.state.metrics``."""
        if not self._preds:
            return
        preds, targets, sites, groups = self._gather()
        scores = self._probabilities(preds).numpy()
        self.results = compute_site_metrics(
            targets.numpy(), scores, sites, self.metrics, threshold=self.threshold, groups=groups
        )
        out = engine.state.metrics
        for m in self.metrics:
            out[self.prefix + m] = self.results["overall"][m]
            out[f"{self.prefix}{m}_seen"] = self.results["seen"][m]
            out[f"{self.prefix}{m}_unseen"] = self.results["unseen"][m]
            if self.per_site:
                for site, values in self.results["per_site"].items():
                    out[f"{self.prefix}{m}_site_{site}"] = values[m]
        if self.logger is not None:
            summary = ", ".join(
                f"{m} {self.results['overall'][m]:.4f} (seen {self.results['seen'][m]:.4f}, "
                f"unseen {self.results['unseen'][m]:.4f})"
                for m in self.metrics
            )
            self.logger.info(f"site metrics: {summary}")
