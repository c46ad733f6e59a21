"""LossOutput: a scalar loss carrying its named terms, returned by the mixed-effects losses."""

from __future__ import annotations

import pytest
import torch
from monai.engines.utils import IterationEvents

from monai_medl.handlers import AdversaryHandler
from monai_medl.losses import LossOutput, MixedEffectsAutoEncoderLoss, MixedEffectsLoss
from monai_medl.networks.nets import ClusterClassifier, MixedEffectsAutoEncoder, MixedEffectsMLP
from monai_medl.utils.examples import site_trainer


def _batch(seed: int = 0):
    torch.manual_seed(seed)
    net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,)).train()
    x, z, y = torch.randn(6, 4), torch.eye(3)[[0, 1, 2, 0, 1, 2]], torch.randint(0, 2, (6, 1)).float()
    return net, net(x, z), y


def test_the_total_is_the_weighted_sum_with_the_same_gradient_and_the_terms_ride_along():
    net, out, y = _batch()
    loss_fn = MixedEffectsLoss(task="bce", lambda_fixed=0.5, kl_weight=0.1)
    loss = loss_fn(out, y)
    terms = loss_fn.terms(out, y)
    assert isinstance(loss, LossOutput) and loss.dim() == 0
    assert sorted(loss.terms) == ["kl", "loss_fixed", "loss_mixed"]
    for k, v in terms.items():
        assert torch.equal(loss.terms[k], v.detach()) and not loss.terms[k].requires_grad
    expected = terms["loss_mixed"] + 0.5 * terms["loss_fixed"] + 0.1 * terms["kl"]
    assert torch.equal(loss.as_subclass(torch.Tensor), expected)
    params = list(net.parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    refs = torch.autograd.grad(expected, params)
    assert all(torch.equal(g, r) for g, r in zip(grads, refs))


def test_scalar_results_keep_the_terms_other_results_are_plain_tensors():
    w = torch.tensor(2.0, requires_grad=True)
    loss = LossOutput(3 * w, {"task": 3 * w})
    for derived in (loss.mean(), loss + torch.tensor(1.0), loss.detach(), 2 * loss):
        assert type(derived) is LossOutput and float(derived.terms["task"]) == 6.0
    assert float((loss.mean() + 1).detach()) == 7.0
    assert type(torch.stack([loss, loss])) is torch.Tensor
    assert type(loss.reshape(1)) is torch.Tensor
    loss.mean().backward()
    assert float(w.grad) == 3.0


@pytest.mark.parametrize("total", [torch.ones(2), 1.0])
def test_a_total_that_is_not_a_0_dim_tensor_is_refused(total):
    with pytest.raises(ValueError, match="0-dim total loss tensor"):
        LossOutput(total, {})


def test_a_task_without_reduction_gives_the_plain_per_item_loss():
    _, out, y = _batch()
    per_item = MixedEffectsLoss(task=lambda p, t: (p - t).square().reshape(-1), kl_weight=0.0)(out, y)
    assert type(per_item) is torch.Tensor and per_item.shape == (6,)


def test_the_autoencoder_loss_carries_its_reconstruction_terms():
    torch.manual_seed(0)
    net = MixedEffectsAutoEncoder(spatial_dims=2, in_shape=(1, 16, 16), num_clusters=2, channels=(4, 8), strides=(2, 2))
    x, z, y = torch.rand(4, 1, 16, 16), torch.eye(2)[[0, 1, 0, 1]], torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    net.train()
    out = net(x, z)
    loss_fn = MixedEffectsAutoEncoderLoss()
    loss = loss_fn(out, y)
    assert sorted(loss.terms) == ["kl", "loss_fixed", "loss_mixed", "recon", "recon_fixed"]
    assert torch.equal(loss.as_subclass(torch.Tensor), loss_fn.combine(loss_fn.terms(out, y)))


def test_the_trainer_keeps_the_terms_in_its_output_also_after_the_adversary_adds_its_term():
    torch.manual_seed(0)
    net = MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,))
    adversary = ClusterClassifier(8, num_clusters=3, hidden=(8,))
    handler = AdversaryHandler(adversary, torch.optim.Adam(adversary.parameters(), 1e-3), lambda_g=0.5)
    trainer = site_trainer(net, [handler])
    seen = []

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)  # after the backward, before the output is decollated
    def _record(engine):
        seen.append(engine.state.output["loss"])

    trainer.run()
    assert len(seen) == 3
    assert all(type(v) is LossOutput and sorted(v.terms) == ["kl", "loss_fixed", "loss_mixed"] for v in seen)
