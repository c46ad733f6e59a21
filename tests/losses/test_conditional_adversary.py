# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Label-conditional adversary: removes site information beyond the label, keeps the (site-confounded) label."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_score

from monai_medl.handlers import AdversaryHandler
from monai_medl.losses import AdversarialRegularizer
from monai_medl.networks.nets import ClusterClassifier, MixedEffectsCNN


def _confounded(seed: int, n: int = 900):
    """3 sites with disease prevalence 0.2 / 0.5 / 0.8; x = (noisy label, noisy site one-hot)."""
    g = np.random.default_rng(seed)
    site = np.repeat(np.arange(3), n // 3)
    y = (g.random(n) < np.array([0.2, 0.5, 0.8])[site]).astype(int)
    x = np.c_[y + 0.6 * g.standard_normal(n), np.eye(3)[site] + 0.3 * g.standard_normal((n, 3))]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y), torch.tensor(site)


def _train(conditional: bool | None, seed: int = 0, steps: int = 400) -> dict[str, float]:
    """conditional None: no adversary (lambda_g 0)."""
    torch.manual_seed(seed)
    x, y, s = _confounded(seed)
    enc = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LeakyReLU(), torch.nn.Linear(8, 4))
    head = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], 1e-2)
    classes = 2 if conditional else 0
    adv = ClusterClassifier(4 + classes, 3, hidden=(16,), act="leakyrelu")
    reg = AdversarialRegularizer(
        adv, torch.optim.Adam(adv.parameters(), 1e-2), 0.0 if conditional is None else 1.0, steps=3,
        label_classes=classes,
    )  # fmt: skip
    for _ in range(steps):
        h = enc(x)
        loss = F.binary_cross_entropy_with_logits(head(h)[:, 0], y.float())
        loss = loss + reg.step([h], s, labels=y.float()[:, None] if classes else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        h = enc(x)
        p = head(h)[:, 0]
    labels = y.numpy()[:, None]

    def probe(f):
        return float(cross_val_score(LogisticRegression(max_iter=2000), f, s.numpy(), cv=5).mean())

    return {
        "auroc": float(roc_auc_score(labels[:, 0], p.numpy())),
        "site_beyond_label": probe(np.c_[h.numpy(), labels]) - probe(labels),
    }


def test_conditional_adversary_removes_site_beyond_the_label_and_keeps_the_label():
    plain, conditional = _train(None), _train(True)
    assert plain["site_beyond_label"] >= 0.2  # the features carry the site beyond what the label tells
    assert conditional["site_beyond_label"] <= 0.08  # measured 0.0 (seed 0)
    assert conditional["auroc"] >= plain["auroc"] - 0.03  # the disease signal stays (measured 0.903 vs 0.918)


def test_conditional_confusion_target_is_the_site_distribution_within_each_class():
    torch.manual_seed(0)
    adv = ClusterClassifier(3 + 2, 3, hidden=())
    reg = AdversarialRegularizer(adv, torch.optim.SGD(adv.parameters(), 0.0), lambda_g=1.0, label_classes=2)
    h = torch.zeros(6, 3, requires_grad=True)
    sites, labels = torch.tensor([0, 0, 1, 2, 2, -1]), torch.tensor([1, 1, 0, 0, 1, 0])
    term = reg.step([h], sites, labels=labels)
    counts = reg._site_counts
    assert torch.equal(counts, torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, 1.0]]))  # the unseen item is not counted
    logp = F.log_softmax(adv(torch.cat([h, F.one_hot(labels, 2).float()], 1)), 1)
    target = counts[labels] / counts[labels].sum(1, keepdim=True)
    expected = -(target * logp).sum(1)[:5].mean()  # the unseen item has weight 0
    torch.testing.assert_close(term, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"label_classes": 1}, "label_classes must be 0"),
        ({"label_classes": True}, "label_classes must be 0"),
        ({"label_classes": 2, "objective": "ce"}, "needs objective='confusion'"),
    ],
)
def test_bad_conditional_settings(kwargs, match):
    adv = ClusterClassifier(5, 3)
    with pytest.raises(ValueError, match=match):
        AdversarialRegularizer(adv, torch.optim.SGD(adv.parameters(), 0.1), **kwargs)


def test_bad_labels_are_named():
    adv = ClusterClassifier(5, 3)
    reg = AdversarialRegularizer(adv, torch.optim.SGD(adv.parameters(), 0.1), label_classes=2)
    h, sites = [torch.randn(4, 3)], torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="pass labels= to step"):
        reg.step(h, sites)
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\], got values \[0, 1, 2\]"):
        reg.step(h, sites, labels=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="labels has 3 items but the batch has 4"):
        reg.step(h, sites, labels=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="one class index per item"):
        reg.step(h, sites, labels=torch.zeros(4, 2))


def test_handler_reads_the_label_key_and_names_a_missing_one():
    torch.manual_seed(0)
    net = MixedEffectsCNN(3, spatial_dims=2)
    adv = net.make_adversary(label_classes=2)
    assert adv.in_features == net.adversary_in_features + 2
    handler = AdversaryHandler(adv, torch.optim.Adam(adv.parameters(), 1e-3), label_classes=2, label_key="y")
    x, z = torch.randn(4, 1, 16, 16), torch.eye(3)[[0, 1, 2, 0]]
    sites = torch.tensor([0, 1, 2, 0])

    def engine(batch):  # the handler reads engine.state only
        return SimpleNamespace(
            state=SimpleNamespace(output={"pred": net(x, z), "loss": torch.zeros(())}, batch=batch, epoch=1)
        )

    e = engine({"site": sites, "y": torch.tensor([[1.0], [0.0], [1.0], [0.0]])})
    handler(e)
    assert float(e.state.output["loss"]) > 0.0  # the conditional confusion term was added
    assert handler.regularizer._site_counts.sum() == 4
    with pytest.raises(KeyError, match=r"batch has no 'y' key; available keys: \['site'\]"):
        handler(engine({"site": sites}))
