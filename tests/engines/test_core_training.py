# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Loss module, prepare_batch modes, few-shot adaptation, input validation and export of the tabular model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_medl.engines import MixedEffectsPrepareBatch, add_clusters, fit_new_cluster
from monai_medl.losses import MixedEffectsLoss, task_loss
from monai_medl.networks import ClusterClassifier, kl_divergence
from monai_medl.networks.nets import MixedEffectsMLP


def test_loss_combines_both_heads_and_kl_with_the_elbo_weight():
    torch.manual_seed(0)
    net = MixedEffectsMLP(3, 1, num_clusters=4, hidden=(5,))
    x, y, z = torch.randn(6, 3), torch.randint(0, 2, (6, 1)).float(), torch.eye(4)[[0, 1, 2, 3, 0, 1]]
    loss_fn = MixedEffectsLoss(task="bce", lambda_mixed=1.0, lambda_fixed=0.5, kl_weight="elbo", num_train_samples=60)
    out = net.train()(x, z)  # training mode: the structured output, KL included
    expected = (
        F.binary_cross_entropy_with_logits(out.mixed, y)
        + 0.5 * F.binary_cross_entropy_with_logits(out.fixed, y)
        + kl_divergence(net) / 60
    )
    torch.testing.assert_close(loss_fn(out, y), expected)
    terms = loss_fn.terms(out, y)
    assert set(terms) == {"loss_mixed", "loss_fixed", "kl"}
    torch.testing.assert_close(terms["kl"], kl_divergence(net))
    assert not hasattr(loss_fn, "network")  # the loss holds no reference to the model


def test_loss_refuses_a_prediction_tensor_and_the_old_network_argument():
    torch.manual_seed(0)
    net = MixedEffectsMLP(3, 1, num_clusters=2)
    loss_fn = MixedEffectsLoss()
    with pytest.raises(TypeError, match="train\\(\\) mode"):
        loss_fn(net.eval()(torch.randn(4, 3)), torch.ones(4, 1))
    with pytest.raises(ValueError, match="kl is None"):
        loss_fn(net.train().forward_all(torch.randn(4, 3)), torch.ones(4, 1))
    with pytest.raises(TypeError, match="no longer takes the network"):
        MixedEffectsLoss(net)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "hinge"}, "task must be"),
        ({"kl_weight": "elbo"}, "num_train_samples"),
        ({"kl_weight": "big"}, "kl_weight"),
    ],
)
def test_loss_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixedEffectsLoss(**kwargs)


def test_gaussian_nll_uses_the_learned_noise_scale():
    pred, target = torch.zeros(4, 1), torch.ones(4, 1)
    log_s = torch.tensor(0.5)
    expected = -torch.distributions.Normal(0.0, log_s.exp()).log_prob(target).mean()
    torch.testing.assert_close(task_loss("gaussian_nll", pred, target, log_s), expected)
    with pytest.raises(ValueError, match="learn_noise_scale"):
        task_loss("gaussian_nll", pred, target, None)


