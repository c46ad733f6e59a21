# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The adversary handler inside a plain MONAI SupervisedTrainer: gradient, site invariance, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.handlers import AdversaryHandler, LossTermsHandler
from monai_medl.losses import AdversarialRegularizer, MixedEffectsLoss
from monai_medl.networks import ClusterClassifier
from monai_medl.networks.nets import MixedEffectsMLP

NUM_SITES = 4


def site_shortcut_data(n: int = 480, seed: int = 0) -> list[dict]:
    """Label from one signal feature; three more features encode the site (a shortcut to remove)."""
    rng = np.random.default_rng(seed)
    site = rng.integers(0, NUM_SITES, n)
    signal = rng.normal(size=n)
    label = (signal + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    codes = np.random.default_rng(100).normal(size=(NUM_SITES, 3)) * 2.0  # the same site codes in every split
    x = np.column_stack([signal, codes[site] + rng.normal(size=(n, 3))]).astype(np.float32)
    return [{"image": x[i], "label": label[i : i + 1], "site": int(site[i])} for i in range(n)]


def build(lambda_g: float, seed: int = 0, epochs: int = 1, objective: str = "confusion", **handler_options):
    torch.manual_seed(seed)
    net = MixedEffectsMLP(in_features=4, out_channels=1, num_clusters=NUM_SITES, hidden=(16, 16))
    adversary = ClusterClassifier(in_features=32, num_clusters=NUM_SITES, hidden=(32, 32))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    adv_opt = torch.optim.Adam(adversary.parameters(), 1e-2)
    handler = AdversaryHandler(adversary, adv_opt, lambda_g=lambda_g, objective=objective, **handler_options)
    loader = DataLoader(
        site_shortcut_data(), batch_size=48, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=MixedEffectsLoss(task="bce", kl_weight=1e-3),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=NUM_SITES),
        train_handlers=[handler, LossTermsHandler()],
    )
    return trainer, net, adversary, opt, adv_opt


def first_iteration_grads(lambda_g: float, objective: str = "confusion") -> dict[str, torch.Tensor]:
    trainer, net, *_ = build(lambda_g, objective=objective)
    grads = {}

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def grab(engine):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
            engine.terminate()

    trainer.run()
    return grads


@pytest.mark.parametrize("objective", ["confusion", "ce"])
def test_adversarial_term_reaches_the_feature_extractor_but_not_the_head(objective):
    without, with_adv = first_iteration_grads(0.0, objective), first_iteration_grads(5.0, objective)
    assert not torch.allclose(without["hidden.0.0.weight"], with_adv["hidden.0.0.weight"])
    torch.testing.assert_close(without["head.linear.weight"], with_adv["head.linear.weight"])


def test_handler_logs_adversary_and_loss_terms_into_the_iteration_output():
    trainer, *_ = build(1.0)
    seen = []
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    trainer.run()
    for key in ("adv_loss", "adv_acc", "loss_mixed", "loss_fixed", "kl"):
        assert np.isfinite(seen[-1][key]), key
    assert 0.0 <= seen[-1]["adv_acc"] <= 1.0


def site_probe_accuracy(net: MixedEffectsMLP) -> float:
    data = site_shortcut_data(n=400, seed=1)
    x = torch.as_tensor(np.stack([d["image"] for d in data]))
    sites = np.array([d["site"] for d in data])
    net.eval()
    with torch.no_grad():
        feats = torch.cat(net.forward_all(x).features, dim=1).numpy()
    return float(cross_val_score(LogisticRegression(max_iter=2000), feats, sites, cv=5).mean())


def test_adversary_lowers_site_probe_accuracy_on_fixed_effects_features():
    plain = build(0.0, epochs=16)
    plain[0].run()
    adv = build(2.0, epochs=16)
    adv[0].run()
    acc_plain, acc_adv = site_probe_accuracy(plain[1]), site_probe_accuracy(adv[1])
    assert acc_plain > 0.8  # without the adversary the hidden layers keep the site shortcut (chance 0.25)
    assert acc_adv < acc_plain - 0.25, (acc_plain, acc_adv)


