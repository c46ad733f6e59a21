# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Every invariance mechanism (scale-invariant adversary, CORAL, MMD; unconditional and label-conditional) lowers a
fresh site probe's accuracy on a site-confounded feature problem and keeps the within-site label AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from monai_medl.losses import AdversarialRegularizer, SiteAlignmentLoss
from monai_medl.networks.nets import ClusterClassifier

AUROC_MARGIN = 0.03  # the within-site label AUROC may fall at most this much below lambda = 0
PROBE_DROP = 0.15  # the fresh probe's site accuracy must fall at least this much below lambda = 0


def _confounded(seed: int, n: int = 450):
    """3 sites with disease prevalence 0.2 / 0.5 / 0.8; x = (noisy label, noisy site one-hot): the site is encoded in
    the inputs and the label is confounded with it."""
    g = np.random.default_rng(seed)
    site = np.repeat(np.arange(3), n // 3)
    y = (g.random(n) < np.array([0.2, 0.5, 0.8])[site]).astype(int)
    x = np.c_[y + 0.6 * g.standard_normal(n), np.eye(3)[site] + 0.3 * g.standard_normal((n, 3))]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y), torch.tensor(site)


def _term(mechanism: str, lam: float, conditional: bool, y: torch.Tensor, s: torch.Tensor, update: str = "two_step"):
    classes = 2 if conditional else 0
    labels = y if conditional else None
    if mechanism == "adversary":
        adv = ClusterClassifier(4 + classes, 3, hidden=(16,), act="leakyrelu")
        opt = torch.optim.Adam(adv.parameters(), 1e-2)
        reg = AdversarialRegularizer(
            adv, opt, lam, steps=3, label_classes=classes, feature_scaling="batch_std", update=update
        )
        return lambda h: reg.step([h], s, labels=labels), reg.finish_step
    alignment = SiteAlignmentLoss(3, mechanism, lam, label_classes=classes)
    return lambda h: alignment(h, s, labels), lambda: None


def _train(
    mechanism: str, lam: float, conditional: bool, seed: int = 0, steps: int = 250, update: str = "two_step"
) -> dict[str, float]:
    torch.manual_seed(seed)
    x, y, s = _confounded(seed)
    enc = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LeakyReLU(), torch.nn.Linear(8, 4))
    head = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], 1e-2)
    term, finish = _term(mechanism, lam, conditional, y, s, update)
    for _ in range(steps):
        h = enc(x)
        loss = F.binary_cross_entropy_with_logits(head(h)[:, 0], y.float()) + term(h)
        opt.zero_grad()
        loss.backward()
        opt.step()
        finish()  # one-pass adversary: its update after the backward
    with torch.no_grad():
        h = enc(x)
        p = head(h)[:, 0].numpy()
    sites, labels = s.numpy(), y.numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return {
        "probe": float(cross_val_score(probe, h.numpy(), sites, cv=5).mean()),
        "auroc": float(np.mean([roc_auc_score(labels[sites == k], p[sites == k]) for k in range(3)])),
    }


@pytest.fixture(scope="module")
def baseline():
    return _train("coral", 0.0, False)  # lambda = 0: the alignment term is exactly zero


# the unconditional adversary is unstable on this toy above lambda 0.1 (measured, seeds 0-3, 250 steps: within-site
# AUROC 0.68 at lambda 0.3 seed 0 and 0.35 at lambda 1 seed 1, against 0.86-0.89 without it); at 0.1 it is stable
@pytest.mark.parametrize(
    "mechanism,lam,conditional",
    [("adversary", 0.1, False), ("adversary", 0.3, True), ("coral", 3.0, False), ("coral", 3.0, True),
     ("mmd", 3.0, False), ("mmd", 3.0, True)],
)  # fmt: skip
def test_mechanism_lowers_the_fresh_probe_and_keeps_the_within_site_auroc(baseline, mechanism, lam, conditional):
    assert baseline["probe"] >= 0.8  # the features carry the site (chance 1/3, label-only floor about 0.53)
    result = _train(mechanism, lam, conditional)
    assert result["probe"] <= baseline["probe"] - PROBE_DROP, (result, baseline)
    assert result["auroc"] >= baseline["auroc"] - AUROC_MARGIN, (result, baseline)


def test_lambda_zero_adversary_is_the_plain_model(baseline):
    assert _train("adversary", 0.0, False) == baseline


@pytest.mark.parametrize("scaling", ["layer", "batch_rms", "batch_std"])
def test_shrinking_h_does_not_lower_the_scale_invariant_adversary_loss(scaling):
    torch.manual_seed(0)
    h = torch.randn(12, 5)
    sites = torch.arange(12) % 3
    adv = ClusterClassifier(5, 3, hidden=(8,), act="leakyrelu")
    with torch.no_grad():  # a confident adversary, so that the raw features' scale visibly matters (the control)
        for p in adv.parameters():
            p.mul_(5.0)
    frozen = torch.optim.SGD(adv.parameters(), lr=0.0)  # the adversary does not move: only the input scale changes
    reg = AdversarialRegularizer(adv, frozen, lambda_g=1.0, feature_scaling=scaling)
    raw = AdversarialRegularizer(adv, frozen, lambda_g=1.0)
    shrunk = 0.05 * h
    assert float(reg.step([shrunk], sites)) == pytest.approx(float(reg.step([h], sites)), rel=1e-4)
    assert reg.last_loss == pytest.approx(float(F.cross_entropy(adv(_scaled(h, scaling)), sites)), rel=1e-4)
    assert float(raw.step([shrunk], sites)) != pytest.approx(float(raw.step([h], sites)), rel=0.1)  # the control
    live = h.clone().requires_grad_(True)
    reg.step([live], sites).backward()
    assert abs(float((live.grad * h).sum())) <= 1e-4 * float(live.grad.norm() * h.norm())  # no radial gradient


def _scaled(h, scaling):
    from monai_medl.losses import scale_invariant

    return scale_invariant(h, scaling)


def test_bad_feature_scaling_is_rejected():
    adv = ClusterClassifier(2, 2, hidden=())
    with pytest.raises(ValueError, match="feature_scaling must be one of"):
        AdversarialRegularizer(adv, torch.optim.SGD(adv.parameters(), 0.1), feature_scaling="l2")
