# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Ignite handler that refits a fresh site probe on held-out fixed-effects features every epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FreshProbeHandler"]


def _fixed_features(network: Any, x: torch.Tensor) -> torch.Tensor:
    """The pooled features ``h`` the heads read, population level (``z = None``); a (Distributed)DataParallel
    wrapper is looked through (its own forward would synchronise ranks that do not all run the probe)."""
    if isinstance(network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        network = network.module
    return network.forward_all(x, None).features[-1]


class FreshProbeHandler:
    """Whether invariance is real: a logistic-regression site probe refitted from scratch each epoch.

    At every ``EPOCH_COMPLETED`` (every ``interval`` epochs) the trainer's network, in eval mode and without
    gradients, computes the fixed-effects features (``z = 0``) of the batches of ``loader`` (held-out *training* items:
    their sites are known, the network never trained on them); a standardised logistic regression (scikit-learn) is
    fitted on half of them and scored on the other half (split alternately by item, seeded) as the site predictor; the
    same probe on the label alone gives the floor that no invariance can go below when the label is confounded with
    the site. It writes into ``engine.state.metrics``: ``<prefix>fresh_probe_acc``, ``<prefix>fresh_probe_floor``
    (label only) and, with ``adversary_mean``, ``<prefix>adv_acc_epoch`` (the adversary's mean batch accuracy
    ``adv_acc`` over the epoch, when the trainer's output has it). The trainer's logging handlers
    (``TensorBoardStatsHandler``, ``StatsHandler``, ``MLFlowHandler``) log these metrics at the epoch end, so a bundle
    sets ``prefix="train/epoch/"`` and needs no writer of its own (one event file, one naming scheme). A
    ``summary_writer``, when given, is written to directly as well (tags ``<tag>/fresh_probe_acc`` etc.), for
    trainers without such a handler. An adversary whose accuracy is at chance while the fresh probe reads the site
    is inert, not successful.

    Args:
        loader: iterable of held-out training batches (dicts with the image, site and label keys).
        site_key: batch key with the site index (negative: unseen, dropped). Defaults to ``"site"``.
        image_key: batch key of the network input. Defaults to ``"image"``.
        label_key: batch key with the class label (for the floor; skipped when absent). Defaults to ``"label"``.
        features_fn: ``(network, x) -> (batch, n)`` features; defaults to ``network.forward_all(x, None).features[-1]``.
        interval: epochs between refits. Defaults to 1.
        summary_writer: optional TensorBoard ``SummaryWriter`` written to directly.
        tag: tag prefix of the ``summary_writer``'s scalars. Defaults to ``"invariance"``.
        seed: seed of the fit/score split. Defaults to 0.
        prefix: prepended to the names in ``engine.state.metrics`` (e.g. ``"train/epoch/"``). Defaults to ``""``.
        adversary_mean: also report the adversary's epoch-mean accuracy (``adv_acc_epoch``); turn it off where
            :class:`~monai_medl.handlers.EpochMeansHandler` already reports it as ``train/epoch/adv_acc``.
            Defaults to True.

    Example::

        >>> import torch
        >>> from monai.data import DataLoader
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> from monai_medl.utils.examples import site_trainer
        >>> items = [{"image": torch.randn(4) + i % 3, "label": torch.tensor([float(i % 2)]), "site": i % 3}
        ...          for i in range(24)]
        >>> net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,))
        >>> probe = FreshProbeHandler(DataLoader(items[12:], batch_size=6))
        >>> trainer = site_trainer(net, [probe], items[:12], batch_size=6)
        >>> trainer.run()
        >>> 0.0 <= trainer.state.metrics["fresh_probe_acc"] <= 1.0
        True
        >>> sorted(trainer.state.metrics)  # the label-only floor too: the items have labels
        ['fresh_probe_acc', 'fresh_probe_floor']
    """

    def __init__(
        self,
        loader: Any,
        site_key: str = "site",
        image_key: str = CommonKeys.IMAGE,
        label_key: str = CommonKeys.LABEL,
        features_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
        interval: int = 1,
        summary_writer: Any = None,
        tag: str = "invariance",
        seed: int = 0,
        prefix: str = "",
        adversary_mean: bool = True,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"FreshProbeHandler: interval must be an integer >= 1, got {interval!r}.")
        self.loader, self.site_key, self.image_key, self.label_key = loader, site_key, image_key, label_key
        self.features_fn = features_fn or _fixed_features
        self.interval, self.summary_writer, self.tag, self.seed = interval, summary_writer, tag, seed
        self.prefix, self.adversary_mean = prefix, adversary_mean
        self._adv: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        if self.adversary_mean:
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, list) and output:  # decollated per item: the batch-level read-out is in every item
            output = output[0]
        if isinstance(output, dict) and "adv_acc" in output:
            self._adv.append(output["adv_acc"])

    @torch.no_grad()
    def features(self, network: torch.nn.Module, device: torch.device | None = None):
        """``(features, sites, labels or None)`` (numpy) of the held-out batches' seen items."""
        feats, sites, labels = [], [], []
        for batch in self.loader:
            for key in (self.image_key, self.site_key):
                if key not in batch:
                    raise KeyError(f"FreshProbeHandler: held-out batch has no {key!r} key; keys: {sorted(batch)}.")
            x = torch.as_tensor(batch[self.image_key]).to(device)
            feats.append(self.features_fn(network, x).flatten(1).float().cpu())
            sites.append(torch.as_tensor(batch[self.site_key]).reshape(-1).cpu())
            if self.label_key in batch:
                labels.append(torch.as_tensor(batch[self.label_key]).reshape(len(x), -1)[:, 0].cpu())
        f, s = torch.cat(feats).numpy(), torch.cat(sites).numpy()
        y = torch.cat(labels).numpy() if len(labels) == len(feats) else None
        keep = s >= 0
        return f[keep], s[keep], None if y is None else y[keep]

    def __call__(self, engine: Engine) -> None:
        network = cast(Any, engine).network  # MONAI's trainers carry their network
        was_training = network.training
        network.eval()
        try:
            feats, sites, labels = self.features(network, getattr(engine.state, "device", None))
        finally:
            network.train(was_training)
        metrics = {"fresh_probe_acc": probe_accuracy(feats, sites, self.seed)}
        if labels is not None:
            metrics["fresh_probe_floor"] = probe_accuracy(labels[:, None], sites, self.seed)
        if self._adv:
            metrics["adv_acc_epoch"] = float(torch.stack([torch.as_tensor(a).float() for a in self._adv]).nanmean())
            self._adv = []
        engine.state.metrics.update({self.prefix + name: value for name, value in metrics.items()})
        if self.summary_writer is not None:
            for name, value in metrics.items():
                self.summary_writer.add_scalar(f"{self.tag}/{name}", value, engine.state.epoch)


def probe_accuracy(features: np.ndarray, sites: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a standardised logistic-regression site probe fitted on a random half of the items
    (NaN when fewer than two sites or four items)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(sites)
    if n < 4 or len(np.unique(sites)) < 2:
        return float("nan")
    order = np.random.default_rng(seed).permutation(n)
    fit, score = order[: n // 2], order[n // 2 :]
    if len(np.unique(sites[fit])) < 2:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features[fit], sites[fit])
    return float((probe.predict(features[score]) == sites[score]).mean())
