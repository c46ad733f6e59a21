# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""SiteAlignmentLoss: the cell bookkeeping (empty, one-item, unseen), its value on known inputs, bad inputs."""

from __future__ import annotations

import pytest
import torch

from monai_medl.losses import SiteAlignmentLoss


@pytest.mark.parametrize("kind", ["coral", "mmd"])
@pytest.mark.parametrize("classes", [0, 2])
def test_empty_and_single_item_cells_are_handled(kind, classes):
    loss = SiteAlignmentLoss(4, kind, 1.0, label_classes=classes)
    h = torch.randn(5, 3, requires_grad=True)
    sites, labels = torch.tensor([0, 0, 1, 3, -1]), torch.tensor([1, 0, 0, 1, 1])  # site 2 empty, most cells one item
    term = loss(h, sites, labels)
    term.backward()
    assert torch.isfinite(term) and float(term) >= 0 and torch.isfinite(h.grad).all()
    assert float(loss(h[:1], sites[:1], labels[:1])) == 0.0  # one item: nothing to compare
    assert float(loss(h[:2], torch.tensor([-1, -1]), labels[:2])) == 0.0  # unseen only


@pytest.mark.parametrize("kind", ["coral", "mmd"])
def test_unseen_items_take_no_part(kind):
    torch.manual_seed(0)
    loss = SiteAlignmentLoss(2, kind, 1.0, feature_scaling="none")
    h = torch.randn(6, 2)
    sites = torch.tensor([0, 0, 0, 1, 1, 1])
    with_unseen = loss(torch.cat([h, 100 * torch.randn(2, 2)]), torch.cat([sites, torch.tensor([-1, -1])]))
    if kind == "coral":  # MMD's median bandwidth sees every item; CORAL's moments only the seen ones
        assert float(with_unseen) == pytest.approx(float(loss(h, sites)), rel=1e-5)
    x = torch.cat([h, torch.randn(2, 2)]).requires_grad_(True)
    loss(x, torch.cat([sites, torch.tensor([-1, -1])])).backward()
    if kind == "coral":
        assert float(x.grad[6:].abs().sum()) == 0.0
    assert torch.isfinite(x.grad).all() and float(x.grad[:6].abs().sum()) > 0


def test_coral_value_on_known_cells():
    loss = SiteAlignmentLoss(2, "coral", 2.0, feature_scaling="none")
    h = torch.tensor([[0.0], [2.0], [4.0], [8.0]])
    sites = torch.tensor([0, 0, 1, 1])
    # site 0: mean 1, var 2; site 1: mean 6, var 8; two cells, each compared with the other site
    assert float(loss(h, sites)) == pytest.approx(2.0 * ((1 - 6) ** 2 + (2 - 8) ** 2))


def test_conditional_alignment_ignores_label_differences_between_sites():
    loss = SiteAlignmentLoss(2, "coral", 1.0, label_classes=2, feature_scaling="none")
    plain = SiteAlignmentLoss(2, "coral", 1.0, feature_scaling="none")
    h = torch.tensor([[0.0], [0.1], [1.0], [0.0], [1.0], [1.1]])  # h follows the label exactly, no site effect
    sites, labels = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 0, 1, 1])  # prevalence 1/3 vs 2/3
    assert float(loss(h, sites, labels)) < 0.02 < float(plain(h, sites))


def test_mmd_is_zero_for_identical_sites_and_scale_invariant():
    torch.manual_seed(0)
    loss = SiteAlignmentLoss(2, "mmd", 1.0)
    h = torch.randn(5, 3)
    same = loss(torch.cat([h, h]), torch.tensor([0] * 5 + [1] * 5))
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    x, sites = torch.randn(10, 3), torch.arange(10) % 2
    assert float(loss(0.01 * x, sites)) == pytest.approx(float(loss(x, sites)), rel=1e-3)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"num_clusters": 1}, "num_clusters"), ({"kind": "kl"}, "kind must be"), ({"lambda_align": -1.0}, "lambda_align"),
     ({"label_classes": 1}, "label_classes"), ({"feature_scaling": "l2"}, "feature_scaling"),
     ({"bandwidth_scales": (0.0,)}, "bandwidth_scales")],
)  # fmt: skip
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SiteAlignmentLoss(**{"num_clusters": 3, **kwargs})


def test_bad_inputs_are_rejected():
    loss = SiteAlignmentLoss(3, label_classes=2)
    with pytest.raises(ValueError, match="pass labels="):
        loss(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="site indices"):
        loss(torch.randn(4, 2), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="class indices"):
        loss(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 1]))
