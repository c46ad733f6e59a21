# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""ModalityDropoutWarmup in a MONAI SupervisedTrainer: no dropout during the warm-up, the set rate afterwards."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism

from monai_medl.engines import MultimodalPrepareBatch
from monai_medl.handlers import ModalityDropoutWarmup
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.nets import make_multimodal_me_cnn

K = 2
SMALL = {"_target_": "monai_medl.networks.nets.SmallCNN", "spatial_dims": 2, "channels": [4, 8], "strides": [2, 2]}


def _trainer(net: make_multimodal_me_cnn, epochs: int) -> SupervisedTrainer:
    g = torch.Generator().manual_seed(0)
    data = [
        {
            "image": torch.randn(2, 8, 8, generator=g),
            "modality_mask": torch.ones(2),
            "label": torch.tensor([float(i % 2)]),
            "site": i % K,
        }
        for i in range(8)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 1e-2),
        loss_function=MixedEffectsLoss(task="bce"),
        prepare_batch=MultimodalPrepareBatch(K),
    )


def test_dropout_only_from_start_epoch():
    set_determinism(0)
    net = make_multimodal_me_cnn(K, backbone=SMALL, modality_dropout=0.5, required=["t1"])
    trainer = _trainer(net, epochs=4)
    ModalityDropoutWarmup(rate=0.5, start_epoch=3).attach(trainer)
    seen: list[tuple[int, float, float]] = []  # (epoch, dropout rate, share of samples that kept FLAIR)
    original = net._drop_inputs

    def spy(present: torch.Tensor) -> torch.Tensor:
        kept = original(present)
        seen.append((trainer.state.epoch, net.modality_dropout, float(kept[:, 1].float().mean())))
        return kept

    net._drop_inputs = spy
    rates: list[float] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: rates.append(net.modality_dropout))
    trainer.run()
    set_determinism(None)
    assert rates == [0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]  # 2 iterations per epoch, dropout from epoch 3
    assert [s[0] for s in seen] == [3, 3, 4, 4]  # the network drops inputs only once dropout is on
    assert min(s[2] for s in seen) < 1.0  # and then really drops FLAIR for some samples (T1 is required)


def test_rate_at_and_errors():
    handler = ModalityDropoutWarmup(0.25, start_epoch=13)
    assert [handler.rate_at(e) for e in (1, 12, 13, 20)] == [0.0, 0.0, 0.25, 0.25]
    with pytest.raises(ValueError, match="rate must be in"):
        ModalityDropoutWarmup(1.0, 2)
    with pytest.raises(ValueError, match="start_epoch must be >= 1"):
        ModalityDropoutWarmup(0.25, 0)
    engine = type("E", (), {"network": torch.nn.Linear(2, 1), "state": type("S", (), {"epoch": 1})()})()
    with pytest.raises(TypeError, match="Linear has no modality_dropout"):
        handler(engine)
