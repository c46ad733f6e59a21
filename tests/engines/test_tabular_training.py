# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from monai_medl.data.synthetic.spirals import make_spirals
from monai_medl.engines.tabular import TabularTrainer, make_adam, predict_tabular
from monai_medl.networks import kl_divergence as network_kl
from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))


def test_make_adam_is_torch_adam_with_the_fused_update():
    a, b = _mlp(), _mlp()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, foreach=False)
    opt_b = make_adam(b.parameters(), lr=1e-2)
    assert isinstance(opt_b, torch.optim.Adam) and opt_b.defaults["fused"]
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = torch.randn(8, 3, generator=gen)
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no parameter"):
        make_adam([nn.Parameter(torch.zeros(2), requires_grad=False)], lr=1e-3)


@pytest.mark.parametrize("move", ["double", "to_cpu", "device_argument"])
def test_moving_or_casting_the_network_after_building_the_trainer_still_trains(move):
    # the removed ContiguousAdam rebound parameters into a flat buffer: after .to()/.double() its steps no longer
    # reached the network and training silently stopped
    d, x, y, site = _spiral_tensors(points=40)
    z = torch.eye(d.num_clusters)[site]
    torch.manual_seed(0)
    net = MixedEffectsMLP(2, 1, d.num_clusters)
    adversary = ClusterClassifier(12, d.num_clusters)
    device = "cpu" if move == "device_argument" else None
    trainer = TabularTrainer(net, epochs=3, lr=1e-2, adversary=adversary, lambda_g=0.1, device=device)
    if move == "double":
        net.double()
        adversary.double()
    elif move == "to_cpu":
        net.to("cpu")
    assert trainer.device == torch.device("cpu")
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    adv_before = [p.detach().clone() for p in adversary.parameters()]
    history = trainer.fit(x, y, z)
    moved = [n for n, p in net.named_parameters() if not torch.equal(p, before[n])]
    assert "head.linear.weight" in moved and "hidden.0.0.weight" in moved, moved
    assert any(not torch.equal(p, q) for p, q in zip(adversary.parameters(), adv_before))
    assert history.loss[-1] < history.loss[0]
    expected_dtype = torch.float64 if move == "double" else torch.float32
    assert predict_tabular(net, x, z).dtype == expected_dtype