def test_checkpoint_round_trip_of_model_adversary_and_both_optimizers(tmp_path):
    trainer, net, adversary, opt, adv_opt = build(1.0)
    save_dict = {"model": net, "adversary": adversary, "optimizer": opt, "adv_optimizer": adv_opt}
    CheckpointSaver(save_dir=str(tmp_path), save_dict=save_dict, save_final=True, final_filename="ckpt.pt").attach(
        trainer
    )
    trainer.run()
    trainer2, net2, adversary2, opt2, adv_opt2 = build(1.0, seed=1)
    load_dict = {"model": net2, "adversary": adversary2, "optimizer": opt2, "adv_optimizer": adv_opt2}
    CheckpointLoader(load_path=str(tmp_path / "ckpt.pt"), load_dict=load_dict)(trainer2)
    for a, b in ((net, net2), (adversary, adversary2)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(p, q, msg=name)
    assert adv_opt2.state_dict()["state"][0]["step"] == adv_opt.state_dict()["state"][0]["step"]
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_missing_site_key_and_a_tensor_prediction_are_clear_errors():
    trainer, net, *_ = build(1.0)
    handler = AdversaryHandler(
        ClusterClassifier(32, NUM_SITES), torch.optim.SGD(ClusterClassifier(32, 4).parameters(), 0.1)
    )
    trainer.state.batch = {"image": torch.zeros(1, 4)}
    trainer.state.output = {"pred": net.train()(torch.zeros(1, 4)), "loss": torch.zeros(())}
    with pytest.raises(KeyError, match="site"):
        handler(trainer)
    trainer.state.output = {"pred": net.eval()(torch.zeros(1, 4)), "loss": torch.zeros(())}
    with pytest.raises(TypeError, match="MixedEffectsOutput"):
        handler(trainer)


def _states(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _trained(lambda_g: float, epochs: int, **handler_options):
    trainer, net, adversary, *_ = build(lambda_g, epochs=epochs, **handler_options)
    adversary_init = _states(adversary)
    torch.manual_seed(123)  # the same random-effects sampling noise in every run
    trainer.run()
    return net, adversary, adversary_init


def test_warmup_epochs_train_the_adversary_but_leave_the_model_to_the_task():
    free, warm, on = _trained(0.0, 1), _trained(5.0, 1, warmup_epochs=1), _trained(5.0, 1)
    # during the warm-up epoch the strong term is not applied: the model trains exactly as without the adversary ...
    for name, value in free[0].state_dict().items():
        torch.testing.assert_close(warm[0].state_dict()[name], value, msg=name)
    # ... while the adversary learns (as in the adversary-free run); without a warm-up the model moves
    assert any(not torch.equal(warm[2][k], v) for k, v in warm[1].state_dict().items())
    for name, value in free[1].state_dict().items():
        torch.testing.assert_close(warm[1].state_dict()[name], value, msg=name)
    weight = "hidden.0.0.weight"
    assert not torch.allclose(on[0].state_dict()[weight], free[0].state_dict()[weight])
    # after the warm-up the term applies
    free2, warm2 = _trained(0.0, 2), _trained(5.0, 2, warmup_epochs=1)
    assert not torch.allclose(warm2[0].state_dict()[weight], free2[0].state_dict()[weight])


def _regularizer(steps: int, lr: float = 0.05, memory: int = 0) -> AdversarialRegularizer:
    torch.manual_seed(3)
    adversary = ClusterClassifier(in_features=6, num_clusters=3, hidden=(8,))
    opt = torch.optim.Adam(adversary.parameters(), lr)
    return AdversarialRegularizer(adversary, opt, lambda_g=1.0, steps=steps, memory=memory)


def test_steps_update_the_adversary_that_many_times_on_the_same_features():
    torch.manual_seed(0)
    features = [torch.randn(12, 2, requires_grad=True), torch.randn(12, 4, requires_grad=True)]
    sites = torch.tensor([0, 1, 2, -1] * 3)
    multi, single = _regularizer(3), _regularizer(1)
    term = multi.step(features, sites)
    for _ in range(3):
        single.step(features, sites, penalize=False)
    assert int(multi.optimizer.state_dict()["state"][0]["step"]) == 3
    for name, value in single.adversary.state_dict().items():
        torch.testing.assert_close(multi.adversary.state_dict()[name], value, msg=name)
    term.backward()
    assert features[0].grad is not None and features[0].grad.abs().sum() > 0  # the term reaches the features
    # penalize=False: the adversary still learns, the returned term is a constant zero
    before = _states(single.adversary)
    zero = single.step(features, sites, penalize=False)
    assert zero.item() == 0.0 and not zero.requires_grad
    assert any(not torch.equal(before[k], v) for k, v in single.adversary.state_dict().items())


def test_memory_trains_the_adversary_on_past_batches_too_and_reads_out_the_current_one():
    torch.manual_seed(1)
    a, b = [torch.randn(10, 2), torch.randn(10, 4)], [torch.randn(6, 2), torch.randn(6, 4)]
    sa, sb = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, -1]), torch.tensor([2, 2, 1, 0, -1, 1])
    with_memory, plain = _regularizer(2, memory=1), _regularizer(2)
    with_memory.step(a, sa)
    plain.step(a, sa)
    with torch.no_grad():
        before = with_memory.adversary(b).argmax(1)
    with_memory.step(b, sb)
    # the second update saw batch a again (memory) and b: the same as training on both at once without memory
    plain.step([torch.cat([x, y]) for x, y in zip(a, b)], torch.cat([sa, sb]))
    for name, value in plain.adversary.state_dict().items():
        torch.testing.assert_close(with_memory.adversary.state_dict()[name], value, msg=name)
    # the logged accuracy is the current batch's (unseen-marker rows excluded), before the update on it
    keep = sb >= 0
    assert with_memory.last_accuracy == pytest.approx(float((before[keep] == sb[keep]).float().mean()))
    with pytest.raises(ValueError, match="memory"):
        _regularizer(1, memory=-1)
    with pytest.raises(ValueError, match="memory"):
        AdversaryHandler(with_memory.adversary, with_memory.optimizer, memory=1.5)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_bad_steps_are_a_clear_error(steps):
    adversary = ClusterClassifier(in_features=6, num_clusters=3)
    opt = torch.optim.SGD(adversary.parameters(), 0.1)
    with pytest.raises(ValueError, match="steps"):
        AdversarialRegularizer(adversary, opt, steps=steps)
    with pytest.raises(ValueError, match="steps"):
        AdversaryHandler(adversary, opt, steps=steps)


@pytest.mark.parametrize("warmup", [-1, 0.5, True])
def test_bad_warmup_epochs_are_a_clear_error(warmup):
    adversary = ClusterClassifier(in_features=6, num_clusters=3)
    with pytest.raises(ValueError, match="warmup_epochs"):
        AdversaryHandler(adversary, torch.optim.SGD(adversary.parameters(), 0.1), warmup_epochs=warmup)
