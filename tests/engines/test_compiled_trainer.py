# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MONAI's SupervisedTrainer(compile=True) trains a mixed-effects CNN on MetaTensor images when the prepare-batch
drops the metadata (keep_meta=False), with the same losses as the eager trainer."""

from __future__ import annotations

import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.handlers import AdversaryHandler
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.nets import MixedEffectsCNN, SmallCNN


def _train(compile: bool, keep_meta: bool) -> list[float]:
    torch.manual_seed(0)
    net = MixedEffectsCNN(3, backbone=SmallCNN(spatial_dims=2, in_channels=1, out_channels=1))
    adv = net.make_adversary()
    gen = torch.Generator().manual_seed(1)
    data = [
        {
            "image": MetaTensor(torch.randn(1, 16, 16, generator=gen)),
            "label": torch.tensor([float(i % 2)]),
            "site": i % 3,
        }
        for i in range(8)
    ]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(data, batch_size=4),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=MixedEffectsLoss(task="bce"),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=3, keep_meta=keep_meta),
        train_handlers=[AdversaryHandler(adv, torch.optim.Adam(adv.parameters(), 1e-2), 0.1)],
        compile=compile,
        decollate=False,
        compile_kwargs={"backend": "eager"},  # Dynamo's capture without the C++ build (minutes on 2 cores)
    )
    losses: list[float] = []
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    torch._dynamo.reset()
    return losses


def test_compiled_trainer_with_plain_tensors_trains_like_eager():
    eager = _train(compile=False, keep_meta=True)
    compiled = _train(compile=True, keep_meta=False)
    assert len(compiled) == len(eager) == 4
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-5)


def test_keep_meta_false_returns_plain_tensors_and_true_keeps_metatensors():
    batch = {
        "image": MetaTensor(torch.randn(2, 1, 4, 4)),
        "label": MetaTensor(torch.ones(2, 1)),
        "site": torch.tensor([0, 1]),
    }
    image, label, _, _ = MixedEffectsPrepareBatch(num_clusters=2, keep_meta=False)(batch)
    assert type(image) is torch.Tensor and type(label) is torch.Tensor
    torch.testing.assert_close(image, batch["image"].as_tensor())
    image, label, _, _ = MixedEffectsPrepareBatch(num_clusters=2)(batch)
    assert isinstance(image, MetaTensor) and isinstance(label, MetaTensor)
