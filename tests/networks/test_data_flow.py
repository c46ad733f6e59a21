# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Data flows one way through the engine: network -> engine.state.output["pred"] -> loss and adversary handler.

Nothing is stored on the network between calls, so the result does not depend on how often or how an inferer calls
it, on DistributedDataParallel or on torch.compile.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.handlers import AdversaryHandler, LossTermsHandler
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.blocks import MixedEffectsOutput
from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP

K = 3


def _data(n: int = 24, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return [{"image": x[i], "label": np.float32([x[i, 0] > 0]), "site": int(i % K)} for i in range(n)]


def _trainer(inferer: Inferer, net: torch.nn.Module | None = None, seed: int = 0, first=()) -> SupervisedTrainer:
    torch.manual_seed(seed)
    net = net if net is not None else MixedEffectsMLP(4, 1, K, hidden=(8,))
    adversary = ClusterClassifier(8, K, hidden=(8,))
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(_data(), batch_size=8, shuffle=False),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=MixedEffectsLoss(task="bce", kl_weight=1e-3),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=K),
        inferer=inferer,
        train_handlers=[*first, AdversaryHandler(adversary, torch.optim.Adam(adversary.parameters(), 1e-2), 0.5)],
    )


class LossRecorder:
    """What the loss saw at every iteration (listed before the adversary handler, which then adds its term)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine) -> None:
        out = engine.state.output
        self.seen.append({"pred": out["pred"], "label": out["label"], "loss": out["loss"].detach().clone()})


class TwiceInferer(Inferer):
    """Calls the network a second time on another input (as test-time augmentation or a probe would) and returns the
    first result: with a side channel the loss and adversary would have read the second call's output."""

    def __call__(self, inputs, network, *args, **kwargs):
        out = network(inputs, *args, **kwargs)
        with torch.random.fork_rng():  # the extra call's weight samples leave the training run's random stream alone
            network(inputs[:1].flip(-1), *(a[:1] for a in args))
        return out


@pytest.mark.parametrize("inferer", [SimpleInferer(), TwiceInferer()], ids=["simple", "twice"])
def test_loss_and_adversary_read_the_output_the_inferer_returned(inferer):
    recorder = LossRecorder()
    trainer = _trainer(inferer, first=[recorder])
    seen = recorder.seen
    LossTermsHandler().attach(trainer)
    adv_terms = []
    trainer.add_event_handler(
        IterationEvents.BACKWARD_COMPLETED, lambda e: adv_terms.append(e.state.output["adv_loss"].clone())
    )
    trainer.run()
    assert len(seen) == 3 and "latest_output" not in trainer.network.__dict__
    loss_fn = MixedEffectsLoss(task="bce", kl_weight=1e-3)
    for item in seen:
        pred = item["pred"]
        assert isinstance(pred, MixedEffectsOutput) and pred.mixed.shape == (8, 1)
        assert all(f.shape[0] == 8 for f in pred.features)  # the full batch, not the inferer's second call
        torch.testing.assert_close(item["loss"], loss_fn(pred, item["label"]).detach())
    assert all(torch.isfinite(t) and t.dim() == 0 for t in adv_terms)  # tensors, no host sync in the handler
    out = trainer.state.output[0]  # decollated; the terms were written by LossTermsHandler
    assert {"loss_mixed", "loss_fixed", "kl", "adv_loss", "adv_acc"} <= set(out)


def test_simple_and_twice_inferers_train_to_the_same_weights():
    # the extra call changes nothing the loss, the adversary or the optimizer see: identical trajectories
    nets = []
    for inferer in (SimpleInferer(), TwiceInferer()):
        trainer = _trainer(inferer)
        trainer.run()
        nets.append(trainer.network)
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_evaluator_with_simple_inferer_sees_the_prediction_tensor():
    torch.manual_seed(0)
    net = MixedEffectsMLP(4, 1, K, hidden=(8,))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(_data(), batch_size=8),
        network=net,
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=K),
        inferer=SimpleInferer(),
    )
    preds = []
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: preds.append(e.state.output["pred"]))
    evaluator.run()
    assert all(isinstance(p, torch.Tensor) and p.shape == (8, 1) for p in preds)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_trains_like_eager(backend):
    # the inductor backend compiles C++ for minutes on a 2-core CPU; "eager" checks Dynamo's capture of the
    # structured output (graph breaks allowed), "aot_eager" adds AOTAutograd's traced backward
    torch._dynamo.reset()
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = MixedEffectsMLP(4, 1, K, hidden=(8,))
        if compiled:
            net = torch.compile(net, backend=backend)
        recorder = LossRecorder()
        trainer = _trainer(SimpleInferer(), net=net, first=[recorder])
        trainer.run()
        results.append(([s["loss"] for s in recorder.seen], [p.detach().clone() for p in net.parameters()]))
    (eager_losses, eager_params), (comp_losses, comp_params) = results
    torch.testing.assert_close(torch.stack(comp_losses), torch.stack(eager_losses), rtol=1e-4, atol=1e-5)
    for p, q in zip(comp_params, eager_params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def _ddp_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on both ranks
        net = DistributedDataParallel(MixedEffectsMLP(4, 1, K, hidden=(8,)))
        adversary = ClusterClassifier(8, K, hidden=(8,))
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=2,
            train_data_loader=DataLoader(_data(seed=rank), batch_size=8),  # different data per rank
            network=net,
            optimizer=torch.optim.Adam(net.parameters(), 1e-2),
            loss_function=MixedEffectsLoss(task="bce", kl_weight=1e-3),
            prepare_batch=MixedEffectsPrepareBatch(num_clusters=K),
            train_handlers=[
                AdversaryHandler(adversary, torch.optim.Adam(adversary.parameters(), 1e-2), 0.5),
                LossTermsHandler(),
            ],
        )
        torch.manual_seed(100 + rank)  # different weight samples per rank
        trainer.run()
        torch.save(
            {
                "net": [p.detach() for p in net.module.parameters()],
                "adversary": [p.detach() for p in adversary.parameters()],
                "kl": float(trainer.state.output[0]["kl"]),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_keep_network_and_adversary_in_sync(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.manual_seed(0)
    start = [p.detach() for p in MixedEffectsMLP(4, 1, K, hidden=(8,)).parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(r0["net"], start))  # it trained
    for a, b in zip(r0["net"] + r0["adversary"], r1["net"] + r1["adversary"]):
        torch.testing.assert_close(a, b)  # gradients averaged: the replicas agree
    assert np.isfinite(r0["kl"]) and r0["kl"] > 0
