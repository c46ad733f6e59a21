# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Latent batch-mixing metrics, counterfactual panels and the autoencoder handlers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanSquaredError, from_engine
from monai.transforms import FlattenSubKeysd

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.handlers import CounterfactualImageHandler
from monai_medl.inferers import MixedEffectsInferer
from monai_medl.metrics import batch_probe_accuracy, latent_batch_clustering
from monai_medl.networks.nets import MixedEffectsAutoEncoder
from monai_medl.visualize import counterfactual_grid, counterfactual_panel, plot_counterfactual_panel

K = 3


def _net(spatial_dims: int = 2) -> MixedEffectsAutoEncoder:
    torch.manual_seed(0)
    shape = (1, 16, 16) if spatial_dims == 2 else (1, 8, 8, 8)
    return MixedEffectsAutoEncoder(spatial_dims, shape, K, channels=(4, 8), strides=(2, 2))


def test_latent_batch_clustering_orders_separated_and_mixed_latents():
    rng = np.random.default_rng(0)
    batches = np.repeat(np.arange(4), 50)
    mixed = rng.normal(size=(200, 5))
    separated = mixed + 4 * np.eye(5)[batches]
    sep, mix = latent_batch_clustering(separated, batches), latent_batch_clustering(mixed, batches)
    assert sep["davies_bouldin"] < 1 < mix["davies_bouldin"]
    assert sep["calinski_harabasz"] > 100 > 10 > mix["calinski_harabasz"]
    # z-scoring makes the indices scale-free per dimension
    scaled = separated * np.array([1, 10, 100, 1, 1])
    assert latent_batch_clustering(scaled, batches)["davies_bouldin"] == pytest.approx(sep["davies_bouldin"])
    assert batch_probe_accuracy(separated, batches) > 0.95
    assert batch_probe_accuracy(mixed, batches) < 0.45  # chance is 0.25
    assert latent_batch_clustering(torch.from_numpy(separated), torch.from_numpy(batches)) == sep


def test_latent_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="rows"):
        latent_batch_clustering(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="two different batches"):
        latent_batch_clustering(np.random.rand(5, 2), np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        batch_probe_accuracy(np.full((10, 2), np.nan), np.arange(10) % 2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_counterfactual_panel_and_grid(spatial_dims):
    net = _net(spatial_dims).train()
    x = torch.rand((2, *net.in_shape))
    z = torch.eye(K)[[0, 2]]
    panel = counterfactual_panel(net, x, z)
    assert net.training  # mode restored
    assert panel.shape == (2, K + 2, *net.in_shape)
    assert torch.equal(panel[:, 0], x)
    with torch.no_grad():
        net.eval()
        assert torch.allclose(panel[:, 1], net.reconstruct(x, z))
        assert torch.allclose(panel[1, 2 + 2], net.counterfactual(x, z, torch.eye(K)[[2, 2]])[1])  # own batch
    side = x.shape[-2]
    grid = counterfactual_grid(panel, pad=1)
    assert grid.shape == (1, 2 * side + 1, (K + 2) * (x.shape[-3] if spatial_dims == 3 else x.shape[-1]) + K + 1)
    assert float(grid.min()) >= 0 and float(grid.max()) <= 1
    fig = plot_counterfactual_panel(panel, target_names=["a", "b", "c"], row_names=["s0", "s2"])
    assert len(fig.axes) == 2 * (K + 2) and fig.axes[2].get_title() == "as a"
    with pytest.raises(ValueError, match="target_names needs 3"):
        plot_counterfactual_panel(panel, target_names=["a"])


def test_mixed_effects_inferer_gives_an_evaluator_the_reconstruction():
    # eval mode returns the y_M tensor; an evaluator that also scores reconstructions uses MixedEffectsInferer and
    # MONAI's FlattenSubKeysd, nothing stored on the network
    net = _net().eval()
    data = [{"image": torch.rand(1, 16, 16), "label": torch.tensor([float(i % 2)]), "site": i % K} for i in range(4)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=net,
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=K),
        inferer=MixedEffectsInferer(fields=["mixed", "reconstruction"]),
        postprocessing=FlattenSubKeysd(keys="pred", prefix="pred"),
        key_val_metric={"mse": MeanSquaredError(output_transform=from_engine(["pred_reconstruction", "image"]))},
    )
    evaluator.run()
    item = evaluator.state.output[0]
    x = torch.stack([d["image"] for d in data[2:]])
    z = torch.eye(K)[[2 % K, 3 % K]]
    with torch.no_grad():
        expected = net.forward_all(x, z)
    torch.testing.assert_close(item["pred_reconstruction"], expected.reconstruction[0])
    torch.testing.assert_close(item["pred_mixed"], expected.mixed[0])
    assert evaluator.state.metrics["mse"] > 0
    assert "latest_output" not in net.__dict__
    with pytest.raises(KeyError, match="no_such_field"):
        MixedEffectsInferer(fields=["no_such_field"])(x, net, z)


def test_counterfactual_image_handler_writes_panels():
    class Writer:
        def __init__(self):
            self.images = []

        def add_image(self, tag, img, step):
            self.images.append((tag, tuple(img.shape), step))

        def flush(self):
            pass

    net, writer = _net(), Writer()
    batch = {"image": torch.rand(5, 1, 16, 16), "site": torch.tensor([0, 1, 2, -1, 0])}
    handler = CounterfactualImageHandler(batch, network=net, summary_writer=writer, num_images=4, interval=2)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=4)
    # epochs 2 and 4; 4 rows (incl. an unseen day drawn at population level), input + recon + K columns
    assert writer.images == [("counterfactual", (1, 4 * 17 - 1, (K + 2) * 17 - 1), e) for e in (2, 4)]
    with pytest.raises(KeyError, match="'site'"):
        CounterfactualImageHandler({"image": torch.rand(2, 1, 16, 16)}, network=net)
