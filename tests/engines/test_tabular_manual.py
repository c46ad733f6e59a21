# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The hand-written ME-MLP step equals TabularTrainer's autograd step (same update order and random numbers)."""

import pytest
import torch

from monai_medl.engines.adam_step import AdamStep
from monai_medl.engines.tabular import TabularTrainer, make_adam
from monai_medl.engines.tabular_manual import ManualMLPStep, manual_step_unsupported
from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP


def _data(n=96, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    site = torch.randint(0, k, (n,), generator=gen)
    y = ((x[:, 0] + 0.5 * site - 0.7 + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)) > 0).double()
    site[::7] = -1  # unknown sites: weight zero in the adversary's terms
    z = torch.eye(k, dtype=torch.float64)[site.clamp_min(0)] * (site >= 0).unsqueeze(1)
    return x, y.unsqueeze(1), z, site


def _fit(manual, adversary=True, objective="confusion", epochs=2, **re):
    torch.manual_seed(0)
    net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=(5, 4), learn_prior_scale=True, **re).double()
    adv = ClusterClassifier(9, 4, hidden=(6, 3)).double() if adversary else None
    trainer = TabularTrainer(
        net,
        epochs=epochs,
        batch_size=16,
        lr=1e-2,
        kl_weight=1e-2,
        adversary=adv,
        lambda_g=0.5,
        adversary_objective=objective,
        seed=3,
        lambda_fixed=0.7,
        manual_backward=manual,
    )
    x, y, z, site = _data()
    history = trainer.fit(x, y, z, site)
    states = [net.state_dict()] + ([adv.state_dict()] if adv is not None else [])
    assert trainer.backward == ("autograd" if manual is False else "manual")
    last = trainer.regularizer.last if adv is not None else ()
    return history, states, last


@pytest.mark.parametrize(
    "adversary, objective, re",
    [
        (True, "confusion", {}),
        (True, "ce", {}),
        (False, "confusion", {}),
        (True, "confusion", {"nonlinear_slopes": False}),
        (True, "confusion", {"random_intercept": False}),
    ],
)
def test_manual_step_equals_the_autograd_step(adversary, objective, re):
    ref_history, ref_states, ref_last = _fit(False, adversary, objective, linear_slopes=False, **re)
    history, states, last = _fit(True, adversary, objective, linear_slopes=False, **re)
    for ref, got in zip(ref_states, states):
        assert ref.keys() == got.keys()
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-9, atol=1e-11, msg=key)
    torch.testing.assert_close(history.loss, ref_history.loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(history.adversary_accuracy, ref_history.adversary_accuracy, rtol=1e-10, atol=0)
    assert len(history.loss) == 2 and (len(history.adversary_accuracy) == 2) == adversary
    # the regulariser's last (loss, accuracy): the epoch's last batch, as the autograd step leaves it
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=0)


def test_the_manual_step_is_the_default_where_it_applies():
    default_history, default_states, _ = _fit(None, linear_slopes=False)
    history, states, _ = _fit(True, linear_slopes=False)
    assert default_history.loss == history.loss
    for ref, got in zip(states, default_states):
        assert all(torch.equal(ref[key], got[key]) for key in ref)
    net = MixedEffectsMLP(3, 1, num_clusters=4, linear_slopes=False)
    forced = TabularTrainer(net, manual_backward=False)
    assert (forced.backward, forced.manual_unsupported) == ("autograd", "manual_backward=False")
    assert TabularTrainer(net).backward == "manual" and TabularTrainer(net).manual_unsupported is None
    uncovered = TabularTrainer(MixedEffectsMLP(3, 1, num_clusters=4))  # input slopes: autograd, with the reason
    assert uncovered.backward == "autograd" and "input slopes" in uncovered.manual_unsupported
    fused = TabularTrainer(net, adversary=ClusterClassifier(4, 4), lambda_g=0.1, fused=True)
    assert fused.backward == "autograd" and "fused=True" in fused.manual_unsupported
    plain = TabularTrainer(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)))
    assert plain.backward == "autograd"


