# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""EpochMeansHandler: the epoch means of the iteration output's scalars, in engine.state.metrics, per epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from monai_medl.handlers import EpochMeansHandler, OutputMeans


def test_means_per_epoch_reset_and_skipped_values():
    values = {1: [1.0, 2.0, 6.0], 2: [10.0, 20.0, 30.0]}

    def step(engine, batch):
        loss = values[engine.state.epoch][engine.state.iteration - 3 * (engine.state.epoch - 1) - 1]
        # decollated like MONAI's trainers; a non-scalar tensor and a NaN are not averaged
        return [{"loss": torch.tensor(loss), "kl": torch.ones(2), "adv_acc": float("nan")}]

    engine = Engine(step)
    EpochMeansHandler(keys=("loss", "kl", "adv_acc", "site_acc")).attach(engine)
    seen = {}
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.update({e.state.epoch: dict(e.state.metrics)}))
    engine.run(range(3), max_epochs=2)
    assert seen[1] == {"train/epoch/loss": pytest.approx(3.0)}
    assert seen[2] == {"train/epoch/loss": pytest.approx(np.mean(values[2]))}


def test_output_means_ignores_what_is_not_a_dict():
    means = OutputMeans(["loss"])
    means.add(None)
    means.add([])
    means.add({"loss": "high"})
    assert means.means() == {}
