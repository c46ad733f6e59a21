# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""TensorBoard logging of a mixed-effects model: loss terms, adversary, variance components, per-site intercepts."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from monai.handlers.tensorboard_handlers import TensorBoardHandler
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_medl.handlers.epoch_means import TRAIN_SCALARS, OutputMeans
from monai_medl.networks.utils import unwrap_network
from monai_medl.utils.summary import summary

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
plt, has_matplotlib = optional_import("matplotlib.pyplot")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer

__all__ = ["RandomEffectsTensorBoardHandler", "DEFAULT_TERM_TAGS"]

DEFAULT_TERM_TAGS: dict[str, str] = {key: f"train/epoch/{key}" for key in TRAIN_SCALARS}
"""Iteration-output key -> TensorBoard tag: ``train/epoch/<key>`` for each of
:data:`~monai_medl.handlers.epoch_means.TRAIN_SCALARS`, the names :class:`~monai_medl.handlers.EpochMeansHandler`
gives the same means (the bundles use that handler, so MLflow gets them too, and ``term_tags={}`` here)."""


class RandomEffectsTensorBoardHandler(TensorBoardHandler):
    """Epoch-level TensorBoard summary of a mixed-effects model in training.

    Attach to the MONAI ``SupervisedTrainer``; at each epoch end (every ``interval`` epochs) it writes

    * the epoch mean of every loss term found in the iteration output (``train/epoch/loss``,
      ``train/epoch/loss_mixed``, ``train/epoch/loss_fixed``, ``train/epoch/adv_loss``, ``train/epoch/kl``) and the
      adversary's accuracy (``train/epoch/adv_acc``), see :data:`DEFAULT_TERM_TAGS`;
    * per random-effects layer: the prior s.d. (``random_effects/<layer>/prior_sd``, a variance-component
      estimate when learned), the spread of the posterior means across clusters (``.../posterior_mean_spread``)
      and the mean posterior s.d. (``.../posterior_sd``), as reported by :func:`~monai_medl.utils.summary`;
    * a bar plot of every cluster's random intercept (posterior means, one bar per site and output, with the
      prior +-1 s.d. band) as the image ``random_effects/intercepts`` (needs matplotlib).

    Args:
        summary_writer: a ``SummaryWriter``; default creates one in ``log_dir``.
        log_dir: directory of the default writer. Defaults to ``"./runs"``.
        network: the mixed-effects network; defaults to ``engine.network`` at the first epoch end.
        term_tags: iteration-output key -> tag of the scalars to average. Defaults to :data:`DEFAULT_TERM_TAGS`.
        cluster_names: site names for the intercept plot (one per column of ``z``). Defaults to indices.
        plot_intercepts: write the per-site intercept plot. Defaults to True.
        interval: write every ``interval`` epochs. Defaults to 1.
        tag_prefix: prepended to every tag (e.g. ``"train/"``). Defaults to ``""``.

    Example::

        >>> import torch
        >>> from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP
        >>> from monai_medl.utils.examples import site_trainer
        >>> net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,))
        >>> import tempfile
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> from monai_medl.handlers import AdversaryHandler
        >>> from monai_medl.transforms import SiteVocabulary
        >>> vocabulary = SiteVocabulary(["site_a", "site_b", "site_c"])
        >>> adversary = ClusterClassifier(8, num_clusters=3, hidden=(8,))
        >>> adversary_handler = AdversaryHandler(adversary, torch.optim.Adam(adversary.parameters(), 1e-4))
        >>> log_dir = tempfile.mkdtemp()
        >>> tb = RandomEffectsTensorBoardHandler(log_dir=log_dir, cluster_names=vocabulary.sites)
        >>> trainer = site_trainer(net, [adversary_handler, tb])
        >>> trainer.run()
        >>> tb.close()
        >>> tags = EventAccumulator(log_dir).Reload().Tags()
        >>> scalars = sorted(t for t in tags["scalars"] if not t.startswith("random_effects/head.slopes"))
        >>> scalars  # doctest: +NORMALIZE_WHITESPACE
        ['random_effects/head.intercept/posterior_mean_spread', 'random_effects/head.intercept/posterior_sd',
         'random_effects/head.intercept/prior_sd', 'random_effects/linear_slopes/posterior_mean_spread',
         'random_effects/linear_slopes/posterior_sd', 'random_effects/linear_slopes/prior_sd',
         'train/epoch/adv_acc', 'train/epoch/adv_loss', 'train/epoch/loss']
        >>> tags["images"]
        ['random_effects/intercepts']

    In a bundle config: ``{"_target_": "monai_medl.handlers.RandomEffectsTensorBoardHandler",
    "log_dir": "@output_dir"}``.
    """

    def __init__(
        self,
        summary_writer: Any = None,
        log_dir: str = "./runs",
        network: nn.Module | None = None,
        term_tags: Mapping[str, str] | None = None,
        cluster_names: Sequence[str] | None = None,
        plot_intercepts: bool = True,
        interval: int = 1,
        tag_prefix: str = "",
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.network = network
        self.term_tags = dict(DEFAULT_TERM_TAGS if term_tags is None else term_tags)
        self.cluster_names = None if cluster_names is None else [str(c) for c in cluster_names]
        self.plot_intercepts = plot_intercepts
        self.interval = interval
        self.tag_prefix = tag_prefix
        self._means = OutputMeans(list(self.term_tags))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def _reset(self, engine: Engine | None = None) -> None:
        self._means.reset()

    def _accumulate(self, engine: Engine) -> None:
        self._means.add(engine.state.output)

    def __call__(self, engine: Engine) -> None:
        step = engine.state.epoch
        tag = self.tag_prefix
        for key, mean in self._means.means().items():
            self._writer.add_scalar(tag + self.term_tags[key], mean, step)
        net = unwrap_network(self.network if self.network is not None else cast("SupervisedTrainer", engine).network)
        report = summary(net, cluster_names=self.cluster_names)
        for comp in report.random_effects:
            layer = f"{tag}random_effects/{comp.layer}"
            self._writer.add_scalar(f"{layer}/prior_sd", comp.prior_sd, step)
            self._writer.add_scalar(f"{layer}/posterior_mean_spread", comp.mean_spread_sd, step)
            self._writer.add_scalar(f"{layer}/posterior_sd", comp.posterior_sd, step)
        if self.plot_intercepts and report.intercepts and not has_matplotlib:
            # an optional read-out must not fail a training run: say so once and go on without it
            warnings.warn(
                "matplotlib is not installed: the per-site intercept plot (TensorBoard image "
                "'random_effects/intercepts') is skipped; pip install matplotlib to get it.",
                stacklevel=2,
            )
            self.plot_intercepts = False
        if self.plot_intercepts and report.intercepts:
            fig = self.intercept_figure(report.intercepts, report.cluster_names, report.random_effects)
            self._writer.add_figure(f"{tag}random_effects/intercepts", fig, step, close=True)
        self._writer.flush()

    @staticmethod
    def intercept_figure(intercepts: Mapping[str, list], cluster_names: Sequence[str], components: Sequence[Any]):
        """Grouped bar plot of per-cluster intercepts (one panel per intercept layer), prior +-1 s.d. shaded."""
        prior = {c.layer: c.prior_sd for c in components}
        fig, axes = plt.subplots(1, len(intercepts), figsize=(max(4.0, 0.5 * len(cluster_names) + 2), 3), squeeze=False)
        for ax, (layer, raw) in zip(axes[0], intercepts.items()):
            values = np.asarray(raw, dtype=float)  # (K, out)
            k, out = values.shape
            width = 0.8 / out
            for c in range(out):
                ax.bar(np.arange(k) + (c - (out - 1) / 2) * width, values[:, c], width, label=f"output {c}")
            s = prior.get(layer, 0.0)
            ax.axhspan(-s, s, color="grey", alpha=0.2, label="prior +-1 s.d.")
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xticks(np.arange(k))
            ax.set_xticklabels(list(cluster_names), rotation=45, ha="right", fontsize=7)
            ax.set_title(f"random intercepts ({layer})", fontsize=9)
            ax.set_ylabel("posterior mean")
            if out > 1:
                ax.legend(fontsize=6)
        fig.tight_layout()
        return fig