def test_the_kl_of_other_layer_sets_takes_the_concatenated_pass():

    results = []
    for order in (1, -1):  # the reversed layer list is not the drawn one: the general KL pass, the same numbers
        torch.manual_seed(0)
        net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=(5,), linear_slopes=False, learn_prior_scale=True)
        net = net.double().train()
        layers = [net.head.slopes, net.head.intercept][::order]
        step = ManualMLPStep(net, make_adam(net.parameters(), 1e-2), None, 1.0, 0.5, layers, 1e-2)
        x, y, z, _ = _data(n=16)
        torch.manual_seed(1)
        losses = []
        for _ in range(3):
            step(x, y, z)
            losses.append(step.end_epoch()[0])  # each step's own loss
        results.append((losses, {k: v.clone() for k, v in net.state_dict().items()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)
    for key, value in results[0][1].items():
        torch.testing.assert_close(value, results[1][1][key], rtol=1e-12, atol=1e-14, msg=key)


def test_adversary_targets_need_an_adversary():

    net = MixedEffectsMLP(3, 1, num_clusters=4, linear_slopes=False)
    step = ManualMLPStep(net, make_adam(net.parameters(), 1e-3), None, 1.0, 1.0, [], 0.0)
    with pytest.raises(ValueError, match="no adversary"):
        step.adversary_targets(torch.zeros(8, dtype=torch.long), 4)
    assert step.end_epoch() == (0.0, None)  # no step since the last call: no loss, no adversary accuracy


def test_the_training_moves_every_parameter():
    torch.manual_seed(0)
    net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=(5, 4), linear_slopes=False, learn_prior_scale=True).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    adv = ClusterClassifier(9, 4, hidden=(6,)).double()
    TabularTrainer(net, epochs=1, batch_size=16, kl_weight=1e-2, adversary=adv, lambda_g=0.5, manual_backward=True).fit(
        *_data()
    )
    moved = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert moved == list(before)  # hidden layers, head, both random-effects layers and their prior scales


def test_unsupported_configurations_are_refused_with_the_reason():
    plain = MixedEffectsMLP(3, 1, num_clusters=4)  # linear_slopes on by default
    with pytest.raises(ValueError, match=r"manual_backward=True\): input slopes"):
        TabularTrainer(plain, manual_backward=True)
    net = MixedEffectsMLP(3, 1, num_clusters=4, linear_slopes=False, act="tanh")
    assert "Linear + ReLU" in manual_step_unsupported(net, "bce", None, False)
    net = MixedEffectsMLP(3, 2, num_clusters=4, linear_slopes=False)
    with pytest.raises(ValueError, match="task='bce'"):
        TabularTrainer(net, task="ce", manual_backward=True)
    net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=(4,), linear_slopes=False)
    adv = ClusterClassifier(4, 4, hidden=(4,), act="leakyrelu")
    with pytest.raises(ValueError, match="adversary's layers"):
        TabularTrainer(net, adversary=adv, lambda_g=0.1, manual_backward=True)
    with pytest.raises(ValueError, match="fused=True"):
        TabularTrainer(net, adversary=ClusterClassifier(4, 4), lambda_g=0.1, fused=True, manual_backward=True)


