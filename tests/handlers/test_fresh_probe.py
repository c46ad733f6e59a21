# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""FreshProbeHandler: the probe reads the site from site-coded features, not from site-free ones; metrics and
TensorBoard scalars are written beside the adversary's epoch accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.handlers import AdversaryHandler, FreshProbeHandler
from monai_medl.handlers.fresh_probe import probe_accuracy
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP


def _items(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(4, generator=g) + 2.0 * (i % 3), "label": torch.tensor([float(i % 2)]), "site": i % 3}
        for i in range(n)
    ]


def test_probe_accuracy_separates_site_coded_from_site_free_features():
    g = np.random.default_rng(0)
    sites = np.repeat(np.arange(3), 40)
    coded = np.eye(3)[sites] + 0.2 * g.standard_normal((120, 3))
    assert probe_accuracy(coded, sites) >= 0.9
    assert probe_accuracy(g.standard_normal((120, 3)), sites) <= 0.5  # chance 1/3
    assert np.isnan(probe_accuracy(coded[:3], sites[:3])) and np.isnan(probe_accuracy(coded, np.zeros(120)))


class _Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def _trained_with(probe, *handlers):
    """Two seeded epochs of an ME-MLP with an adversary, ``probe`` and ``handlers``: ``(trainer, network)``."""
    torch.manual_seed(0)
    net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,))
    adv = ClusterClassifier(8, 3, hidden=(8,))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(_items(30, 0), batch_size=10),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=MixedEffectsLoss(task="bce"),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=3),
        train_handlers=[AdversaryHandler(adv, torch.optim.Adam(adv.parameters(), 1e-3)), probe, *handlers],
    )
    trainer.run()
    return trainer, net


def test_handler_logs_probe_floor_and_adversary_accuracy_each_epoch():
    writer = _Writer()
    held_out = _items(60, 1)
    held_out[0]["site"] = -1  # an unseen item is dropped
    probe = FreshProbeHandler(DataLoader(held_out, batch_size=20), summary_writer=writer)
    trainer, net = _trained_with(probe)
    metrics = trainer.state.metrics
    assert metrics["fresh_probe_acc"] >= 0.8  # the inputs code the site (offset 2 per site) and so does h
    assert metrics["fresh_probe_floor"] <= 0.5  # the label here is independent of the site
    assert 0.0 <= metrics["adv_acc_epoch"] <= 1.0
    assert sorted({t for t, _, _ in writer.scalars}) == [
        "invariance/adv_acc_epoch", "invariance/fresh_probe_acc", "invariance/fresh_probe_floor"
    ]  # fmt: skip
    assert [s for t, _, s in writer.scalars if t.endswith("probe_acc")] == [1, 2]
    assert net.training  # the trainer's mode is restored
    feats, sites, _ = probe.features(net.eval())
    assert len(sites) == 59 and feats.shape == (59, 8)


def test_prefixed_metrics_reach_the_shared_writer_through_tensorboard_stats(tmp_path):
    """With ``prefix`` and no writer of its own, the probe's numbers are logged by the trainer's
    ``TensorBoardStatsHandler`` into its one event file, under the prefixed names only; ``adversary_mean=False``
    leaves the adversary's epoch accuracy to ``EpochMeansHandler``."""
    from monai.handlers import TensorBoardStatsHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from monai_medl.handlers import EpochMeansHandler

    writer = SummaryWriter(log_dir=str(tmp_path))
    probe = FreshProbeHandler(DataLoader(_items(60, 1), batch_size=20), prefix="train/epoch/", adversary_mean=False)
    trainer, _ = _trained_with(
        probe, EpochMeansHandler(), TensorBoardStatsHandler(summary_writer=writer, iteration_log=False)
    )
    writer.close()
    probe_names = {m for m in trainer.state.metrics if "probe" in m or m.endswith("adv_acc_epoch")}
    assert probe_names == {"train/epoch/fresh_probe_acc", "train/epoch/fresh_probe_floor"}
    assert trainer.state.metrics["train/epoch/fresh_probe_acc"] >= 0.8
    files = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = EventAccumulator(str(files[0])).Reload()
    probe_acc = [e.value for e in scalars.Scalars("train/epoch/fresh_probe_acc")]
    assert [e.step for e in scalars.Scalars("train/epoch/fresh_probe_acc")] == [1, 2]
    assert probe_acc[-1] == pytest.approx(trainer.state.metrics["train/epoch/fresh_probe_acc"])
    assert "train/epoch/adv_acc" in scalars.Tags()["scalars"]


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="interval"):
        FreshProbeHandler([], interval=0)
    probe = FreshProbeHandler([{"image": torch.randn(2, 4)}])
    with pytest.raises(KeyError, match="'site'"):
        probe.features(MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,)).eval())


def test_a_data_parallel_wrapper_is_looked_through():
    torch.manual_seed(0)
    net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,)).eval()
    probe = FreshProbeHandler(DataLoader(_items(12, 2), batch_size=6))
    plain, wrapped = probe.features(net), probe.features(torch.nn.DataParallel(net))
    np.testing.assert_array_equal(plain[0], wrapped[0])
    with pytest.raises(AttributeError):  # the wrapper itself has no forward_all: the unwrap is what makes it work
        getattr(torch.nn.DataParallel(net), "forward_all")  # noqa: B009
