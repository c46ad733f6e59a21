# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""benchmarks.invariance: the candidate grid, the config validation, and each kind training in the MRI recipe (a
MONAI SupervisedTrainer) with the handler it names."""

from __future__ import annotations

import pytest
import torch

from benchmarks import invariance, mri
from monai_medl.handlers import AdversaryHandler, SiteAlignmentHandler


def test_candidates_cover_every_mechanism_and_lambda():
    grid = (0.003, 0.1, 1.0)
    out = invariance.invariance_candidates(grid)
    assert len(out) == 1 + 3 * 2 * len(grid)
    assert out["none"] == {"kind": "none"}
    assert out["adversary_h@0.1"] == {
        "kind": "adversary",
        "lambda": 0.1,
        "label_conditional": False,
        "update": "two_step",
    }
    assert out["adversary_h_cond@0.003"]["label_conditional"] is True
    assert out["coral_cond@1"]["kind"] == "coral" and out["mmd@0.1"]["kind"] == "mmd"
    assert set(invariance.invariance_candidates()) >= {"coral_cond@0.3", "mmd_cond@1", "adversary_h@3"}
    for spec in out.values():
        invariance.resolve_invariance(spec)  # every candidate is a valid config


@pytest.mark.parametrize(
    "spec,match",
    [({"kind": "grl"}, "invariance.kind"), ({"kind": "coral", "lambda": -1}, "invariance.lambda"),
     ({"kind": "mmd", "label_conditional": 1}, "label_conditional"), ({"kind": "adversary", "update": "x"}, "update"),
     ({"kind": "coral", "update": "one_pass"}, "adversary' only"),
     ({"kind": "coral", "steps": 3}, "unknown settings"), ({"kind": "adversary", "taps": "last"}, "invariance.taps")],
)  # fmt: skip
def test_bad_invariance_configs_name_the_key(spec, match):
    with pytest.raises((ValueError, KeyError), match=match):
        invariance.resolve_invariance(spec)
    with pytest.raises(TypeError, match="must be a dict"):
        invariance.resolve_invariance("coral")


def _tiny(spec=None):
    cfg = mri.default_config(quick=True)
    cfg = {**cfg, "cohort": {**cfg["cohort"], "spatial_size": [16, 16, 16]}, "epochs": 1, "batch_size": 6}
    cfg["channels"] = [4, 8]
    return cfg if spec is None else {**cfg, "invariance": spec}


@pytest.mark.parametrize(
    "spec,handler",
    [({"kind": "none"}, None), ({"kind": "adversary", "lambda": 0.3, "label_conditional": True}, AdversaryHandler),
     ({"kind": "adversary", "lambda": 0.3}, AdversaryHandler),
     ({"kind": "adversary", "lambda": 0.3, "update": "one_pass"}, AdversaryHandler),
     ({"kind": "coral", "lambda": 0.3}, SiteAlignmentHandler),
     ({"kind": "mmd", "lambda": 1.0, "label_conditional": True}, SiteAlignmentHandler)],
)  # fmt: skip
def test_each_kind_trains_in_the_mri_recipe(spec, handler, monkeypatch):
    seen = []
    real = mri.train_supervised
    monkeypatch.setattr(mri, "train_supervised", lambda *a, **k: seen.append(a[5]) or real(*a, **k))
    torch.manual_seed(0)
    x, y, s = torch.randn(12, 1, 16, 16, 16), torch.arange(12) % 2, torch.arange(12) % 3
    net = mri.train_model("me", _tiny(spec), x, y, s, 3, seed=0)
    assert not net.training and torch.isfinite(net(x[:2])).all()
    assert [type(h) for h in seen[0]] == ([handler] if handler else [])
    if handler is AdversaryHandler:
        reg = seen[0][0].regularizer
        assert (
            reg.feature_scaling == "batch_std" and reg.steps == 3 and reg.adversary.in_features == 8 + reg.label_classes
        )
        assert reg.label_classes == (2 if spec.get("label_conditional") else 0)
        assert reg.update == spec.get("update", "two_step") and not reg._pending  # one-pass: applied after backward


def test_without_the_invariance_key_the_old_adversary_keys_apply(monkeypatch):
    seen = []
    monkeypatch.setattr(mri, "train_supervised", lambda *a, **k: seen.append(a[5]))
    x, y, s = torch.randn(4, 1, 16, 16, 16), torch.arange(4) % 2, torch.arange(4) % 3
    mri.train_model("me", _tiny(), x, y, s, 3, seed=0)
    reg = seen[0][0].regularizer
    assert reg.feature_scaling == "none" and reg.steps == 1 and reg.lambda_g == 0.1
    assert reg.adversary.in_features == 4 + 8  # every pooled block (the last is h), today's default