def test_batched_kl_gradients_equal_the_per_layer_ones():
    import copy

    from monai_medl.networks.layers.random_effects import RandomEffects, accumulate_kl_grads_

    torch.manual_seed(0)
    layers = [RandomEffects(8, 4, prior_scale=0.3, learn_prior_scale=True), RandomEffects(8, 1), RandomEffects(5, 3)]
    twins = copy.deepcopy(layers)
    for layer, twin in zip(layers, twins):
        for p, q in zip(layer.parameters(), twin.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
    per_layer = sum(layer.accumulate_kl_grad_(1e-3) for layer in layers)
    batched = accumulate_kl_grads_(twins, 1e-3)
    torch.testing.assert_close(batched, per_layer)
    for layer, twin in zip(layers, twins):
        for p, q in zip(layer.parameters(), twin.parameters()):
            assert torch.equal(p.grad, q.grad)  # element by element the same operations
    assert twins[1].log_prior_scale.grad is None  # a fixed prior (a buffer) gets no gradient


def test_optimizer_step_must_step_the_given_optimizer():
    net = MixedEffectsMLP(3, 1, num_clusters=4, linear_slopes=False)
    opt = make_adam(net.parameters(), 1e-3)
    other = AdamStep(make_adam(net.parameters(), 1e-3))
    with pytest.raises(ValueError, match="optimizer_step must step the given optimizer"):
        ManualMLPStep(net, opt, None, 1.0, 1.0, [], 0.0, optimizer_step=other)
    shared = AdamStep(opt)
    assert ManualMLPStep(net, opt, None, 1.0, 1.0, [], 0.0, optimizer_step=shared).step is shared


def _spiral_fit(manual, fits=1, dtype=torch.float32):
    """A spirals-benchmark-like ME-MLP with adversary (float32, learned priors), trained ``fits`` times in a row."""
    torch.manual_seed(0)
    net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=(4, 4, 4), learn_prior_scale=True, linear_slopes=False)
    adv = ClusterClassifier(12, 4, hidden=(8, 8, 4))
    net, adv = net.to(dtype), adv.to(dtype)
    trainer = TabularTrainer(
        net,
        epochs=2,
        batch_size=16,
        lr=1e-2,
        kl_weight=1e-3,
        adversary=adv,
        lambda_g=0.5,
        seed=3,
        manual_backward=manual,
    )
    x, y, z, site = (t.to(dtype) if t.is_floating_point() else t for t in _data())
    histories = [trainer.fit(x, y.reshape(-1), z, site) for _ in range(fits)]  # 1-D targets, as the benchmark's
    return histories, [net, adv]


def test_the_float32_step_agrees_with_autograd_over_two_fits():
    ref_histories, ref_nets = _spiral_fit(False, fits=2)
    histories, nets = _spiral_fit(True, fits=2)  # the second fit re-flattens and re-registers the parameters
    for ref, got in zip(ref_nets, nets):
        for (key, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=key)  # float32 rounding over 24 steps
    for ref, got in zip(ref_histories, histories):
        torch.testing.assert_close(got.loss, ref.loss, rtol=1e-5, atol=0)
        torch.testing.assert_close(got.adversary_accuracy, ref.adversary_accuracy, rtol=1e-5, atol=0)
    for p in (p for net in nets for p in net.parameters()):  # close() gave every parameter its own storage back
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
        assert p.grad is None or p.grad.untyped_storage().nbytes() == p.numel() * p.element_size()


def test_the_step_falls_back_to_its_own_buffers_where_the_parameters_cannot_be_flat():
    torch.manual_seed(0)
    net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=(5,), linear_slopes=False, learn_prior_scale=True).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)  # not fused: stepped by optimizer.step(), nothing made flat
    step = ManualMLPStep(net, opt, None, 1.0, 0.5, [net.head.slopes, net.head.intercept], 1e-2)
    assert step.flat == [None]
    flat_net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=(5,), linear_slopes=False, learn_prior_scale=True)
    flat_net = flat_net.double()
    flat_net.load_state_dict(net.state_dict())
    flat_opt = torch.optim.Adam(flat_net.parameters(), lr=1e-2, fused=True)
    flat_step = ManualMLPStep(flat_net, flat_opt, None, 1.0, 0.5, [flat_net.head.slopes, flat_net.head.intercept], 1e-2)
    assert flat_step.flat[0] is not None
    x, y, z, _ = _data(n=16)
    losses = []
    for s in (step, flat_step):
        torch.manual_seed(1)
        for _ in range(3):
            s(x, y, z)
        losses.append(s.end_epoch()[0])
    flat_step.close()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=0)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(flat_net.state_dict()[key], value, rtol=1e-12, atol=1e-14, msg=key)