def test_prepare_batch_modes():
    batch = {"image": torch.randn(4, 3), "label": torch.ones(4, 1), "site": torch.tensor([0, 2, -1, 1])}
    image, label, (z,), kwargs = MixedEffectsPrepareBatch(num_clusters=3)(batch)
    assert kwargs == {} and label.shape == (4, 1)
    torch.testing.assert_close(z, torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]]))
    _, _, (zp,), _ = MixedEffectsPrepareBatch(3, mode="population")(batch)
    assert torch.equal(zp, torch.zeros(4, 3))
    predictor = ClusterClassifier(3, 3)
    _, _, (zi,), _ = MixedEffectsPrepareBatch(3, z_predictor=predictor.predict_design)(batch)
    torch.testing.assert_close(zi[2], predictor.predict_design(batch["image"][2:3])[0])  # unseen -> inferred
    torch.testing.assert_close(zi[[0, 1, 3]], z[[0, 1, 3]])  # seen sites keep their one-hot row
    _, _, (zr,), _ = MixedEffectsPrepareBatch(3, mode="randomized", seed=1)(batch)
    assert torch.equal(zr.sum(1), torch.ones(4)) and set(zr.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize(
    "batch, error, match",
    [
        ({"image": torch.zeros(2, 3)}, KeyError, "'site'"),
        ({"image": torch.zeros(2, 3), "site": ["a", "b"]}, TypeError, "SiteToIndexd"),
        ({"image": torch.zeros(2, 3), "site": torch.tensor([0, 3])}, ValueError, "3"),
        ({"img": torch.zeros(2, 3), "site": torch.tensor([0, 1])}, KeyError, "image"),
    ],
)
def test_prepare_batch_bad_inputs_name_the_problem(batch, error, match):
    with pytest.raises(error, match=match):
        MixedEffectsPrepareBatch(num_clusters=3)(batch)


def test_inferred_mode_requires_a_predictor():
    with pytest.raises(ValueError, match="z_predictor"):
        MixedEffectsPrepareBatch(3, mode="inferred")


def test_network_input_validation():
    net = MixedEffectsMLP(3, 1, num_clusters=4)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="NaN"):
        net(torch.tensor([[0.0, float("nan"), 1.0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 4\)"):
        net(x, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="rows"):
        net(x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\)"):
        net(torch.randn(2, 5))


def test_tabular_model_scripts_and_reproduces_eager_outputs():
    net = MixedEffectsMLP(3, 2, num_clusters=4).eval()
    x, z = torch.randn(5, 3), torch.eye(4)[[0, 1, 2, 3, 0]]
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x, z), net(x, z))
    torch.testing.assert_close(scripted(x), net.forward_all(x).fixed)


def _logistic_clusters(intercepts, n_per, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(len(intercepts)).repeat_interleave(n_per)
    x = torch.randn(len(k), 1, generator=g)
    logit = 2.0 * x[:, 0] + torch.as_tensor(intercepts)[k]
    y = (torch.rand(len(k), generator=g) < torch.sigmoid(logit)).float()[:, None]
    return x, y, k


def test_few_shot_fits_only_the_new_cluster_and_beats_the_population_prediction():
    torch.manual_seed(0)
    intercepts = [-1.5, -0.5, 0.0, 0.7, 1.5]
    x, y, k = _logistic_clusters(intercepts, 200, seed=0)
    net = MixedEffectsMLP(1, 1, num_clusters=5, hidden=(), nonlinear_slopes=False, intercept_prior_scale=1.0)
    opt = torch.optim.Adam(net.parameters(), 0.05)
    loss_fn = MixedEffectsLoss(kl_weight="elbo", num_train_samples=len(x))
    for _ in range(300):
        opt.zero_grad()
        loss_fn(net(x, F.one_hot(k, 5).float()), y).backward()
        opt.step()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    x_new, y_new, _ = _logistic_clusters([2.5], 220, seed=1)
    new = fit_new_cluster(net, x_new[:20], y_new[:20], task="bce")
    assert new == 5 and net.num_clusters == 6
    for name, p in net.named_parameters():  # old rows and all fixed effects are untouched
        old = before[name]
        torch.testing.assert_close(p[: old.shape[0]] if p.shape != old.shape else p, old, msg=name)
    x_test, y_test = x_new[20:], y_new[20:]
    z_new = torch.zeros(len(x_test), 6)
    z_new[:, new] = 1
    with torch.no_grad():
        adapted = F.binary_cross_entropy_with_logits(net(x_test, z_new), y_test)
        population = F.binary_cross_entropy_with_logits(net(x_test), y_test)
    assert adapted < population - 0.05, (float(adapted), float(population))
    assert net.head.intercept.loc[new].item() > 1.0  # moved towards the true +2.5 (shrunk by the prior)


def test_add_clusters_widens_z_and_starts_new_rows_at_the_population_level():
    net = MixedEffectsMLP(2, 1, num_clusters=3).eval()
    x = torch.randn(4, 2)
    first = add_clusters(net, 2)
    assert first == 3 and net.num_clusters == 5
    z = torch.zeros(4, 5)
    z[:, 4] = 1
    torch.testing.assert_close(net(x, z), net(x))


def _fitted_intercept(prior_scale):
    """A 5-cluster logistic ME-MLP trained with a fixed, too narrow intercept prior (0.1), then a new cluster whose
    true intercept (+2.5) is far outside it, fitted on 20 samples with the given ``prior_scale``."""
    torch.manual_seed(0)
    x, y, k = _logistic_clusters([-1.5, -0.5, 0.0, 0.7, 1.5], 200, seed=0)
    net = MixedEffectsMLP(1, 1, num_clusters=5, hidden=(), nonlinear_slopes=False, intercept_prior_scale=0.1)
    opt = torch.optim.Adam(net.parameters(), 0.05)
    loss_fn = MixedEffectsLoss(kl_weight=1e-4)  # weak KL: the training rows spread beyond the fixed prior
    for _ in range(300):
        opt.zero_grad()
        loss_fn(net(x, F.one_hot(k, 5).float()), y).backward()
        opt.step()
    layer = net.head.intercept
    spread = (layer.loc.square() + layer.scale.square()).mean().sqrt().item()
    x_new, y_new, _ = _logistic_clusters([2.5], 20, seed=1)
    new = fit_new_cluster(net, x_new, y_new, task="bce", prior_scale=prior_scale)
    return net.head.intercept.loc[new].item(), spread


def test_few_shot_empirical_prior_uses_the_training_clusters_spread():
    narrow, spread = _fitted_intercept(None)  # the layer's fixed prior s.d. 0.1
    empirical, _ = _fitted_intercept("empirical")
    wide, _ = _fitted_intercept(10.0)
    assert spread > 0.5  # the trained rows are far wider than the fixed prior
    assert narrow < 0.3 < empirical  # the fixed prior pins the new intercept near 0; the empirical one lets it move
    assert empirical < wide  # and still shrinks it relative to an almost flat prior


def test_few_shot_rejects_a_bad_prior_scale():
    net = MixedEffectsMLP(1, 1, num_clusters=2)
    for bad in ("wide", 0.0, -1.0):
        with pytest.raises(ValueError, match="prior_scale must be None, 'empirical' or a positive float"):
            fit_new_cluster(net, torch.randn(4, 1), torch.ones(4, 1), prior_scale=bad)
    assert net.num_clusters == 2  # nothing was added
