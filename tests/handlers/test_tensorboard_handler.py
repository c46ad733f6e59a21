# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""RandomEffectsTensorBoardHandler: scalars and the per-site plot, read back with TensorBoard's event reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.handlers import AdversaryHandler, LossTermsHandler
from monai_medl.handlers.tensorboard_handler import RandomEffectsTensorBoardHandler
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.layers import RandomEffectsSettings
from monai_medl.networks.nets import MixedEffectsCNN

K = 3


def _data(n: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": torch.tensor(rng.normal(size=(1, 16, 16, 16)), dtype=torch.float32),
            "label": torch.tensor([float(i % 2)]),
            "site": int(i % K),
        }
        for i in range(n)
    ]


def test_event_files_hold_every_term_the_variance_components_and_the_intercept_plot(tmp_path):
    torch.manual_seed(0)
    settings = RandomEffectsSettings(learn_prior_scale=True)
    net = MixedEffectsCNN(K, spatial_dims=3, cluster_scale_bias=["features.block1.adn.N"], random_effects=settings)
    adversary = net.make_adversary(hidden=(16,))
    tb = RandomEffectsTensorBoardHandler(log_dir=str(tmp_path), cluster_names=["site_a", "site_b", "site_c"])
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(_data(), batch_size=8),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=MixedEffectsLoss(task="bce", kl_weight="elbo", num_train_samples=24),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=K),
        train_handlers=[
            AdversaryHandler(adversary, torch.optim.Adam(adversary.parameters(), 1e-2), 0.1),
            LossTermsHandler(),
            tb,
        ],
    )
    seen: dict[int, list[dict]] = {}
    prior_sd: dict[int, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        seen.setdefault(engine.state.epoch, []).append(dict(engine.state.output[0]))

    @trainer.on(Events.EPOCH_COMPLETED)
    def record_prior(engine):
        prior_sd[engine.state.epoch] = float(net.head.intercept.prior_scale.detach())

    trainer.run()
    tb.close()

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    terms = [f"train/epoch/{k}" for k in ("loss", "loss_mixed", "loss_fixed", "adv_loss", "kl", "adv_acc")]
    assert set(terms) <= scalars
    layers = ["head.slopes", "head.intercept", "stages.1.cluster.gamma", "stages.1.cluster.beta"]
    for layer in layers:
        for stat in ("prior_sd", "posterior_mean_spread", "posterior_sd"):
            assert f"random_effects/{layer}/{stat}" in scalars
    # epoch means of the iteration outputs, at steps 1 and 2
    for key in ("loss", "adv_loss", "adv_acc"):
        tag = f"train/epoch/{key}"
        values = events.Scalars(tag)
        assert [v.step for v in values] == [1, 2]
        for v in values:
            expected = np.mean([float(o[key]) for o in seen[v.step]])
            assert v.value == pytest.approx(expected, rel=1e-5)
    prior = events.Scalars("random_effects/head.intercept/prior_sd")
    assert [v.value for v in prior] == pytest.approx([prior_sd[1], prior_sd[2]], rel=1e-5)
    spread = events.Scalars("random_effects/head.slopes/posterior_mean_spread")[-1].value
    assert spread == pytest.approx(float(net.head.slopes.loc.detach().std(0, unbiased=False).mean()), rel=1e-4)
    images = events.Images("random_effects/intercepts")
    assert [im.step for im in images] == [1, 2] and images[-1].width > 100 and images[-1].height > 100


def _trainer(net, handlers, epochs: int, lr: float = 1e-3) -> SupervisedTrainer:
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(_data(8), batch_size=8),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr),
        loss_function=MixedEffectsLoss(task="bce"),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=K),
        train_handlers=handlers,
    )


def test_interval_and_custom_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    net = MixedEffectsCNN(K, spatial_dims=3)
    writer = SummaryWriter(str(tmp_path))
    tb = RandomEffectsTensorBoardHandler(summary_writer=writer, interval=2, plot_intercepts=False, tag_prefix="me/")
    _trainer(net, [tb], epochs=3).run()
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [v.step for v in events.Scalars("me/train/epoch/loss")] == [2]
    assert "me/train/epoch/adv_acc" not in events.Tags()["scalars"]  # no adversary attached: nothing invented
    assert events.Tags()["images"] == []
    with pytest.raises(ValueError, match="interval must be >= 1"):
        RandomEffectsTensorBoardHandler(summary_writer=writer, interval=0)


def test_without_matplotlib_the_plot_is_skipped_with_one_warning(tmp_path, monkeypatch):
    import monai_medl.handlers.tensorboard_handler as module

    monkeypatch.setattr(module, "has_matplotlib", False)
    torch.manual_seed(0)
    net = MixedEffectsCNN(K, spatial_dims=3)
    tb = RandomEffectsTensorBoardHandler(log_dir=str(tmp_path), cluster_names=["a", "b", "c"])
    with pytest.warns(UserWarning, match="matplotlib is not installed") as record:
        _trainer(net, [tb], epochs=2, lr=1e-2).run()
    assert sum("matplotlib" in str(w.message) for w in record) == 1  # once, not every epoch
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert not events.Tags()["images"] and any("prior_sd" in t for t in events.Tags()["scalars"])