def test_closed_form_kl_gradient_steps_equal_autograd_steps():
    # TabularTrainer adds the KL gradient in closed form after backward; its steps must equal autograd's (several
    # steps, since a single Adam step only sees the gradient's sign)
    d, x, y, site = _spiral_tensors(points=8)
    z = torch.eye(d.num_clusters)[site]
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(MixedEffectsMLP(2, 1, d.num_clusters, learn_prior_scale=True))
    trainer = TabularTrainer(nets[0], epochs=3, batch_size=len(y), kl_weight=0.5, lr=0.1, seed=3)
    trainer.fit(x, y, z)
    net = nets[1]
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        for _ in range(3):
            torch.randperm(len(y))  # the trainer's shuffle draws first, then the weight samples
            out = net.forward_all(x, z)  # (one full batch: the mean loss does not depend on the order)
            bce = nn.functional.binary_cross_entropy_with_logits
            loss = bce(out.mixed.reshape(-1), y) + bce(out.fixed.reshape(-1), y) + 0.5 * network_kl(net)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, p), q in zip(net.named_parameters(), nets[0].parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_fit_skips_per_batch_input_checks_and_restores_them():
    d, x, y, site = _spiral_tensors(points=10)
    net = MixedEffectsMLP(2, 1, d.num_clusters)
    seen = []
    original = net.check_inputs

    def spy(xb, zb):
        seen.append(net.validate_inputs)
        original(xb, zb)

    net.check_inputs = spy
    TabularTrainer(net, epochs=1).fit(x, y, torch.eye(d.num_clusters)[site])
    assert seen and not any(seen)  # checked once up front instead
    assert net.validate_inputs
    with pytest.raises(ValueError, match="NaN"):
        net(torch.full((1, 2), float("nan")))


def _spiral_tensors(num_clusters=4, points=250, seed=0):
    d = make_spirals(num_clusters=num_clusters, points_per_cluster=points, radius_sd=0.3, seed=seed)
    x = torch.as_tensor((d.x - d.x.mean(0)) / d.x.std(0))
    return d, x, torch.as_tensor(d.y, dtype=torch.float32), torch.as_tensor(d.site)


def test_me_mlp_learns_spirals_above_chance():
    d, x, y, site = _spiral_tensors()
    z = torch.eye(d.num_clusters)[site]
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    tr, te = torch.as_tensor(idx[:800]), torch.as_tensor(idx[800:])
    torch.manual_seed(0)
    net = MixedEffectsMLP(2, 1, d.num_clusters, hidden=(8, 8, 8), linear_slopes=False, learn_prior_scale=True)
    adv = ClusterClassifier(24, d.num_clusters)
    trainer = TabularTrainer(net, epochs=30, batch_size=32, lr=1e-2, kl_weight="elbo", adversary=adv, lambda_g=0.1)
    history = trainer.fit(x[tr], y[tr], z[tr])
    assert len(history.loss) == 30 and history.loss[-1] < history.loss[0]
    assert len(history.adversary_accuracy) == 30 and len(history.epoch_seconds) == 30
    assert not net.training  # left in eval mode
    for head, zz in (("mixed", z[te]), ("fixed", None)):
        prob = torch.sigmoid(predict_tabular(net, x[te], zz, head=head)).squeeze(1).numpy()
        acc = ((prob >= 0.5) == d.y[te.numpy()]).mean()
        assert acc > 0.7, (head, acc)
        assert roc_auc_score(d.y[te.numpy()], prob) > 0.75


def test_fit_is_reproducible_and_restores_global_rng():
    d, x, y, site = _spiral_tensors(points=50)
    z = torch.eye(d.num_clusters)[site]
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        net = MixedEffectsMLP(2, 1, d.num_clusters)
        state = torch.random.get_rng_state()
        TabularTrainer(net, epochs=2, seed=11).fit(x, y, z)
        assert torch.equal(torch.random.get_rng_state(), state)
        outputs.append(predict_tabular(net, x, z))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def _site_toy(n=1600, num_sites=4, seed=0):
    """Label from feature 0; features 1-2 carry a strong site offset (the shortcut an adversary should remove)."""
    gen = np.random.default_rng(seed)
    site = gen.integers(0, num_sites, n)
    offsets = gen.normal(0, 1.5, (num_sites, 2))
    signal = gen.normal(size=n)
    x = np.column_stack([signal, offsets[site] + gen.normal(0, 0.5, (n, 2))]).astype(np.float32)
    y = (signal + 0.3 * gen.normal(size=n) > 0).astype(np.float32)
    return torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(site)


def _site_probe_accuracy(lambda_g, n_train=600):
    x, y, site = _site_toy(n=1000)
    torch.manual_seed(0)
    net = MixedEffectsMLP(3, 1, 4, hidden=(8, 8), linear_slopes=False, nonlinear_slopes=False, random_intercept=False)
    adv = ClusterClassifier(16, 4, hidden=(16,))
    trainer = TabularTrainer(net, epochs=10, lr=1e-2, adversary=adv, lambda_g=lambda_g, adversary_lr=1e-2)
    trainer.fit(x[:n_train], y[:n_train], sites=site[:n_train])
    with torch.no_grad():
        feats = torch.cat(net.forward_all(x).features, dim=1).numpy()
        prob = torch.sigmoid(net.forward_all(x[n_train:]).fixed).squeeze(1).numpy()
    # a fresh probe fitted on training activations, scored on held-out activations
    probe = LogisticRegression(max_iter=2000).fit(feats[:n_train], site[:n_train].numpy())
    site_acc = probe.score(feats[n_train:], site[n_train:].numpy())
    task_acc = ((prob >= 0.5) == y[n_train:].numpy()).mean()
    return site_acc, task_acc


def test_adversary_removes_site_information():
    plain_site, plain_task = _site_probe_accuracy(0.0)
    adv_site, adv_task = _site_probe_accuracy(1.0)
    assert plain_site > 0.85  # without the adversary the hidden features encode the site (chance 0.25)
    assert adv_site < 0.55  # measured 0.37-0.49 over torch seeds 0-3
    assert plain_task > 0.85 and adv_task > 0.85  # the label is still learned


def test_plain_module_and_ce_task():
    # the z-predictor is a plain classifier trained with task="ce" on the site
    x, _, site = _site_toy(n=800)
    torch.manual_seed(0)
    predictor = ClusterClassifier(3, 4)
    TabularTrainer(predictor, task="ce", epochs=10, lr=1e-2).fit(x[:600], site[:600])
    z_hat = predictor.predict_design(x[600:])
    torch.testing.assert_close(z_hat.sum(1), torch.ones(200))
    assert (z_hat.argmax(1) == site[600:]).float().mean() > 0.7  # chance 0.25: the site offsets are easy to read


def test_fixed_effects_model_ignores_z_and_loss_uses_one_head():
    # a MixedEffectsNet without random effects trains on its single prediction even if z is given
    d, x, y, site = _spiral_tensors(points=50)
    torch.manual_seed(0)
    net = MixedEffectsMLP(2, 1, d.num_clusters, linear_slopes=False, nonlinear_slopes=False, random_intercept=False)
    trainer = TabularTrainer(net, epochs=1)
    assert trainer.re_layers == []
    trainer.fit(x, y, torch.eye(d.num_clusters)[site])
    torch.testing.assert_close(predict_tabular(net, x, torch.eye(d.num_clusters)[site]), predict_tabular(net, x))


def test_errors_name_the_problem():
    net = MixedEffectsMLP(2, 1, 3)
    x, y = torch.randn(10, 2), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="task"):
        TabularTrainer(net, task="hinge")
    with pytest.raises(ValueError, match="kl_weight"):
        TabularTrainer(net, kl_weight="auto")
    with pytest.raises(ValueError, match="MixedEffectsNet"):
        TabularTrainer(nn.Linear(2, 1), adversary=ClusterClassifier(2, 3))
    with pytest.raises(ValueError, match="y has 9 rows"):
        TabularTrainer(net).fit(x, y[:9])
    with pytest.raises(ValueError, match="z must be"):
        TabularTrainer(net).fit(x, y, torch.zeros(10))
    with pytest.raises(ValueError, match="needs sites"):
        TabularTrainer(net, adversary=ClusterClassifier(12, 3)).fit(x, y)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        TabularTrainer(net).fit(bad, y)
    with pytest.raises(ValueError, match="head"):
        predict_tabular(net, x, head="both")
