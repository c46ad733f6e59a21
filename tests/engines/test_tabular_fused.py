# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The fused tabular step: one backward and one optimizer step for the model and its adversary."""

from __future__ import annotations

import pytest
import torch

from monai_medl.data.spirals import make_spirals
from monai_medl.engines.tabular import TabularTrainer, predict_tabular
from monai_medl.engines.tabular_fused import adversary_losses
from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP


def test_losses_route_gradients():
    torch.manual_seed(0)
    adv = ClusterClassifier(in_features=4, num_clusters=3, hidden=(8,))
    h = torch.randn(6, 4, requires_grad=True)
    sites = torch.tensor([0, 1, 2, 0, 1, -1])
    loss_a, term, acc = adversary_losses(adv, [h], sites, 0.5, "confusion")
    (grad_h,) = torch.autograd.grad(loss_a, h, allow_unused=True)
    assert grad_h is None  # the adversary's loss reads detached activations
    assert torch.autograd.grad(term, list(adv.parameters()), allow_unused=True) == (None,) * len(list(adv.parameters()))
    assert all(p.requires_grad for p in adv.parameters())  # unfrozen again
    # the unknown item (-1) carries no weight: its row gets no gradient from the term
    (grad_term,) = torch.autograd.grad(term, h)
    assert grad_term[5].abs().sum() == 0 and grad_term[:5].abs().sum() > 0
    logits = adv(h.detach())
    expected = torch.nn.functional.cross_entropy(logits[:5], sites[:5])
    torch.testing.assert_close(loss_a, expected)
    torch.testing.assert_close(acc, (logits[:5].argmax(1) == sites[:5]).float().mean())
    with pytest.raises(ValueError, match="objective must be 'confusion' or 'ce'"):
        adversary_losses(adv, [h], sites, 0.5, "mmd")


def _fit(fused: bool):
    data = make_spirals(num_clusters=4, points_per_cluster=100, seed=0)
    x, y = torch.from_numpy(data.x).float(), torch.from_numpy(data.y).float().unsqueeze(1)
    site = torch.from_numpy(data.site)
    torch.manual_seed(0)
    net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=4)
    adv = ClusterClassifier(in_features=12, num_clusters=4)
    trainer = TabularTrainer(net, epochs=15, lr=1e-2, kl_weight=1e-5, adversary=adv, lambda_g=0.5, seed=0, fused=fused)
    history = trainer.fit(x, y, z=torch.eye(4)[site], sites=site)
    acc = ((predict_tabular(net, x, torch.eye(4)[site]) > 0).float() == y).float().mean()
    return trainer, history, float(acc)


def test_fused_trains_model_and_adversary_with_one_optimizer():
    trainer, history, acc = _fit(fused=True)
    assert len(trainer.optimizer.param_groups) == 2 and trainer.optimizer.param_groups[1]["lr"] == 1e-3
    assert trainer.regularizer.optimizer is trainer.optimizer  # no second optimizer steps the adversary
    assert history.loss[-1] < history.loss[0]
    assert len(history.adversary_accuracy) == 15 and max(history.adversary_accuracy) > 0.25  # above chance at times
    _, two_step, acc_two_step = _fit(fused=False)
    # simultaneous and alternating updates reach comparable fits of the same data
    assert acc > 0.6 and abs(acc - acc_two_step) < 0.15
    assert abs(history.loss[-1] - two_step.loss[-1]) < 0.25
